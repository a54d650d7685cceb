"""A cell's state for a sweep: what its folder holds, and whether its config changed since."""

from __future__ import annotations

import json
from pathlib import Path

from clad.config.compare import config_differences
from clad.errors import OutputError
from clad.sweeps.expansion import Cell
from clad.tracking.files import jsonable, read_json
from clad.tracking.run_folders import CellState, disk_state


def cell_state(cell: Cell, sweep_dir: Path) -> CellState:
    """A cell's state for this sweep: ``disk_state`` plus invalid and changed. A finished run
    made with another config than the sweep now gives is ``changed`` (left alone); a partial or
    failed one is started again instead of resumed; a damaged file is the cell's ``corrupt``
    state (``disk_state``), never the sweep's failure."""
    if cell.config is None:
        return CellState("invalid", " ".join((cell.error or "").split())[:300])
    folder = cell.folder(sweep_dir)
    state = disk_state(folder)
    if state.state not in ("pending", "corrupt") and (folder / "config.json").is_file():
        try:
            stored = read_json(folder / "config.json")
        except OutputError as err:  # damaged since disk_state read it
            return CellState("corrupt", str(err)[:300])
        if not isinstance(stored, dict):
            return CellState("corrupt", f"{folder / 'config.json'}: not a JSON object")
        stored.pop("seed", None)
        wanted = json.loads(json.dumps(jsonable(cell.config)))
        diffs = "; ".join(config_differences(stored, wanted))[:300]
        if diffs and state.state == "finished":
            return CellState("changed", diffs)
        if diffs:
            return CellState(state.state, f"config changed, starting again: {diffs}", True)
    return state
