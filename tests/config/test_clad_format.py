"""CLAD's own run files for the VAE with latent replay and the student-teacher detector run
through ``main.py`` (on the synthetic set, with ``--set`` overrides of the data and, for speed,
of the size and epochs). The files below keep the keys of CLAD's
``configurations/vae/test_vae_latent_replay.json``, ``configurations/models/vae.json`` and
``configurations/test_st_ideal_replay.json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clad.config import load_config
from tests.paths import REPO

ROOT = REPO

VAE_MODEL = {  # CLAD's configurations/models/vae.json (the keys of its run part)
    "channels": 3,
    "img_size": 256,
    "crp_size": 256,
    "num_tasks": 10,
    "latent_dim": 256,
    "num_epochs": 50,
    "batch_size": 32,
    "lr": 1e-3,
    "b1": 0.5,
    "b2": 0.999,
    "criterion_type": "elbo",
    "beta": 1,
    "task_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "early_stopping": True,
    "lr_scheduler": True,
}
VAE_LATENT_REPLAY = {  # CLAD's configurations/vae/test_vae_latent_replay.json
    "architecture": "vae",
    "trainer": "vae",
    "mem_size": 48000,
    "tags": [""],
    "anomaly_detection_task": True,
    "anomaly_detection_task_with_metrics": False,
    "produce_visual_debug": False,
    "save_embedding": False,
    "new_memory": True,
    "sample_strategy": "latent_replay",
    "device_id": 0,
    "num_epochs": 50,
    "batch_size": 32,
    "latent_dim": 256,
    "early_stopping": False,
    "lr_scheduler": False,
    "test_only_seen_tasks": False,
    "use_train_as_test": False,
    "test_all_dataset_together": False,
}
ST_IDEAL_REPLAY = {  # CLAD's configurations/test_st_ideal_replay.json
    "architecture": "st",
    "trainer": "st",
    "mem_size": 300,
    "anomaly_detection_task": True,
    "anomaly_detection_task_with_metrics": True,
    "produce_visual_debug": False,
    "save_embedding": False,
    "new_memory": True,
    "sample_strategy": "multi_task",
    "device_id": 2,
    "num_epochs": 50,
    "batch_size": 1,
    "early_stopping": True,
    "img_size": 256,
    "crp_size": 256,
    "lr": 1e-4,
    "beta": 1,
    "patience": 7,
    "test_only_seen_tasks": False,
    "use_train_as_test": False,
    "test_all_dataset_together": False,
    "pretrain_penalty": True,
    "imagenet_train_path": "tiny-imagenet-200/train",
    "st": True,
}


def clad_tree(tmp_path: Path) -> Path:
    """CLAD's layout: configurations/models/vae.json, configurations/vae/<run>.json."""
    top = tmp_path / "configurations"
    (top / "models").mkdir(parents=True)
    (top / "vae").mkdir()
    (top / "models" / "vae.json").write_text(json.dumps(VAE_MODEL))
    (top / "vae" / "test_vae_latent_replay.json").write_text(json.dumps(VAE_LATENT_REPLAY))
    (top / "test_st_ideal_replay.json").write_text(json.dumps(ST_IDEAL_REPLAY))
    return top


def test_clad_vae_and_st_files_translate(tmp_path):
    top = clad_tree(tmp_path)
    vae = load_config(top / "vae" / "test_vae_latent_replay.json", check_machine=False)
    assert vae.detector["name"] == "vae" and vae.detector["latent_dim"] == 256
    assert vae.detector["beta"] == 1 and vae.detector["adam_betas"] == [0.5, 0.999]
    # CLAD's latent replay: batches half replay, the kept images regenerated after every task
    assert vae.strategy == {
        "name": "latent_replay",
        "mem_size": 48000,
        "mixing": "batch",
        "regenerate": True,
    }
    assert vae.detector["loss_weighting"] == "clad"  # CLAD's ELBO weighting
    assert vae.dataset.image_size == 256  # from models/vae.json one folder up
    assert vae.training.epochs == 50 and vae.training.patience == 0
    st = load_config(top / "test_st_ideal_replay.json", check_machine=False)
    assert st.detector["name"] == "st"
    assert st.strategy == {"name": "multi_task"}
    assert st.training.lr == 1e-4 and st.training.batch_size == 1


PATCHCORE_MODEL = {  # CLAD's configurations/models/patchcore.json (the keys used here)
    "img_size": 256,
    "crp_size": 224,
    "num_tasks": 10,
    "num_epochs": 1,
    "batch_size": 1,
    "f_coreset": 0.1,
    "backbone_name": "wide_resnet50_2",
    "coreset_eps": 0.9,
    "cl": True,
    "mem_size_cl": 10000,
}
PADIM_MODEL = {  # CLAD's configurations/models/padim.json (the keys used here)
    "img_size": 256,
    "crp_size": 224,
    "num_tasks": 10,
    "batch_size": 1,
    "backbone_name": "wide_resnet50_2",
    "d_reduced": 350,
    "cl": True,
}
TRAIN_MEMORY_BANK = {  # CLAD's configurations/train_patchcore.json and train_padim.json
    "mem_size": 300,
    "new_memory": True,
    "sample_strategy": "cl",
    "device_id": 0,
    "num_epochs": 1,
    "batch_size": 1,
    "early_stopping": True,
    "img_size": 256,
    "crp_size": 224,
    "lr": 1e-4,
    "patience": 7,
}
TRAIN_CFA = {  # CLAD's configurations/train_cfa.json (the keys used here)
    "architecture": "cfa",
    "trainer": "cfa",
    "mem_size": 40,
    "new_memory": True,
    "sample_strategy": "replay",
    "num_epochs": 50,
    "batch_size": 4,
    "early_stopping": True,
    "img_size": 256,
    "crp_size": 224,
    "lr": 1e-3,
    "patience": 7,
}


def clad_top(tmp_path: Path) -> Path:
    """CLAD's top-level layout: train_<model>.json beside models/<model>.json."""
    top = tmp_path / "configurations"
    (top / "models").mkdir(parents=True)
    (top / "models" / "patchcore.json").write_text(json.dumps(PATCHCORE_MODEL))
    (top / "models" / "padim.json").write_text(json.dumps(PADIM_MODEL))
    for arch in ("patchcore", "padim"):
        run = {"architecture": arch, "trainer": arch, **TRAIN_MEMORY_BANK}
        (top / f"train_{arch}.json").write_text(json.dumps(run))
    (top / "train_cfa.json").write_text(json.dumps(TRAIN_CFA))
    replay = {**TRAIN_MEMORY_BANK, "architecture": "patchcore", "sample_strategy": "replay"}
    (top / "train_patchcore_replay.json").write_text(json.dumps(replay))
    return top


def test_clads_patchcore_cl_is_per_task_banks_with_clads_routing(tmp_path):
    top = clad_top(tmp_path)
    config = load_config(top / "train_patchcore.json", check_machine=False)
    assert config.strategy == {"name": "cl", "mem_size_cl": 10000, "variant": "per_task"}
    assert config.detector["coreset_ratio"] == 0.1


def test_clads_padim_cl_is_the_running_average_of_the_task_gaussians(tmp_path):
    config = load_config(clad_top(tmp_path) / "train_padim.json", check_machine=False)
    assert config.strategy == {"name": "cl", "variant": "average"}


def test_clads_replay_mixes_memory_into_every_batch_of_a_trained_detector(tmp_path):
    top = clad_top(tmp_path)
    cfa = load_config(top / "train_cfa.json", check_machine=False)
    assert cfa.strategy == {"name": "replay", "mem_size": 40, "mixing": "batch"}
    # a memory-bank detector has no batches to mix: its replay appends the memory
    patchcore = load_config(top / "train_patchcore_replay.json", check_machine=False)
    assert patchcore.strategy == {"name": "replay", "mem_size": 300}


def run_main(path: Path, synthetic_root: Path, out: Path, *extra: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--parameters_path",
            str(path),
            "--seed",
            "0",
            "--output",
            str(out),
            "--set",
            f"dataset.root={synthetic_root}",
            "--set",
            "dataset.categories=[stripes,disc]",
            "--set",
            "dataset.image_size=32",
            "--set",
            "training.epochs=1",
            "--set",
            "wandb.enabled=false",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_clad_vae_latent_replay_file_runs(tmp_path, synthetic_root):
    top = clad_tree(tmp_path)
    out = tmp_path / "out"
    run_main(top / "vae" / "test_vae_latent_replay.json", synthetic_root, out)
    record = json.loads((out / "vae_latent_replay" / "seed_0" / "metrics.json").read_text())
    assert record["tasks"] == ["stripes", "disc"] and record["completed_tasks"] == 2
    assert record["strategy"] == "latent_replay"
    # CLAD regenerates images (regenerate: true), so the memory is uint8 images of 3 x 32 x 32:
    # after the first task every training image of stripes (48000 exceeds the set)
    kept = record["costs"]["memory_mb"][0] * 2**20 / (3 * 32 * 32)
    assert round(kept) >= 8 and abs(kept - round(kept)) < 1e-3


def test_clad_st_file_runs(tmp_path, synthetic_root):
    top = clad_tree(tmp_path)
    out = tmp_path / "out"
    result = run_main(
        top / "test_st_ideal_replay.json",
        synthetic_root,
        out,
        "--set",
        "training.batch_size=8",
        "--set",
        "detector.weights=none",
        "--set",
        "detector.distill_steps=2",
    )
    record = json.loads((out / "st_multi_task" / "seed_0" / "metrics.json").read_text())
    assert record["completed_tasks"] == 2 and record["detector"] == "st"
    assert "penalty is off" in result.stderr  # CLAD's tiny-imagenet-200/train is not here


# CLAD's configurations/common_param.json, models/cae.json and cae/test_cae.json, key for key
# (CLAD's loader merges common_param.json, models/<architecture>.json and the run file, in that
# order: ``init_execute`` in src/utilities/utility_main.py).
CLAD_COMMON = {
    "num_tasks": 10,
    "task_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "latent_dim": 128,
    "lr": 0.001,
    "beta": 1,
    "channels": 3,
    "gray": False,
    "img_size": 256,
    "apply_rotation": False,
    "criterion_type": "mse",
    "activation": "ReLU",
    "dropout1": True,
    "dropout2": False,
    "dataset_name": "mvtec",
    "transformation": "None",
    "show_plot": True,
    "apply_som": False,
    "apply_gng": False,
    "normalize_img": True,
    "only_normal": False,
    "resize": 256,
    "crp_size": 256,
    "data_path": "data/mvtec",
    "save_path": "mvtec_result",
    "Rd": False,
    "cnn": "wrn50_2",
    "class_name": "all",
    "device_id": 0,
    "num_epochs": 50,
    "batch_size": 32,
    "anomaly_detection_task": False,
    "anomaly_detection_task_with_metrics": True,
    "produce_visual_debug": False,
    "save_embedding": False,
    "dataset_path_train": "",
    "dataset_path_test": "",
    "type_folder_train": "",
    "type_folder_test": "",
    "use_memory": False,
    "memory_dataset_path_train": "",
    "memory_dataset_path_test": "",
    "type_memory_train": "",
    "type_memory_test": "",
    "use_memory_reconstruct": False,
    "memory_reconstruct_dataset_path_train": "",
    "memory_reconstruct_dataset_path_test": "",
    "type_memory_reconstruct_train": "",
    "type_memory_reconstruct_test": "",
    "use_model": False,
    "save_model": True,
    "memory_model_path": "",
    "new_memory": True,
    "sample_strategy": "Naive",
    "test_only_seen_tasks": False,
    "use_train_as_test": False,
    "test_all_dataset_together": False,
    "type_test": "model",
    "early_stopping": False,
    "lr_scheduler": False,
    "n_critic_eval": 1,
    "patience": 5,
    "st": False,
    "output_dir": "output",
    "anomaly_source_path": "",
}
CAE_MODEL = {
    "channels": 3,
    "gray": False,
    "img_size": 256,
    "apply_rotation": False,
    "lr_scheduler": True,
    "early_stopping": True,
    "num_tasks": 10,
    "scheduler": False,
    "latent_dim": 512,
    "num_epochs": 50,
    "batch_size": 32,
    "lr": 0.0001,
    "b1": 0.5,
    "b2": 0.999,
    "criterion_type": "mse",
    "activation": "ReLU",
    "dropout1": True,
    "dropout2": False,
    "dataset_name": "mvtech",
    "transformation": "None",
    "task_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "num_samples_memory": 10,
    "sample_size_per_class": 1000,
    "architecture": "cae",
    "beta": 1,
    "anomaly_task_id": False,
    "show_plot": True,
    "apply_som": False,
    "apply_gng": False,
    "normalize_img": True,
    "only_normal": False,
    "resize": 256,
}
CAE_TEST = {
    "architecture": "cae",
    "trainer": "cae",
    "mem_size": 4800,
    "tags": ["CAE"],
    "anomaly_detection_task": True,
    "anomaly_detection_task_with_metrics": False,
    "produce_visual_debug": False,
    "save_embedding": False,
    "new_memory": True,
    "sample_strategy": "replay",
    "device_id": 0,
    "test_only_seen_tasks": False,
    "use_train_as_test": False,
    "test_all_dataset_together": False,
}


def write_tree(top: Path, files: dict[str, dict]) -> Path:
    """Write ``files`` (path under ``top`` -> JSON content) and return ``top``."""
    for name, content in files.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return top


def cae_tree(tmp_path: Path) -> Path:
    """CLAD's layout for its CAE run: common_param.json and models/ above cae/test_cae.json."""
    return write_tree(
        tmp_path / "configurations",
        {
            "common_param.json": CLAD_COMMON,
            "models/cae.json": CAE_MODEL,
            "cae/test_cae.json": CAE_TEST,
        },
    )


def test_clad_cae_file_translates(tmp_path, capsys):
    config = load_config(cae_tree(tmp_path) / "cae" / "test_cae.json", check_machine=False)
    assert config.detector == {"name": "conv_ae"}
    assert config.strategy == {"name": "replay", "mem_size": 4800, "mixing": "batch"}
    training = config.components.training
    # models/cae.json wins over common_param.json; early stopping on: common_param's patience 5
    assert (training.epochs, training.batch_size, training.lr, training.patience) == (
        50,
        32,
        1e-4,
        5,
    )
    assert config.dataset.image_size == 256 and config.dataset.crop_size is None
    assert config.dataset.categories[0] == "hazelnut"  # CLAD's task order
    ignored = capsys.readouterr().out
    assert "latent_dim" in ignored and "lr_scheduler" in ignored


def test_clad_cae_file_runs(tmp_path, synthetic_root):
    out = tmp_path / "out"
    run_main(cae_tree(tmp_path) / "cae" / "test_cae.json", synthetic_root, out)
    record = json.loads((out / "conv_ae_replay" / "seed_0" / "metrics.json").read_text())
    assert record["completed_tasks"] == 2 and record["detector"] == "conv_ae"
    assert record["strategy"] == "replay"
