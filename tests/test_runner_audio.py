"""main.py end to end on tiny synthetic machine sounds: DCASE matrices, plots, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clad.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks: one torch thread spares the threads' synchronisation, which dominates on a
    busy 2-core machine (results do not depend on the thread count here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def audio_config(tmp_path: Path, layout: str, strategy: dict) -> Path:
    config = {
        "run_name": f"tiny_audio_{layout}",
        "dataset": {
            "name": "synthetic_audio",
            "root": str(tmp_path / f"data_{layout}"),
            "categories": ["pump", "bearing"],
            "val_fraction": 0.2,
            "audio": {
                "n_fft": 512,
                "hop_length": 512,
                "n_mels": 16,
                "frames": 16,
                "synthetic": {
                    "layout": layout,
                    "sections": 2,
                    "n_train": 4,
                    "n_train_target": 1,
                    "n_test": 2,
                    "duration_s": 0.5,
                },
            },
        },
        "detector": {
            "name": "aegan",
            "n_mels": 16,
            "patch_frames": 16,
            "patch_hop": 8,
            "patches_per_clip": 1,
            "nz": 8,
            "ndf": 4,
            "ngf": 4,
        },
        "strategy": strategy,
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 1},
        "output": {"dir": str(tmp_path / "out")},
        "wandb": {"enabled": False},
    }
    path = tmp_path / f"{layout}.json"
    path.write_text(json.dumps(config))
    return path


def test_main_on_synthetic_audio_writes_the_audio_matrices(tmp_path):
    path = audio_config(tmp_path, "dcase2022", {"name": "replay", "mem_size": 4})
    result = subprocess.run(
        [sys.executable, "main.py", "--parameters_path", str(path), "--seed", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out" / "tiny_audio_dcase2022" / "seed_0"
    record = json.loads((out / "metrics.json").read_text())
    assert record["tasks"] == ["pump", "bearing"] and record["completed_tasks"] == 2
    expected = {"auc", "pauc", "auc_source", "auc_target", "hmean"}
    expected |= {
        f"{m}/section_0{s}" for m in ("auc", "pauc", "auc_source", "auc_target") for s in (0, 1)
    }
    assert set(record["matrices"]) == expected
    for name in expected:
        matrix = np.array(record["matrices"][name], dtype=float)
        assert matrix.shape == (2, 2) and np.isfinite(matrix).all(), name
        assert ((matrix >= 0) & (matrix <= 1)).all(), name
    for key in ("final_avg/hmean", "forgetting/auc", "bwt/pauc", "final_avg/auc/section_01"):
        assert key in record["summary"]
    assert not any(k.startswith("final_avg/image") for k in record["summary"])
    assert len(record["costs"]["train_seconds"]) == 2
    for name in (
        "matrix_auc.png",
        "matrix_hmean.png",
        "curves_pauc.png",
        "sections_final.png",
        "roc_final.png",
        "scores_final.png",
    ):
        assert (out / "plots" / name).stat().st_size > 1000, name
    assert len(list((out / "overlays").glob("*.png"))) == 2  # one spectrogram per machine
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["task_0.pt", "task_1.pt"]
    csv = (out / "metrics.csv").read_text()
    assert "auc_target/section_01,0,pump,1,bearing," in csv
    table = result.stdout[result.stdout.index("tiny_audio_dcase2022 (detector aegan") :]
    assert "hmean" in table and "pump" in table and "image_auroc" not in table


def test_dcase2020_layout_then_a_bad_wav(tmp_path, capsys):
    path = audio_config(tmp_path, "dcase2020", {"name": "naive"})
    assert (
        main(
            [
                "--parameters_path",
                str(path),
                "--seed",
                "0",
                "--set",
                "output.plots=false",
                "--set",
                "output.checkpoints=false",
            ]
        )
        == 0
    )
    out = tmp_path / "out" / "tiny_audio_dcase2020" / "seed_0"
    before = (out / "metrics.json").read_text()
    matrices = json.loads(before)["matrices"]
    assert set(matrices) == {
        "auc",
        "pauc",
        "hmean",
        "auc/id_00",
        "pauc/id_00",
        "auc/id_02",
        "pauc/id_02",
    }
    capsys.readouterr()
    # a corrupt clip stops the next run before anything is overwritten, naming the file
    data = tmp_path / "data_dcase2020" / "dev_data" / "bearing" / "test"
    victim = sorted(data.glob("*.wav"))[1]
    victim.write_bytes(b"RIFF....WAVEfmt broken")
    code = main(["--parameters_path", str(path), "--seed", "0", "--overwrite"])
    assert code == 2
    assert victim.name in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize("strategy", ["naive", "replay", "multi_task"])
@pytest.mark.parametrize("dataset", ["synthetic_audio", "dcase2020", "dcase2022"])
def test_shipped_audio_configs_validate(dataset, strategy):
    from clad.config import load_config

    folder = {"synthetic_audio": "synthetic"}.get(dataset, dataset)  # configurations/<folder>/
    path = ROOT / "configurations" / folder / f"aegan_{strategy}.json"
    config = load_config(path, check_machine=False)  # the DCASE data are not here
    assert config.dataset.modality == "audio" and config.detector["name"] == "aegan"
    assert config.detector["n_mels"] == config.dataset.audio.n_mels
    assert config.detector["patch_frames"] <= config.dataset.audio.frames
