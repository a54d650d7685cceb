"""The report's plots: per-detector task curves, forgetting bars, the best cells' heatmaps, and
cost against quality."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clad.tracking.comparison.rows import RANK_KEY, Row


def write_plots(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Per-detector task curves, forgetting bars, the best cells' heatmaps, cost vs quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clad.tracking.plots import matrix_heatmap, save

    folder.mkdir(parents=True, exist_ok=True)
    finished = [r for r in rows if r.records]
    if not finished:
        return []
    produced = []
    detectors = list(dict.fromkeys(r.detector for r in finished))
    strategies = list(dict.fromkeys(r.strategy for r in finished))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(strategies)}

    for detector in detectors:
        group = [r for r in finished if r.detector == detector]
        fig, axes = plt.subplots(
            1, len(group), figsize=(4.2 * len(group), 3.6), squeeze=False, sharey=True
        )
        for ax, row in zip(axes[0], group):
            stack = np.array(
                [r["matrices"]["image_auroc"] for r in row.records.values()], dtype=float
            )  # [S, T, T]
            names = row.tasks
            steps = np.arange(len(names))
            with np.errstate(all="ignore"):
                mean, std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
            for k, name in enumerate(names):
                line = ax.plot(steps[k:], mean[k:, k], marker="o", ms=3, label=name)[0]
                ax.fill_between(
                    steps[k:],
                    mean[k:, k] - std[k:, k],
                    mean[k:, k] + std[k:, k],
                    color=line.get_color(),
                    alpha=0.2,
                    lw=0,
                )
            seen_avg = [np.nanmean(mean[t, : t + 1]) for t in steps]
            ax.plot(steps, seen_avg, color="black", lw=2, ls="--", label="average (seen)")
            ax.set_xticks(steps, names, rotation=45, ha="right", fontsize=7)
            ax.set_title(
                f"{detector} / {row.strategy}" + (f"\n{row.axes_text()}" if row.axes else ""),
                fontsize=9,
            )
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("image AUROC (mean ± std over seeds)")
        axes[0][-1].legend(fontsize=7, loc="lower left")
        fig.suptitle(f"{detector}: each task's image AUROC after every training step")
        produced.append(save(fig, folder / f"curves_{detector}.png"))

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(detectors) * len(strategies) / 2), 3.8))
    width = 0.8 / len(strategies)
    for j, strategy in enumerate(strategies):
        means, stds = [], []
        for detector in detectors:
            match = [r for r in finished if r.detector == detector and r.strategy == strategy]
            stat = match[0].stat("forgetting/image_auroc") if match else (math.nan, math.nan, 0)
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
    ax.set_ylabel("average forgetting (image AUROC)")
    ax.set_title("Forgetting per strategy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    produced.append(save(fig, folder / "forgetting.png"))

    for detector in detectors:
        best = [r for r in finished if r.detector == detector and r.best]
        for row in best:
            matrix = row.mean_matrix("image_auroc")
            assert matrix is not None  # a finished row has records
            title = (
                f"{detector}: {row.strategy}, highest test image AUROC (descriptive; mean of "
                f"{len(row.records)} seeds)"
            )
            suffix = f"_{row.run_name}" if len(best) > 1 else ""
            produced.append(
                matrix_heatmap(matrix, row.tasks, title, folder / f"heatmap_{detector}{suffix}.png")
            )

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    markers = "osD^v<>px*"
    for row in finished:
        quality = row.stat(RANK_KEY)
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
            ax.annotate(
                f"{row.detector}/{row.strategy}",
                (position, quality[0]),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training time over the stream (s, log)")
    axes[1].set_xlabel("trainable + pretrained weights + stored memory after the last task (MB)")
    axes[0].set_ylabel("final average image AUROC")
    handles = [plt.Line2D([], [], color=colours[s], marker="o", ls="", label=s) for s in strategies]
    handles += [
        plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=d)
        for i, d in enumerate(detectors)
    ]
    axes[1].legend(handles=handles, fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Cost vs quality (error bars: std over seeds)")
    produced.append(save(fig, folder / "cost_quality.png"))
    return produced
