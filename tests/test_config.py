"""Configuration: typed blocks, overrides, clear errors, CLAD-format translation."""

import json

import pytest

from clad.config import apply_overrides, detector_kwargs, load_config, parse_value
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
    assert config.training.epochs == 2 and config.training.lr == 1e-3
    kwargs = detector_kwargs(config)
    assert kwargs["skip_levels"] == 1 and kwargs["epochs"] == 2 and kwargs["batch_size"] == 4
    assert kwargs["anomaly_map"] == "l1"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(extra=1), r"run\.json:\nextra: unknown key"),
        (lambda c: c["training"].update(epochs="many"), r"training\.epochs: .*integer.*'many'"),
        (
            lambda c: c["training"].update(epoch=3),
            r"training\.epoch: unknown key .*allowed keys: epochs",
        ),
        (lambda c: c["detector"].update(name="nope"), r"unknown detector 'nope'; known: .*unet_ae"),
        (lambda c: c["strategy"].update(name="ewc?"), r"unknown strategy 'ewc\?'; known: .*replay"),
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
        (lambda c: c.pop("detector"), r"\ndetector: required but missing"),
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
    config = load_config(write(tmp_path, run, "train_unet.json"))
    assert config.detector == {"name": "unet_ae"}
    assert config.strategy == {"name": "replay", "mem_size": 30}
    assert config.dataset.name == "mvtec" and config.dataset.root == "/data/mvtec"
    assert config.dataset.categories == ["bottle", "hazelnut"]
    assert config.dataset.image_size == 64 and config.dataset.crop_size == 48
    assert config.training.epochs == 3 and config.training.patience == 0
    printed = capsys.readouterr().out
    assert "ignored: beta, produce_visual_debug" in printed


def test_shipped_clad_example_and_all_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path("configurations").glob("*.json")):
        load_config(path)
