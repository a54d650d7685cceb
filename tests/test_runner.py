"""main.py end to end on the tiny synthetic set: files written, determinism, resume after a
kill, and errors that leave earlier results intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clad.cli import main
from clad.metrics import TASK_METRICS

ROOT = Path(__file__).resolve().parents[1]


def run_dir(config_path: Path, seed: int = 0) -> Path:
    config = json.loads(config_path.read_text())
    return Path(config["output"]["dir"]) / config["run_name"] / f"seed_{seed}"


def matrices(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())["matrices"]


def test_main_writes_every_output(tiny_config):
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--parameters_path",
            str(tiny_config),
            "--seed",
            "0",
            "--set",
            "wandb.enabled=true",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir(tiny_config)
    record = json.loads((out / "metrics.json").read_text())
    assert record["tasks"] == ["stripes", "disc", "nut"]
    assert record["completed_tasks"] == 3
    assert set(record["matrices"]) == set(TASK_METRICS)
    auroc = np.array(record["matrices"]["image_auroc"], dtype=float)
    assert auroc.shape == (3, 3) and np.isfinite(auroc).all()
    assert ((auroc >= 0) & (auroc <= 1)).all()
    for key in ("final_avg/image_auroc", "forgetting/image_auroc", "bwt/pixel_auroc"):
        assert key in record["summary"]
    costs = record["costs"]
    assert len(costs["train_seconds"]) == 3 and costs["trainable_mb"][-1] > 1.0
    assert costs["pretrained_mb"] == [0.0] * 3  # the conv autoencoder has no backbone
    # replay holds mem_size = 6 images of 3 x 32 x 32 uint8 once the first task is learnt
    assert costs["memory_mb"] == pytest.approx([6 * 3 * 32 * 32 / 2**20] * 3)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["detector"]["name"] == "conv_ae"
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "metric,after_task,after_task_name,eval_task,eval_task_name,value"
    assert len(csv_lines) > 8 * 9
    for name in (
        "matrix_image_auroc.png",
        "curves_image_auroc.png",
        "roc_final.png",
        "scores_final.png",
    ):
        assert (out / "plots" / name).stat().st_size > 1000
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "task_0.pt",
        "task_0.pt.sha256",
        "task_1.pt",
        "task_1.pt.sha256",
        "task_2.pt",
        "task_2.pt.sha256",
    ]
    assert (out / "finished.json").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert "final_avg" in result.stdout and "stripes" in result.stdout
    # a second call without --resume/--overwrite refuses and keeps the results
    again = subprocess.run(
        [sys.executable, "main.py", "--parameters_path", str(tiny_config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == record


def test_same_seed_same_numbers_and_other_seed_differs(tiny_config, tmp_path):
    assert main(["--parameters_path", str(tiny_config), "--seed", "3"]) == 0
    first = matrices(run_dir(tiny_config, 3))
    assert main(["--parameters_path", str(tiny_config), "--seed", "3", "--overwrite"]) == 0
    assert matrices(run_dir(tiny_config, 3)) == first
    assert main(["--parameters_path", str(tiny_config), "--seed", "4"]) == 0
    assert matrices(run_dir(tiny_config, 4)) != first


def test_multiple_seeds_then_report(tiny_config, capsys):
    args = [
        "--parameters_path",
        str(tiny_config),
        "--seed",
        "0",
        "1",
        "--set",
        "training.epochs=1",
        "--set",
        "strategy.name=naive",
    ]
    # naive takes no mem_size (the tiny config's replay block has one): fails, naming the field
    assert main(args) == 2
    assert "strategy.mem_size: unknown key" in capsys.readouterr().err
    assert main([*args[:-2], "--set", 'strategy={"name": "naive"}']) == 0
    folder = run_dir(tiny_config).parent
    records = [json.loads((folder / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
    values = [r["summary"]["final_avg/image_auroc"] for r in records]
    assert main(["report", str(folder)]) == 0
    report = (folder / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| final_avg/image_auroc"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert float(cells[1]) == pytest.approx(np.mean(values), abs=1e-4)
    assert float(cells[2]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    assert cells[3] == "2"
    assert (folder / "report.csv").exists()


def test_killed_run_resumes_to_the_same_metrics(tiny_config, tmp_path):
    overrides = ["--set", "training.epochs=6"]
    # the reference: an uninterrupted run in another folder
    reference = tmp_path / "reference"
    assert (
        main(
            [
                "--parameters_path",
                str(tiny_config),
                "--seed",
                "0",
                "--output",
                str(reference),
                *overrides,
            ]
        )
        == 0
    )
    expected = matrices(reference / "tiny" / "seed_0")

    out = run_dir(tiny_config)
    process = subprocess.Popen(
        [
            sys.executable,
            "main.py",
            "--parameters_path",
            str(tiny_config),
            "--seed",
            "0",
            *overrides,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (out / "checkpoints" / "task_0.pt.sha256").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = json.loads((out / "metrics.json").read_text())
    assert 1 <= partial["completed_tasks"] < 3, "the kill did not land mid-stream"
    assert main(["--parameters_path", str(tiny_config), "--seed", "0", "--resume", *overrides]) == 0
    assert matrices(out) == expected


def test_bad_data_gives_a_clear_error_and_keeps_earlier_results(
    tiny_config, tmp_path, synthetic_root, capsys
):
    assert main(["--parameters_path", str(tiny_config), "--seed", "0"]) == 0
    out = run_dir(tiny_config)
    before = (out / "metrics.json").read_text()
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_root, broken)
    victim = sorted((broken / "disc" / "train" / "good").glob("*.png"))[0]
    victim.write_bytes(b"not a png at all")
    code = main(
        [
            "--parameters_path",
            str(tiny_config),
            "--seed",
            "0",
            "--overwrite",
            "--set",
            f"dataset.root={broken}",
        ]
    )
    assert code == 2
    assert victim.name in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: shutil.rmtree(root / "nut"), "nut"),
        (lambda root: next((root / "disc" / "ground_truth").rglob("*.png")).unlink(), "mask"),
        (
            lambda root: [p.unlink() for p in (root / "stripes" / "train" / "good").glob("*")],
            "stripes",
        ),
    ],
    ids=["missing-category", "missing-mask", "empty-category"],
)
def test_bad_layouts_are_named(tiny_config, tmp_path, synthetic_root, capsys, breakage, message):
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_root, broken)
    (broken / ".complete").unlink(missing_ok=True)
    breakage(broken)
    code = main(
        [
            "--parameters_path",
            str(tiny_config),
            "--seed",
            "0",
            "--set",
            f"dataset.root={broken}",
            "--set",
            "dataset.name=mvtec",
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_root_is_named(tiny_config, tmp_path, capsys):
    missing = tmp_path / "no_such_root"
    code = main(
        [
            "--parameters_path",
            str(tiny_config),
            "--seed",
            "0",
            "--set",
            f"dataset.root={missing}",
            "--set",
            "dataset.name=mvtec",
        ]
    )
    assert code == 2
    assert str(missing) in capsys.readouterr().err
