"""The Python API: ``clad.run`` gives what ``main.py`` writes for the same configuration,
``clad.load_run`` reads it back, overrides are checked and named as the command line's, and a
sweep over a plugin and a built-in reports both."""

from __future__ import annotations

import json

import numpy as np
import pytest

import clad
from clad.cli import main
from clad.config import load_config
from clad.errors import ConfigError
from tests.conftest import TINY_CATEGORIES, tiny_dataset
from tests.paths import REPO


def config(tmp_path, synthetic_root, **dataset) -> dict:
    return {
        "run_name": "api",
        "dataset": tiny_dataset(synthetic_root, **dataset),
        "detector": {"name": "patchcore", "weights": "none", "backbone": "resnet18"},
        "strategy": {"name": "cl", "mem_size_cl": 300},
        "training": {"batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 0},
        "output": {"dir": str(tmp_path / "api_out"), "plots": False},
        "wandb": {"enabled": False},
    }


def test_run_returns_what_main_writes(tmp_path, synthetic_root):
    data = config(tmp_path, synthetic_root)
    result = clad.run(data, seed=0, overrides={"strategy.mem_size_cl": 200})
    assert isinstance(result, clad.RunResult) and result.finished
    assert np.array(result.matrices["image_auroc"]).shape == (3, 3)
    assert result.categories == TINY_CATEGORIES and result.learned == [0, 1, 2]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "cli_out"
    assert (
        main(
            [
                "--parameters_path",
                str(path),
                "--output",
                str(out),
                "--set",
                "strategy.mem_size_cl=200",
            ]
        )
        == 0
    )
    written = json.loads((out / "api" / "seed_0" / "metrics.json").read_text())
    for metric, rows in written["matrices"].items():
        np.testing.assert_equal(np.array(rows, dtype=float), result.matrix(metric))
    loaded = clad.load_run(out / "api")  # the run folder with its single seed
    np.testing.assert_equal(loaded.matrices, result.matrices)
    assert loaded.summary.keys() == result.summary.keys()
    assert loaded.config["resolved"]["strategy"] == {
        "name": "cl",
        "mem_size_cl": 200,
        "variant": None,
    }


def test_multi_category_tasks_give_task_and_category_matrices(tmp_path, synthetic_root):
    data = config(tmp_path, synthetic_root)
    del data["dataset"]["categories"]
    data["dataset"]["tasks"] = [["stripes", "disc"], ["nut"]]
    result = clad.run(data, seed=0)
    assert result.tasks == ["stripes+disc", "nut"]
    assert result.task_categories == [["stripes", "disc"], ["nut"]]
    assert result.matrix("image_auroc").shape == (2, 2)
    categories = result.matrix("image_auroc", per="category")
    assert categories.shape == (2, 3) and result.learned == [0, 0, 1]
    # a task's cell is the mean of its categories'
    assert result.matrix("image_auroc")[1, 0] == pytest.approx(categories[1, :2].mean())
    assert result.summary["final_avg/image_auroc"] == pytest.approx(categories[1].mean())
    rows = (result.folder / "metrics_categories.csv").read_text().splitlines()
    assert rows[0] == "metric,after_task,after_task_name,category,category_task,value"
    assert any(row.startswith("image_auroc,0,stripes+disc,disc,stripes+disc,") for row in rows)


def test_a_named_protocol_and_seeded_orders(tmp_path, synthetic_root):
    data = config(tmp_path, synthetic_root)
    del data["dataset"]["categories"]
    data["dataset"]["protocol"] = "synthetic_3x2"
    validated = load_config(data, check_machine=False)
    steps = validated.dataset.task_categories(seed=0)
    assert steps == (("stripes", "checker", "weave"), ("disc", "nut", "capsule"))
    data["dataset"]["order"] = "random"
    random0 = load_config(data).dataset.task_categories(seed=0)
    random1 = load_config(data).dataset.task_categories(seed=1)
    assert [len(s) for s in random0] == [3, 3] and random0 != random1
    assert sorted(sum(random0, ())) == sorted(sum(steps, ()))
    data["dataset"]["order"] = "alphabetical"
    assert load_config(data).dataset.task_categories(0)[0] == (
        "capsule",
        "checker",
        "disc",
    )


@pytest.mark.parametrize(
    "dataset, message",
    [
        (
            {"tasks": [["stripes", "dics"], ["nut"]]},
            r"'dics' is not a synthetic category \(did "
            r"you mean 'disc'\?\)",
        ),
        ({"tasks": [["stripes", "disc"], ["disc"]]}, r"a category belongs to one task only"),
        (
            {"protocol": "mvtec_15x1"},
            r"protocol 'mvtec_15x1' is defined on mvtec, not "
            r"'synthetic'",
        ),
        ({"protocol": "synthetic_3x3"}, r"protocol 'synthetic_3x3' unknown \(did you mean"),
        ({"categories": ["stripes"], "tasks": [["disc"]]}, r"not both"),
        ({"categories": ["../../tmp/x"]}, r"dataset\.categories\.0: String should match"),
        ({"categories": ["stripes", "disc"], "order": ["disc"]}, r"must list every category"),
    ],
)
def test_task_mistakes_are_named_before_any_data(tmp_path, synthetic_root, dataset, message):
    data = config(tmp_path, synthetic_root)
    del data["dataset"]["categories"]
    data["dataset"].update(dataset)
    with pytest.raises(ConfigError, match=message):
        clad.run(data)
    assert not (tmp_path / "api_out").exists()  # nothing read, nothing written


def test_overrides_are_named_as_python_overrides(tmp_path, synthetic_root):
    with pytest.raises(ConfigError, match=r"overrides\['training\.lr'\]: training\.lr: "):
        clad.run(config(tmp_path, synthetic_root), overrides={"training.lr": 0.1})


def test_the_documented_example_runs(tmp_path, monkeypatch):
    import runpy

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CLAD_EXAMPLE_OUTPUT", str(tmp_path / "example"))
    namespace = runpy.run_path(str(REPO / "examples" / "python_api.py"), run_name="__main__")
    assert namespace["result"].finished


def test_a_sweep_over_a_plugin_and_a_built_in_reports_both(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples" / "plugin" / "src"))
    base = config(tmp_path, synthetic_root)
    base["dataset"]["categories"] = TINY_CATEGORIES[:2]
    base["strategy"] = {"name": "replay", "mem_size": 4}
    spec = {
        "name": "byom",
        "base": base,
        "axes": {
            "detector.name": ["clad_knn_example:PooledKnn", "patchcore"],
            "seed": [0],
        },
        "overrides": [{"set": {"detector.weights": "none", "detector.backbone": "resnet18"}}],
        "output": str(tmp_path / "sweeps"),
    }
    path = tmp_path / "byom.json"
    path.write_text(json.dumps(spec))
    outcome = clad.sweep(path, workers=1, threads_per_run=1)
    assert not outcome.failed and len(outcome.runs) == 2
    report = outcome.report["md"].read_text()
    assert "clad_knn_example:PooledKnn" in report and "patchcore" in report


def test_a_synthetic_protocol_runs_with_a_column_per_category(tmp_path):
    data = config(tmp_path, tmp_path / "six")  # the six synthetic categories, generated here
    del data["dataset"]["categories"]
    data["dataset"]["protocol"] = "synthetic_4-1x2"
    result = clad.run(data, seed=0)
    assert result.tasks == ["step0_4_categories", "nut", "capsule"]
    assert result.matrix("image_auroc").shape == (3, 3)
    assert result.matrix("pixel_auroc", per="category").shape == (3, 6)
    assert result.learned == [0, 0, 0, 0, 1, 2]
    assert np.isfinite(result.matrix("image_auroc", per="category")).all()


def test_a_routing_method_reports_routing_accuracy_and_oracle_scores(tmp_path, synthetic_root):
    data = config(tmp_path, synthetic_root)
    data["strategy"] = {"name": "tests.fakes:RoutedModels"}
    result = clad.run(data, seed=0)
    record = json.loads((result.folder / "metrics.json").read_text())
    routing = np.array(record["routing"], dtype=float)  # [T, C]
    assert routing.shape == (3, 3)
    assert routing[0, 0] == 1.0  # one part: every image goes to it
    assert np.isnan(routing[0, 1:]).all()  # categories not learnt yet have no part
    assert ((routing[2] >= 0) & (routing[2] <= 1)).all()
    seen = routing[2][~np.isnan(routing[2])]
    assert result.summary["routing/accuracy"] == pytest.approx(seen.mean())
    oracle = np.array(record["oracle_matrices"]["image_auroc"], dtype=float)
    routed = result.matrix("image_auroc")
    assert oracle[0, 0] == pytest.approx(routed[0, 0])  # one part: oracle = routed
    where = routing == 1.0  # every image routed right: the oracle changes nothing
    np.testing.assert_allclose(
        np.array(record["oracle_category_matrices"]["image_auroc"], dtype=float)[where],
        result.matrix("image_auroc", per="category")[where],
    )
    assert "oracle/final_avg/image_auroc" in result.summary
