"""Network namespaces a live run made, claimed in a record so that a later run removes them
when the run that made them was killed before it could (SIGKILL, a crash) (docs/live.md).

A claim is a small JSON file under `RUN_DIR` naming the namespaces, the process that made
them and that process's start time (from /proc, so that a new process with a reused pid is
not taken for the owner). It is written before the first namespace is made and removed after
the last is deleted; `reap` deletes the namespaces of every claim whose owner is gone, and
only those: a namespace nobody claimed is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ipsec_offload.errors import UsageError

RUN_DIR = Path("/run/ipsec-offload")
"""Where the claims are: a tmpfs, so a reboot (which ends every namespace) ends them too."""


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's 22nd field);
    None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces: count the fields after it
    return int(stat[stat.rindex(")") + 2 :].split()[19])


@contextmanager
def claim(namespaces: list[str], run_dir: Path = RUN_DIR) -> Iterator[Path]:
    """Claim `namespaces` for this process while the block runs (the caller makes and deletes
    them); yields the claim's file."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{run_dir}: {exc.strerror} (live runs need root)") from None
    record = {"pid": os.getpid(), "start": start_time(os.getpid()), "namespaces": namespaces}
    path = run_dir / f"{namespaces[0]}.json"
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(record) + "\n")
    staging.replace(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def reap(run_dir: Path = RUN_DIR) -> list[str]:
    """Delete the namespaces of every claim whose owner has ended; returns them. A claim
    that cannot be read is left alone."""
    removed: list[str] = []
    if not run_dir.is_dir():
        return removed
    for path in sorted(run_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            pid, start, namespaces = record["pid"], record["start"], record["namespaces"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if start is not None and start_time(pid) == start:
            continue  # its owner still runs
        for netns in namespaces:
            done = subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
            if done.returncode == 0:
                removed.append(netns)
        path.unlink(missing_ok=True)
    return removed
