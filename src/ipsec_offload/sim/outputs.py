"""Writing a command's output files: each whole or not at all, and a set of them checked
before any is written.

A file is written into a temporary file beside it and renamed over it once complete
(`replacing`, `write_text`): a failure (a full disk, a bad record) leaves the old file, or
none, never half of one. Before a command computes anything it checks its outputs together
(`check_outputs`): each in an existing folder, none a folder itself, no two the same file and
none one of its inputs, so that a run never stops half way through its outputs nor clobbers
what it reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ipsec_offload.errors import UsageError


@contextmanager
def replacing(path: str | os.PathLike[str], what: str = "file") -> Iterator[str]:
    """A temporary path beside `path` to write the file into; renamed over `path` once the
    block ends, removed when it raises. Errors name `path` and `what` it is."""
    name = os.fspath(path)
    if os.path.isdir(name):
        raise UsageError(f"{name}: cannot write {what}: it is a directory")
    if os.path.exists(name) and not os.path.isfile(name):
        # renamed over, a device or a pipe would be replaced by a plain file
        raise UsageError(f"{name}: cannot write {what}: not a regular file")
    directory, base = os.path.split(name)
    temporary = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, name)
    except OSError as exc:
        raise UsageError(f"{name}: cannot write {what}: {exc.strerror or exc}") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def write_text(path: str | os.PathLike[str], text: str, what: str = "file") -> None:
    """Write `text` (UTF-8, LF line ends) to `path` whole or not at all."""
    with (
        replacing(path, what) as temporary,
        open(temporary, "w", encoding="utf-8", newline="\n") as file,
    ):
        file.write(text)


def check_outputs(inputs: Mapping[str, Path | None], outputs: Mapping[str, Path | None]) -> None:
    """Refuse, before anything is computed, a set of output files that could not all be
    written or would clobber an input: by option name, the inputs read and the outputs to
    write (None: not given)."""
    seen: dict[Path, str] = {}
    for option, path in inputs.items():
        if path is not None:
            seen[path.resolve()] = option
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{option} {path}: the folder {folder} does not exist")
        if path.is_dir():
            raise UsageError(f"{option} {path}: is a folder; give a file name")
        if path.exists() and not path.is_file():
            raise UsageError(f"{option} {path}: not a regular file (a device or a pipe?)")
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: the file may not be written")
        real = path.resolve()
        other = seen.get(real)
        if other is not None:
            kind = "input" if other in inputs else "output"
            raise UsageError(
                f"{option} {path} is the {kind} {other} too: give each file its own name"
            )
        seen[real] = option
