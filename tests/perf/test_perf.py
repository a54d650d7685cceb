"""The benchmark commands' own machinery, at toy sizes (their numbers are not asserted)."""

from __future__ import annotations

import json

from clad.perf.commands import main as perf_main
from clad.perf.train import training_throughput


def test_cl_scaling_keeps_the_bank_within_the_budget_and_lets_it_grow_without(tmp_path):
    out = tmp_path / "rows.json"
    perf_main(
        [
            "cl-scaling",
            "--tasks",
            "3",
            "--mem-size-cl",
            "10",
            "--image-size",
            "32",
            "--n-train",
            "4",
            "--backbone",
            "resnet18",
            "--weights",
            "none",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())
    budgeted = [r["bank_rows"] for r in rows if r["variant"] == "cl"]
    unbounded = [r["bank_rows"] for r in rows if r["variant"] == "no budget"]
    assert len(budgeted) == len(unbounded) == 3
    assert budgeted == [6, 10, 10]  # 4 images x 4x4 patches x 10 %, then the budget
    assert unbounded == [6, 12, 18]
    assert all(r["infer_images_per_s"] > 0 and r["learn_s"] > 0 for r in rows)


def test_training_throughput_feeds_depth_inputs_to_detectors_that_take_them():
    row = training_throughput(
        "ast",
        {"input_mode": "rgb+depth", "weights": "none", "student_hidden": 8, "student_blocks": 1},
        image_size=32,
        n_images=4,
        epochs=1,
        batch_size=4,
    )
    assert row["detector"] == "ast (rgb+depth)" and row["images_per_s"] > 0
    plain = training_throughput(
        "conv_ae",
        {"input_mode": "rgb+depth"},
        image_size=32,
        n_images=4,
        epochs=1,
        batch_size=4,
    )
    assert plain["detector"] == "conv_ae"  # takes RGB only: fed 3 channels, mode ignored
