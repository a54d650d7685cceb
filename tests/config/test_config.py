"""Configuration: typed blocks, overrides, clear errors, CLAD-format translation."""

import json

import pytest

from clad.config import apply_overrides, load_config, parse_value
from clad.errors import ConfigError

BASE = {
    "run_name": "t",
    "dataset": {"name": "synthetic", "root": "data/x", "image_size": 32},
    "detector": {"name": "unet_ae", "skip_levels": 1},
    "strategy": {"name": "replay", "mem_size": 8},
    "training": {"epochs": 2, "batch_size": 4},
}


def write(tmp_path, data, name="run.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_valid_config_loads_with_defaults(tmp_path):
    config = load_config(write(tmp_path, BASE))
    assert config.training.epochs == 2 and config.training.lr is None
    arguments, training = config.components.detector_arguments, config.components.training
    assert arguments["skip_levels"] == 1 and arguments["anomaly_map"] == "l1"
    assert training.epochs == 2 and training.batch_size == 4
    assert training.lr == 1e-3  # not set in the training block: the detector's own default


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(extra=1), r"run\.json: extra: unknown key"),
        (lambda c: c["training"].update(epochs="many"), r"training\.epochs: .*integer.*'many'"),
        (
            lambda c: c["training"].update(epoch=3),
            r"training\.epoch: unknown key .*allowed keys: epochs",
        ),
        (
            lambda c: c["detector"].update(name="nope"),
            r"unknown detector 'nope'; built-in: .*unet_ae",
        ),
        (
            lambda c: c["strategy"].update(name="ewc?"),
            r"unknown strategy 'ewc\?'; built-in: .*replay",
        ),
        (
            lambda c: c["detector"].update(skip_level=1),
            r"detector\.skip_level: unknown key .*skip_levels",
        ),
        (
            lambda c: c["detector"].update(anomaly_map="l3"),
            r"detector\.anomaly_map: .*'l1' or 'ssim'",
        ),
        (lambda c: c["strategy"].update(mem_size="x"), r"strategy\.mem_size: .*integer"),
        (
            lambda c: c["detector"].update(epochs=3),
            r"detector\.epochs: set it in the training block",
        ),
        (lambda c: c["dataset"].update(categories=[]), r"dataset\.categories: .*at least one"),
        (lambda c: c.pop("detector"), r"run\.json: detector: required but missing"),
    ],
)
def test_bad_configs_name_the_file_field_and_value(tmp_path, mutate, expected):
    data = json.loads(json.dumps(BASE))
    mutate(data)
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, data))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.json: configuration file not found"):
        load_config(tmp_path / "nowhere.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(bad)


def test_overrides_parse_values_and_lists(tmp_path):
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("true") is True
    assert parse_value("[a,b]") == ["a", "b"] and parse_value('["a"]') == ["a"]
    assert parse_value("cpu") == "cpu"
    config = load_config(
        write(tmp_path, BASE),
        ["training.epochs=1", "dataset.categories=[disc,nut]", "detector.skip_levels=0"],
    )
    assert config.training.epochs == 1
    assert config.dataset.categories == ["disc", "nut"]
    assert config.detector["skip_levels"] == 0
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(BASE, ["training.epochs"])
    with pytest.raises(ConfigError, match=r"training\.epochs: .*integer"):
        load_config(write(tmp_path, BASE), ["training.epochs=x"])


def test_clad_format_is_translated_and_ignored_keys_reported(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "unet.json").write_text(
        json.dumps({"img_size": 128, "task_order": [1, 0, 2], "num_tasks": 2, "beta": 1})
    )
    run = {
        "architecture": "unet",
        "sample_strategy": "Replay",
        "mem_size": 30,
        "num_epochs": 3,
        "img_size": 64,
        "crp_size": 48,
        "early_stopping": False,
        "data_path": "/data/mvtec",
        "produce_visual_debug": False,
    }
    config = load_config(write(tmp_path, run, "train_unet.json"), check_machine=False)
    assert config.detector == {"name": "unet_ae"}
    # CLAD's replay: B memory images with every batch of B (clad.config.clad_format)
    assert config.strategy == {"name": "replay", "mem_size": 30, "mixing": "batch"}
    assert config.dataset.name == "mvtec" and config.dataset.root == "/data/mvtec"
    assert config.dataset.categories == ["bottle", "hazelnut"]
    assert config.dataset.image_size == 64 and config.dataset.crop_size == 48
    assert config.training.epochs == 3 and config.training.patience == 0
    printed = capsys.readouterr().out
    assert "ignored: beta, produce_visual_debug" in printed


def test_shipped_clad_example_and_all_shipped_configs_load():
    from pathlib import Path

    paths = sorted(Path("configurations").glob("*.json"))
    for folder in ("mvtec", "visa", "mvtec_ad2", "synthetic", "dcase2020", "dcase2022", "clad"):
        paths += sorted(Path("configurations", folder).glob("[!_]*.json"))
    assert len(paths) > 70
    for path in paths:
        load_config(path, check_machine=False)  # real-data roots are not on this machine


def test_training_keys_left_out_keep_each_detectors_defaults(tmp_path):
    data = {
        **BASE,
        "detector": {"name": "stfpm", "weights": "none", "backbone": "resnet18"},
        "training": {"epochs": 3},
    }
    training = load_config(write(tmp_path, data)).components.training
    assert training.epochs == 3  # set: passed on
    assert training.lr == 0.4 and training.batch_size == 16  # STFPM's own (the paper's)


def test_a_config_can_name_a_base(tmp_path):
    write(tmp_path, {**BASE, "run_name": "base", "evaluation": {"batch_size": 8}}, "base.json")
    child = {
        "base": "base.json",
        "run_name": "child",
        "dataset": {"image_size": 48},
        "strategy": {"name": "naive"},
        "training": {"epochs": 5},
    }
    config = load_config(write(tmp_path, child, "child.json"))
    assert config.run_name == "child" and config.dataset.image_size == 48
    assert config.dataset.root == "data/x"  # merged key by key from the base
    assert config.strategy == {"name": "naive"}  # another class: the block is replaced whole
    assert config.detector == {"name": "unet_ae", "skip_levels": 1}
    assert config.training.epochs == 5 and config.training.batch_size == 4
    assert config.evaluation.batch_size == 8
    same = {"base": "base.json", "run_name": "c2", "strategy": {"name": "replay"}}
    assert load_config(write(tmp_path, same, "c2.json")).strategy["mem_size"] == 8


def test_bad_bases_name_the_file(tmp_path):
    missing = write(tmp_path, {**BASE, "base": "nope.json"}, "a.json")
    with pytest.raises(ConfigError, match="nope.json not found"):
        load_config(missing)
    write(tmp_path, {"base": "y.json"}, "x.json")
    loop = write(tmp_path, {"base": "x.json"}, "y.json")
    with pytest.raises(ConfigError, match="names itself"):
        load_config(loop)
