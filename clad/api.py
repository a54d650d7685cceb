"""The library face of clad: run a configuration, run a sweep, read back what a run wrote.

::

    import clad

    result = clad.run("configurations/synthetic/demo_patchcore.json", seed=0,
                      overrides={"training.device": "cpu"})
    result.matrices["image_auroc"]          # T x T, a row per training step, a column per task
    result.category_matrices["image_auroc"]  # T x C, a column per category
    result.summary["forgetting/image_auroc"]
    result.history[0]["epochs"]              # task 0's training, one record per epoch
    again = clad.load_run(result.folder)     # the same, read from the run folder

The command line (``python main.py``) is a thin layer over these functions: the same
configuration and seed give the same numbers either way. A configuration is a file path, a dict
with the same content, or a ``RunConfig`` from ``clad.config.load_config``; ``overrides`` are
dotted keys as ``--set`` takes them (``{"training.epochs": 1}``). Everything is checked before
any data is read (``clad.config.validate_config``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clad.config import RunConfig, load_config
from clad.errors import ConfigError

ConfigLike = str | Path | Mapping[str, Any] | RunConfig
"""A run configuration: a JSON file, a dict of its content, or a validated ``RunConfig``."""


@dataclass(frozen=True)
class RunResult:
    """What one run (one configuration, one seed) produced, as ``metrics.json`` records it.

    Attributes:
        folder: the run's folder (``<output>/<run_name>/seed_<n>``).
        run_name, seed, detector, strategy: which run.
        tasks: the tasks' names, in stream order.
        task_categories: each task's categories.
        categories: every category, in stream order (the columns of ``category_matrices``).
        learned: for each category, the index of the task that learns it.
        matrices: metric -> T x T rows: ``matrices[m][t][k]`` is metric m on task k after
            learning tasks 0..t (NaN: not available); a task's cell is its categories' mean.
        category_matrices: metric -> T x C rows, per category.
        summary: the continual-learning summary after the last completed task
            (``final_avg/m``, ``forgetting/m``, ``forgetting_pyclad/m``, ``bwt/m``, ...).
        costs: per-task costs (train seconds, inference images/s, MB) and totals.
        completed_tasks: tasks finished (all of them once the run is finished).
        config: the run's ``config.json`` (the settings, ``resolved`` and the seed).
        history: per learnt task, how it trained: ``epochs`` (one record per epoch:
            ``epoch``, ``step`` counted over the run, ``train_<term>``, ``val_loss``, ``lr``),
            ``epochs_trained``, ``stopped_early``, ``stopped_epoch`` and ``best_epoch``;
            empty epochs for a detector that trains none (memory banks), and an empty list
            for runs written before the history was kept.
    """

    folder: Path
    run_name: str
    seed: int
    detector: str
    strategy: str
    tasks: list[str]
    task_categories: list[list[str]]
    categories: list[str]
    learned: list[int]
    matrices: dict[str, list[list[float]]]
    category_matrices: dict[str, list[list[float]]]
    summary: dict[str, float]
    costs: dict[str, Any]
    completed_tasks: int
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether every task was learnt and evaluated."""
        return self.completed_tasks == len(self.tasks)

    def epochs(self, key: str = "train_loss") -> np.ndarray:
        """[E] ``key`` (``train_loss``, ``val_loss``, ``lr``, ...) of every trained epoch, in
        order over the run (NaN where an epoch lacks it)."""
        return np.array(
            [_float(epoch.get(key)) for entry in self.history for epoch in entry.get("epochs", [])],
            dtype=float,
        )

    def matrix(self, metric: str, per: str = "task") -> np.ndarray:
        """``matrices[metric]`` (``per="task"``) or ``category_matrices[metric]``
        (``per="category"``) as a float array, NaN where not available."""
        table = self.matrices if per == "task" else self.category_matrices
        if metric not in table:
            raise KeyError(f"{metric!r}: this run has {', '.join(table)}")
        return np.array(table[metric], dtype=float)

    @classmethod
    def from_record(cls, folder: Path, record: dict, config: dict | None = None) -> RunResult:
        """A result from a ``metrics.json`` record (records written before runs had category
        matrices read as one category per task)."""
        tasks = list(record["tasks"])
        return cls(
            folder=Path(folder),
            run_name=record["run_name"],
            seed=int(record["seed"]),
            detector=record["detector"],
            strategy=record["strategy"],
            tasks=tasks,
            task_categories=record.get("task_categories", [[name] for name in tasks]),
            categories=record.get("categories", tasks),
            learned=record.get("learned", list(range(len(tasks)))),
            matrices=_floats(record["matrices"]),
            category_matrices=_floats(record.get("category_matrices", record["matrices"])),
            summary={k: _float(v) for k, v in record["summary"].items()},
            costs=record["costs"],
            completed_tasks=int(record["completed_tasks"]),
            config=config or {},
            history=list(record.get("history", [])),
        )


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _floats(matrices: dict[str, list[list[Any]]]) -> dict[str, list[list[float]]]:
    """Matrices with JSON's nulls (NaN written out) back as NaN."""
    return {m: [[_float(v) for v in row] for row in rows] for m, rows in matrices.items()}


def _config(config: ConfigLike, overrides: Mapping[str, Any] | Sequence[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError(
                "overrides apply to a configuration file or dict; a RunConfig is already "
                "validated: load it with the overrides (clad.config.load_config)"
            )
        config.components  # noqa: B018  (validated: raises when it was not)
        return config
    return load_config(config, overrides)


def run(
    config: ConfigLike,
    seed: int = 0,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Run one configuration with one seed and return what it produced.

    Args:
        config: a run configuration file, a dict of its content, or a ``RunConfig``.
        seed: the run's seed (Python, NumPy, torch and every sampling step).
        overrides: dotted keys set on the configuration, ``{"training.epochs": 1}`` (or
            ``--set`` items, ``["training.epochs=1"]``).
        output: the output folder (default: the configuration's ``output.dir``); the run writes
            to ``<output>/<run_name>/seed_<seed>/``.
        resume: continue from the run folder's last checkpoint.
        overwrite: start again in a folder that holds a run (the old one is restored if this
            one fails).

    Raises:
        ConfigError: the configuration does not validate (nothing is read or written).
        clad.tracking.run_folders.RunExistsError: the folder holds a run and neither
            ``resume`` nor ``overwrite`` was given.
    """
    validated = _config(config, overrides)
    from clad.runner import Run  # the run's heavy imports once the config is valid

    engine = Run(validated, seed, None if output is None else str(output), resume, overwrite)
    record = engine.execute()
    from clad.tracking.files import read_json

    return RunResult.from_record(engine.dir, record, read_json(engine.dir / "config.json"))


def load_run(folder: str | Path, seed: int | None = None) -> RunResult:
    """What a run wrote: ``folder`` is a run's seed folder (``output/demo/seed_0``) or its run
    folder (``output/demo``) with ``seed`` (or holding a single seed).

    Raises:
        FileNotFoundError: naming the folder when it holds no ``metrics.json``, or the seeds
            there when ``seed`` is needed.
    """
    from clad.tracking.files import read_json

    path = Path(folder)
    if not (path / "metrics.json").is_file():
        seeds = sorted(p.name for p in path.glob("seed_*") if (p / "metrics.json").is_file())
        if seed is not None and f"seed_{seed}" in seeds:
            path = path / f"seed_{seed}"
        elif seed is None and len(seeds) == 1:
            path = path / seeds[0]
        else:
            where = f"seeds there: {', '.join(seeds)}" if seeds else "no run's metrics.json"
            raise FileNotFoundError(f"{path}: give a run's seed folder or seed= ({where})")
    record = read_json(path / "metrics.json")
    config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    return RunResult.from_record(path, record, config)


@dataclass(frozen=True)
class SweepResult:
    """What a sweep produced: its folder, the finished runs, the cells that failed or did not
    run, and the comparison report's files."""

    folder: Path
    runs: list[RunResult]
    failed: list[str]
    not_run: list[str]
    report: dict[str, Path]


def sweep(
    spec: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    output: str | Path | None = None,
    backend: str = "local",
    workers: int | None = None,
    overwrite: bool = False,
    report: bool = True,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    copy_back: bool = False,
    threads_per_run: int | None = None,
) -> SweepResult:
    """Run a sweep file's grid of configurations x seeds (finished cells skipped, interrupted
    ones resumed) and write the comparison report.

    Args:
        spec: the sweep file (``clad.sweeps`` describes its content).
        overrides: set on every cell's configuration, as ``run``'s.
        output: the output folder (default: the sweep file's ``output``, else the base config's).
        backend: ``"local"`` (``workers`` processes) or ``"ray"`` (``address``, resources per
            run, ``copy_back``).
        overwrite: start every cell again.
        report: write the comparison report at the end.
        threads_per_run: CPU threads of each run (a fixed count keeps results independent of
            how the sweep was spread).
    """
    from clad.sweeps import expand, load_sweep_spec, run_sweep

    items = (
        [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
        if isinstance(overrides, Mapping)
        else list(overrides or [])
    )
    path = Path(spec)
    plan = expand(load_sweep_spec(path), path, items, None if output is None else str(output))
    outcome = run_sweep(
        plan,
        backend=backend,
        workers=workers,
        address=address,
        cpus_per_run=cpus_per_run,
        gpus_per_run=gpus_per_run,
        copy_back=copy_back,
        overwrite=overwrite,
        threads_per_run=threads_per_run,
    )
    paths: dict[str, Path] = {}
    if report:
        from clad.tracking.comparison import write_comparison_report

        paths = write_comparison_report(plan.sweep_dir)
    runs = []
    for cell in plan.cells:
        folder = cell.folder(plan.sweep_dir)
        if (folder / "metrics.json").is_file():
            result = load_run(folder)
            if result.finished:
                runs.append(result)
    return SweepResult(
        folder=plan.sweep_dir,
        runs=runs,
        failed=[result.label for result in outcome.failures],
        not_run=[label for label, _ in outcome.not_run],
        report=paths,
    )
