"""Aggregate the seeds of a run folder: mean and std of every summary metric and cost."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from clad.tracking.files import atomic_write, read_json, write_csv


def load_seed_records(run_dir: Path) -> list[dict]:
    paths = sorted(run_dir.glob("seed_*/metrics.json"))
    if not paths:
        raise FileNotFoundError(
            f"{run_dir}: no seed_<n>/metrics.json found; pass a run folder such as "
            "output/<run_name>"
        )
    return [read_json(p) for p in paths]


def record_values(record: dict) -> dict[str, float]:
    """One seed's summary values plus its costs: ``cost/total_train_seconds``,
    ``cost/infer_images_per_s`` (mean over tasks), ``cost/trainable_mb``,
    ``cost/pretrained_mb`` and ``cost/memory_mb`` (after the last task; see
    ``clad.runner.COST_KEYS``) and their sum ``cost/total_mb``, ``cost/peak_memory_mb`` (max).
    Missing values (records written before a cost existed) are NaN."""
    rows = dict(record["summary"])
    costs = record["costs"]
    rows["cost/total_train_seconds"] = costs["total_train_seconds"]
    rows["cost/infer_images_per_s"] = float(np.mean(costs["infer_images_per_s"]))
    for kind in ("trainable", "pretrained", "memory"):
        values = costs.get(f"{kind}_mb")
        rows[f"cost/{kind}_mb"] = values[-1] if values else math.nan
    rows["cost/total_mb"] = sum(rows[f"cost/{k}_mb"] for k in ("trainable", "pretrained", "memory"))
    rows["cost/peak_memory_mb"] = max(costs["peak_memory_mb"])
    return {k: math.nan if v is None else float(v) for k, v in rows.items()}


def aggregate(records: list[dict]) -> dict[str, dict[str, float]]:
    """Summary key -> {mean, std (ddof 1; NaN for one seed), n} over seeds; costs included."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record_values(record).items():
            values.setdefault(key, []).append(value)
    out = {}
    for key, vals in values.items():
        arr = np.array(vals, dtype=float)
        finite = arr[np.isfinite(arr)]
        out[key] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size),
        }
    return out


def write_run_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``report.csv`` in ``run_dir``; return the Markdown path."""
    run_dir = Path(run_dir)
    records = load_seed_records(run_dir)
    table = aggregate(records)
    seeds = [r["seed"] for r in records]
    incomplete = [r["seed"] for r in records if r["completed_tasks"] < len(r["tasks"])]
    lines = [
        f"# {records[0]['run_name']}",
        "",
        f"Detector `{records[0]['detector']}`, strategy `{records[0]['strategy']}`, "
        f"tasks: {', '.join(records[0]['tasks'])}; seeds {seeds}.",
    ]
    if incomplete:
        lines.append(f"\n**Incomplete seeds** (not all tasks finished): {incomplete}")
    lines += ["", "| metric | mean | std | seeds |", "|---|---:|---:|---:|"]
    for key, row in table.items():
        std = "" if math.isnan(row["std"]) else f"{row['std']:.4f}"
        mean = "n/a" if math.isnan(row["mean"]) else f"{row['mean']:.4f}"
        lines.append(f"| {key} | {mean} | {std} | {row['n']} |")
    md = run_dir / "report.md"
    atomic_write(md, lambda h: h.write(("\n".join(lines) + "\n").encode()))
    write_csv(
        run_dir / "report.csv",
        ["metric", "mean", "std", "seeds"],
        [[k, v["mean"], v["std"], v["n"]] for k, v in table.items()],
    )
    return md
