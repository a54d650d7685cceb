"""The sweep comparison report on hand-made run records: table values equal the runs' metrics,
best cells, the gap to the joint bound, CLAD's published numbers, incomplete runs, the paired
bootstrap, and self-contained HTML."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from clad.cli import main
from clad.metrics import TASK_METRICS
from clad.metrics.continual import summarize
from clad.tracking.comparison import (
    CLAD_PUBLISHED,
    is_sweep_folder,
    load_rows,
    paired_bootstrap,
    strategy_pairs,
    write_comparison_report,
)
from clad.tracking.comparison.render import fmt_number

TASKS = ["stripes", "disc", "nut"]


def write_run(
    folder: Path,
    detector: str,
    strategy: str,
    seed: int,
    level: float,
    completed: int = 3,
    maps: bool = True,
) -> dict:
    """A metrics.json whose image AUROC matrix is ``level`` on the diagonal, decaying below it
    (so forgetting is positive), with every other metric a shifted copy; ``maps=False``: a
    detector without anomaly maps, whose pixel metrics are all NaN."""
    n = len(TASKS)
    base = np.full((n, n), np.nan)
    for t in range(completed):
        for k in range(n):
            base[t, k] = level - 0.05 * (t - k) if k <= t else 0.5
    matrices = {m: np.clip(base - 0.01 * i, 0, 1) for i, m in enumerate(TASK_METRICS)}
    if not maps:
        matrices = {m: v * np.nan if m.startswith("pixel") else v for m, v in matrices.items()}
    summary = summarize(matrices, upto=completed - 1)
    record = {
        "run_name": f"{detector}_{strategy}",
        "seed": seed,
        "detector": detector,
        "strategy": strategy,
        "tasks": TASKS,
        "completed_tasks": completed,
        "matrices": {
            m: [[None if math.isnan(v) else v for v in row] for row in mat.tolist()]
            for m, mat in matrices.items()
        },
        "summary": {k: None if math.isnan(v) else v for k, v in summary.items()},
        "costs": {
            "train_seconds": [10.0 + seed] * completed,
            "infer_images_per_s": [100.0] * completed,
            "trainable_mb": [5.0] * completed,
            "pretrained_mb": [3.0] * completed,
            "memory_mb": [0.5 if strategy != "naive" else 0.0] * completed,
            "peak_memory_mb": [900.0 + seed] * completed,
            "total_train_seconds": (10.0 + seed) * completed,
            "wall_seconds_this_session": 1.0,
        },
        "thresholds": {"image": [[0.1] * n] * completed, "pixel": [[0.1] * n] * completed},
    }
    run_dir = folder / f"{detector}_{strategy}" / f"seed_{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(record))
    (run_dir / "config.json").write_text(json.dumps({"dataset": {"name": "mvtec"}, "seed": seed}))
    if completed == n:
        (run_dir / "finished.json").write_text(json.dumps({"completed_tasks": n}))
    return record


LEVELS = {  # (detector, strategy) -> image AUROC on the diagonal, per seed
    ("patchcore", "cl"): [0.95, 0.93, 0.96],
    ("patchcore", "replay"): [0.90, 0.91, 0.88],
    ("patchcore", "multi_task"): [0.97, 0.98, 0.97],
}


@pytest.fixture()
def sweep_folder(tmp_path) -> Path:
    """patchcore x {cl, replay, multi_task} x 3 seeds finished; conv_ae naive with one seed
    finished, one failed and one never started; conv_ae replay invalid."""
    folder = tmp_path / "clad_like"
    cells = []
    for (detector, strategy), levels in LEVELS.items():
        for seed, level in enumerate(levels):
            write_run(folder, detector, strategy, seed, level)
            cells.append(
                {
                    "run_name": f"{detector}_{strategy}",
                    "seed": seed,
                    "detector": detector,
                    "strategy": strategy,
                    "axes": {"detector.name": detector, "strategy.name": strategy, "seed": seed},
                    "error": None,
                }
            )
    write_run(folder, "conv_ae", "naive", 0, 0.7)
    write_run(folder, "conv_ae", "naive", 1, 0.7, completed=1)
    (folder / "conv_ae_naive" / "seed_1" / "error.txt").write_text(
        "# conv_ae_naive/seed_1 failed\nTraceback (most recent call last):\n  x\n"
        "RuntimeError: CUDA out of memory\n"
    )
    for seed in range(3):
        cells.append(
            {
                "run_name": "conv_ae_naive",
                "seed": seed,
                "detector": "conv_ae",
                "strategy": "naive",
                "axes": {"seed": seed},
                "error": None,
            }
        )
        cells.append(
            {
                "run_name": "conv_ae_replay",
                "seed": seed,
                "detector": "conv_ae",
                "strategy": "replay",
                "axes": {"seed": seed},
                "error": "strategy.mem_size: Input should be greater than or equal to 1",
            }
        )
    (folder / "sweep.json").write_text(
        json.dumps({"name": "clad_like", "cells": cells, "spec": {"description": "A test sweep."}})
    )
    return folder


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    return {row["run_name"]: row for row in csv.DictReader(path.open())}


def records_of(folder: Path, run_name: str, seeds) -> list[dict]:
    return [
        json.loads((folder / run_name / f"seed_{s}" / "metrics.json").read_text()) for s in seeds
    ]


def test_table_values_equal_the_runs_metrics(sweep_folder):
    paths = write_comparison_report(sweep_folder)
    rows = read_csv(paths["csv"])
    assert list(rows) == [
        "patchcore_cl",
        "patchcore_replay",
        "patchcore_multi_task",
        "conv_ae_naive",
        "conv_ae_replay",
    ]
    for run_name in ("patchcore_cl", "patchcore_replay", "patchcore_multi_task"):
        records = records_of(sweep_folder, run_name, range(3))
        for key in (
            "final_avg/image_auroc",
            "final_avg/pixel_auroc",
            "final_avg/pixel_aupro",
            "final_avg/pixel_f1_val",
            "forgetting/image_auroc",
            "bwt/image_auroc",
        ):
            values = [r["summary"][key] for r in records]
            assert float(rows[run_name][f"{key}:mean"]) == pytest.approx(np.mean(values))
            assert float(rows[run_name][f"{key}:std"]) == pytest.approx(np.std(values, ddof=1))
        times = [r["costs"]["total_train_seconds"] for r in records]
        assert float(rows[run_name]["cost/total_train_seconds:mean"]) == pytest.approx(
            np.mean(times)
        )
        assert rows[run_name]["seeds_finished"] == "3"
    # best per detector among continual strategies: cl (0.947) beats replay; multi_task unranked
    assert [r for r in rows if rows[r]["best"] == "1"] == ["patchcore_cl", "conv_ae_naive"]
    cl = [
        r["summary"]["final_avg/image_auroc"]
        for r in records_of(sweep_folder, "patchcore_cl", range(3))
    ]
    joint = [
        r["summary"]["final_avg/image_auroc"]
        for r in records_of(sweep_folder, "patchcore_multi_task", range(3))
    ]
    assert float(rows["patchcore_cl"]["gap_to_joint/image_auroc"]) == pytest.approx(
        np.mean(cl) - np.mean(joint)
    )
    assert (
        float(rows["patchcore_cl"]["clad_image_auroc"])
        == CLAD_PUBLISHED[("patchcore", "cl")]["image_auroc"]
    )
    assert rows["patchcore_replay"]["clad_image_auroc"] == ""
    # incomplete rows are kept, with what happened to each seed
    assert rows["conv_ae_naive"]["seeds_finished"] == "1"
    assert rows["conv_ae_naive"]["state"] == "1/3 (1 failed, 1 pending)"
    assert rows["conv_ae_replay"]["state"] == "0/3 (3 invalid)"


def test_markdown_and_html_show_the_table_marks_and_missing_runs(sweep_folder):
    paths = write_comparison_report(sweep_folder)
    md = paths["md"].read_text()
    records = records_of(sweep_folder, "patchcore_cl", range(3))
    values = [r["summary"]["final_avg/image_auroc"] for r in records]
    line = next(row for row in md.splitlines() if row.startswith("| patchcore | cl"))
    assert "cl ★" in line
    assert f"**{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}**" in line
    assert "0.97 / 0.98 / 0.89 / 0.7%" in line  # CLAD's published PatchCore cl
    assert "| conv_ae | replay | 0/3 (3 invalid) | — |" in md
    assert "conv_ae_naive/seed_1: failed (RuntimeError: CUDA out of memory)" in md
    assert "conv_ae_naive/seed_2: pending" in md
    assert "conv_ae_replay/seed_0: invalid (strategy.mem_size" in md
    plots = sorted(p.name for p in (sweep_folder / "report_plots").glob("*.png"))
    assert plots == [
        "cost_quality.png",
        "curves_conv_ae.png",
        "curves_patchcore.png",
        "forgetting.png",
        "forgetting_heatmap.png",
        "heatmap_conv_ae.png",
        "heatmap_patchcore.png",
    ]
    page = paths["html"].read_text()
    assert page.count('src="data:image/png;base64,') == len(plots)
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page must not load files"
    assert '<tr class="best">' in page and "CUDA out of memory" in page


def test_paired_bootstrap_interval():
    mean, low, high = paired_bootstrap(np.array([0.02, 0.03, 0.025, 0.04]))
    assert mean == pytest.approx(0.02875)
    assert 0.02 <= low < mean < high <= 0.04
    assert paired_bootstrap(np.array([0.02, 0.03, 0.025, 0.04])) == (mean, low, high)
    assert paired_bootstrap(np.array([0.01, 0.01, 0.01])) == pytest.approx((0.01, 0.01, 0.01))
    one = paired_bootstrap(np.array([0.05]))
    assert one[0] == 0.05 and math.isnan(one[1]) and math.isnan(one[2])
    _, low, high = paired_bootstrap(np.array([-0.1, 0.1, -0.05, 0.05]))
    assert low < 0 < high


def test_pairs_compare_strategies_of_one_detector_seed_by_seed(sweep_folder):
    _, rows = load_rows(sweep_folder)
    pairs = strategy_pairs(rows)
    assert {(p.detector, p.a, p.b) for p in pairs} == {
        ("patchcore", "cl", "replay"),
        ("patchcore", "cl", "multi_task"),
        ("patchcore", "replay", "multi_task"),
    }
    pair = next(
        p for p in pairs if (p.a, p.b, p.metric) == ("cl", "replay", "final_avg/image_auroc")
    )
    cl = records_of(sweep_folder, "patchcore_cl", range(3))
    replay = records_of(sweep_folder, "patchcore_replay", range(3))
    diffs = [
        a["summary"]["final_avg/image_auroc"] - b["summary"]["final_avg/image_auroc"]
        for a, b in zip(cl, replay)
    ]
    assert pair.seeds == [0, 1, 2] and pair.mean == pytest.approx(np.mean(diffs))
    assert pair.significant  # cl is ahead on every seed
    md = (write_comparison_report(sweep_folder)["md"]).read_text()
    assert "| patchcore | cl vs replay | final_avg/image_auroc | 3 |" in md


def test_report_command_takes_a_sweep_or_a_run_folder(sweep_folder, capsys):
    assert is_sweep_folder(sweep_folder)
    assert not is_sweep_folder(sweep_folder / "patchcore_cl")
    assert main(["report", str(sweep_folder)]) == 0
    assert "| patchcore | cl ★ |" in capsys.readouterr().out
    assert (sweep_folder / "report.html").exists()
    assert main(["report", str(sweep_folder / "patchcore_cl")]) == 0
    run_report = (sweep_folder / "patchcore_cl" / "report.md").read_text()
    assert "| final_avg/image_auroc |" in run_report
    (sweep_folder / "sweep.json").unlink()  # without the manifest, the folders are the list
    assert is_sweep_folder(sweep_folder)
    _, rows = load_rows(sweep_folder)
    assert [r.run_name for r in rows] == [
        "conv_ae_naive",
        "patchcore_cl",
        "patchcore_multi_task",
        "patchcore_replay",
    ]
    assert main(["report", str(sweep_folder / "nothing_here")]) == 2


def test_best_marks_choose_by_a_validation_score_when_every_run_has_one(tmp_path):
    from clad.tracking.comparison.rows import SELECTION_KEY, ranking_key

    folder = tmp_path / "selected"
    for (detector, strategy), levels in LEVELS.items():
        for seed, level in enumerate(levels):
            record = write_run(folder, detector, strategy, seed, level)
            # a validation score that prefers replay, whose test AUROC is lower than cl's
            record["summary"][SELECTION_KEY] = 1.0 if strategy == "replay" else 0.0
            path = folder / f"{detector}_{strategy}" / f"seed_{seed}" / "metrics.json"
            path.write_text(json.dumps(record))
    _, rows = load_rows(folder)
    assert ranking_key(rows) == SELECTION_KEY
    assert [r.run_name for r in rows if r.best] == ["patchcore_replay"]
    paths = write_comparison_report(folder)
    assert "chosen on test results" in paths["md"].read_text()  # the note explains both cases


def test_dne_sits_beside_patchcore_cl_with_its_pixel_columns_not_available(tmp_path):
    folder = tmp_path / "cl_methods"
    cells = []
    for detector, levels in (("patchcore", [0.95, 0.93, 0.96]), ("dne", [0.90, 0.91, 0.89])):
        for seed, level in enumerate(levels):
            write_run(folder, detector, "cl", seed, level, maps=detector != "dne")
            cells.append(
                {
                    "run_name": f"{detector}_cl",
                    "seed": seed,
                    "detector": detector,
                    "strategy": "cl",
                    "axes": {"detector.name": detector, "seed": seed},
                    "error": None,
                }
            )
    (folder / "sweep.json").write_text(json.dumps({"name": "cl_methods", "cells": cells}))
    paths = write_comparison_report(folder)
    rows = read_csv(paths["csv"])
    assert list(rows) == ["patchcore_cl", "dne_cl"]
    image = [r["summary"]["final_avg/image_auroc"] for r in records_of(folder, "dne_cl", range(3))]
    assert float(rows["dne_cl"]["final_avg/image_auroc:mean"]) == pytest.approx(np.mean(image))
    assert rows["dne_cl"]["final_avg/pixel_auroc:mean"] in ("", "nan")
    assert math.isfinite(float(rows["patchcore_cl"]["final_avg/pixel_auroc:mean"]))
    md = paths["md"].read_text()
    dne_line = next(row for row in md.splitlines() if row.startswith("| dne | cl"))
    assert f"{np.mean(image):.3f}" in dne_line and "n/a" in dne_line
    assert any(row.startswith("| patchcore | cl") for row in md.splitlines())


def test_every_forgetting_definition_is_reported_with_its_source(sweep_folder):
    paths = write_comparison_report(sweep_folder)
    _, rows = load_rows(sweep_folder)
    by_name = {row.run_name: row for row in rows}
    cl, joint = by_name["patchcore_cl"], by_name["patchcore_multi_task"]
    expected = joint.stat("final_avg/image_auroc")[0] - cl.stat("final_avg/image_auroc")[0]
    assert cl.joint_gaps["forgetting_joint_gap/image_auroc"] == pytest.approx(expected)
    assert cl.joint_gaps["forgetting_joint_gap/image_auroc"] == pytest.approx(-cl.gap_to_joint)
    md = paths["md"].read_text()
    section = md.split("## Forgetting, as each paper defines it")[1]
    header = section.strip().splitlines()[0]
    for label in ("Chaudhry", "pyCLAD", "gap to joint", "CLAD relative"):
        assert label in header
    chaudhry = np.mean([r["summary"]["forgetting/image_auroc"] for r in cl.records.values()])
    pyclad = np.mean([r["summary"]["forgetting_pyclad/image_auroc"] for r in cl.records.values()])
    line = next(row for row in section.splitlines() if row.startswith("| patchcore | cl"))
    assert f"{chaudhry:.3f}" in line and f"{pyclad:.3f}" in line and f"{expected:.3f}" in line
    assert "UCAD" in section and "ReplayCAD" in section and "pyCLAD" in section
    assert "Forgetting, as each paper defines it" in paths["html"].read_text()


def test_the_report_says_what_ran_the_set_overrides_too(sweep_folder, tmp_path):
    from clad.sweeps import expand, load_sweep_spec
    from clad.sweeps.running import write_manifest
    from tests.paths import REPO

    spec_path = REPO / "configurations" / "sweeps" / "synthetic_small.json"
    plan = expand(load_sweep_spec(spec_path), spec_path, ["training.epochs=1"], str(tmp_path))
    write_manifest(plan)
    assert json.loads((plan.sweep_dir / "sweep.json").read_text())["overrides"] == [
        "training.epochs=1"
    ]
    manifest = json.loads((sweep_folder / "sweep.json").read_text())
    manifest["overrides"] = ["training.epochs=1"]
    manifest["spec"] = {"description": "two epochs each"}
    (sweep_folder / "sweep.json").write_text(json.dumps(manifest))
    for run_name, epochs in (("patchcore_cl", None), ("patchcore_replay", 1)):
        for seed in range(3):
            path = sweep_folder / run_name / f"seed_{seed}" / "config.json"
            config = json.loads(path.read_text())
            training = {"batch_size": 8} if epochs is None else {"epochs": epochs}
            config["resolved"] = {"training": training}
            path.write_text(json.dumps(config))
    paths = write_comparison_report(sweep_folder)
    md = paths["md"].read_text()
    assert "The sweep file's description: two epochs each" in md
    assert "Run with --set training.epochs=1" in md
    assert "- epochs: 1 (not used by patchcore_cl)" in md
    page = paths["html"].read_text()
    assert "Settings that ran" in page and "epochs: 1" in page
    tex = paths["tex"].read_text()
    assert "\\toprule" in tex and "cl $\\star$" in tex


def test_joint_training_saw_every_task_so_its_seen_average_is_every_task(tmp_path):
    from clad.tracking.comparison.figures import seen_average, task_forgetting

    joint = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    assert seen_average(joint, joint=True) == pytest.approx([0.8, 0.8, 0.8])
    assert seen_average(joint, joint=False) == pytest.approx([0.9, 0.85, 0.8])
    continual = np.array([[0.9, 0.5, 0.5], [0.7, 0.8, 0.5], [0.6, 0.75, 0.9]])
    assert task_forgetting(continual, joint=False)[:2] == pytest.approx([0.3, 0.05])
    assert math.isnan(task_forgetting(continual, joint=False)[2])
    # a joint model's best counts from the first row
    assert task_forgetting(continual, joint=True)[:2] == pytest.approx([0.3, 0.05])


def test_every_strategy_of_a_detector_shares_one_axis(sweep_folder, monkeypatch):
    import matplotlib.pyplot as plt

    from clad.tracking import plots
    from clad.tracking.comparison.figures import strategy_curves

    kept = []
    monkeypatch.setattr(plots, "save", lambda fig, path: kept.append(fig) or path)
    _, rows = load_rows(sweep_folder)
    group = [r for r in rows if r.detector == "patchcore" and r.records]
    strategy_curves("patchcore", group, sweep_folder / "x.png")
    fig = kept[0]
    assert len(fig.axes) == 1
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["cl", "replay", "multi_task: joint bound, every task seen"]
    joint = fig.axes[0].get_lines()[-1]
    assert joint.get_linestyle() == "--"
    plt.close(fig)


def write_audio_run(folder: Path, detector: str, strategy: str, level: float) -> dict:
    """A machine-sound run's metrics.json: AUC, pAUC and hmean matrices (no image metrics), AUC
    ``level`` on the diagonal, decaying below it, and the official score."""
    machines = ["fan", "pump", "bearing"]
    n = len(machines)
    auc = np.array(
        [[level - 0.05 * (t - k) if k <= t else 0.5 for k in range(n)] for t in range(n)]
    )
    matrices = {"auc": auc, "pauc": auc - 0.02, "hmean": auc - 0.03}
    summary = summarize(matrices, upto=n - 1)
    summary["official/hmean"] = level - 0.1
    record = {
        "run_name": f"{detector}_{strategy}",
        "seed": 0,
        "detector": detector,
        "strategy": strategy,
        "tasks": machines,
        "completed_tasks": n,
        "matrices": {m: v.tolist() for m, v in matrices.items()},
        "summary": summary,
        "costs": {
            "train_seconds": [10.0] * n,
            "infer_images_per_s": [50.0] * n,
            "trainable_mb": [0.5] * n,
            "pretrained_mb": [0.0] * n,
            "memory_mb": [0.0] * n,
            "peak_memory_mb": [900.0] * n,
            "total_train_seconds": 30.0,
            "wall_seconds_this_session": 1.0,
        },
        "thresholds": {"image": [[0.1] * n] * n, "pixel": [[None] * n] * n},
    }
    run_dir = folder / f"{detector}_{strategy}" / "seed_0"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(record))
    config = {"dataset": {"name": "synthetic_audio", "image_size": 64, "audio": {"n_mels": 32}}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "finished.json").write_text(json.dumps({"completed_tasks": n}))
    return record


def test_a_machine_sound_sweep_reports_auc_pauc_and_hmean(tmp_path):
    """Machine-sound runs have no image AUROC: the report ranks, tabulates and plots AUC (with
    pAUC, hmean and the official score beside it) instead, and a finished cell says its AUC."""
    from clad.sweeps.cell import final_message

    folder = tmp_path / "audio"
    levels = {("aegan", "naive"): 0.7, ("aegan", "replay"): 0.8, ("aegan", "multi_task"): 0.85}
    levels |= {("dcase_ae", "naive"): 0.75, ("dcase_ae", "multi_task"): 0.9}
    records = {f"{d}_{s}": write_audio_run(folder, d, s, level) for (d, s), level in levels.items()}
    paths = write_comparison_report(folder)
    rows = read_csv(paths["csv"])
    for run_name, record in records.items():
        for key in ("final_avg/auc", "final_avg/pauc", "final_avg/hmean", "official/hmean"):
            assert float(rows[run_name][f"{key}:mean"]) == pytest.approx(record["summary"][key])
    assert [r for r in rows if rows[r]["best"] == "1"] == ["aegan_replay", "dcase_ae_naive"]
    gap = records["aegan_replay"]["summary"]["final_avg/auc"]
    gap -= records["aegan_multi_task"]["summary"]["final_avg/auc"]
    assert float(rows["aegan_replay"]["gap_to_joint/auc"]) == pytest.approx(gap)
    text = paths["md"].read_text()
    assert "| AUC | pAUC | hmean | official score | forgetting (AUC) | BWT (AUC) |" in text
    assert "| Chaudhry (AUC) | pyCLAD (AUC) | gap to joint (AUC) |" in text
    assert "image AUROC" not in text and "image size" not in text and "mel bands: 32" in text
    plots = {p.name for p in (folder / "report_plots").glob("*.png")}
    assert {"curves_aegan.png", "curves_dcase_ae.png", "heatmap_aegan.png"} <= plots
    assert final_message(records["aegan_replay"]["summary"]).startswith("final avg AUC 0.")
    assert final_message({"final_avg/image_auroc": 0.9}) == "final avg image AUROC 0.900"


def test_routing_methods_get_a_routing_table_with_their_oracle_scores(tmp_path):
    """Runs that route (``routing/accuracy`` in their summary) are tabled with their routed
    and oracle-routed final average and forgetting; runs that do not route are left out."""
    folder = tmp_path / "routing"
    cells = []
    for detector, strategy in (("patchcore", "cl"), ("stfpm", "replay")):
        for seed in range(2):
            record = write_run(folder, detector, strategy, seed, 0.9 - 0.02 * seed)
            if detector == "patchcore":
                record["summary"]["routing/accuracy"] = 0.75 + 0.1 * seed
                record["summary"]["oracle/final_avg/image_auroc"] = 0.95
                record["summary"]["oracle/forgetting/image_auroc"] = 0.01
                path = folder / f"{detector}_{strategy}" / f"seed_{seed}" / "metrics.json"
                path.write_text(json.dumps(record))
            cells.append(
                {
                    "run_name": f"{detector}_{strategy}",
                    "seed": seed,
                    "detector": detector,
                    "strategy": strategy,
                    "axes": {"detector.name": detector, "seed": seed},
                    "error": None,
                }
            )
    (folder / "sweep.json").write_text(json.dumps({"name": "routing", "cells": cells}))
    paths = write_comparison_report(folder)
    md = paths["md"].read_text()
    section = md.split("## Routing", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| detector | strategy | routing accuracy |")
    assert len(lines) == 2 and lines[1].startswith("| patchcore | cl | 0.800 ± 0.071 |")
    finals = [
        r["summary"]["final_avg/image_auroc"] for r in records_of(folder, "patchcore_cl", range(2))
    ]
    assert fmt_number(float(np.mean(finals)) - 0.95, "score") in lines[1]
    assert "<h2>Routing</h2>" in paths["html"].read_text()


def test_a_sweep_without_routing_has_no_routing_section(sweep_folder):
    paths = write_comparison_report(sweep_folder)
    assert "## Routing" not in paths["md"].read_text()
    assert "<h2>Routing</h2>" not in paths["html"].read_text()
