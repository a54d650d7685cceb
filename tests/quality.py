"""The synthetic-set quality tests' shared loop: fit a detector on a category's normal images,
score its test images, return image and pixel AUROC."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Subset

from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.synthetic import generate_dataset
from clad.metrics import image_auroc, pixel_auroc

QUALITY_CATEGORIES = ["stripes", "disc", "nut"]
HELD_OUT = 4  # validation images held out of the 32 training images


def quality_root(
    tmp_path_factory, name: str, size: int, categories: Sequence[str] = QUALITY_CATEGORIES
) -> Path:
    """The synthetic categories the quality tests use (seed 0, 32 training images each)."""
    root = tmp_path_factory.mktemp(name)
    generate_dataset(
        root,
        seed=0,
        categories=list(categories),
        image_size=size,
        n_train=32,
        n_test_good=10,
        n_test_per_defect=4,
    )
    return root


def evaluate_detector(
    make: Callable[[], object],
    root: Path,
    category: str,
    size: int,
    label: str,
    validation: Literal["first", "last"] | None = "first",
    seed: int = 0,
) -> tuple[float, float]:
    """Fit ``make()`` (built after seeding torch with ``seed``) on a category's training images
    and return its (image AUROC, pixel AUROC) on the test images. ``validation``: which
    ``HELD_OUT`` training images are held out for validation (the first or the last), or None
    to fit on all of them without a validation set."""
    train, test = read_category(root, category)
    data = ImageDataset(train, size)
    n = len(data)
    torch.manual_seed(seed)
    detector = make()
    if validation is None:
        detector.fit(data)
    elif validation == "first":
        detector.fit(Subset(data, range(HELD_OUT, n)), Subset(data, range(HELD_OUT)))
    else:
        detector.fit(Subset(data, range(n - HELD_OUT)), Subset(data, range(n - HELD_OUT, n)))
    images, masks, labels = zip(*ImageDataset(test, size))
    scores = detector.predict(torch.stack(images))
    assert torch.isfinite(scores.image).all(), f"{label} {category}: non-finite image scores"
    image = image_auroc(np.array(labels), scores.image.numpy())
    pixel = pixel_auroc(torch.stack(masks)[:, 0].numpy(), scores.pixel.numpy())
    print(f"{label} {category}: image AUROC {image:.3f}, pixel AUROC {pixel:.3f}")
    return image, pixel


def sound_quality_task(folder: Path) -> tuple[Any, Tensor, Tensor]:
    """(task, test clips, labels) of one synthetic machine type (gearbox, DCASE 2022 layout,
    2 sections, 30 + 3 training and 10 test clips of 2 s, 32 mels x 64 frames, seed 0): the set
    the audio detectors' quality floors are measured on."""
    from torch.utils.data import DataLoader

    from clad.benchmarks.stream import build_tasks
    from clad.config import DatasetConfig

    config = DatasetConfig(
        name="synthetic_audio",
        root=str(folder / "data"),
        categories=["gearbox"],
        val_fraction=0.15,
        audio={
            "n_mels": 32,
            "frames": 64,
            "cache_dir": str(folder / "cache"),
            "synthetic": {
                "layout": "dcase2022",
                "sections": 2,
                "n_train": 30,
                "n_train_target": 3,
                "n_test": 10,
                "duration_s": 2.0,
            },
        },
    )
    (task,) = build_tasks(config, seed=0)
    x, _, labels = next(iter(DataLoader(task.test, batch_size=len(task.test))))
    return task, x, labels


def sound_scores(detector: Any, task: Any, x: Tensor, labels: Tensor) -> dict:
    """The DCASE metrics (AUC, pAUC, ...) of ``detector`` fitted on ``task``."""
    from clad.metrics import evaluate_audio_scores

    detector.fit(task.train, task.val)
    return evaluate_audio_scores(
        labels.numpy(), detector.predict(x).image.numpy(), task.test_sections, task.test_domains
    )
