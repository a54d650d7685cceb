"""The report of one seed and of a run's seeds: the summary by measure and metric, each task's
training, the costs, the plots embedded in one self-contained page, and a LaTeX table."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from clad.cli import main
from clad.metrics import TASK_METRICS
from clad.metrics.continual import summarize
from clad.tracking.report import write_run_report

TASKS = ["stripes", "disc+nut"]
CATEGORIES = ["stripes", "disc", "nut"]
LEARNED = [0, 1, 1]


def history(seed: int) -> list[dict]:
    """Two tasks of three epochs; the second stopped early, keeping epoch 1."""
    entries, step = [], 0
    for t, name in enumerate(TASKS):
        epochs = []
        for e in range(3):
            record = {
                "epoch": e,
                "train_loss": 1.0 / (e + 1) + seed,
                "val_loss": [0.9, 0.5, 0.6][e],
                "lr": 0.01,
                "step": step,
            }
            step += 1
            epochs.append(record)
        epochs[-1].update({"stopped_early": t == 1, "best_epoch": 1})
        entries.append(
            {
                "task": t,
                "name": name,
                "epochs": epochs,
                "epochs_trained": 3,
                "stopped_early": t == 1,
                "stopped_epoch": 2 if t == 1 else None,
                "best_epoch": 1,
            }
        )
    return entries


def write_seed(folder: Path, seed: int, level: float) -> dict:
    """A finished seed of a 2-task run whose second task holds two categories."""
    category = np.array(
        [[level, 0.5, 0.45], [level - 0.1, level, level - 0.02]], dtype=float
    )  # [T, C]
    task = np.stack([category[:, 0], category[:, 1:].mean(axis=1)], axis=1)  # [T, T]
    matrices = {m: task - 0.01 * i for i, m in enumerate(TASK_METRICS)}
    categories = {m: category - 0.01 * i for i, m in enumerate(TASK_METRICS)}
    matrices["pixel_aupro"] = task * np.nan  # a metric without any value
    categories["pixel_aupro"] = category * np.nan
    summary = summarize(matrices, upto=1, category_matrices=categories, learned=np.array(LEARNED))
    record = {
        "run_name": "demo",
        "seed": seed,
        "detector": "conv_ae",
        "strategy": "replay",
        "tasks": TASKS,
        "task_categories": [["stripes"], ["disc", "nut"]],
        "categories": CATEGORIES,
        "learned": LEARNED,
        "completed_tasks": 2,
        "sees_future_tasks": False,
        "matrices": {m: v.tolist() for m, v in matrices.items()},
        "category_matrices": {m: v.tolist() for m, v in categories.items()},
        "summary": summary,
        "costs": {
            "train_seconds": [1.0 + seed, 2.0],
            "infer_images_per_s": [100.0, 90.0],
            "trainable_mb": [5.0, 5.0],
            "pretrained_mb": [0.0, 0.0],
            "memory_mb": [0.1, 0.2],
            "peak_memory_mb": [800.0, 810.0],
            "total_train_seconds": 3.0 + seed,
            "wall_seconds_this_session": 4.0,
        },
        "thresholds": {"image": [[0.1, 0.1]] * 2, "pixel": [[0.2, 0.2]] * 2},
        "history": history(seed),
    }
    seed_dir = folder / f"seed_{seed}"
    seed_dir.mkdir(parents=True)
    text = json.dumps(record).replace("NaN", "null")
    (seed_dir / "metrics.json").write_text(text)
    config = {
        "dataset": {"name": "synthetic", "root": "data/x", "image_size": 32},
        "resolved": {
            "detector": {"name": "conv_ae"},
            "strategy": {"name": "replay", "mem_size": 6},
            "training": {"epochs": 3, "batch_size": 8, "lr": 0.01},
        },
        "evaluation": {"threshold_quantile": 0.99},
        "seed": seed,
    }
    (seed_dir / "config.json").write_text(json.dumps(config))
    return json.loads(text)


def embedded_only(page: str) -> None:
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page must not load files"


def test_a_seed_report_has_the_summary_training_costs_plots_and_latex(tmp_path):
    record = write_seed(tmp_path / "demo", 0, 0.9)
    folder = tmp_path / "demo" / "seed_0"
    md = write_run_report(folder).read_text()
    final = record["summary"]["final_avg/image_auroc"]
    line = next(row for row in md.splitlines() if row.startswith("| final average |"))
    assert f"{final:.3f}" in line
    assert "AUPRO" not in md.split("## Summary")[1].split("##")[0]  # no value: no column
    assert "| forgetting (pyCLAD) |" in md and "| BWT |" in md
    assert "epochs 3, batch_size 8, lr 0.01" in md  # the settings that ran
    training = md.split("## Training")[1].split("##")[0]
    assert "| disc+nut | 3 | epoch 2 | 1 |" in training and "| stripes | 3 | — | 1 |" in training
    last = md.split("## After the last task")[1].split("##")[0]
    assert "|   disc |" in last and "|   nut |" in last  # a task's categories under it
    for name in (
        "matrix_image_auroc.png",
        "matrix_categories_image_auroc.png",
        "curves_image_auroc.png",
        "history.png",
        "costs.png",
    ):
        assert (folder / "plots" / name).stat().st_size > 1000
        assert f"(plots/{name})" in md
    page = (folder / "report.html").read_text()
    embedded_only(page)
    assert page.count("data:image/png;base64,") == len(list((folder / "plots").glob("*.png")))
    tex = (folder / "report.tex").read_text()
    assert "\\toprule" in tex and "final average &" in tex and f"{final:.3f}" in tex
    assert "\\label{tab:demo}" in tex


def test_a_run_folder_aggregates_its_seeds_with_the_same_pieces(tmp_path, capsys):
    records = [write_seed(tmp_path / "demo", s, level) for s, level in ((0, 0.9), (1, 0.8))]
    assert main(["report", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "| final average |" in printed and "report.html" in printed
    md = (tmp_path / "demo" / "report.md").read_text()
    values = [r["summary"]["final_avg/image_auroc"] for r in records]
    expected = f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    assert expected in next(row for row in md.splitlines() if row.startswith("| final average"))
    row = next(line for line in md.splitlines() if line.startswith("| final_avg/image_auroc |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert float(cells[1]) == pytest.approx(np.mean(values), abs=1e-4)
    assert cells[3] == "2"
    plots = sorted(p.name for p in (tmp_path / "demo" / "report_plots").glob("*.png"))
    assert {"matrix_image_auroc.png", "curves_image_auroc.png", "history.png", "costs.png"} <= set(
        plots
    )
    page = (tmp_path / "demo" / "report.html").read_text()
    embedded_only(page)
    assert "mean $\\pm$ std over 2 seeds" in (tmp_path / "demo" / "report.tex").read_text()


def test_a_run_without_plots_still_gets_its_tables(tmp_path):
    write_seed(tmp_path / "demo", 0, 0.9)
    folder = tmp_path / "demo" / "seed_0"
    write_run_report(folder, plots=False)
    assert not (folder / "plots").exists()
    assert "data:image" not in (folder / "report.html").read_text()
    assert math.isfinite(float((folder / "report.csv").read_text().splitlines()[1].split(",")[1]))


def test_markdown_tables_align_names_left_and_numbers_right():
    from clad.tracking.text import markdown_table

    lines = markdown_table(["task", "image AUROC", "pixel AUROC"], [["disc", "0.900", "n/a"]])
    assert lines == [
        "| task | image AUROC | pixel AUROC |",
        "|---|---:|---:|",
        "| disc | 0.900 | n/a |",
    ]
    assert markdown_table(["detector", "strategy", "x"], [], text_columns=2)[1] == "|---|---|---:|"
