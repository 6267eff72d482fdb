"""Progress that reads well on a terminal *and* in a log file.

On a terminal (stderr is a TTY) :func:`progress_bar` is an ordinary tqdm bar. Anywhere else (CI,
``nohup``, a pipe, a notebook's captured output) a refreshing bar would write every refresh as a
carriage-return fragment, thousands of them in one log; there the same tqdm object prints one plain
line at most every ``STEPPO_PROGRESS_INTERVAL`` seconds (default 30) and a final line when it closes,
and nothing at all for work that ends within the first interval::

    rollout steppo/TextWorld-v0:  40%|####      | 13/32 [00:41<01:00,  3.2s/ep, steps=88, tok_s=54]

:func:`interactive` tells whether stderr is a terminal (third-party progress bars, such as bm25s's,
are switched on only then).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

__all__ = ["interactive", "log_interval_s", "progress_bar"]

T = TypeVar("T")


def interactive(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def log_interval_s() -> float:
    """Seconds between plain progress lines when not on a terminal (``STEPPO_PROGRESS_INTERVAL``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("STEPPO_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # cursor moves of nested bars


class _LineWriter:
    """A file for tqdm that turns each carriage-return refresh into one whole line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = _ANSI_ESCAPE.sub("", text.replace("\r", "")).strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> Any:
    """A tqdm bar on a terminal, plain timed lines elsewhere, nothing when ``enabled`` is False."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if interactive():
        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)
    interval = log_interval_s()
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, file=_LineWriter(sys.stderr), ncols=100, ascii=True,
        mininterval=interval, maxinterval=max(interval, 1.0), delay=interval,
    )
