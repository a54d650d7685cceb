"""A cell's state for a sweep: what its folder holds, and whether its config changed since."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clad.sweep.expansion import Cell
from clad.tracking.files import jsonable
from clad.tracking.run_folders import CellState, disk_state

NOT_COMPARED = (
    "output",
    "wandb",
    "evaluation.overlays_per_task",
    "training.num_workers",
    "dataset.root",
)
"""Config keys that do not change a run's numbers (or that move with the machine): a difference
there does not make a finished run stale."""


def config_differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list:
    """Dotted keys whose values differ between two config dumps, ``NOT_COMPARED`` left out (keys
    on one side only are not compared either, so a field added to the schema later does not make
    finished runs look changed)."""
    diffs = []
    for key in sorted(stored.keys() & wanted.keys()):
        name = f"{prefix}{key}"
        if name in NOT_COMPARED:
            continue
        a, b = stored[key], wanted[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return sorted(diffs)


def cell_state(cell: Cell, sweep_dir: Path) -> CellState:
    """A cell's state for this sweep: ``disk_state`` plus invalid and changed. A finished run
    made with another config than the sweep now gives is ``changed`` (left alone); a partial or
    failed one is started again instead of resumed."""
    if cell.config is None:
        return CellState("invalid", " ".join((cell.error or "").split())[:300])
    folder = cell.folder(sweep_dir)
    state = disk_state(folder)
    if state.state != "pending" and (folder / "config.json").is_file():
        stored = json.loads((folder / "config.json").read_text())
        stored.pop("seed", None)
        wanted = json.loads(json.dumps(jsonable(cell.config)))
        diffs = "; ".join(config_differences(stored, wanted))[:300]
        if diffs and state.state == "finished":
            return CellState("changed", diffs)
        if diffs:
            return CellState(state.state, f"config changed, starting again: {diffs}", True)
    return state
