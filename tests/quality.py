"""Shared pieces of the synthetic-set quality tests of the trained feature detectors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.synthetic import generate_dataset
from clad.metrics import image_auroc, pixel_auroc

QUALITY_CATEGORIES = ["stripes", "disc", "nut"]


def quality_root(tmp_path_factory, name: str, size: int) -> Path:
    """The synthetic categories the quality tests use (seed 0, 32 training images each)."""
    root = tmp_path_factory.mktemp(name)
    generate_dataset(
        root,
        seed=0,
        categories=QUALITY_CATEGORIES,
        image_size=size,
        n_train=32,
        n_test_good=10,
        n_test_per_defect=4,
    )
    return root


def evaluate_detector(
    make: Callable[[], object], root: Path, category: str, size: int, label: str
) -> tuple[float, float]:
    """Fit ``make()`` (seeded) on a category's training images, the first 4 held out for
    validation, and return its (image AUROC, pixel AUROC) on the test images."""
    train, test = read_category(root, category)
    data = ImageDataset(train, size)
    torch.manual_seed(0)
    detector = make()
    detector.fit(Subset(data, range(4, len(data))), Subset(data, range(4)))
    images, masks, labels = zip(*ImageDataset(test, size))
    scores = detector.predict(torch.stack(images))
    image = image_auroc(np.array(labels), scores.image.numpy())
    pixel = pixel_auroc(torch.stack(masks)[:, 0].numpy(), scores.pixel.numpy())
    print(f"{label} {category}: image AUROC {image:.3f}, pixel AUROC {pixel:.3f}")
    return image, pixel
