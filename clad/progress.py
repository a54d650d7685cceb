"""Progress of long loops: a tqdm bar on a terminal, plain periodic lines anywhere else.

A bar redraws itself with carriage returns; written to a log file (``main.py > log``, a sweep
cell's ``log.txt``, a batch system's output) each redraw becomes a line of ``\\r`` floods. Off a
terminal a loop instead prints ``[clad] <desc>: <done>/<total> ...`` at most every
``PLAIN_INTERVAL_S`` seconds (never for a loop that ends sooner), and nothing else.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import IO, Any, Generic, Protocol, TypeVar

Item = TypeVar("Item")
Item_co = TypeVar("Item_co", covariant=True)

PLAIN_INTERVAL_S = 30.0
"""Off a terminal, at most one progress line per loop this often."""


def on_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (stderr, where tqdm draws, by default) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBar(Protocol[Item_co]):
    """What ``progress`` returns: an iterable with tqdm's ``set_postfix``."""

    def __iter__(self) -> Iterator[Item_co]: ...

    def set_postfix(self, values: dict[str, Any]) -> Any: ...


class PlainProgress(Generic[Item]):
    """tqdm's face for a log file: iterates ``iterable`` and prints one line (``desc``, items
    done, the total when known, the postfix) at most every ``interval`` seconds."""

    def __init__(
        self,
        iterable: Iterable[Item],
        desc: str,
        total: int | None,
        interval: float = PLAIN_INTERVAL_S,
        stream: IO[str] | None = None,
    ) -> None:
        self.iterable, self.desc, self.total = iterable, desc, total
        self.interval = interval
        self.stream = stream
        self.postfix: dict[str, Any] = {}
        self.done = 0

    def set_postfix(self, values: dict[str, Any]) -> None:
        """Shown at the end of the next line (tqdm's ``set_postfix``)."""
        self.postfix = dict(values)

    def line(self) -> str:
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return f"[clad] {self.desc}: {count}" + (f" ({extra})" if extra else "")

    def __iter__(self) -> Iterator[Item]:
        last = time.monotonic()
        for item in self.iterable:
            yield item
            self.done += 1
            now = time.monotonic()
            if now - last >= self.interval:
                print(self.line(), file=self.stream or sys.stdout, flush=True)
                last = now


def progress(
    iterable: Iterable[Item],
    desc: str,
    total: int | None = None,
    disable: bool = False,
) -> ProgressBar[Item]:
    """``iterable`` with progress: a transient tqdm bar on a terminal, ``PlainProgress`` lines
    elsewhere, no output with ``disable``."""
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    if disable:
        return PlainProgress(iterable, desc, total, interval=math.inf)
    if on_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)
    return PlainProgress(iterable, desc, total)
