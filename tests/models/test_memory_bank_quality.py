"""Quality floors of PatchCore and PaDiM with efficientnet-lite0's ImageNet weights.

Measured on the synthetic set at 96 px (16 training images, seed 0), image / pixel AUROC:
PatchCore checker 1.000 / 0.932, disc 1.000 / 0.928; PaDiM checker 1.000 / 0.953, disc
0.958 / 0.961. The same detectors on a randomly initialised backbone (the stand-in for a broken
feature path) reach only 0.79 / 0.77 and 0.65 / 0.66 (PatchCore), 0.77 / 0.81 and 0.54 / 0.78
(PaDiM): the floors lie between.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import clad.models  # noqa: F401  (fills the detector table)
from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.synthetic import generate_dataset
from clad.models.base import training_for
from clad.registry import detector_table

SIZE = 96
IMAGE_FLOOR, PIXEL_FLOOR = 0.9, 0.88


@pytest.fixture(scope="module")
def categories(tmp_path_factory):
    root = generate_dataset(
        tmp_path_factory.mktemp("mb_quality"),
        seed=0,
        categories=["checker", "disc"],
        image_size=SIZE,
        n_train=16,
        n_test_good=6,
        n_test_per_defect=2,
    )
    data = {}
    for name in ("checker", "disc"):
        train, test = read_category(root, name)
        data[name] = (ImageDataset(train, SIZE), ImageDataset(test, SIZE))
    return data


def aurocs(detector_name: str, weights: str, train, test) -> tuple[float, float]:
    torch.manual_seed(0)
    cls = detector_table()[detector_name]
    detector = cls(weights=weights, training=training_for(cls, device="cpu", batch_size=16))
    detector.fit(train)
    x = torch.stack([test[i][0] for i in range(len(test))])
    masks = torch.stack([test[i][1] for i in range(len(test))]).numpy() > 0.5
    scores = detector.predict(x)
    image = roc_auc_score(np.array(test.labels), scores.image.numpy())
    pixel = roc_auc_score(masks.ravel(), scores.pixel.numpy().ravel())
    return image, pixel


@pytest.mark.parametrize("detector_name", ["patchcore", "padim"])
def test_pretrained_features_clear_the_floor(categories, detector_name):
    results = [aurocs(detector_name, "imagenet", *categories[c]) for c in ("checker", "disc")]
    image, pixel = np.mean(results, axis=0)
    assert image >= IMAGE_FLOOR and pixel >= PIXEL_FLOOR, results


@pytest.mark.parametrize("detector_name", ["patchcore", "padim"])
def test_random_features_fail_the_floor(categories, detector_name):
    """The floor is not trivially met: without pretrained features it is missed."""
    image, pixel = aurocs(detector_name, "none", *categories["disc"])
    assert image < IMAGE_FLOOR and pixel < PIXEL_FLOOR, (image, pixel)
