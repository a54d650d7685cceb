"""Anomaly-source textures (DTD folders, the procedural fallback, DRAEM's augmentation) and
EfficientAD's penalty images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from clad.errors import DatasetError
from clad.models.components.anomaly_sources import (
    FolderTextures,
    PenaltyImages,
    ProceduralTextures,
    augment_texture,
    texture_source,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_image(path, size=(40, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


@pytest.fixture()
def dtd_like(tmp_path):
    """DTD's layout: images/<class>/<class>_NNNN.jpg, plus files that are not images."""
    root = tmp_path / "dtd" / "images"
    for i, name in enumerate(
        ["banded/banded_0001.jpg", "banded/banded_0002.jpg", "cracked/cracked_0001.png"]
    ):
        write_image(root / name, seed=i)
    (root / "banded" / "notes.txt").write_text("not an image")
    write_image(root / ".hidden" / "x.png", seed=9)
    return root


def test_folder_textures_finds_images_recursively(dtd_like):
    source = FolderTextures(dtd_like)
    assert len(source) == 3
    assert all(p.suffix in (".jpg", ".png") for p in source.files)


def test_folder_texture_samples_are_square_and_in_range(dtd_like):
    source = FolderTextures(dtd_like)
    texture = source.sample(32, gen())
    assert texture.shape == (3, 32, 32)
    assert 0.0 <= texture.min() and texture.max() <= 1.0
    torch.testing.assert_close(source.sample(32, gen(4)), source.sample(32, gen(4)))


def test_missing_folder_error_names_the_path(tmp_path):
    missing = tmp_path / "no" / "dtd"
    with pytest.raises(DatasetError, match=str(missing)):
        FolderTextures(missing)
    with pytest.raises(DatasetError, match=str(missing)):
        texture_source(str(missing))


def test_folder_without_images_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="holds no images"):
        FolderTextures(tmp_path / "empty")


def test_procedural_fallback_is_logged_and_seeded(caplog):
    with caplog.at_level(logging.INFO, logger="clad.models.components.anomaly_sources"):
        source = texture_source(None)
    assert isinstance(source, ProceduralTextures)
    assert "procedural" in caplog.text
    a = source.sample(48, gen(2))
    assert a.shape == (3, 48, 48)
    assert 0.0 <= a.min() and a.max() <= 1.0
    torch.testing.assert_close(a, source.sample(48, gen(2)))


def test_procedural_textures_vary():
    g = gen(0)
    textures = torch.stack([ProceduralTextures().sample(32, g) for _ in range(20)])
    assert textures.std(dim=0).mean() > 0.1  # draws differ from one another
    assert (textures.flatten(1).std(dim=1) > 0.01).all()  # and none is a flat colour


def test_augment_texture_keeps_shape_range_and_is_seeded():
    texture = ProceduralTextures().sample(32, gen(1))
    out = augment_texture(texture, gen(3))
    assert out.shape == texture.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    torch.testing.assert_close(out, augment_texture(texture, gen(3)))
    changed = [not torch.equal(augment_texture(texture, gen(s)), texture) for s in range(5)]
    assert any(changed)


def test_penalty_images_use_tiny_imagenet_train_only(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_image(root / "train" / "n01" / "images" / "n01_0.JPEG", size=(64, 64), seed=0)
    write_image(root / "train" / "n02" / "images" / "n02_0.JPEG", size=(64, 64), seed=1)
    write_image(root / "val" / "images" / "val_0.JPEG", size=(64, 64), seed=2)
    images = PenaltyImages(root, 32)
    assert len(images) == 2
    assert all("train" in p.parts for p in images.files)
    assert images[0].shape == (3, 32, 32)
    bigger = images.resized((48, 40))
    assert bigger.files is images.files
    assert bigger[1].shape == (3, 48, 40)


def test_penalty_images_grayscale_probability_one(tmp_path):
    write_image(tmp_path / "a.png", seed=0)
    image = PenaltyImages(tmp_path, 16, grayscale_probability=1.0)[0]
    torch.testing.assert_close(image[0], image[1])


def test_penalty_images_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        PenaltyImages(tmp_path / "nope", 32)
