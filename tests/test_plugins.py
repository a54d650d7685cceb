"""Bring your own method: a detector defined outside clad (examples/plugin) runs by import path
and by entry point, gets what a built-in gets (schema, training keys, checkpoints, reports), and
passes clad's contract checks; bad plugin names are one-line errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import clad
from clad.config import load_config
from clad.errors import ConfigError
from clad.testing import check_detector
from tests.conftest import TINY_CATEGORIES, tiny_dataset
from tests.paths import REPO

PLUGIN_SRC = REPO / "examples" / "plugin" / "src"


@pytest.fixture()
def plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    yield
    sys.modules.pop("clad_knn_example", None)


@pytest.fixture()
def plugin_installed(tmp_path, monkeypatch, plugin_on_path):
    """The example package as pip installs it: a dist-info folder on the path with its entry
    point (what importlib.metadata reads)."""
    info = tmp_path / "site" / "clad_knn_example-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: clad-knn-example\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[clad.detectors]\npooled_knn = clad_knn_example:PooledKnn\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def tiny(tmp_path, synthetic_root, detector: dict) -> dict:
    return {
        "run_name": "plugin",
        "dataset": tiny_dataset(synthetic_root, TINY_CATEGORIES[:2]),
        "detector": detector,
        "strategy": {"name": "replay", "mem_size": 4},
        "training": {"batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 0},
        "output": {"dir": str(tmp_path / "out")},
        "wandb": {"enabled": False},
    }


def test_a_plugin_runs_by_import_path_with_checkpoints_and_resume(
    tmp_path, synthetic_root, plugin_on_path
):
    config = tiny(
        tmp_path,
        synthetic_root,
        {"name": "clad_knn_example:PooledKnn", "weights": "none", "k": 2},
    )
    result = clad.run(config, seed=0)
    assert result.finished and result.detector == "clad_knn_example:PooledKnn"
    assert len(result.matrices["image_auroc"]) == 2
    assert np.isnan(result.matrix("pixel_auroc")).all()  # no maps: pixel metrics n/a
    saved = json.loads((result.folder / "config.json").read_text())
    assert saved["resolved"]["detector"] == {
        "name": "clad_knn_example:PooledKnn",
        "backbone": "resnet18",
        "weights": "none",
        "k": 2,
    }
    assert saved["resolved"]["training"] == {"batch_size": 8, "device": "cpu", "num_workers": 0}
    assert (result.folder / "checkpoints" / "task_1.pt").is_file()
    resumed = clad.run(config, seed=0, resume=True)  # from the last checkpoint: nothing to learn
    np.testing.assert_equal(resumed.matrices, result.matrices)  # NaN cells equal too
    assert result.costs["memory_mb"][-1] > 0  # its bank is counted


def test_a_plugin_runs_by_entry_point_and_its_schema_is_checked(
    tmp_path, synthetic_root, plugin_installed
):
    config = tiny(tmp_path, synthetic_root, {"name": "pooled_knn", "weights": "none"})
    assert clad.run(config, seed=0).detector == "pooled_knn"
    config["detector"]["kk"] = 3
    with pytest.raises(ConfigError, match=r"detector\.kk: unknown key .*allowed keys: .*\bk\b"):
        load_config(config)
    config["detector"] = {"name": "pooled_knn", "k": 0}
    with pytest.raises(ConfigError, match=r"detector\.k: .*greater than 0"):
        load_config(config)
    config["detector"] = {"name": "pooled_knn"}
    config["training"]["epochs"] = 2
    with pytest.raises(ConfigError, match=r"training\.epochs: detector 'pooled_knn' does not use"):
        load_config(config)


def test_the_example_plugin_passes_the_contract_checks(plugin_on_path):
    from clad_knn_example import PooledKnn

    check_detector(PooledKnn, {"weights": "none"}, {"batch_size": 4, "device": "cpu"})
    check_detector("clad_knn_example:PooledKnn", {"weights": "none"}, {"device": "cpu"})


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "no_such_module:Thing",
            r"cannot import 'no_such_module' .*expected 'package\.module:Class'",
        ),
        ("json:nothing_here", r"module 'json' has no 'nothing_here'"),
        (
            "json:JSONDecoder",
            r"'json:JSONDecoder' is <class .*JSONDecoder'>, not a subclass of "
            r"clad\.models\.base\.Detector",
        ),
        (
            "pooled_kn",
            r"unknown detector 'pooled_kn'; built-in: .*patchcore.*'package\.module:Class'",
        ),
    ],
)
def test_a_bad_plugin_name_is_one_line(tmp_path, synthetic_root, name, message):
    config = tiny(tmp_path, synthetic_root, {"name": name})
    with pytest.raises(ConfigError, match=message) as error:
        load_config(config)
    assert "\n" not in str(error.value)


def test_the_example_plugins_own_test_passes(plugin_on_path):
    import runpy

    namespace = runpy.run_path(str(REPO / "examples" / "plugin" / "tests" / "test_pooled_knn.py"))
    namespace["test_pooled_knn_keeps_the_contract"]()
