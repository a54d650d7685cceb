"""Quality floor: on the synthetic set the U-Net autoencoder must separate defective from
normal images clearly better than chance, so a broken model cannot pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.synthetic import generate_dataset
from clad.metrics import image_auroc, pixel_auroc
from clad.models.autoencoder import UNetAE

CATEGORIES = ["stripes", "nut"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    generate_dataset(
        root,
        seed=0,
        categories=CATEGORIES,
        image_size=64,
        n_train=32,
        n_test_good=10,
        n_test_per_defect=4,
    )
    return root


@pytest.mark.parametrize("category", CATEGORIES)
def test_unet_autoencoder_separates_synthetic_defects(data_root, category):
    train, test = read_category(data_root, category)
    torch.manual_seed(0)
    detector = UNetAE(epochs=30, batch_size=8, lr=2e-3, patience=0, device="cpu")
    detector.fit(ImageDataset(train, 64))
    images, masks, labels = zip(*ImageDataset(test, 64))
    scores = detector.predict(torch.stack(images))
    image = image_auroc(np.array(labels), scores.image.numpy())
    pixel = pixel_auroc(torch.stack(masks)[:, 0].numpy(), scores.pixel.numpy())
    print(f"{category}: image AUROC {image:.3f}, pixel AUROC {pixel:.3f}")
    # measured (seed 0, 30 epochs, 64 px, CPU): stripes 1.000 / 0.996, nut 1.000 / 0.992
    # (image / pixel AUROC); with 8 epochs nut reached only 0.69 / 0.92. Floors leave margin
    # for other platforms' float rounding but fail an untrained or broken model.
    assert image >= 0.90
    assert pixel >= 0.95
