"""Run plots of machine-sound runs: DCASE matrices, per-section bars, ROC curves, score
histograms, and spectrograms of anomalous test clips with their anomaly score over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clad.metrics.audio import AUDIO_TASK_METRICS
from clad.records import ScoredSet, Task
from clad.tracking.plots import (
    cost_bars,
    has_history,
    history_curves,
    learned_steps,
    matrix_heatmap,
    plt,
    roc_curves,
    save,
    score_histograms,
    task_curves,
)


def section_bars(record: dict, path: Path) -> Path:
    """Final-row AUC and pAUC of every section of every machine type, as grouped bars."""
    names = record["tasks"]
    last = record["completed_tasks"] - 1
    matrices = record["matrices"]
    sections = sorted({key.split("/", 1)[1] for key in matrices if key.startswith("auc/")})
    fig, axes = plt.subplots(
        1, len(names), figsize=(2.2 + 1.6 * len(names), 3.2), squeeze=False, sharey=True
    )
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        labels, aucs, paucs = [], [], []
        for section in sections:
            value = matrices[f"auc/{section}"][last][k]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            labels.append(section.replace("section_", "s").replace("id_", "id"))
            aucs.append(value)
            paucs.append(matrices[f"pauc/{section}"][last][k])
        positions = np.arange(len(labels))
        paucs = [np.nan if v is None else v for v in paucs]
        ax.bar(positions - 0.2, aucs, 0.4, label="AUC")
        ax.bar(positions + 0.2, paucs, 0.4, label="pAUC")
        ax.set_xticks(positions, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")
        ax.set_title(name, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("per-section AUC and pAUC (FPR <= 0.1) after the last task")
    return save(fig, path)


def spectrogram_curves(
    task: Task, scored: ScoredSet, count: int, seconds_per_frame: float, folder: Path
) -> list[Path]:
    """For the first ``count`` anomalous test clips: the log-mel spectrogram and, below it, the
    anomaly score per frame (the detector's map averaged over mel bands), against the mean curve
    of the task's normal test clips (grey)."""
    if count == 0:
        return []
    picks = [int(i) for i in np.flatnonzero(scored.labels == 1)[:count]]
    sections, domains = task.test_sections, task.test_domains
    assert sections is not None and domains is not None  # set for every machine-sound task
    curves = None if scored.maps is None else scored.maps[:, 0]  # [N, frames]
    normal_mean = None
    if curves is not None and (scored.labels == 0).any():
        normal_mean = curves[scored.labels == 0].mean(axis=0)
    written = []
    for i in picks:
        features, _, _ = task.test[i]
        spectrogram = features[0].numpy()  # [n_mels, frames]
        frames = spectrogram.shape[1]
        extent = (0.0, frames * seconds_per_frame, 0, spectrogram.shape[0])
        fig, (top, bottom) = plt.subplots(
            2, 1, figsize=(7, 4.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
        )
        top.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", extent=extent)
        domain = f", {domains[i]}" if domains[i] else ""
        top.set_title(
            f"{task.name} test clip #{i} ({sections[i]}{domain}), anomalous; "
            f"score {scored.image[i]:.4g}",
            fontsize=9,
        )
        top.set_ylabel("mel band")
        times = (np.arange(frames) + 0.5) * seconds_per_frame
        if curves is not None:
            bottom.plot(times, curves[i], color="crimson", lw=1.0, label="this clip")
            if normal_mean is not None:
                bottom.plot(
                    times,
                    normal_mean,
                    color="grey",
                    lw=0.8,
                    ls="--",
                    label="mean of normal test clips",
                )
            bottom.legend(fontsize=7, loc="upper right")
        else:
            bottom.text(
                0.5,
                0.5,
                "the detector gives no map",
                ha="center",
                va="center",
                transform=bottom.transAxes,
            )
        bottom.set_ylabel("score per frame")
        bottom.set_xlabel("time (s)")
        written.append(save(fig, folder / f"{task.name}_{i:03d}.png"))
    return written


def write_audio_run_plots(
    run_dir: Path,
    record: dict,
    last_row: Sequence[ScoredSet],
    tasks: Sequence[Task],
    overlays_per_task: int,
    seconds_per_frame: float,
) -> list[Path]:
    """Every plot of an audio run (``overlays_per_task`` spectrograms per task, time axes in
    ``seconds_per_frame``); returns the files written."""
    names = record["tasks"]
    plots = run_dir / "plots"
    written = []
    for metric in AUDIO_TASK_METRICS:
        if metric not in record["matrices"]:
            continue
        matrix = np.array(record["matrices"][metric], dtype=float)
        if np.isnan(matrix).all():
            continue
        learned = learned_steps(record)
        path = plots / f"matrix_{metric}.png"
        written.append(matrix_heatmap(matrix, names, metric, path, learned=learned))
        path = plots / f"curves_{metric}.png"
        written.append(task_curves(matrix, names, metric, path, learned=learned))
    if has_history(record.get("history")):
        written.append(history_curves([record["history"]], plots / "history.png"))
    written.append(cost_bars(record["costs"], names, plots / "costs.png"))
    written.append(section_bars(record, plots / "sections_final.png"))
    written.append(roc_curves(last_row, names, plots / "roc_final.png"))
    thresholds = record["thresholds"]["image"][-1]  # one per task
    written.append(score_histograms(last_row, names, thresholds, plots / "scores_final.png"))
    for task, scored in zip(tasks, last_row):
        written += spectrogram_curves(
            task, scored, overlays_per_task, seconds_per_frame, run_dir / "overlays"
        )
    return written
