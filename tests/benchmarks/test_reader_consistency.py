"""Readers refuse inconsistent data by name: a VisA split file that lists an image twice (in
train and test: a leak) or a path outside the root, an MVTec 3D-AD point map of another size
than its image."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from clad.benchmarks.mvtec3d import RGBDDataset, read_category_3d, xyz_path
from clad.benchmarks.synthetic import generate_dataset
from clad.benchmarks.synthetic3d import generate_dataset_3d
from clad.benchmarks.visa import read_category_visa
from clad.errors import DatasetError

SMALL = {"image_size": 32, "n_train": 4, "n_test_good": 2, "n_test_per_defect": 1}


@pytest.fixture(scope="module")
def visa_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("visa"), seed=0, categories=["stripes"], layout="visa", **SMALL
    )


@pytest.fixture()
def visa(visa_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(visa_root, tmp_path / "visa")
    return tmp_path / "visa"


def rows(root: Path) -> list[dict[str, str]]:
    with (root / "split_csv" / "1cls.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(root: Path, table: list[dict[str, str]]) -> Path:
    path = root / "split_csv" / "1cls.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(table)
    return path


def test_an_image_in_train_and_test_is_a_leak_named_with_both_lines(visa: Path) -> None:
    table = rows(visa)
    first = next(i for i, r in enumerate(table) if r["split"] == "train")
    leaked = {**table[first], "split": "test"}
    table.append(leaked)
    path = write_rows(visa, table)
    with pytest.raises(DatasetError) as caught:
        read_category_visa(visa, "stripes")
    message = str(caught.value)
    assert message.startswith(f"{path}: image {leaked['image']} is listed twice")
    assert f"line {first + 2} (train)" in message and f"line {len(table) + 1} (test)" in message
    assert "leaks" in message


def test_an_image_listed_twice_in_one_split_is_refused(visa: Path) -> None:
    table = rows(visa)
    table.append(dict(table[0]))
    table.append({**table[1], "image": "./" + table[1]["image"]})  # the same file, spelt apart
    write_rows(visa, table)
    with pytest.raises(DatasetError, match="listed twice, line 2 .* counted twice"):
        read_category_visa(visa, "stripes")
    write_rows(visa, [*rows(visa)[:-2], table[-1]])
    with pytest.raises(DatasetError, match="listed twice, line 3 "):
        read_category_visa(visa, "stripes")


@pytest.mark.parametrize("column", ["image", "mask"])
def test_a_path_outside_the_root_is_refused_naming_the_line(visa: Path, tmp_path, column) -> None:
    table = rows(visa)
    index = next(i for i, r in enumerate(table) if r["label"] == "anomaly")
    outside = tmp_path / "outside.png"
    shutil.copy(visa / table[index][column], outside)  # a file that exists, elsewhere
    for text in (str(outside), "../outside.png"):
        table[index] = {**table[index], column: text}
        path = write_rows(visa, table)
        with pytest.raises(DatasetError) as caught:
            read_category_visa(visa, "stripes")
        message = str(caught.value)
        assert message.startswith(f"{path} line {index + 2}: {column} {text!r} is outside")


def test_an_absolute_path_inside_the_root_is_accepted(visa: Path) -> None:
    table = rows(visa)
    table[0] = {**table[0], "image": str(visa / table[0]["image"])}
    write_rows(visa, table)
    train, _ = read_category_visa(visa, "stripes")
    assert len(train) == SMALL["n_train"]


# ----------------------------------------------------------------------------- MVTec 3D-AD


@pytest.fixture(scope="module")
def root3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset_3d(
        tmp_path_factory.mktemp("s3d"),
        seed=0,
        categories=["dome"],
        image_size=32,
        n_train=2,
        n_test_good=1,
        n_test_per_defect=1,
    )


@pytest.mark.parametrize("mode", ["depth", "rgb+depth"])
def test_a_point_map_of_another_size_than_its_image_names_both(root3d, tmp_path, mode) -> None:
    import tifffile

    shutil.copytree(root3d / "dome", tmp_path / "dome")
    train, _, _ = read_category_3d(tmp_path, "dome")
    victim = xyz_path(train[1])
    xyz = tifffile.imread(victim)
    tifffile.imwrite(victim, np.ascontiguousarray(xyz[:24, :, :]))  # 24 x 32, image 32 x 32
    with pytest.raises(DatasetError) as caught:
        RGBDDataset(train, 32, mode)
    message = str(caught.value)
    assert f"point map {victim} is 24x32 but its image {train[1].path} is 32x32" in message
    RGBDDataset(train, 32, "rgb")  # the RGB mode never reads the point maps
