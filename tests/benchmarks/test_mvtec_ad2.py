"""The MVTec AD 2 reader (own validation split, public test set, refused private sets), the
synthetic generator's MVTec AD 2 layout, and a stream on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clad.benchmarks.catalog import MVTEC_AD2_CATEGORIES, VISA_CATEGORIES, check_categories
from clad.benchmarks.generated import read_marker
from clad.benchmarks.mvtec import ImageDataset
from clad.benchmarks.mvtec_ad2 import read_category_ad2
from clad.benchmarks.spec import DatasetConfig
from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic import generate_dataset
from clad.benchmarks.synthetic_drawing import defect_kinds
from clad.cli import generate
from clad.config import load_config
from clad.errors import ConfigError, DatasetError
from tests.paths import REPO

SMALL = {"image_size": 32, "n_train": 10, "n_test_good": 2, "n_test_per_defect": 1}
N_VALIDATION = 2  # max(2, 10 // 5)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("ad2"), seed=0, categories=["nut"], layout="mvtec_ad2", **SMALL
    )


@pytest.fixture()
def copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "ad2")
    return tmp_path / "ad2"


def test_categories_and_default_order() -> None:
    assert MVTEC_AD2_CATEGORIES == (
        "can",
        "fabric",
        "fruit_jelly",
        "rice",
        "sheet_metal",
        "vial",
        "wallplugs",
        "walnuts",
    )
    assert DatasetConfig(name="mvtec_ad2").category_list == MVTEC_AD2_CATEGORIES


def test_layout_written_is_mvtec_ad2(root: Path) -> None:
    folder = root / "nut"
    n_bad = len(defect_kinds("nut"))
    assert sorted(p.name for p in folder.iterdir()) == [
        ".complete",
        "test_public",
        "train",
        "validation",
    ]
    assert len(list((folder / "train" / "good").glob("*.png"))) == 10
    assert len(list((folder / "validation" / "good").glob("*.png"))) == N_VALIDATION
    assert sorted(p.name for p in (folder / "test_public").iterdir()) == [
        "bad",
        "good",
        "ground_truth",
    ]
    bad = sorted(p.stem for p in (folder / "test_public" / "bad").glob("*.png"))
    masks = sorted(p.name for p in (folder / "test_public" / "ground_truth" / "bad").iterdir())
    assert len(bad) == n_bad and masks == [f"{stem}_mask.png" for stem in bad]
    with Image.open(folder / "test_public" / "ground_truth" / "bad" / masks[0]) as mask:
        assert set(np.unique(np.array(mask)).tolist()) == {0, 255}
    assert read_marker(folder)["layout"] == "mvtec_ad2"
    assert read_marker(folder)["n_validation"] == N_VALIDATION


def test_reader_keeps_the_datasets_own_validation_split(root: Path) -> None:
    train, validation, test = read_category_ad2(root, "nut")
    assert [s.path for s in train] == sorted((root / "nut" / "train" / "good").glob("*.png"))
    assert [s.path for s in validation] == sorted(
        (root / "nut" / "validation" / "good").glob("*.png")
    )
    assert all(s.label == 0 for s in train + validation)
    n_bad = len(defect_kinds("nut"))
    assert [s.label for s in test] == [0, 0] + [1] * n_bad
    assert [s.defect for s in test] == ["good", "good"] + ["bad"] * n_bad
    assert test[2].mask_path.name == f"{test[2].path.stem}_mask.png"
    masks = ImageDataset(test, image_size=32).masks
    assert masks[:2].sum() == 0 and (masks[2:].flatten(1).sum(1) > 0).all()


def test_missing_validation_folder_and_mask_are_named(copy: Path) -> None:
    mask = next((copy / "nut" / "test_public" / "ground_truth" / "bad").iterdir())
    mask.unlink()
    with pytest.raises(DatasetError, match=f"has no mask; expected .*{mask.name}"):
        read_category_ad2(copy, "nut")
    shutil.rmtree(copy / "nut" / "validation")
    with pytest.raises(DatasetError, match=r"missing validation .* folder .*validation/good"):
        read_category_ad2(copy, "nut")


def test_layout_errors(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_category_ad2(tmp_path / "nope", "can")
    with pytest.raises(DatasetError, match="category 'can' not found .* found there: nut"):
        read_category_ad2(copy, "can")
    shutil.copy(copy / "nut" / "train" / "good" / "000.png", copy / "nut" / "test_public")
    with pytest.raises(DatasetError, match="directly in"):
        read_category_ad2(copy, "nut")
    (copy / "nut" / "test_public" / "000.png").unlink()
    (copy / "nut" / "test_public" / "crack").mkdir()
    with pytest.raises(DatasetError, match="unexpected folder\\(s\\) crack"):
        read_category_ad2(copy, "nut")


@pytest.mark.parametrize("split", ["test_private", "test_private_mixed"])
def test_private_test_sets_are_refused(root: Path, split: str) -> None:
    with pytest.raises(DatasetError, match=f"{split} set has no public labels.*evaluation server"):
        read_category_ad2(root, "nut", test_split=split)
    config = DatasetConfig(name="mvtec_ad2", root=str(root), image_size=32, test_split=split)
    with pytest.raises(DatasetError, match="no public labels"):
        build_tasks(config, 0)  # refused before any folder is looked at
    with pytest.raises(ValueError, match="test_split .* applies to MVTec AD 2 only"):
        DatasetConfig(name="mvtec", test_split=split)


def test_config_defaults_and_unknown_categories(tmp_path: Path) -> None:
    assert DatasetConfig(name="mvtec_ad2").root == "data/mvtec_ad2"
    synthetic = DatasetConfig(name="synthetic", synthetic={"layout": "mvtec_ad2"})
    assert synthetic.root == "data/synthetic_mvtec_ad2"
    (tmp_path / "can").mkdir()
    dataset = DatasetConfig(name="mvtec_ad2", root=str(tmp_path), categories=["nut"])
    with pytest.raises(ConfigError, match="'nut' has no folder in .*; folders there: can"):
        check_categories(dataset.name, dataset.root, dataset.category_list)


def test_build_tasks_validates_on_validation_good(tmp_path: Path) -> None:
    config = DatasetConfig(
        name="synthetic",
        root=str(tmp_path / "data"),
        categories=["stripes", "disc"],
        image_size=32,
        val_fraction=0.5,  # ignored: MVTec AD 2 brings its own validation split
        synthetic={"layout": "mvtec_ad2", **SMALL},
    )
    tasks = build_tasks(config, seed=0)
    assert [t.name for t in tasks] == ["stripes", "disc"]
    for task in tasks:
        n_bad = len(defect_kinds(task.name))
        assert (len(task.train), len(task.val), len(task.test)) == (10, N_VALIDATION, 2 + n_bad)
        folder = Path(config.root) / task.name / "validation" / "good"
        expected = ImageDataset(read_category_ad2(config.root, task.name)[1], image_size=32).images
        got = np.stack([task.val[i][0].numpy() for i in range(len(task.val))])
        assert np.allclose(got, expected.numpy() / 255.0)
        assert len(list(folder.glob("*.png"))) == N_VALIDATION
        assert [task.test[i][2] for i in range(len(task.test))] == [0, 0] + [1] * n_bad


def test_cli_writes_the_mvtec_ad2_layout(tmp_path: Path, capsys) -> None:
    args = ["--out", str(tmp_path), "--layout", "mvtec_ad2", "--categories", "capsule"]
    args += ["--image-size", "32", "--n-train", "3", "--n-test-good", "1"]
    args += ["--n-test-per-defect", "1"]
    assert generate.synthetic(args) == 0
    assert "2 validation" in capsys.readouterr().out
    train, validation, test = read_category_ad2(tmp_path, "capsule")
    assert (len(train), len(validation), len(test)) == (3, 2, 1 + len(defect_kinds("capsule")))


def test_shipped_protocol_configs_name_the_dataset() -> None:
    repo = REPO
    for folder, name, categories in (
        ("visa", "visa", list(VISA_CATEGORIES)),
        ("mvtec_ad2", "mvtec_ad2", list(MVTEC_AD2_CATEGORIES)),
    ):
        paths = sorted((repo / "configurations" / folder).glob("[!_]*.json"))
        assert len(paths) == 9  # patchcore, padim, dne x cl, naive, multi_task
        for path in paths:
            config = load_config(path, check_machine=False)  # the data are not here
            # DNE resizes to 224 without a crop, as its official code; the others to 256
            side = 224 if config.detector["name"] == "dne" else 256
            assert config.dataset.name == name and config.dataset.image_size == side
            assert config.dataset.categories == categories
            assert json.loads(path.read_text())["base"].startswith("_")
