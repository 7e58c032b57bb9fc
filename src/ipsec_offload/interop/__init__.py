"""Interop with other tools: a Wireshark dissector and scapy layers for the agent's frames.

- ``ipsec_offload.lua`` (package data): the Wireshark/tshark dissector of the metadata tag
  (EtherType 0x88B5) and of config frames (EtherType 0x88B6); :func:`dissector_path` finds it.
  See docs/wireshark.md.
- :mod:`ipsec_offload.interop.scapy_layers`: scapy layers for the same frames, bound to
  ``Ether`` when imported.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DISSECTOR_NAME", "dissector_path"]

DISSECTOR_NAME = "ipsec_offload.lua"
"""File name of the Lua dissector shipped in this package."""


def dissector_path() -> Path:
    """The path of the shipped Lua dissector, for ``tshark -X lua_script:PATH``.

    Raises FileNotFoundError when the package is not installed as plain files (a zip
    import); ``importlib.resources.as_file`` then gives a temporary copy.
    """
    resource = files(__name__) / DISSECTOR_NAME
    if not isinstance(resource, Path) or not resource.is_file():
        raise FileNotFoundError(
            f"{DISSECTOR_NAME} is not a plain file in this installation ({resource});"
            " use importlib.resources.as_file to get a copy"
        )
    return resource
