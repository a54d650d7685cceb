"""Every mistake in a configuration is refused when it is loaded, in one line that names the
field and where it came from, before any data is read (``python -m clad.perf config-check``
times the same cases)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import clad.runner
from clad.cli import main
from clad.config import load_config
from clad.errors import ConfigError

PROTOCOL = "configurations/mvtec/patchcore_cl.json"


@pytest.fixture()
def mvtec_root(tmp_path):
    """A stand-in MVTec AD root: empty category folders, nothing to decode."""
    root = tmp_path / "mvtec"
    for category in ("bottle", "screw"):
        for part in ("train/good", "test/good"):
            (root / category / part).mkdir(parents=True)
    return root


@pytest.fixture()
def no_data_read(monkeypatch):
    """Fail the test if a run gets as far as reading its data."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data were read before the configuration was refused")

    monkeypatch.setattr(clad.runner, "build_tasks", refuse)


CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"
CASES = [
    (["training.lr=0.01"], r"--set training\.lr: training\.lr: detector 'patchcore' does not use"),
    (["detector.coreset_ratio=1.5"], r"--set detector\.coreset_ratio: .*less than or equal to 1"),
    (["detector.layers=[blocks.9]"], r"detector 'patchcore': layers: .*has no layers"),
    (["dataset.categories=[bottle,srew]"], r"'srew' has no folder .*did you mean 'screw'"),
    ([f"training.device={CUDA}"], r"--set training\.device: training\.device: "),
    (["training.device=banana"], r"training\.device: .*expected auto, cpu, cuda"),
    (['strategy={"name": "ewc"}'], r"'ewc' regularises a trained network; detector 'patchcore'"),
    (["dataset.image_size=0"], r"dataset\.image_size: .*greater than or equal to 16"),
]


@pytest.mark.parametrize("overrides, message", CASES)
def test_a_mistake_is_one_line_before_any_data(
    overrides, message, mvtec_root, no_data_read, capsys
):
    args = ["--parameters_path", PROTOCOL, "--set", f"dataset.root={mvtec_root}"]
    if not any(item.startswith("dataset.categories") for item in overrides):
        args += ["--set", "dataset.categories=[bottle,screw]"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]


def test_a_root_that_is_one_category_is_told_to_use_its_parent(mvtec_root, no_data_read, capsys):
    args = ["--parameters_path", PROTOCOL, "--set", f"dataset.root={mvtec_root / 'bottle'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "is one category's folder" in err
        and f"set dataset.root to the folder above it, {mvtec_root}" in err
    )


def test_detector_checks_see_the_inputs_size(tmp_path):
    data = {
        "run_name": "t",
        "dataset": {"name": "synthetic", "root": str(tmp_path), "image_size": 40},
        "detector": {"name": "conv_ae"},
        "strategy": {"name": "naive"},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match=r"detector 'conv_ae': input size 40x40: .*divisible by 16"
    ):
        load_config(path)
    data["detector"] = {"name": "draem", "anomaly_source_path": str(tmp_path / "no_dtd")}
    data["dataset"]["image_size"] = 64
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"anomaly_source_path: .*no_dtd is not a folder"):
        load_config(path)


def test_a_machine_independent_check_leaves_out_the_data_and_the_device():
    config = load_config(PROTOCOL, ["training.device=cuda:3"], check_machine=False)
    assert config.components.training.device == "cuda:3"
    assert config.components.detector_arguments["coreset_ratio"] == 0.1
    record = config.components.record()
    assert record["training"] == {"batch_size": 16, "device": "cuda:3", "num_workers": 2}
