"""Where a run's time goes: named phases timed with ``phase(name)``, off unless ``profiled()`` is
active (``python -m clad.perf stream``). Each phase records its *own* time: a phase nested in
another (feature extraction inside training) is subtracted from the outer one, so the phases of
a run add up to its wall time."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# the runner's scoring of test sets of tasks not learnt yet (the upper triangle of the matrices):
# a phase whose *inclusive* time is reported (its nested feature passes and searches keep their
# own rows)
UNLEARNT = "unlearnt sets"

_totals: dict[str, float] | None = None  # phase -> own seconds; None: not profiling
_counts: dict[str, int] = {}
_inclusive: dict[str, float] = {}  # phase -> seconds including nested phases (outermost only)
_stack: list[list[Any]] = []  # [name, start, seconds of nested phases]


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as ``name`` (its own time: nested phases are subtracted)."""
    if _totals is None:
        yield
        return
    frame: list[Any] = [name, time.perf_counter(), 0.0]
    _stack.append(frame)
    try:
        yield
    finally:
        _stack.pop()
        elapsed = time.perf_counter() - frame[1]
        _totals[name] = _totals.get(name, 0.0) + elapsed - frame[2]
        _counts[name] = _counts.get(name, 0) + 1
        if _stack:
            _stack[-1][2] += elapsed
        if not any(frame[0] == name for frame in _stack):  # a phase inside itself counts once
            _inclusive[name] = _inclusive.get(name, 0.0) + elapsed


@contextlib.contextmanager
def profiled() -> Iterator[dict[str, float]]:
    """Collect phases while active; yields the dict of own seconds by phase (filled as it goes)."""
    global _totals
    totals: dict[str, float] = {}
    _totals = totals
    _counts.clear()
    _inclusive.clear()
    _stack.clear()
    try:
        yield totals
    finally:
        _totals = None


def counts() -> dict[str, int]:
    """How often each phase ran in the last ``profiled`` block."""
    return dict(_counts)


def inclusive() -> dict[str, float]:
    """Each phase's seconds in the last ``profiled`` block *with* the phases nested in it (so
    ``learn`` holds the feature passes and coreset of training, ``predict`` those of scoring)."""
    return dict(_inclusive)


def timed(name: str) -> Callable[[F], F]:
    """A decorator: every call of the function is a ``phase(name)``."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with phase(name):
                return function(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
