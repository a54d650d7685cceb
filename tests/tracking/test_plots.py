"""Run plots say what they show: cells not learnt yet hatched and NaN cells labelled, dotted
curves explained in the legend, titles that do not overlap, overlays with the file's name, its
defect, a colour bar and the threshold; numbers never read -0.000."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from torch.utils.data import Subset

from clad.benchmarks.mvtec import ImageDataset
from clad.records import Sample, ScoredSet, Task
from clad.tracking import plots
from clad.tracking.text import fixed, latex_escape, latex_table


@pytest.fixture()
def kept(monkeypatch) -> list[plt.Figure]:
    """The figures the plot functions make, kept open instead of written."""
    figures: list[plt.Figure] = []

    def keep(fig: plt.Figure, path: Path) -> Path:
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for fig in figures:
        plt.close(fig)


def test_heatmap_hatches_cells_not_learnt_and_labels_missing_ones(kept, tmp_path):
    matrix = np.array([[0.9, 0.4, np.nan], [0.8, 0.7, 0.5], [0.7, 0.6, 0.9]])
    plots.matrix_heatmap(matrix, ["a", "b", "c"], "image_auroc", tmp_path / "m.png")
    ax = kept[0].axes[0]
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    corners = sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in hatched)
    assert corners == [(1, 0), (2, 0), (2, 1)]  # (column, row) above the diagonal
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n/a") == 1 and "0.90" in texts
    legend = [t.get_text() for t in kept[0].legends[0].get_texts()]
    assert legend == ["not learnt yet", "n/a: no value"]


def test_joint_training_has_nothing_not_learnt(kept, tmp_path):
    record = {"tasks": ["a", "b"], "strategy": "multi_task", "categories": ["a", "b"]}
    assert plots.learned_steps(record) == [0, 0]
    assert plots.learned_steps({**record, "strategy": "naive"}) == [0, 1]
    matrix = np.full((2, 2), 0.8)
    plots.matrix_heatmap(matrix, ["a", "b"], "x", tmp_path / "m.png", learned=[0, 0])
    assert not [p for p in kept[0].axes[0].patches if p.get_hatch()]


def test_curves_are_dotted_before_a_task_is_learnt_and_the_legend_says_so(kept, tmp_path):
    matrix = np.array([[0.9, 0.4], [0.8, 0.7]])
    plots.task_curves(matrix, ["a", "b"], "image_auroc", tmp_path / "c.png")
    ax = kept[0].axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 1 and list(dotted[0].get_ydata()) == [0.4, 0.7]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"a", "b", "after it is learnt", "before it is learnt"} <= set(labels)


def test_score_histograms_title_does_not_overlap_the_subplot_titles(kept, tmp_path):
    rng = np.random.default_rng(0)
    row = [ScoredSet(np.array([0, 0, 1, 1]), rng.random(4), None, None, 0.1) for _ in range(3)]
    plots.score_histograms(row, ["a", "b", "c"], [0.5, math.nan, 0.2], tmp_path / "s.png")
    fig = kept[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes[:3]:
        assert not title.overlaps(ax.title.get_window_extent(renderer))


def test_overlays_name_the_file_and_defect_with_a_colour_bar_and_the_threshold(
    kept, tmp_path, synthetic_root
):
    folder = synthetic_root / "disc" / "test"
    samples = [
        Sample(path=p, label=int(p.parent.name != "good"), defect=p.parent.name, category="disc")
        for p in sorted(folder.rglob("*.png"))
    ]
    masks = {
        s.path: synthetic_root / "disc" / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
        for s in samples
    }
    samples = [
        Sample(s.path, s.label, s.defect, s.category, masks[s.path] if s.label else None)
        for s in samples
    ]
    data = Subset(ImageDataset(samples, 32), list(range(len(samples)))[::-1])  # a wrapper
    assert [s.path for s in plots.samples_of(data)] == [s.path for s in samples][::-1]
    labels = np.array([samples[i].label for i in data.indices])
    maps = np.random.default_rng(0).random((len(samples), 32, 32))
    scored = ScoredSet(labels, maps.max(axis=(1, 2)), None, maps, 0.1)
    task = Task(0, "disc", data, data, data)
    written = plots.overlays(task, scored, 1, tmp_path, pixel_threshold=0.7, image_threshold=0.5)
    first = next(i for i in data.indices if samples[i].label == 1)
    sample = samples[first]
    assert written == [tmp_path / f"disc_{sample.defect}_{sample.path.stem}.png"]
    fig = kept[0]
    assert f"{sample.defect}/{sample.path.name}" in fig._suptitle.get_text()
    assert f"defect: {sample.defect}" in fig._suptitle.get_text()
    colour_bar = fig.axes[-1]
    assert len(fig.axes) == 4  # image, ground truth, map and its colour bar
    assert any(np.allclose(line.get_ydata(), 0.7) for line in colour_bar.get_lines())
    assert "0.7" in colour_bar.get_ylabel()


def test_history_curves_star_the_kept_epoch_and_cross_an_early_stop(kept, tmp_path):
    epochs = [
        {"epoch": 0, "step": 0, "train_loss": 1.0, "val_loss": 0.9, "lr": 0.1},
        {"epoch": 1, "step": 1, "train_loss": 0.8, "val_loss": 0.5, "lr": 0.1},
        {
            "epoch": 2,
            "step": 2,
            "train_loss": 0.7,
            "val_loss": 0.6,
            "lr": 0.05,
            "stopped_early": True,
            "best_epoch": 1,
        },
    ]
    history = [{"task": 0, "name": "a", "epochs": epochs}]
    assert plots._markers(epochs) == [(epochs[1], epochs[2])]
    plots.history_curves([history], tmp_path / "h.png")
    losses, rates = kept[0].axes[:2]
    stars = [line for line in losses.get_lines() if line.get_marker() == "*"]
    assert [tuple(line.get_xydata()[0]) for line in stars] == [(1.0, 0.5)]
    assert any(line.get_marker() == "X" for line in losses.get_lines())
    assert list(rates.get_lines()[0].get_ydata()) == [0.1, 0.1, 0.05]
    labels = [t.get_text() for t in losses.get_legend().get_texts()]
    assert {"training loss", "validation loss", "early stop"} <= set(labels)


def test_numbers_never_read_minus_zero_and_latex_is_escaped():
    assert fixed(-0.0001) == "0.000" and fixed(-0.0) == "0.000" and fixed(-0.01, 2) == "-0.01"
    assert fixed(float("nan")) == "n/a" and fixed(None, missing="") == ""
    assert latex_escape("final_avg 5% ± 0.1") == r"final\_avg 5\% $\pm$ 0.1"
    table = latex_table(["a_b", "x"], [["r", "1"]], "cap_tion", "tab:t")
    assert "\\toprule" in table and "\\midrule" in table and "\\bottomrule" in table
    assert "a\\_b & x \\\\" in table and "\\caption{cap\\_tion}" in table


def test_displayable_keeps_rgb():
    image = torch.rand(3, 4, 4)
    assert plots.displayable(image).shape == (4, 4, 3)
