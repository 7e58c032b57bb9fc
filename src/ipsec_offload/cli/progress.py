"""The progress bar of the long commands (`run`, `agent`), on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any

import click


class Progress:
    """A progress bar on stderr, shown only once a command has taken more than a moment
    (`DELAY` seconds): a quick one shows none, and stdout stays clean for pipes. On a terminal
    it is a bar; elsewhere click writes its label once."""

    DELAY = 0.5

    def __init__(self, label: str) -> None:
        self._label = label
        self._start = time.monotonic()
        self._bar: Any = None
        self._shown = 0

    def __enter__(self) -> Progress:
        return self

    def update(self, fraction: float) -> None:
        """`fraction` (0 .. 1) of the work is done."""
        if self._bar is None and time.monotonic() - self._start > self.DELAY:
            self._bar = click.progressbar(length=1000, label=self._label, file=sys.stderr)
            self._bar.__enter__()
        if self._bar is not None:
            target = int(fraction * 1000)
            self._bar.update(target - self._shown)
            self._shown = target

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
