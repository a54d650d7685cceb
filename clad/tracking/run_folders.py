"""What run and sweep folders hold: the names of the files a sweep writes beside a run's outputs,
and the state of a run read from its folder. Sweeps and the comparison report both read run
folders through these functions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ERROR_FILE = "error.txt"  # why a run failed (a sweep writes it)
LOG_FILE = "log.txt"  # a sweep cell's console output
MANIFEST = "sweep.json"  # a sweep folder's list of expected runs
FINISHED = "finished.json"  # written by a run as its very last step (after plots and loggers)


@dataclass(frozen=True)
class CellState:
    """``state`` one of finished, partial, failed, pending, changed, invalid."""

    state: str
    detail: str = ""
    restart: bool = False  # partial or failed with another config: start again, do not resume


def disk_state(folder: Path) -> CellState:
    """What a cell's folder holds: finished (every task in ``metrics.json`` and the run's last
    step, ``finished.json``, done), partial (tasks done or checkpoints: resumable), failed or
    pending."""
    metrics = folder / "metrics.json"
    done, total = 0, None
    if metrics.is_file():
        try:
            record = json.loads(metrics.read_text())
            done, total = int(record["completed_tasks"]), len(record["tasks"])
        except (ValueError, KeyError, TypeError):
            done, total = 0, None
    if total is not None and done == total and (folder / FINISHED).is_file():
        return CellState("finished", f"{done}/{total} tasks")
    error = folder / ERROR_FILE
    if error.is_file():
        lines = error.read_text(errors="replace").strip().splitlines()
        return CellState("failed", _error_headline(lines))
    checkpoints = list((folder / "checkpoints").glob("task_*.pt"))
    if total is not None or checkpoints:
        progress = f"{done}/{total} tasks" if total else f"{len(checkpoints)} checkpoints"
        if total is not None and done == total:
            progress += ", its last files not written"
        return CellState("partial", progress)
    return CellState("pending")


def _error_headline(lines: list[str]) -> str:
    """The most telling line of an error file: the last non-traceback line, else the first."""
    body = [line for line in lines if line and not line.startswith((" ", "Traceback", "#"))]
    return body[-1][:300] if body else (lines[0][:300] if lines else "failed")
