"""Run plots: matrix heatmaps, per-task curves, ROC curves, score histograms, map overlays."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from clad.records import ScoredSet, Task  # noqa: E402
from clad.tracking.files import atomic_write  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def matrix_heatmap(matrix: np.ndarray, names: Sequence[str], title: str, path: Path) -> Path:
    """Rows: after training task t; columns: evaluated task k; NaN cells left blank."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="viridis")
    for t in range(n):
        for k in range(n):
            if not math.isnan(matrix[t, k]):
                colour = "white" if matrix[t, k] < 0.6 else "black"
                ax.text(
                    k, t, f"{matrix[t, k]:.2f}", ha="center", va="center", fontsize=7, color=colour
                )
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save(fig, path)


def task_curves(matrix: np.ndarray, names: Sequence[str], title: str, path: Path) -> Path:
    """One line per task: its metric after each training step (dashed before it is learnt)."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(n)
    for k, name in enumerate(names):
        line = ax.plot(steps[k:], matrix[k:, k], marker="o", label=name)[0]
        if k > 0:
            ax.plot(steps[: k + 1], matrix[: k + 1, k], ls=":", color=line.get_color(), alpha=0.5)
    ax.set_xticks(steps, names, rotation=45, ha="right")
    ax.set_xlabel("after training task")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save(fig, path)


def roc_curves(row: Sequence[ScoredSet], names: Sequence[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for scored, name in zip(row, names):
        if len(set(scored.labels.tolist())) == 2:
            fpr, tpr, _ = roc_curve(scored.labels, scored.image)
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("image ROC after the last task")
    ax.legend(fontsize=7)
    return save(fig, path)


def score_histograms(
    row: Sequence[ScoredSet], names: Sequence[str], thresholds: Sequence[float], path: Path
) -> Path:
    """One histogram per task of its test images' scores, normal and anomalous, with the task's
    validation threshold (dashed)."""
    cols = min(len(names), 5)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax, scored, name, threshold in zip(axes.flat, row, names, thresholds):
        bins = np.histogram_bin_edges(scored.image, bins=20)
        ax.hist(scored.image[scored.labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(scored.image[scored.labels == 1], bins=bins, alpha=0.6, label="anomalous")
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("image scores after the last task (dashed: validation threshold)")
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


def overlays(task: Task, scored: ScoredSet, count: int, folder: Path) -> list[Path]:
    """Image, ground truth and anomaly map for the first ``count`` anomalous test images."""
    if scored.maps is None or count == 0:
        return []
    picks = [int(i) for i in np.flatnonzero(scored.labels == 1)[:count]]
    low, high = np.quantile(scored.maps, 0.01), np.quantile(scored.maps, 0.999)
    written = []
    for i in picks:
        image, mask, _ = task.test[i]
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
        picture = displayable(image)
        axes[0].imshow(picture)
        axes[0].set_title(f"{task.name} #{i}", fontsize=8)
        axes[1].imshow(picture)
        if task.has_masks:
            axes[1].contour(mask[0].numpy(), levels=[0.5], colors="red", linewidths=0.8)
        axes[1].set_title("ground truth" if task.has_masks else "no mask", fontsize=8)
        axes[2].imshow(picture)
        axes[2].imshow(scored.maps[i], cmap="jet", alpha=0.5, vmin=low, vmax=high)
        axes[2].set_title(f"anomaly map (score {scored.image[i]:.3g})", fontsize=8)
        for ax in axes:
            ax.axis("off")
        written.append(save(fig, folder / f"{task.name}_{i:03d}.png"))
    return written


def write_run_plots(
    run_dir: Path,
    record: dict,
    last_row: Sequence[ScoredSet],
    tasks: Sequence[Task],
    overlays_per_task: int,
) -> list[Path]:
    """Every plot of an image run (heatmaps, curves, ROC, histograms, ``overlays_per_task``
    overlays per task); returns the files written."""
    names = record["tasks"]
    plots = run_dir / "plots"
    written = []
    for metric, values in record["matrices"].items():
        matrix = np.array(values, dtype=float)
        if np.isnan(matrix).all():
            continue
        written.append(matrix_heatmap(matrix, names, metric, plots / f"matrix_{metric}.png"))
        if metric in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_f1_val"):
            written.append(task_curves(matrix, names, metric, plots / f"curves_{metric}.png"))
    written.append(roc_curves(last_row, names, plots / "roc_final.png"))
    thresholds = record["thresholds"]["image"][-1]  # one per task
    written.append(score_histograms(last_row, names, thresholds, plots / "scores_final.png"))
    for task, scored in zip(tasks, last_row):
        written += overlays(task, scored, overlays_per_task, run_dir / "overlays")
    return written
