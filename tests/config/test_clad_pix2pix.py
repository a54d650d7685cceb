"""CLAD's pix2pix files: ``architecture: "pix2pix"`` runs the model its ``trainer`` names
(``pix2pix_inpaint`` -> detector ``pix2pix_inpaint``, ``pix2pix_scaling_model`` -> detector
``pix2pix_scaling``) with the settings of CLAD's ``configurations/models/pix2pix.json`` (the
model file CLAD's loader reads for that architecture) and ``common_param.json``; CLAD's
``compressed_replay`` and ``compressed_degenerative_replay`` run ``compressed_replay_sr``. The
files are CLAD's, key for key; CLAD ships no run file for the inpainting trainer, so its run file
here is CLAD's scaling-model run file with ``trainer`` changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clad.config import load_config
from clad.errors import ConfigError
from clad.registry import strategy_table
from clad.strategies.compressed_sr import CompressedReplaySR
from clad.strategies.stored_replay import CompressedReplay
from tests.config.test_clad_format import CLAD_COMMON, run_main, write_tree
from tests.paths import REPO

PIX2PIX_MODEL = {
    "num_epochs": 5,
    "batch_size": 1,
    "lr_scheduler": False,
    "lr": 0.0002,
    "netG": "unet256",
    "norm": "none",
    "lambda_L1": 100,
    "early_stopping": False,
    "channels": 3,
    "gray": False,
    "apply_rotation": False,
    "img_size": 256,
    "crp_size": 256,
    "num_tasks": 10,
    "latent_dim": 256,
    "b1": 0.5,
    "b2": 0.999,
    "criterion_type": "elbo",
    "activation": "ReLU",
    "dropout1": True,
    "dropout2": False,
    "device_name": "cuda:0",
    "dataset_name": "mvtech",
    "transformation": "None",
    "task_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "num_samples_memory": 10,
    "sample_size_per_class": 400,
    "beta": 1,
    "anomaly_task_id": False,
    "show_plot": True,
    "apply_som": False,
    "apply_gng": False,
    "normalize_img": True,
    "only_normal": False,
    "resize": 256,
    "k_value": [2, 4, 8, 16],
}
"""CLAD's configurations/models/pix2pix.json (models/pix2pix_inpaint.json holds the same)."""
SCALING_RUN = {
    "architecture": "pix2pix",
    "trainer": "pix2pix_scaling_model",
    "mem_size": 4800,
    "anomaly_detection_task": True,
    "anomaly_detection_task_with_metrics": True,
    "produce_visual_debug": False,
    "save_embedding": True,
    "new_memory": True,
    "sample_strategy": "replay",
    "type_folder_train": "memorized",
    "dataset_path_train": "/data/original_dataset",
    "type_folder_test": "evaluate_data",
    "dataset_path_test": "/data/original_dataset",
    "device_id": 0,
    "num_epochs": 0,
    "batch_size": 8,
    "test_only_seen_tasks": False,
    "use_train_as_test": False,
}
"""CLAD's configurations/pix2pix_scaling_model/test_pix2pix_scaling_model.json."""
SCALING = "pix2pix_scaling_model/test_pix2pix_scaling_model.json"
TINY_NETWORK = (  # --set overrides that fit a 32 px run in seconds
    "--set",
    "detector.depth=5",
    "--set",
    "detector.ngf=4",
    "--set",
    "detector.ndf=4",
    "--set",
    "detector.smoothing_sigma=1.0",
)


def inpaint_run(sample_strategy: str) -> dict:
    """CLAD's scaling-model run file with the inpainting trainer and ``sample_strategy``."""
    return {**SCALING_RUN, "trainer": "pix2pix_inpaint", "sample_strategy": sample_strategy}


def clad_tree(tmp_path: Path) -> Path:
    """common_param.json and models/pix2pix.json above per-trainer run folders, as CLAD's."""
    files = {
        "common_param.json": CLAD_COMMON,
        "models/pix2pix.json": PIX2PIX_MODEL,
        SCALING: SCALING_RUN,
    }
    for strategy in ("replay", "compressed_replay", "compressed_degenerative_replay"):
        files[f"pix2pix_inpaint/pix2pix_inpaint_{strategy}.json"] = inpaint_run(strategy)
    return write_tree(tmp_path / "configurations", files)


def test_clad_pix2pix_scaling_model_file_translates(tmp_path, capsys):
    config = load_config(clad_tree(tmp_path) / SCALING, check_machine=False)
    assert config.detector == {
        "name": "pix2pix_scaling",
        "l1_weight": 100,
        "adam_betas": [0.5, 0.999],
    }
    assert config.strategy == {"name": "replay", "mem_size": 4800, "mixing": "batch"}
    training = config.components.training
    # num_epochs 0 (CLAD trains nothing on an earlier run's saved images) is left out: the
    # detector's 5 epochs; batch 8 from the run file, lr 2e-4 from models/pix2pix.json
    assert (training.epochs, training.batch_size, training.lr, training.patience) == (
        5,
        8,
        0.0002,
        0,
    )
    assert config.dataset.image_size == 256 and config.dataset.crop_size is None
    assert config.dataset.categories[0] == "hazelnut"
    ignored = capsys.readouterr().out
    for key in ("num_epochs", "type_folder_train", "netG", "norm", "k_value"):
        assert key in ignored, key  # CLAD's pix2pix constructor ignores netG and norm too


def test_clad_pix2pix_inpaint_file_translates(tmp_path, capsys):
    path = clad_tree(tmp_path) / "pix2pix_inpaint" / "pix2pix_inpaint_replay.json"
    config = load_config(path, check_machine=False)
    assert config.detector == {
        "name": "pix2pix_inpaint",
        "k_values": [2, 4, 8, 16],
        "l1_weight": 100,
        "adam_betas": [0.5, 0.999],
    }
    assert config.strategy == {"name": "replay", "mem_size": 4800, "mixing": "batch"}
    assert config.components.training.batch_size == 8
    assert "k_value" not in capsys.readouterr().out.split("ignored:")[-1]


def test_clad_compressed_replays_run_the_super_resolution_strategy(tmp_path):
    top = clad_tree(tmp_path) / "pix2pix_inpaint"
    compressed = load_config(top / "pix2pix_inpaint_compressed_replay.json", check_machine=False)
    assert compressed.strategy == {
        "name": "compressed_replay_sr",
        "mem_size": 4800,
        "mixing": "batch",
    }
    degenerative = load_config(
        top / "pix2pix_inpaint_compressed_degenerative_replay.json", check_machine=False
    )
    assert degenerative.strategy == {
        "name": "compressed_replay_sr",
        "mem_size": 4800,
        "mixing": "batch",
        "degenerative": True,
    }


def test_an_unknown_pix2pix_trainer_is_refused_naming_the_known_ones(tmp_path):
    top = clad_tree(tmp_path)
    path = top / "pix2pix_other.json"
    path.write_text(json.dumps({**SCALING_RUN, "trainer": "pix2pix_colour"}))
    with pytest.raises(ConfigError, match="pix2pix_colour.*pix2pix_inpaint, pix2pix_scaling_model"):
        load_config(path, check_machine=False)


def test_clad_pix2pix_scaling_model_file_runs(tmp_path, synthetic_root):
    out = tmp_path / "out"
    run_main(
        clad_tree(tmp_path) / SCALING,
        synthetic_root,
        out,
        *TINY_NETWORK,
        "--set",
        "detector.downscaled_side=8",
    )
    record = json.loads((out / "pix2pix_scaling_replay" / "seed_0" / "metrics.json").read_text())
    assert record["completed_tasks"] == 2
    assert record["detector"] == "pix2pix_scaling" and record["strategy"] == "replay"


def test_clad_pix2pix_inpaint_file_runs(tmp_path, synthetic_root):
    out = tmp_path / "out"
    run_main(
        clad_tree(tmp_path) / "pix2pix_inpaint" / "pix2pix_inpaint_compressed_replay.json",
        synthetic_root,
        out,
        *TINY_NETWORK,
        "--set",
        "strategy.stored_side=8",
        "--set",
        "strategy.restorer_ngf=2",
        "--set",
        "strategy.restorer_ndf=2",
        "--set",
        "strategy.restorer_depth=3",
        "--set",
        "strategy.restorer_epochs=1",
    )
    run = out / "pix2pix_inpaint_compressed_replay_sr" / "seed_0"
    record = json.loads((run / "metrics.json").read_text())
    assert record["completed_tasks"] == 2
    assert record["detector"] == "pix2pix_inpaint"
    assert record["strategy"] == "compressed_replay_sr"


def test_clads_own_downscaling_replay_is_named_downscaled_replay():
    """``compressed_replay`` is CLAD's method (``compressed_replay_sr`` here); clad's bilinear /
    JPEG replay is registered as ``downscaled_replay`` only, and ``--help`` lists it."""
    table = strategy_table()
    assert table["downscaled_replay"] is CompressedReplay
    assert "compressed_replay" not in table
    assert table["compressed_replay_sr"] is CompressedReplaySR
    result = subprocess.run(
        [sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    strategies = result.stdout.split("Strategies (strategy.name):")[1].split("or a plugin")[0]
    names = {name.strip() for name in strategies.replace("\n", " ").split(",")}
    assert {"downscaled_replay", "compressed_replay_sr"} <= names
    assert "compressed_replay" not in names
