"""Run plots: matrix heatmaps, per-task curves, training curves, costs, ROC curves, score
histograms and map overlays.

Conventions: a matrix's rows are training steps and its columns the tasks (or categories)
evaluated; a cell evaluated before its column was learnt (``t < learned[c]``) is hatched and
its curve dotted; a cell without a value (NaN: a metric the data cannot give) reads ``n/a`` on
grey.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from clad.records import Sample, ScoredSet, Task  # noqa: E402
from clad.tracking.files import atomic_write  # noqa: E402
from clad.tracking.text import fixed  # noqa: E402

MISSING_COLOUR = "#d9d9d9"  # NaN cells
CURVE_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_f1_val")


def save(fig: plt.Figure, path: Path) -> Path:
    # every figure uses the constrained layout, which fits its decorations in the figure: no
    # second draw for a tight bounding box
    atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=110))
    plt.close(fig)
    return path


def learned_steps(record: dict, per: str = "task") -> list[int]:
    """The step at which each column of ``record``'s task (``per="task"``) or category matrices
    is learnt: the diagonal, or every column at step 0 for joint training
    (``sees_future_tasks``; ``multi_task`` in records written before the key existed)."""
    n = len(record["tasks"]) if per == "task" else len(record.get("categories", record["tasks"]))
    joint = record.get("sees_future_tasks", record.get("strategy") == "multi_task")
    if joint:
        return [0] * n
    if per == "task":
        return list(range(n))
    return list(record.get("learned", range(n)))


def matrix_heatmap(
    matrix: np.ndarray,
    names: Sequence[str],
    title: str,
    path: Path,
    columns: Sequence[str] | None = None,
    learned: Sequence[int] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    std: np.ndarray | None = None,
    cmap: str = "viridis",
    row_label: str = "after training task",
    column_label: str | None = None,
) -> Path:
    """Rows: after training task t (``names``); columns: the evaluated tasks or categories
    (``columns``, default ``names``) learnt at step ``learned[c]`` (default: the diagonal).
    Cells before their column was learnt are hatched, NaN cells read ``n/a``; ``std`` [T, C]
    adds ``± std`` (over seeds) to each value. ``cmap``, ``row_label`` and ``column_label``
    serve other grids (the sweep's forgetting per task and configuration)."""
    columns = list(names if columns is None else columns)
    learned = list(range(len(columns)) if learned is None else learned)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.62 * cols, 1.3 + 0.5 * rows), layout="constrained")
    colours = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOUR)
    image = ax.imshow(
        np.ma.masked_invalid(matrix), vmin=value_range[0], vmax=value_range[1], cmap=colours
    )
    future, missing = False, bool(np.isnan(matrix).any())
    for t in range(rows):
        for c in range(cols):
            value = matrix[t, c]
            before = t < learned[c]
            future |= before
            if before:
                ax.add_patch(
                    Rectangle(
                        (c - 0.5, t - 0.5), 1, 1, fill=False, hatch="///", lw=0, ec="#ffffffaa"
                    )
                )
            if math.isnan(value):
                ax.text(c, t, "n/a", ha="center", va="center", fontsize=6.5, color="#555555")
                continue
            share = (value - value_range[0]) / max(value_range[1] - value_range[0], 1e-12)
            dark = share < 0.6 if cmap == "viridis" else abs(share - 0.5) > 0.3
            label = fixed(value, 2) + (f"\n±{fixed(std[t, c], 2)}" if std is not None else "")
            ax.text(
                c,
                t,
                label,
                ha="center",
                va="center",
                fontsize=6.5 if std is None else 5.5,
                color="white" if dark else "black",
                style="italic" if before else "normal",
            )
    ax.set_xticks(range(cols), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), names, fontsize=8)
    if column_label is None:
        column_label = "evaluated task" if columns == list(names) else "evaluated category"
    ax.set_xlabel(column_label)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    handles = []
    if future:
        handles.append(Patch(fc="#7f7f7f", hatch="///", ec="white", label="not learnt yet"))
    if missing:
        handles.append(Patch(fc=MISSING_COLOUR, ec="grey", label="n/a: no value"))
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles),
            fontsize=7,
            frameon=False,
        )
    return save(fig, path)


def task_curves(
    matrix: np.ndarray,
    names: Sequence[str],
    title: str,
    path: Path,
    columns: Sequence[str] | None = None,
    learned: Sequence[int] | None = None,
    std: np.ndarray | None = None,
) -> Path:
    """One line per column (task or category): its metric after each training step, solid from
    the step that learns it, dotted before; ``std`` [T, C] draws a band (over seeds)."""
    columns = list(names if columns is None else columns)
    learned = list(range(len(columns)) if learned is None else learned)
    steps = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 4), layout="constrained")
    before_any = False
    for c, name in enumerate(columns):
        k = learned[c]
        line = ax.plot(steps[k:], matrix[k:, c], marker="o", ms=4, label=name)[0]
        if std is not None:
            ax.fill_between(
                steps[k:],
                matrix[k:, c] - std[k:, c],
                matrix[k:, c] + std[k:, c],
                color=line.get_color(),
                alpha=0.15,
                lw=0,
            )
        if k > 0:
            before_any = True
            ax.plot(steps[: k + 1], matrix[: k + 1, c], ls=":", color=line.get_color(), alpha=0.6)
    ax.set_xticks(steps, names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("after training task")
    ax.set_ylabel(title)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    styles: list[Any] = [
        Line2D([], [], color="black", marker="o", ms=4, label="after it is learnt")
    ]
    if before_any:
        styles.append(Line2D([], [], color="black", ls=":", alpha=0.6, label="before it is learnt"))
    if std is not None:
        styles.append(Patch(fc="black", alpha=0.15, label="± std over seeds"))
    ax.legend(
        handles=[*handles, *styles],
        fontsize=7,
        ncol=1 + (len(handles) + len(styles)) // 12,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )
    return save(fig, path)


def has_history(history: Sequence[dict] | None) -> bool:
    """Whether a record's ``history`` holds any epoch (memory-bank detectors train none)."""
    return bool(history) and any(entry.get("epochs") for entry in history or [])


def history_curves(
    histories: Sequence[Sequence[dict]], path: Path, labels: Sequence[str] = ()
) -> Path:
    """Training curves over the run: training and validation loss, and the learning rate, per
    epoch against the run's global epoch (task boundaries dashed, named at the top); the best
    epoch of each training call (the weights kept) starred, an early stop crossed.
    ``histories``: one ``history`` per seed (``labels`` names them)."""
    fig, (losses, rates) = plt.subplots(
        2, 1, figsize=(9, 5.6), sharex=True, layout="constrained", height_ratios=[2.2, 1]
    )
    colours = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    stopped = False
    for i, history in enumerate(histories):
        suffix = f" ({labels[i]})" if len(histories) > 1 and i < len(labels) else ""
        colour = colours[i % 10]
        epochs = [e for entry in history for e in entry.get("epochs", [])]
        if not epochs:
            continue
        steps = [e["step"] for e in epochs]
        train = [e.get("train_loss", math.nan) for e in epochs]
        val = [e.get("val_loss", math.nan) for e in epochs]
        losses.plot(steps, train, color=colour, lw=1.2, label="training loss" + suffix)
        if not all(math.isnan(v) for v in val):
            losses.plot(steps, val, color=colour, ls="--", lw=1.2, label="validation loss" + suffix)
        lrs = [e.get("lr", math.nan) for e in epochs]
        rates.plot(steps, lrs, color=colour, lw=1.2, label="learning rate" + suffix)
        for best, stop in _markers(epochs):
            if best is not None:
                y = best.get("val_loss", best.get("train_loss", math.nan))
                losses.plot(best["step"], y, marker="*", ms=10, color=colour, ls="")
            if stop is not None:
                stopped = True
                y = stop.get("val_loss", stop.get("train_loss", math.nan))
                losses.plot(stop["step"], y, marker="X", ms=8, color="crimson", ls="")
    first = next((h for h in histories if has_history(h)), [])
    for entry in first:
        epochs = entry.get("epochs", [])
        if not epochs:
            continue
        start = epochs[0]["step"] - 0.5
        for ax in (losses, rates):
            ax.axvline(start, color="grey", ls=":", lw=0.8)
        losses.annotate(
            entry["name"],
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=7,
            va="top",
            color="dimgrey",
        )
    losses.set_ylabel("loss")
    positive = [v for line in losses.get_lines() for v in line.get_ydata() if np.isfinite(v)]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 50:
        losses.set_yscale("log")
    losses.grid(alpha=0.3)
    handles, _ = losses.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="*", ms=10, color="black", ls="", label="best epoch (weights kept)"),
        Line2D([], [], color="grey", ls=":", label="a task starts"),
    ]
    if stopped:
        handles.insert(
            -1, Line2D([], [], marker="X", ms=8, color="crimson", ls="", label="early stop")
        )
    losses.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    losses.set_title("training curves (per epoch, over the whole stream)", fontsize=10)
    rates.set_ylim(bottom=0)
    rates.set_ylabel("learning rate")
    rates.set_xlabel("epoch (counted over the whole stream)")
    rates.grid(alpha=0.3)
    return save(fig, path)


def _markers(epochs: Sequence[dict]) -> list[tuple[dict | None, dict | None]]:
    """For each training call (its epochs numbered from 0; its last record holding
    ``stopped_early`` and ``best_epoch``): the best epoch's record and, when patience ended
    the call, its last record."""
    found = []
    call: list[dict] = []
    for record in epochs:
        if record.get("epoch") == 0:
            call = []
        call.append(record)
        if "stopped_early" in record:
            best = next((r for r in call if r.get("epoch") == record.get("best_epoch")), None)
            found.append((best, record if record["stopped_early"] else None))
    return found


def cost_bars(
    costs: dict[str, Any], names: Sequence[str], path: Path, std: dict[str, Any] | None = None
) -> Path:
    """Per task: training seconds, the MB kept after it (trainable, pretrained, stored memory,
    stacked; peak memory as a line) and inference images/s; ``std`` adds error bars."""
    n = len(costs["train_seconds"])
    steps = np.arange(n)
    shown = list(names[:n])
    fig, (time_ax, size_ax, speed_ax) = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")

    def err(key: str) -> Any:
        return None if std is None else np.nan_to_num(np.asarray(std[key], dtype=float))

    time_ax.bar(steps, costs["train_seconds"], yerr=err("train_seconds"), color="tab:blue")
    time_ax.set_ylabel("seconds")
    time_ax.set_title("training time per task", fontsize=9)
    bottom = np.zeros(n)
    for kind, colour in (
        ("trainable", "tab:orange"),
        ("pretrained", "tab:grey"),
        ("memory", "tab:green"),
    ):
        values = np.asarray(costs.get(f"{kind}_mb") or [math.nan] * n, dtype=float)
        size_ax.bar(steps, np.nan_to_num(values), bottom=bottom, color=colour, label=f"{kind} MB")
        bottom += np.nan_to_num(values)
    size_ax.set_ylabel("MB")
    size_ax.set_title("kept after each task", fontsize=9)
    size_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    speed_ax.bar(
        steps, costs["infer_images_per_s"], yerr=err("infer_images_per_s"), color="tab:purple"
    )
    speed_ax.set_ylabel("images / s")
    speed_ax.set_title("inference speed", fontsize=9)
    for ax in (time_ax, size_ax, speed_ax):
        ax.set_xticks(steps, shown, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    peak = costs.get("peak_memory_mb")
    fig.suptitle(
        "costs" + (f" (peak memory {max(peak):.0f} MB)" if peak else ""),
        fontsize=10,
    )
    return save(fig, path)


def roc_curves(row: Sequence[ScoredSet], names: Sequence[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    for scored, name in zip(row, names):
        if len(set(scored.labels.tolist())) == 2:
            fpr, tpr, _ = roc_curve(scored.labels, scored.image)
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("image ROC after the last task", fontsize=10)
    ax.legend(fontsize=7)
    return save(fig, path)


def score_histograms(
    row: Sequence[ScoredSet], names: Sequence[str], thresholds: Sequence[float], path: Path
) -> Path:
    """One histogram per task of its test images' scores, normal and anomalous, with the task's
    validation threshold (dashed)."""
    cols = min(len(names), 5)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3 * cols, 2.5 * rows + 0.6), squeeze=False, layout="constrained"
    )
    for ax, scored, name, threshold in zip(axes.flat, row, names, thresholds):
        bins = np.histogram_bin_edges(scored.image, bins=20)
        ax.hist(scored.image[scored.labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(scored.image[scored.labels == 1], bins=bins, alpha=0.6, label="anomalous")
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", ls="--", lw=0.8, label="threshold")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("image scores after the last task (dashed: validation threshold)", fontsize=10)
    return save(fig, path)


def displayable(image: torch.Tensor) -> np.ndarray:
    """An input tensor as a picture: RGB for 3 or 5 channels (RGB first), else the first
    channel (the height map of depth inputs) scaled to [0, 1] in grey: [H, W, 3]."""
    if image.shape[0] in (3, 5):
        return image[:3].permute(1, 2, 0).clamp(0, 1).numpy()
    channel = image[0]
    low, high = channel.min(), channel.max()
    channel = (channel - low) / (high - low) if high > low else torch.zeros_like(channel)
    return channel[..., None].expand(-1, -1, 3).numpy()


def samples_of(data: Dataset) -> list[Sample] | None:
    """The ``Sample`` (file, defect) behind each item of a test set, in order, or None when it
    cannot be told: a reader's dataset keeps them in ``samples``; wrappers are looked through
    (a drift's ``data``, a subset's ``dataset`` and ``indices``, a one-part Avalanche dataset)."""
    for _ in range(8):  # wrappers are shallow
        samples = getattr(data, "samples", None)
        if isinstance(samples, list) and all(isinstance(s, Sample) for s in samples[:1]):
            return samples
        indices = getattr(data, "indices", None)
        inner = getattr(data, "dataset", None)
        if inner is not None and indices is not None:
            found = samples_of(inner)
            return None if found is None else [found[int(i)] for i in indices]
        parts = getattr(data, "_datasets", None)  # avalanche's AvalancheDataset
        wrapped = getattr(data, "data", None)  # a drift's
        if isinstance(parts, list) and len(parts) == 1:
            data = parts[0]
        elif isinstance(wrapped, Dataset):
            data = wrapped
        else:
            return None
    return None


def overlay(
    picture: np.ndarray,
    mask: np.ndarray | None,
    anomaly_map: np.ndarray,
    score: float,
    title: str,
    path: Path,
    value_range: tuple[float, float],
    threshold: float = math.nan,
    image_threshold: float = math.nan,
) -> Path:
    """Image, ground truth (red contour; left out when ``mask`` is None) and anomaly map with
    its colour bar; ``threshold`` (the pixel threshold) is a white contour on the map and a
    line on the colour bar, ``image_threshold`` is compared with the image score in the map's
    title."""
    panels = 2 if mask is None else 3
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(3.1 * panels, 3.3),
        layout="constrained",
        width_ratios=[1] * (panels - 1) + [1.22],
    )
    fig.suptitle(title, fontsize=9)
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=8)
    if mask is not None:
        axes[1].imshow(picture)
        if mask.any():
            axes[1].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        axes[1].set_title("ground truth (red)", fontsize=8)
    map_ax = axes[-1]
    map_ax.imshow(picture)
    if math.isfinite(threshold):  # the colour bar reaches the threshold, to mark it
        value_range = (min(value_range[0], threshold), max(value_range[1], threshold * 1.02))
    shown = map_ax.imshow(
        anomaly_map, cmap="jet", alpha=0.5, vmin=value_range[0], vmax=value_range[1]
    )
    verdict = ""
    if math.isfinite(image_threshold):
        verdict = ", above" if score > image_threshold else ", below"
        verdict += f" the image threshold {image_threshold:.3g}"
    map_ax.set_title(f"anomaly map (image score {score:.3g}{verdict})", fontsize=8)
    bar = fig.colorbar(shown, ax=map_ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    if math.isfinite(threshold):
        if (anomaly_map >= threshold).any() and (anomaly_map < threshold).any():
            map_ax.contour(anomaly_map, levels=[threshold], colors="white", linewidths=0.8)
        bar.ax.axhline(threshold, color="white", lw=2)
        bar.ax.axhline(threshold, color="black", lw=0.8, ls="--")
        bar.set_label(f"pixel threshold {threshold:.3g} (white contour)", fontsize=7)
    for ax in axes:
        ax.axis("off")
    return save(fig, path)


def map_range(maps: np.ndarray) -> tuple[float, float]:
    """The colour range of a task's maps: their 1% and 99.9% quantiles."""
    low, high = float(np.quantile(maps, 0.01)), float(np.quantile(maps, 0.999))
    return (low, high) if high > low else (low, low + 1e-12)


def overlays(
    task: Task,
    scored: ScoredSet,
    count: int,
    folder: Path,
    pixel_threshold: float = math.nan,
    image_threshold: float = math.nan,
) -> list[Path]:
    """Image, ground truth and anomaly map of the first ``count`` anomalous test images, named
    by file and defect (the test set's ``samples_of``; the index when unknown), with the
    thresholds set on validation normals."""
    if scored.maps is None or count == 0:
        return []
    picks = [int(i) for i in np.flatnonzero(scored.labels == 1)[:count]]
    value_range = map_range(scored.maps)
    samples = samples_of(task.test)
    written = []
    for i in picks:
        image, mask, _ = task.test[i]
        if samples is not None:
            sample = samples[i]
            where = f"{sample.path.parent.name}/{sample.path.name}"
            title = f"{task.name}: {where} (defect: {sample.defect})"
            stem = f"{task.name}_{sample.defect}_{sample.path.stem}"
        else:
            title, stem = f"{task.name}: test image #{i}", f"{task.name}_{i:03d}"
        written.append(
            overlay(
                displayable(image),
                mask[0].numpy() if task.has_masks else None,
                scored.maps[i],
                float(scored.image[i]),
                title,
                folder / f"{stem}.png",
                value_range,
                pixel_threshold,
                image_threshold,
            )
        )
    return written


def record_plots(record: dict, folder: Path) -> list[Path]:
    """The plots a ``metrics.json`` record alone gives (no scores needed): heatmaps of every
    matrix (task; category, when a task holds several; oracle; routing), per-task curves, the
    training curves (when anything trained epochs) and the costs. Written to ``folder``."""
    names = record["tasks"]
    written = []
    task_learned = learned_steps(record)
    for metric, values in record["matrices"].items():
        matrix = np.array(values, dtype=float)
        if np.isnan(matrix).all():
            continue
        path = folder / f"matrix_{metric}.png"
        written.append(matrix_heatmap(matrix, names, metric, path, learned=task_learned))
        if metric in CURVE_METRICS:
            path = folder / f"curves_{metric}.png"
            written.append(task_curves(matrix, names, metric, path, learned=task_learned))
    categories = record.get("categories", names)
    if len(categories) > len(names):
        learned = learned_steps(record, "category")
        for metric, values in record["category_matrices"].items():
            matrix = np.array(values, dtype=float)
            if np.isnan(matrix).all():
                continue
            title = f"{metric}, per category"
            path = folder / f"matrix_categories_{metric}.png"
            written.append(matrix_heatmap(matrix, names, title, path, categories, learned))
            if metric in CURVE_METRICS:
                path = folder / f"curves_categories_{metric}.png"
                written.append(task_curves(matrix, names, title, path, categories, learned))
    if record.get("routing") is not None:
        matrix = np.array(record["routing"], dtype=float)
        title = "routing: share of each category's test images sent to its own task's part"
        learned = learned_steps(record, "category")
        written.append(
            matrix_heatmap(matrix, names, title, folder / "routing.png", categories, learned)
        )
        for metric, values in record.get("oracle_matrices", {}).items():
            matrix = np.array(values, dtype=float)
            if metric in CURVE_METRICS and not np.isnan(matrix).all():
                title = f"{metric}, each category scored by its own task's part (oracle)"
                path = folder / f"matrix_oracle_{metric}.png"
                written.append(matrix_heatmap(matrix, names, title, path, learned=task_learned))
    if has_history(record.get("history")):
        written.append(history_curves([record["history"]], folder / "history.png"))
    written.append(cost_bars(record["costs"], names, folder / "costs.png"))
    return written


def write_run_plots(
    run_dir: Path,
    record: dict,
    last_row: Sequence[ScoredSet],
    tasks: Sequence[Task],
    overlays_per_task: int,
) -> list[Path]:
    """Every plot of an image run (``record_plots``, ROC, histograms, ``overlays_per_task``
    overlays per task or category with its task's thresholds); returns the files written.
    ``tasks`` are the scored sets' tasks (one per category: ``clad.runner.categories_of``)."""
    names = [task.name for task in tasks]
    plots = run_dir / "plots"
    written = record_plots(record, plots)
    written.append(roc_curves(last_row, names, plots / "roc_final.png"))
    steps = record.get("learned", list(range(len(tasks))))
    image_thresholds = record["thresholds"]["image"][-1]  # one per task
    pixel_thresholds = record["thresholds"]["pixel"][-1]
    per_part = [_finite(image_thresholds[k]) for k in steps]
    written.append(score_histograms(last_row, names, per_part, plots / "scores_final.png"))
    for c, (task, scored) in enumerate(zip(tasks, last_row)):
        k = steps[c]
        written += overlays(
            task,
            scored,
            overlays_per_task,
            run_dir / "overlays",
            _finite(pixel_thresholds[k]),
            _finite(image_thresholds[k]),
        )
    return written


def _finite(value: float | None) -> float:
    return math.nan if value is None else float(value)
