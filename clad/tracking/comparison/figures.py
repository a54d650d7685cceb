"""The report's plots: per-detector task curves, forgetting bars, the best cells' heatmaps, and
cost against quality."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clad.tracking.comparison.rows import JOINT, Row, metric_set


def write_plots(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Per-detector task curves, forgetting bars, the best cells' heatmaps, cost vs quality, of
    image AUROC (or AUC for machine sounds: ``metric_set``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clad.tracking.plots import matrix_heatmap, save

    folder.mkdir(parents=True, exist_ok=True)
    finished = [r for r in rows if r.records]
    if not finished:
        return []
    produced = []
    metrics = metric_set(rows)
    main, label = metrics.main, metrics.label
    detectors = list(dict.fromkeys(r.detector for r in finished))
    strategies = list(dict.fromkeys(r.strategy for r in finished))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(strategies)}

    for detector in detectors:
        group = [r for r in finished if r.detector == detector]
        path = folder / f"curves_{detector}.png"
        produced.append(strategy_curves(detector, group, path, main, label))
    if len(finished[0].tasks) > 1:  # one task forgets nothing
        path = folder / "forgetting_heatmap.png"
        produced.append(forgetting_heatmap(finished, path, main, label))

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(detectors) * len(strategies) / 2), 3.8))
    width = 0.8 / len(strategies)
    for j, strategy in enumerate(strategies):
        means, stds = [], []
        for detector in detectors:
            match = [r for r in finished if r.detector == detector and r.strategy == strategy]
            stat = match[0].stat(f"forgetting/{main}") if match else (math.nan, math.nan, 0)
            means.append(stat[0])
            stds.append(0.0 if not math.isfinite(stat[1]) else stat[1])
        x = np.arange(len(detectors)) + (j - (len(strategies) - 1) / 2) * width
        ax.bar(
            x,
            np.nan_to_num(means),
            width,
            yerr=stds,
            capsize=3,
            label=strategy,
            color=colours[strategy],
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(detectors)), detectors)
    ax.set_ylabel(f"average forgetting ({label})")
    ax.set_title("Forgetting per strategy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    produced.append(save(fig, folder / "forgetting.png"))

    for detector in detectors:
        best = [r for r in finished if r.detector == detector and r.best]
        for row in best:
            matrix = row.mean_matrix(main)
            assert matrix is not None  # a finished row has records
            title = (
                f"{detector}: {row.strategy}, highest test {label} (descriptive; mean of "
                f"{len(row.records)} seeds)"
            )
            suffix = f"_{row.run_name}" if len(best) > 1 else ""
            path = folder / f"heatmap_{detector}{suffix}.png"
            learned = [0] * len(row.tasks) if is_joint(row) else None
            produced.append(matrix_heatmap(matrix, row.tasks, title, path, learned=learned))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    markers = "osD^v<>px*"
    for row in finished:
        quality = row.stat(metrics.rank_key)
        time_stat = row.stat("cost/total_train_seconds")
        size = row.values("cost/total_mb")  # [S]: trainable + pretrained + memory
        size_mean = float(np.nanmean(size)) if size.size else math.nan
        marker = markers[detectors.index(row.detector) % len(markers)]
        for ax, position in zip(axes, (time_stat[0], size_mean)):
            ax.errorbar(
                position,
                quality[0],
                yerr=np.nan_to_num(quality[1]),
                fmt=marker,
                color=colours[row.strategy],
                ms=7,
                capsize=3,
            )
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training time over the stream (s, log)")
    axes[1].set_xlabel("trainable + pretrained weights + stored memory after the last task (MB)")
    axes[0].set_ylabel(f"final average {label}")
    handles = [plt.Line2D([], [], color=colours[s], marker="o", ls="", label=s) for s in strategies]
    handles += [
        plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=d)
        for i, d in enumerate(detectors)
    ]
    fig.legend(handles=handles, fontsize=7, loc="outside right center")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Cost vs quality (colour: strategy, marker: detector; error bars: std over seeds)")
    produced.append(save(fig, folder / "cost_quality.png"))
    return produced


def is_joint(row: Row) -> bool:
    """Whether a row's model saw every task before the first row (joint training)."""
    record = next(iter(row.records.values()))
    return bool(record.get("sees_future_tasks", row.strategy == JOINT))


def seen_average(matrix: np.ndarray, joint: bool) -> np.ndarray:
    """[T] after each step t, the mean over the tasks seen by then (0..t; every task for joint
    training, which has seen them all from the first row), NaN cells left out."""
    n = matrix.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.array([np.nanmean(matrix[t, : n if joint else t + 1]) for t in range(n)])


def strategy_curves(
    detector: str,
    group: Sequence[Row],
    path: Path,
    metric: str = "image_auroc",
    metric_label: str = "image AUROC",
) -> Path:
    """Every strategy of one detector on one axis: the average ``metric`` over the tasks seen
    after each step (mean ± std over seeds); the joint bound (every task seen from the start)
    dashed."""
    import matplotlib.pyplot as plt

    from clad.tracking.plots import save

    fig, ax = plt.subplots(figsize=(8.5, 4.2), layout="constrained")
    names = group[0].tasks
    steps = np.arange(len(names))
    for i, row in enumerate(group):
        joint = is_joint(row)
        curves = np.array(
            [
                seen_average(np.array(r["matrices"][metric], dtype=float), joint)
                for r in row.records.values()
            ]
        )  # [S, T]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(curves, axis=0)
            std = np.nanstd(curves, axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        label = row.strategy + (f" ({row.axes_text()})" if row.axes else "")
        if joint:
            label += ": joint bound, every task seen"
        style = {"ls": "--", "color": "black"} if joint else {"color": plt.cm.tab10(i % 10)}
        line = ax.plot(steps, mean, marker="o", ms=4, lw=1.8, label=label, **style)[0]
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xticks(steps, names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("after training task")
    ax.set_ylabel(f"average {metric_label} over the tasks seen")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{detector}: every strategy after each step (mean ± std over seeds)", fontsize=10)
    return save(fig, path)


def task_forgetting(matrix: np.ndarray, joint: bool) -> np.ndarray:
    """[T] each task's forgetting after the last step: its best value from the step that
    learnt it (step 0 for joint training) to the step before the last, minus its last value
    (Chaudhry et al.); NaN for the last task, which had no later step."""
    n = matrix.shape[0]
    out = np.full(n, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(n - 1):
            earlier = matrix[0 if joint else k : n - 1, k]
            out[k] = np.nanmax(earlier) - matrix[n - 1, k]
    return out


def forgetting_heatmap(
    rows: Sequence[Row],
    path: Path,
    metric: str = "image_auroc",
    metric_label: str = "image AUROC",
) -> Path:
    """Tasks x configurations: each task's forgetting of ``metric`` after the last step
    (``task_forgetting``), mean over seeds; positive = forgotten."""
    from clad.tracking.plots import matrix_heatmap

    names = rows[0].tasks
    columns, values = [], []
    for row in rows:
        if row.tasks != names:
            continue
        joint = is_joint(row)
        stack = np.array(
            [
                task_forgetting(np.array(r["matrices"][metric], dtype=float), joint)
                for r in row.records.values()
            ]
        )  # [S, T]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values.append(np.nanmean(stack, axis=0))
        columns.append(
            f"{row.detector}/{row.strategy}" + (f" ({row.axes_text()})" if row.axes else "")
        )
    matrix = np.array(values).T[:-1]  # [T - 1, configurations]: the last task forgets nothing
    finite = matrix[np.isfinite(matrix)]
    bound = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
    return matrix_heatmap(
        matrix,
        names[:-1],
        f"forgetting of {metric_label} per task after the last step (mean over seeds; "
        "+ = forgotten)",
        path,
        columns=columns,
        learned=[0] * len(columns),
        value_range=(-bound, bound),
        cmap="RdBu_r",
        row_label="task",
        column_label="configuration",
    )
