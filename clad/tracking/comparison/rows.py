"""Loading a sweep folder into rows: one per configuration (run name), with its seeds' states and
the finished seeds' records; the best mark and the gap to the joint upper bound."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clad.tracking.files import read_json
from clad.tracking.report import record_values
from clad.tracking.run_folders import MANIFEST, disk_state

REFERENCE_STRATEGIES = ("multi_task", "cumulative", "single_model")
JOINT = "multi_task"

RANK_KEY = "final_avg/image_auroc"
SELECTION_KEY = "selection/score"
"""A validation-based score a run may record in its summary (higher is better); when every
finished run of a sweep has it, the best marks choose by it instead of by test results."""


@dataclass(frozen=True)
class MetricSet:
    """What a report ranks, tabulates and plots: the image metrics, or the machine-sound ones
    (``clad.metrics.audio``: AUC, pAUC and harmonic means per machine type)."""

    main: str
    """The matrix of the ranking, the gap to joint, the curves, heatmaps and forgetting plots."""
    label: str
    """``main``'s name in tables and on axes."""
    quality: tuple[tuple[str, str, str], ...]
    """The results table's columns: (summary key, label, number format)."""
    pairs: tuple[str, ...]
    """Summary keys of the paired strategy comparisons."""
    forgetting: tuple[tuple[str, str], ...]
    """The forgetting table's columns: (key, label)."""

    @property
    def rank_key(self) -> str:
        return f"final_avg/{self.main}"


IMAGE_METRICS = MetricSet(
    main="image_auroc",
    label="image AUROC",
    quality=(
        ("final_avg/image_auroc", "image AUROC", "score"),
        ("final_avg/pixel_auroc", "pixel AUROC", "score"),
        ("final_avg/pixel_aupro", "AUPRO", "score"),
        ("final_avg/pixel_f1_val", "pixel F1 (val thr.)", "score"),
        ("forgetting/image_auroc", "forgetting (image AUROC)", "score"),
        ("bwt/image_auroc", "BWT (image AUROC)", "score"),
    ),
    pairs=("final_avg/image_auroc", "final_avg/pixel_auroc", "forgetting/image_auroc"),
    forgetting=(
        ("forgetting/image_auroc", "Chaudhry (image AUROC)"),
        ("forgetting_pyclad/image_auroc", "pyCLAD (image AUROC)"),
        ("forgetting_joint_gap/image_auroc", "gap to joint (image AUROC)"),
        ("rel_forgetting/pixel_f1_val", "CLAD relative (pixel F1)"),
    ),
)
AUDIO_METRICS = MetricSet(
    main="auc",
    label="AUC",
    quality=(
        ("final_avg/auc", "AUC", "score"),
        ("final_avg/pauc", "pAUC", "score"),
        ("final_avg/hmean", "hmean", "score"),
        ("official/hmean", "official score", "score"),
        ("forgetting/auc", "forgetting (AUC)", "score"),
        ("bwt/auc", "BWT (AUC)", "score"),
    ),
    pairs=("final_avg/auc", "final_avg/pauc", "forgetting/auc"),
    forgetting=(
        ("forgetting/auc", "Chaudhry (AUC)"),
        ("forgetting_pyclad/auc", "pyCLAD (AUC)"),
        ("forgetting_joint_gap/auc", "gap to joint (AUC)"),
    ),
)


def metric_set(rows: Sequence[Row]) -> MetricSet:
    """``AUDIO_METRICS`` when the finished runs are machine-sound runs (their matrices hold
    ``auc`` and no ``image_auroc``), else ``IMAGE_METRICS``."""
    matrices = [record["matrices"] for r in rows for record in r.records.values()]
    if matrices and all("auc" in m and "image_auroc" not in m for m in matrices):
        return AUDIO_METRICS
    return IMAGE_METRICS


def ranking_key(rows: Sequence[Row]) -> str:
    """``SELECTION_KEY`` when every finished row's records hold it, else the final average of
    the main metric (``RANK_KEY`` for images, ``final_avg/auc`` for machine sounds: test
    results, so the marks are then descriptive, not a model selection)."""
    finished = [r for r in rows if r.records]
    if finished and all(
        all(SELECTION_KEY in record["summary"] for record in r.records.values()) for r in finished
    ):
        return SELECTION_KEY
    return metric_set(rows).rank_key


@dataclass
class Row:
    """One configuration of the sweep (a run name) and its seeds."""

    run_name: str
    detector: str
    strategy: str
    axes: dict[str, Any]
    seeds: list[int]
    states: dict[int, str] = field(default_factory=dict)
    details: dict[int, str] = field(default_factory=dict)
    records: dict[int, dict] = field(default_factory=dict)  # finished seeds only
    best: bool = False
    gap_to_joint: float = math.nan
    joint_gaps: dict[str, float] = field(default_factory=dict)
    """``forgetting_joint_gap/<metric>``: the same detector's joint (``multi_task``) final
    average minus this row's, per metric (ReplayCAD's "FM"); positive = below the joint bound."""

    def values(self, key: str) -> np.ndarray:
        """[n_finished] per-seed values of ``key`` (NaN where undefined), in seed order."""
        return np.array(
            [record_values(self.records[s]).get(key, math.nan) for s in sorted(self.records)],
            dtype=float,
        )

    def stat(self, key: str) -> tuple[float, float, int]:
        """(mean, std with ddof 1, n) over the finished seeds with a finite value."""
        values = self.values(key)
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else math.nan
        std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        return mean, std, int(finite.size)

    def mean_matrix(self, metric: str) -> np.ndarray | None:
        """[T, T] mean over finished seeds of a metric's matrix (None when no seed finished)."""
        if not self.records:
            return None
        stack = np.array(
            [np.array(r["matrices"][metric], dtype=float) for r in self.records.values()],
            dtype=float,
        )  # [S, T, T]
        with np.errstate(all="ignore"):
            return np.nanmean(stack, axis=0) if np.isfinite(stack).any() else stack[0]

    @property
    def tasks(self) -> list[str]:
        return next(iter(self.records.values()))["tasks"] if self.records else []

    @property
    def complete(self) -> bool:
        return len(self.records) == len(self.seeds)

    def state_text(self) -> str:
        finished = len(self.records)
        text = f"{finished}/{len(self.seeds)}"
        others: dict[str, int] = {}
        for seed in self.seeds:
            if seed not in self.records:
                others[self.states.get(seed, "pending")] = (
                    others.get(self.states.get(seed, "pending"), 0) + 1
                )
        if others:
            text += " (" + ", ".join(f"{n} {s}" for s, n in sorted(others.items())) + ")"
        return text

    def axes_text(self) -> str:
        return ", ".join(f"{k.split('.')[-1]}={_value_text(v)}" for k, v in self.axes.items())


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", json.dumps(value, sort_keys=True)))
    return str(value)


def is_sweep_folder(folder: Path) -> bool:
    """A sweep folder holds ``sweep.json`` or run folders (``*/seed_*/metrics.json``) and is not
    itself a run folder."""
    folder = Path(folder)
    if (folder / "sweep.json").is_file():
        return True
    if any(folder.glob("seed_*/metrics.json")):
        return False
    return any(folder.glob("*/seed_*/metrics.json"))


def load_rows(folder: Path) -> tuple[dict[str, Any], list[Row]]:
    """(manifest or {}, rows in sweep order): every expected run of ``sweep.json`` plus any run
    folder found on disk, with each seed's state and the finished seeds' records."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).is_file() else {}
    rows: dict[str, Row] = {}
    invalid: dict[tuple[str, int], str] = {}
    for cell in manifest.get("cells", []):
        row = rows.get(cell["run_name"])
        if row is None:
            axes = {k: v for k, v in cell["axes"].items() if k not in ("seed",)}
            row = rows[cell["run_name"]] = Row(
                cell["run_name"],
                cell["detector"],
                cell["strategy"],
                {
                    k: v
                    for k, v in axes.items()
                    if k not in ("detector.name", "strategy.name", "detector", "strategy")
                },
                [],
            )
        row.seeds.append(int(cell["seed"]))
        if cell.get("error"):
            invalid[(cell["run_name"], int(cell["seed"]))] = cell["error"].splitlines()[-1]
    for metrics in sorted(folder.glob("*/seed_*/metrics.json")):
        run_name, seed = metrics.parent.parent.name, int(metrics.parent.name.split("_")[1])
        if run_name not in rows:
            record = read_json(metrics)
            rows[run_name] = Row(run_name, record["detector"], record["strategy"], {}, [])
        if seed not in rows[run_name].seeds:
            rows[run_name].seeds.append(seed)
    if not rows:
        raise FileNotFoundError(
            f"{folder}: no sweep.json and no <run_name>/seed_<n>/metrics.json found; pass a sweep "
            "folder such as output/<sweep name>"
        )
    for row in rows.values():
        row.seeds.sort()
        for seed in row.seeds:
            run_dir = folder / row.run_name / f"seed_{seed}"
            if (row.run_name, seed) in invalid:
                row.states[seed], row.details[seed] = "invalid", invalid[(row.run_name, seed)]
                continue
            state = disk_state(run_dir)
            row.states[seed], row.details[seed] = state.state, state.detail
            if state.state == "finished":
                row.records[seed] = read_json(run_dir / "metrics.json")
    ordered = list(rows.values())
    _mark_best(ordered)
    _gap_to_joint(ordered)
    return manifest, ordered


def _mark_best(rows: Sequence[Row]) -> None:
    """Per detector (and other axes), the row with the highest mean ``ranking_key`` (the final
    test image AUROC, or AUC for machine sounds, unless the runs record a validation-based
    score) among continual
    strategies (reference bounds only when nothing else finished)."""
    key = ranking_key(rows)
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.detector, row.axes_text()), []).append(row)
    for group in groups.values():
        scored = [r for r in group if r.records and math.isfinite(r.stat(key)[0])]
        continual = [r for r in scored if r.strategy not in REFERENCE_STRATEGIES]
        candidates = continual or scored
        if candidates:
            best = max(
                candidates,
                key=lambda r: (
                    r.stat(key)[0],
                    np.nan_to_num(r.stat("final_avg/pixel_auroc")[0], nan=-1),
                ),
            )
            best.best = True


def _gap_to_joint(rows: Sequence[Row]) -> None:
    """Each row against its detector's joint row (same other axes): ``gap_to_joint`` on the
    ranking metric, ``A - A_joint``, and ``joint_gaps`` per metric, ``A_joint - A``."""
    key = metric_set(rows).rank_key
    joint = {(r.detector, r.axes_text()): r for r in rows if r.strategy == JOINT and r.records}
    for row in rows:
        reference = joint.get((row.detector, row.axes_text()))
        if reference is not None and row.records:
            row.gap_to_joint = row.stat(key)[0] - reference.stat(key)[0]
            for record in row.records.values():
                for key in record["summary"]:
                    if key.startswith("final_avg/"):
                        metric = key.removeprefix("final_avg/")
                        gap = reference.stat(key)[0] - row.stat(key)[0]
                        row.joint_gaps[f"forgetting_joint_gap/{metric}"] = gap
