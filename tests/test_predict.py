"""Scoring new images with a trained run scores them as the run did (the same AUROC), writes
scores, maps and overlays where asked, exports what can be exported, and refuses what cannot
score in one line."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clad.cli import main
from clad.predict import (
    PredictError,
    export_run,
    exportable_detectors,
    exported_detector,
    image_samples,
    load_trained,
    predict_folder,
)
from clad.tracking import files
from tests.conftest import tiny_dataset


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, synthetic_root) -> Path:
    """A finished conv AE replay run on the tiny synthetic set, with its checkpoints."""
    import clad

    out = tmp_path_factory.mktemp("predict")
    config = {
        "run_name": "tiny",
        "dataset": tiny_dataset(synthetic_root),
        "detector": {"name": "conv_ae"},
        "strategy": {"name": "replay", "mem_size": 6},
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 0},
        "output": {"dir": str(out), "plots": False},
        "wandb": {"enabled": False},
    }
    return clad.run(config, seed=0).folder


def auroc_of(folder: Path, after: int, task: int) -> float:
    return json.loads((folder / "metrics.json").read_text())["matrices"]["image_auroc"][after][task]


def test_a_category_scores_as_the_run_scored_it(run_folder, synthetic_root, tmp_path, capsys):
    images = synthetic_root / "disc" / "test"
    out = tmp_path / "pred"
    args = ["predict", "--run", str(run_folder.parent), "--images", str(images)]
    assert main([*args, "--output", str(out), "--overlays", "2"]) == 0
    expected = auroc_of(run_folder, 2, 1)
    assert f"image AUROC by folder labels (good = 0, others = 1): {expected:.4f}" in (
        capsys.readouterr().out
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_auroc"] == pytest.approx(expected, abs=1e-12)
    assert summary["checkpoint_task"] == 2
    rows = list(csv.DictReader((out / "scores.csv").open()))
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert [r["path"] for r in rows] == paths
    assert {(r["folder"], r["label"]) for r in rows} == {
        (Path(p).parent.name, "0" if p.startswith("good/") else "1") for p in paths
    }
    maps = sorted(p.relative_to(out / "maps").as_posix() for p in (out / "maps").rglob("*.npy"))
    assert maps == [p.replace(".png", ".npy") for p in paths]
    assert np.load(out / "maps" / maps[0]).shape == (32, 32)
    assert len(list((out / "overlays").rglob("*.png"))) == 2


def test_an_earlier_task_loads_its_own_checkpoint(run_folder, synthetic_root, tmp_path):
    trained = load_trained(run_folder, task=0)
    result = predict_folder(trained, synthetic_root / "stripes" / "test", tmp_path, maps=False)
    assert trained.task == 0 and not result.maps
    assert result.auroc == pytest.approx(auroc_of(run_folder, 0, 0), abs=1e-12)
    with pytest.raises(PredictError, match="no checkpoint after task 7; kept: 0, 1, 2"):
        load_trained(run_folder, task=7)


def test_labels_come_from_folders_only(tmp_path, synthetic_root):
    shutil.copytree(synthetic_root / "nut" / "test", tmp_path / "imgs" / "sub")
    shutil.copy(next((synthetic_root / "nut" / "test" / "good").glob("*.png")), tmp_path / "imgs")
    (tmp_path / "imgs" / ".hidden").mkdir()
    shutil.copy(
        next((synthetic_root / "nut" / "test" / "good").glob("*.png")),
        tmp_path / "imgs" / ".hidden",
    )
    samples = image_samples(tmp_path / "imgs")
    assert [s.label for s in samples if s.path.parent == tmp_path / "imgs"] == [-1]
    assert not any(".hidden" in str(s.path) for s in samples)
    assert {s.defect for s in samples if s.label == 0} == {"good"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no image files"):
        image_samples(tmp_path / "empty")
    with pytest.raises(PredictError, match="not a folder"):
        image_samples(tmp_path / "missing")


def test_torchscript_round_trip_equals_predict(run_folder, synthetic_root, tmp_path, capsys):
    path = tmp_path / "ae.pt"
    assert (
        main(["export", "--run", str(run_folder), "--format", "torchscript", "--output", str(path)])
        == 0
    )
    assert "exported conv_ae after task 2 (nut)" in capsys.readouterr().out
    trained = load_trained(run_folder, device="cpu")
    detector, _ = exported_detector(trained)
    from clad.benchmarks.mvtec import ImageDataset

    data = ImageDataset(image_samples(synthetic_root / "disc" / "test"), 32)
    images = torch.stack([data[i][0] for i in range(len(data))])
    expected = detector.predict(images)
    loaded = torch.jit.load(str(path))
    scores, maps = loaded(images)
    assert torch.allclose(scores, expected.image, atol=1e-6)
    assert torch.allclose(maps, expected.pixel, atol=1e-6)


def test_what_does_not_export_says_so(run_folder, monkeypatch):
    assert {"conv_ae", "unet_ae", "vae", "stfpm"} <= set(exportable_detectors())
    assert not {"patchcore", "padim", "dne"} & set(exportable_detectors())
    trained = load_trained(run_folder, device="cpu")
    monkeypatch.setattr(type(trained.strategy.detectors()[0]), "export_module", lambda self: None)
    with pytest.raises(PredictError, match="conv_ae does not export .* exportable: "):
        export_run(trained, "torchscript")


def test_onnx_without_onnx_is_one_line(run_folder, capsys):
    try:
        import onnx  # noqa: F401
    except ImportError:
        assert main(["export", "--run", str(run_folder), "--format", "onnx"]) == 2
        assert "needs the onnx package (pip install onnx)" in capsys.readouterr().err
    else:
        pytest.skip("onnx is installed")


def test_a_task_aware_strategy_needs_the_task_id(run_folder, synthetic_root, tmp_path):
    trained = load_trained(run_folder, device="cpu")
    trained.strategy.task_aware = True  # as single_model: a model per task
    with pytest.raises(PredictError, match="pass --task-id K"):
        predict_folder(trained, synthetic_root / "disc" / "test", tmp_path)


def test_no_checkpoint_or_no_state_is_one_line(run_folder, tmp_path, capsys, synthetic_root):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_folder / "config.json", bare / "config.json")
    args = ["predict", "--images", str(synthetic_root / "disc" / "test")]
    assert main([*args, "--run", str(bare)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the run kept no checkpoints" in err
    saved = files.load_checkpoint(run_folder / "checkpoints" / "task_0.pt")
    plain = {**saved, "strategy": {**saved["strategy"], "detector": None}}
    files.save_checkpoint(bare / "checkpoints" / "task_0.pt", files._plain(plain))
    assert main([*args, "--run", str(bare)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no fitted detector" in err
    assert not math.isnan(auroc_of(run_folder, 0, 0))
