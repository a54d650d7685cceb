"""The VisA reader (split file, instance-numbered masks, errors), the synthetic generator's VisA
layout, and a stream and a short run on it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clad.benchmarks.catalog import VISA_CATEGORIES, check_categories
from clad.benchmarks.generated import MARKER, read_marker
from clad.benchmarks.mvtec import ImageDataset
from clad.benchmarks.spec import DatasetConfig
from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic import generate_category, generate_dataset
from clad.benchmarks.synthetic_drawing import defect_kinds
from clad.benchmarks.visa import read_category_visa
from clad.cli import generate, main
from clad.errors import ConfigError, DatasetError
from clad.records import Sample

SMALL = {"image_size": 32, "n_train": 4, "n_test_good": 2, "n_test_per_defect": 1}
CATEGORIES = ["stripes", "disc"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("visa"), seed=0, categories=CATEGORIES, layout="visa", **SMALL
    )


@pytest.fixture()
def copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic VisA tree that a test may damage."""
    shutil.copytree(root, tmp_path / "visa")
    return tmp_path / "visa"


def csv_rows(root: Path) -> list[dict[str, str]]:
    with (root / "split_csv" / "1cls.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(root: Path, rows: list[dict[str, str]], columns=None) -> None:
    columns = columns or ["object", "split", "label", "image", "mask"]
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_categories_and_default_order() -> None:
    assert len(VISA_CATEGORIES) == 12
    assert VISA_CATEGORIES[0] == "candle" and VISA_CATEGORIES[-1] == "pipe_fryum"
    assert DatasetConfig(name="visa").category_list == VISA_CATEGORIES


def test_layout_written_is_visa(root: Path) -> None:
    data = root / "disc" / "Data"
    n_bad = len(defect_kinds("disc"))
    assert sorted(p.name for p in (data / "Images" / "Normal").iterdir()) == [
        f"{i:04d}.JPG" for i in range(6)
    ]
    assert len(list((data / "Images" / "Anomaly").glob("*.JPG"))) == n_bad
    masks = sorted((data / "Masks" / "Anomaly").glob("*.png"))
    assert [p.stem for p in masks] == [f"{i:03d}" for i in range(n_bad)]
    for path in masks:
        with Image.open(path) as mask:
            values = np.unique(np.array(mask))
        assert mask.mode == "L" and values[0] == 0 and 1 in values and values.max() < 10
    with Image.open(data / "Images" / "Normal" / "0000.JPG") as image:
        assert image.format == "JPEG" and image.size == (32, 32)
    rows = csv_rows(root)
    assert [r["object"] for r in rows] == ["stripes"] * 10 + ["disc"] * 10
    assert (root / "split_csv" / MARKER).is_file()
    assert read_marker(root / "disc")["layout"] == "visa"


def test_reader_lists_train_and_test_with_nonzero_masks(root: Path) -> None:
    train, test = read_category_visa(root, "disc")
    assert len(train) == 4 and all(s.label == 0 and s.mask_path is None for s in train)
    assert [s.label for s in test] == [0, 0, 1, 1, 1, 1]
    assert [s.defect for s in test] == ["good"] * 2 + ["anomaly"] * 4
    assert all(s.mask_nonzero and s.has_masks for s in train + test)
    assert [s.path.name for s in test] == [
        "0004.JPG",
        "0005.JPG",
        *[f"00{i}.JPG" for i in range(4)],
    ]
    assert test[2].mask_path == root / "disc" / "Data" / "Masks" / "Anomaly" / "000.png"
    dataset = ImageDataset(test, image_size=32)
    assert dataset.masks[:2].sum() == 0
    assert all(dataset.masks[i].sum() > 0 for i in range(2, 6))  # value-1 masks count


def test_instance_numbered_masks_mark_every_nonzero_pixel(tmp_path: Path) -> None:
    image = tmp_path / "0.JPG"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(image, quality=95)
    values = np.zeros((8, 8), np.uint8)
    values[0, :3], values[2, :2], values[4, :1] = 1, 2, 3  # three instances: 6 pixels
    mask = tmp_path / "0.png"
    Image.fromarray(values).save(mask)
    visa = Sample(image, 1, "anomaly", "x", mask, True, mask_nonzero=True)
    got = ImageDataset([visa], image_size=8).masks[0, 0]
    assert torch.equal(got, torch.from_numpy(values > 0)) and got.sum() == 6
    mvtec_rule = Sample(image, 1, "anomaly", "x", mask, True)  # > 127 when the max exceeds 1
    assert ImageDataset([mvtec_rule], image_size=8).masks.sum() == 0
    binary = tmp_path / "b.png"
    Image.fromarray((values > 0).astype(np.uint8) * 255).save(binary)
    default = Sample(image, 1, "anomaly", "x", binary, True)
    assert torch.equal(ImageDataset([default], image_size=8).masks[0, 0], got)  # unchanged


def test_missing_root_and_split_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_category_visa(tmp_path / "nope", "candle")
    with pytest.raises(DatasetError, match=r"split_csv/1cls\.csv.*object,split,label,image,mask"):
        read_category_visa(tmp_path, "candle")


def test_missing_columns_and_absent_category_are_named(copy: Path) -> None:
    with pytest.raises(DatasetError, match="categories listed there: disc, stripes"):
        read_category_visa(copy, "candle")
    write_csv(copy, csv_rows(copy), ["object", "split", "image"])
    with pytest.raises(DatasetError, match="lacks the column\\(s\\) label, mask"):
        read_category_visa(copy, "disc")


def test_missing_image_or_mask_names_file_and_line(copy: Path) -> None:
    rows = csv_rows(copy)
    (copy / rows[12]["image"]).unlink()  # disc's third row (csv line 14)
    with pytest.raises(DatasetError, match=r"line 14: image .*0002\.JPG does not exist"):
        read_category_visa(copy, "disc")
    (copy / rows[7]["mask"]).unlink()  # stripes' second anomaly (csv line 9)
    with pytest.raises(DatasetError, match=r"line 9: mask .*Masks/Anomaly/001\.png of image"):
        read_category_visa(copy, "stripes")


def test_bad_rows_are_refused(copy: Path) -> None:
    rows = csv_rows(copy)
    cases = [
        ({"mask": ""}, 7, "empty mask column"),
        ({"split": "val"}, 7, "split 'val' unknown; expected one of train, test"),
        ({"label": "bad"}, 7, "label 'bad' unknown; expected one of normal, anomaly"),
        ({"label": "anomaly"}, 0, "anomalous training image"),
    ]
    for change, index, message in cases:
        edited = [dict(r) for r in rows]
        edited[index].update(change)
        write_csv(copy, edited)
        with pytest.raises(DatasetError, match=message):
            read_category_visa(copy, "stripes")


def test_categories_written_one_at_a_time_keep_the_split_file_complete(tmp_path: Path) -> None:
    generate_category(tmp_path, "stripes", 0, 32, 2, 1, 1, layout="visa")
    generate_category(tmp_path, "nut", 0, 32, 2, 1, 1, layout="visa")
    assert {r["object"] for r in csv_rows(tmp_path)} == {"stripes", "nut"}
    generate_category(tmp_path, "stripes", 0, 32, 3, 1, 1, layout="visa")  # new parameters
    rows = csv_rows(tmp_path)
    assert [r["object"] for r in rows].count("stripes") == 3 + 1 + len(defect_kinds("stripes"))
    assert [r["object"] for r in rows][-1] == "nut"  # built-in order: textures, then objects
    for category in ("stripes", "nut"):
        train, test = read_category_visa(tmp_path, category)
        assert len(train) == (3 if category == "stripes" else 2) and test
    (tmp_path / "split_csv" / "1cls.csv").unlink()  # a complete category repairs a lost file
    generate_category(tmp_path, "nut", 0, 32, 2, 1, 1, layout="visa")
    assert {r["object"] for r in csv_rows(tmp_path)} == {"stripes", "nut"}
    assert not [p for p in tmp_path.rglob(".*partial*")]


def test_other_layouts_are_rewritten_and_real_folders_never_touched(tmp_path: Path) -> None:
    mvtec = generate_category(tmp_path / "a", "disc", 0, 32, 2, 1, 1)
    assert "layout" not in read_marker(mvtec)  # mvtec markers are as they were
    visa = generate_category(tmp_path / "a", "disc", 0, 32, 2, 1, 1, layout="visa")
    assert not (visa / "train").exists() and (visa / "Data" / "Images" / "Normal").is_dir()
    real = tmp_path / "real"
    (real / "split_csv").mkdir(parents=True)
    (real / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    with pytest.raises(FileExistsError, match="not written by the synthetic generator"):
        generate_category(real, "disc", 0, 32, 2, 1, 1, layout="visa")
    assert sorted(p.name for p in real.iterdir()) == ["split_csv"]  # nothing written
    assert (real / "split_csv" / "1cls.csv").read_text() == "object,split,label,image,mask\n"


def test_config_defaults_and_unknown_categories(tmp_path: Path) -> None:
    synthetic = DatasetConfig(name="synthetic", synthetic={"layout": "visa"})
    assert synthetic.root == "data/synthetic_visa" and synthetic.image_layout == "visa"
    assert DatasetConfig(name="synthetic").root == "data/synthetic"
    assert DatasetConfig(name="visa").root == "data/visa"
    with pytest.raises(ValueError, match="applies to the 2D synthetic set"):
        DatasetConfig(name="synthetic3d", synthetic={"layout": "visa"})
    (tmp_path / "candle").mkdir()
    (tmp_path / "capsules").mkdir()
    dataset = DatasetConfig(name="visa", root=str(tmp_path), categories=["candel"])
    with pytest.raises(ConfigError, match="'candel' has no folder in .* \\(did you mean 'candle'"):
        check_categories(dataset.name, dataset.root, dataset.category_list)


def test_build_tasks_on_the_synthetic_visa_layout(tmp_path: Path) -> None:
    config = DatasetConfig(
        name="synthetic",
        root=str(tmp_path / "data"),
        categories=["checker", "nut"],
        image_size=32,
        val_fraction=0.25,
        synthetic={"layout": "visa", **SMALL},
    )
    tasks = build_tasks(config, seed=0)
    assert [t.name for t in tasks] == ["checker", "nut"] and all(t.has_masks for t in tasks)
    for task in tasks:
        assert (len(task.train), len(task.val), len(task.test)) == (3, 1, 2 + 4)
        masks = torch.stack([task.test[i][1] for i in range(len(task.test))])
        labels = [task.test[i][2] for i in range(len(task.test))]
        assert labels == [0, 0, 1, 1, 1, 1]
        assert masks[:2].sum() == 0 and (masks[2:].flatten(1).sum(1) > 0).all()


def test_cli_writes_the_visa_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--layout", "visa", "--categories", "weave"]
    args += [
        "--image-size",
        "32",
        "--n-train",
        "2",
        "--n-test-good",
        "1",
        "--n-test-per-defect",
        "1",
    ]
    assert generate.synthetic(args) == 0
    out = capsys.readouterr().out
    assert "layout visa" in out and "split_csv" in out
    assert read_category_visa(tmp_path, "weave")[0]


def test_a_short_run_on_a_synthetic_visa_stream(tmp_path: Path) -> None:
    config = {
        "run_name": "visa_tiny",
        "dataset": {
            "name": "synthetic",
            "root": str(tmp_path / "data"),
            "categories": ["stripes", "disc"],
            "image_size": 32,
            "synthetic": {"layout": "visa", **SMALL, "n_train": 6},
        },
        "detector": {"name": "padim", "backbone": "resnet18", "weights": "none"},
        "strategy": {"name": "naive"},
        "training": {"batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 0},
        "output": {"dir": str(tmp_path / "out")},
        "wandb": {"enabled": False},
    }
    path = tmp_path / "visa.json"
    path.write_text(json.dumps(config))
    assert main(["--parameters_path", str(path), "--seed", "0"]) == 0
    record = json.loads((tmp_path / "out" / "visa_tiny" / "seed_0" / "metrics.json").read_text())
    assert record["tasks"] == ["stripes", "disc"] and record["completed_tasks"] == 2
    pixel = np.array(record["matrices"]["pixel_auroc"], dtype=float)
    assert pixel.shape == (2, 2) and np.isfinite(np.diag(pixel)).all()
