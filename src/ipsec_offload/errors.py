"""The one exception hierarchy of ipsec-offload.

Bad bytes that arrive on the data path are never raised out of the model: the component that
meets them counts a drop with a named reason. Exceptions are for parsers (whose callers turn
them into counted drops) and for misuse of the API (which says what to fix).
"""

from __future__ import annotations


class IpsecOffloadError(Exception):
    """Base of every error the package raises."""


class ParseError(IpsecOffloadError):
    """Bytes that do not decode: says which layer, what is wrong and at which offset."""

    def __init__(self, layer: str, what: str, offset: int = 0) -> None:
        super().__init__(f"{layer}: {what} (at byte {offset})")
        self.layer = layer
        self.what = what
        self.offset = offset


class AuthenticationError(IpsecOffloadError):
    """An AEAD tag (ICV) did not verify."""


class KeyUnwrapError(IpsecOffloadError):
    """A wrapped key did not unwrap under the named key-encryption key."""


class UsageError(IpsecOffloadError):
    """The API was called wrongly; the message says what to fix."""


class SimulationError(IpsecOffloadError):
    """The simulation cannot go on: it did not settle (a loop that never ends is a model bug),
    or a driver waits for an answer nothing is left to give."""


class ScenarioError(IpsecOffloadError):
    """A scenario file is invalid: names the file, the field and what is wrong."""

    def __init__(self, source: str, where: str, what: str) -> None:
        super().__init__(f"{source}: {where}: {what}")
        self.source = source
        self.where = where
        self.what = what


class LinuxGuestError(IpsecOffloadError):
    """The Linux guest (the Linux peer's kernel under QEMU) cannot be built, booted or driven:
    a tool or package is missing, the guest did not answer in time, or a command in it
    failed. The message says which and what to do."""


class LiveError(IpsecOffloadError):
    """The live agent cannot go on: one of its worker processes failed or vanished. The
    message says which and how."""
