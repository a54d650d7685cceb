"""The MVTec AD reader and the in-memory image dataset, on synthetic and hand-made folders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clad.benchmarks.catalog import CLAD_TASK_ORDER, MVTEC_OBJECTS, MVTEC_TEXTURES
from clad.benchmarks.mvtec import (
    DatasetError,
    ImageDataset,
    read_category,
)
from clad.benchmarks.synthetic import generate_dataset
from clad.benchmarks.synthetic_drawing import defect_kinds
from clad.records import Sample
from tests.paths import SHARED_DATA

REAL_MVTEC = SHARED_DATA / "mvtec_ad"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("mvtec"),
        seed=0,
        categories=["stripes", "capsule"],
        image_size=32,
        n_train=4,
        n_test_good=2,
        n_test_per_defect=2,
    )


@pytest.fixture()
def copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic ``capsule`` category that a test may damage."""
    shutil.copytree(root / "capsule", tmp_path / "capsule")
    return tmp_path


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_task_order_and_category_lists() -> None:
    assert len(MVTEC_TEXTURES) == 5 and len(MVTEC_OBJECTS) == 10
    assert set(CLAD_TASK_ORDER) == set(MVTEC_OBJECTS)
    assert CLAD_TASK_ORDER[0] == "hazelnut" and CLAD_TASK_ORDER[-1] == "screw"


def test_read_category_lists_samples_in_order(root: Path) -> None:
    train, test = read_category(root, "capsule")
    assert [s.path.name for s in train] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in train)
    assert all(s.category == "capsule" and s.has_masks for s in train + test)
    defects = sorted(defect_kinds("capsule"))
    assert [s.defect for s in test] == ["good"] * 2 + [d for d in defects for _ in range(2)]
    for sample in test:
        if sample.defect == "good":
            assert sample.label == 0 and sample.mask_path is None
        else:
            assert sample.label == 1
            assert sample.mask_path == (
                root / "capsule" / "ground_truth" / sample.defect / f"{sample.path.stem}_mask.png"
            )
    assert read_category(str(root), "capsule") == (train, test)


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=re.escape(f"dataset root {missing} does not exist")):
        read_category(missing, "capsule")


def test_missing_category_lists_those_found(root: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"'bottle' not found in .*found there: capsule, stripes"
    ):
        read_category(root, "bottle")


def test_missing_or_empty_folders(copy: Path) -> None:
    folder = copy / "capsule"
    shutil.rmtree(folder / "test")
    with pytest.raises(DatasetError, match=re.escape(f"missing test folder {folder / 'test'}")):
        read_category(copy, "capsule")
    (folder / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no .png/.*images in the sub-folders of"):
        read_category(copy, "capsule")
    for path in (folder / "train" / "good").iterdir():
        path.unlink()
    (folder / "train" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(
        DatasetError, match=f"no .* images in {re.escape(str(folder / 'train' / 'good'))}$"
    ):
        read_category(copy, "capsule")
    shutil.rmtree(folder / "train")
    with pytest.raises(DatasetError, match="missing training folder .*train/good"):
        read_category(copy, "capsule")


def test_non_image_and_hidden_files_are_ignored(copy: Path) -> None:
    before = read_category(copy, "capsule")
    train_dir = copy / "capsule" / "train" / "good"
    (train_dir / "readme.txt").write_text("notes")
    (train_dir / ".DS_Store").write_bytes(b"\0")
    shutil.copy(train_dir / "000.png", train_dir / "._000.png")  # macOS resource-fork litter
    (copy / "capsule" / "test" / ".cache").mkdir()
    assert read_category(copy, "capsule") == before


def test_images_directly_in_test_are_an_error(copy: Path) -> None:
    shutil.copy(
        copy / "capsule" / "train" / "good" / "000.png", copy / "capsule" / "test" / "x.png"
    )
    with pytest.raises(DatasetError, match="image.* directly in .*x.png"):
        read_category(copy, "capsule")


def test_missing_mask_names_image_and_expected_path(copy: Path) -> None:
    mask = copy / "capsule" / "ground_truth" / "hole" / "001_mask.png"
    mask.unlink()
    image = copy / "capsule" / "test" / "hole" / "001.png"
    with pytest.raises(DatasetError) as error:
        read_category(copy, "capsule")
    assert str(image) in str(error.value) and str(mask) in str(error.value)


def test_category_without_ground_truth_is_image_level(copy: Path) -> None:
    shutil.rmtree(copy / "capsule" / "ground_truth")
    train, test = read_category(copy, "capsule")
    assert all(not s.has_masks and s.mask_path is None for s in train + test)
    assert sum(s.label for s in test) == 2 * len(defect_kinds("capsule"))
    dataset = ImageDataset(test, image_size=32)
    assert not dataset.has_masks
    assert dataset.masks.sum() == 0


def test_image_dataset_shapes_ranges_and_masks(root: Path) -> None:
    _, test = read_category(root, "capsule")
    dataset = ImageDataset(test, image_size=32)
    assert len(dataset) == len(test) and dataset.samples == test
    assert dataset.labels == [s.label for s in test] and dataset.has_masks
    for index, sample in enumerate(test):
        image, mask, label = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert label == sample.label
        if sample.label == 0:
            assert mask.sum() == 0
        else:  # at native size the mask is exactly the written one
            with Image.open(sample.mask_path) as written:
                expected = torch.from_numpy(np.array(written) == 255)
            assert mask.sum() > 0
            assert torch.equal(mask[0].bool(), expected)
            with Image.open(sample.path) as raw:
                pixels = torch.from_numpy(np.array(raw)).permute(2, 0, 1).float() / 255
            assert torch.equal(image, pixels)


def test_image_dataset_resize_and_crop(root: Path) -> None:
    _, test = read_category(root, "stripes")
    resized = ImageDataset(test, image_size=48)
    cropped = ImageDataset(test, image_size=48, crop_size=40)
    image, mask, _ = cropped[len(test) - 1]
    assert image.shape == (3, 40, 40) and mask.shape == (1, 40, 40)
    full_image, full_mask, _ = resized[len(test) - 1]
    assert torch.equal(image, full_image[:, 4:44, 4:44])
    assert torch.equal(mask, full_mask[:, 4:44, 4:44])
    with pytest.raises(ValueError, match="crop_size must be in"):
        ImageDataset(test, image_size=32, crop_size=40)
    with pytest.raises(DatasetError, match="at least one sample"):
        ImageDataset([], image_size=32)


def test_grayscale_images_become_rgb(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # [32, 32] mode L
    write_image(tmp_path / "g.png", gray)
    dataset = ImageDataset([Sample(tmp_path / "g.png", 0, "good", "g", None, False)], 32)
    image, mask, label = dataset[0]
    assert image.shape == (3, 32, 32) and label == 0 and mask.sum() == 0
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.allclose(image[0], torch.from_numpy(gray).float() / 255)


def test_corrupt_image_or_mask_names_the_file(copy: Path) -> None:
    _, test = read_category(copy, "capsule")
    defective = next(s for s in test if s.label == 1)
    good = test[0]
    good.path.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {good.path}")):
        ImageDataset([good], image_size=32)
    data = defective.mask_path.read_bytes()
    defective.mask_path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {defective.mask_path}")):
        ImageDataset([defective], image_size=32)
    defective.path.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {defective.path}")):
        ImageDataset([defective], image_size=32)


def test_mask_of_wrong_size_is_an_error(copy: Path) -> None:
    _, test = read_category(copy, "capsule")
    defective = next(s for s in test if s.label == 1)
    write_image(defective.mask_path, np.zeros((16, 16), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"mask .* is 16x16 pixels but its image .* is 32x32"):
        ImageDataset([defective], image_size=32)


def test_defective_sample_without_mask_in_a_masked_category(tmp_path: Path) -> None:
    write_image(tmp_path / "d.png", np.zeros((8, 8, 3), dtype=np.uint8))
    sample = Sample(tmp_path / "d.png", 1, "hole", "c", mask_path=None, has_masks=True)
    with pytest.raises(DatasetError, match="has no mask_path"):
        ImageDataset([sample], image_size=8)


def test_zero_one_coded_masks_are_accepted(tmp_path: Path) -> None:
    write_image(tmp_path / "d.png", np.zeros((8, 8, 3), dtype=np.uint8))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 2:6] = 1
    write_image(tmp_path / "d_mask.png", mask)
    sample = Sample(tmp_path / "d.png", 1, "hole", "c", mask_path=tmp_path / "d_mask.png")
    assert ImageDataset([sample], image_size=8)[0][1].sum() == 8


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_MVTEC.is_dir(), reason=f"real MVTec AD data absent ({REAL_MVTEC})")
def test_reads_real_mvtec_bottle_and_image_level_screw() -> None:
    train, test = read_category(REAL_MVTEC, "bottle")
    assert len(train) == 209 and len(test) == 83 and sum(s.label for s in test) == 63
    defective = [s for s in test if s.label == 1][:2]
    dataset = ImageDataset(defective, image_size=64)
    assert dataset.has_masks and all(dataset[i][1].sum() > 0 for i in range(2))
    train, test = read_category(REAL_MVTEC, "screw")
    assert all(not s.has_masks and s.mask_path is None for s in train + test)
    dataset = ImageDataset(test[-2:], image_size=64)
    assert dataset[0][0].shape == (3, 64, 64) and not dataset.has_masks
