"""3D datasets in the config and the task stream: names, modes, CLAD's switch, a full run."""

from __future__ import annotations

import json

import pytest

from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic3d import SYNTHETIC_3D_CATEGORIES
from clad.config import load_config, validate_config
from clad.errors import ConfigError

SMALL = {"image_size": 32, "n_train": 6, "n_test_good": 2, "n_test_per_defect": 1}


def config(tmp_path, **dataset) -> dict:
    return {
        "run_name": "three_d",
        "dataset": {
            "name": "synthetic3d",
            "root": str(tmp_path / "s3d"),
            "image_size": 32,
            "synthetic": SMALL,
            **dataset,
        },
        "detector": {"name": "conv_ae"},
        "strategy": {"name": "naive"},
        "training": {"epochs": 1, "batch_size": 4, "device": "cpu"},
        "evaluation": {"overlays_per_task": 1},
        "output": {"dir": str(tmp_path / "out")},
        "wandb": {"enabled": False},
    }


def test_3d_names_and_clads_switch_agree(tmp_path):
    def dataset(**block):
        raw = config(tmp_path)
        raw["dataset"] = block
        return validate_config(raw, "run.json", check_machine=False).dataset

    assert dataset(name="synthetic3d").root == "data/synthetic3d"
    switched = dataset(name="mvtec", use_3D_dataset=True, mode="rgb")
    assert switched.name == "mvtec3d" and switched.use_3D_dataset and switched.mode == "rgb"
    named = dataset(name="mvtec3d")
    assert named.use_3D_dataset and named.mode == "rgb"
    assert dataset(name="synthetic", use_3D_dataset=True).name == "synthetic3d"
    assert dataset(name="mvtec3d", mode="RGB").mode == "rgb"  # AST's names
    raw = config(tmp_path, mode="combi")
    raw["detector"] = {"name": "ast"}
    assert validate_config(raw, "run.json").dataset.mode == "rgb+depth"


@pytest.mark.parametrize(
    "dataset, message",
    [
        ({"name": "mvtec", "mode": "depth"}, "mode 'depth' needs a 3D dataset"),
        ({"name": "dcase2020", "use_3D_dataset": True}, "use_3D_dataset applies to"),
        ({"name": "synthetic3d", "mode": "height"}, "dataset.mode"),
    ],
)
def test_bad_3d_settings_are_named(tmp_path, dataset, message):
    raw = config(tmp_path)
    raw["dataset"] = dataset
    with pytest.raises(ConfigError, match=message):
        validate_config(raw, "run.json")


def test_depth_needs_a_detector_that_takes_depth(tmp_path):
    raw = config(tmp_path, mode="depth")
    with pytest.raises(ConfigError, match="'conv_ae' takes RGB images only"):
        validate_config(raw, "run.json")


def test_input_mode_is_set_by_the_dataset_not_the_detector_block(tmp_path):
    raw = config(tmp_path, mode="depth")
    raw["detector"] = {"name": "ast", "input_mode": "depth"}
    with pytest.raises(ConfigError, match="detector.input_mode: set the inputs with dataset.mode"):
        validate_config(raw, "run.json")


def test_depth_inputs_are_drawn_as_a_grey_height_map():
    import torch

    from clad.tracking.plots import displayable

    height = torch.zeros(2, 4, 4)
    height[0, 1, 1] = 0.5  # the object's top, everything else background
    picture = displayable(height)
    assert picture.shape == (4, 4, 3) and picture[1, 1].tolist() == [1.0, 1.0, 1.0]
    assert picture.max() == 1.0 and picture[0, 0].tolist() == [0.0, 0.0, 0.0]
    rgbd = torch.rand(5, 4, 4) * 2  # RGB (out of range here) first, then height, foreground
    np_rgb = displayable(rgbd)
    assert np_rgb.shape == (4, 4, 3) and np_rgb.max() <= 1.0
    assert (np_rgb == rgbd[:3].clamp(0, 1).permute(1, 2, 0).numpy()).all()


def test_clad_format_3d_switch_maps_task_order_to_mvtec3d_categories(tmp_path):
    run = {
        "architecture": "unet",
        "use_3D_dataset": True,
        "mode": "rgb",
        "task_order": [2, 0],
        "data_path": "/data/mvtec3d",
    }
    path = tmp_path / "train_unet.json"
    path.write_text(json.dumps(run))
    dataset = load_config(path, check_machine=False).dataset
    assert dataset.name == "mvtec3d" and dataset.root == "/data/mvtec3d"
    assert dataset.categories == ["carrot", "bagel"] and dataset.mode == "rgb"


@pytest.mark.parametrize("mode, channels", [("rgb", 3), ("depth", 2), ("rgb+depth", 5)])
def test_stream_of_synthetic_3d_tasks(tmp_path, mode, channels):
    cfg = validate_config(config(tmp_path, mode="rgb"), "run.json").dataset
    cfg.mode = mode  # the stream itself takes every mode; detectors are checked by the config
    tasks = build_tasks(cfg, seed=0)
    assert [t.name for t in tasks] == list(SYNTHETIC_3D_CATEGORIES)
    for task in tasks:
        image, mask, label = task.test[0]
        assert image.shape == (channels, 32, 32) and mask.shape == (1, 32, 32)
        assert task.has_masks and len(task.train) + len(task.val) == SMALL["n_train"]
        labels = [task.test[i][2] for i in range(len(task.test))]
        assert labels.count(0) == SMALL["n_test_good"] and labels.count(1) == 4  # 4 defects


def test_a_run_on_synthetic_3d_writes_its_matrices(tmp_path):
    from clad.runner import Run

    cfg = validate_config(config(tmp_path, categories=["puck", "dome"]), "run.json")
    Run(cfg, seed=0).execute()
    metrics = json.loads((tmp_path / "out" / "three_d" / "seed_0" / "metrics.json").read_text())
    matrix = metrics["matrices"]["image_auroc"]
    assert len(matrix) == 2 and all(v is not None for v in matrix[1])
    overlays = list((tmp_path / "out" / "three_d" / "seed_0" / "overlays").glob("*.png"))
    assert overlays
