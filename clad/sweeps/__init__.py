"""Sweeps: a grid of run configurations x seeds, run locally or on a Ray cluster.

A sweep file (JSON, every block forbids unknown keys) names a base run config (a path, or the
config inline), the axes of the grid (dotted config keys and ``seed``), per-cell overrides and
exclusions::

    {
      "name": "synthetic_small",
      "base": "configurations/synthetic/conv_ae_naive.json",
      "axes": {"detector.name": ["conv_ae", "unet_ae"],
               "strategy.name": ["naive", "replay"],
               "seed": [0, 1]},
      "overrides": [{"when": {"strategy.name": "replay"}, "set": {"strategy.mem_size": 20}}],
      "exclude": [{"detector.name": "unet_ae", "strategy.name": "naive"}]
    }

A cell is one (config, seed): an ordinary run written to ``<output>/<sweep>/<run_name>/seed_<n>/``
by ``Run(...).execute()``, the same code path as ``main.py``. Its config is built as: the base,
then ``wandb.group = <sweep name>``, then each axis value in file order (an axis over
``detector.name`` or ``strategy.name`` starts that block afresh as ``{"name": value}``, because
parameters belong to one class; a whole block may also be an axis value), then every override
whose ``when`` matches the cell, then the command line's ``--set``. ``run_name`` is
``<detector>_<strategy>`` plus the values of the other axes, or the file's ``run_name`` template
(``"{detector.name}_{strategy.name}_e{training.epochs}"``).

A cell's state on disk decides what a sweep does with it: ``finished`` (``metrics.json`` with
every task completed: skipped), ``partial`` (some tasks or checkpoints: resumed from the last
checkpoint), ``failed`` (``error.txt``: retried, resuming when checkpoints exist), ``pending``,
``changed`` (finished with another config than the sweep now gives: left alone, reported; pass
``--overwrite``) and ``invalid`` (its config does not validate: reported, ``error.txt`` written).
"""

from __future__ import annotations

from clad.sweeps.cell import run_cell
from clad.sweeps.expansion import Cell, Sweep, expand
from clad.sweeps.jobs import CellJob, CellResult, SweepOutcome
from clad.sweeps.running import format_plan, run_sweep, summary_line
from clad.sweeps.spec import SweepSpec, load_sweep_spec
from clad.tracking.run_folders import CellState, disk_state

__all__ = [
    "Cell",
    "CellJob",
    "CellResult",
    "CellState",
    "Sweep",
    "SweepOutcome",
    "SweepSpec",
    "disk_state",
    "expand",
    "format_plan",
    "load_sweep_spec",
    "run_cell",
    "run_sweep",
    "summary_line",
]
