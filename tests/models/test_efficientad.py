"""EfficientAD: PDN and autoencoder shapes, the hard-feature loss, map normalisation, teacher
loading, the ImageNet penalty switch, and a quality floor on the synthetic set."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from clad.models.base import training_for
from clad.models.components.pdn import Autoencoder, pdn_output_side, pdn_small
from clad.models.efficientad import EfficientAD, jitter_colours, quantile
from tests.quality import evaluate_detector, quality_root

SIZE = 32
TINY = {
    "pdn_width": 8,
    "out_channels": 16,
    "weights": "none",
    "distill_steps": 2,
}
TINY_TRAINING = training_for(EfficientAD, epochs=2, batch_size=4, device="cpu")


def images(n: int, seed: int = 0, size: int = SIZE) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return TensorDataset(x, torch.zeros(n, 1, size, size), torch.zeros(n).long())


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("side", [64, 96, 256])
def test_pdn_output_side_matches_the_network(side, padding):
    out = pdn_small(8, padding, width=4)(torch.zeros(1, 3, side, side))
    assert out.shape[-1] == pdn_output_side(side, padding)
    assert out.shape[1] == 8


def test_paper_sizes_at_256_px():
    # PDN-small without padding gives the paper's 56 x 56 x 384 teacher output
    assert pdn_output_side(256, padding=False) == 56
    teacher = pdn_small(384, padding=False)
    # 4x4x3x128, 4x4x128x256, 3x3x256x256, 4x4x256x384 weights plus biases
    assert sum(p.numel() for p in teacher.parameters()) == 2_694_144
    ae = Autoencoder(384)
    out = ae(torch.zeros(1, 3, 256, 256), (56, 56))
    assert out.shape == (1, 384, 56, 56)


@pytest.mark.parametrize("side", [32, 64, 128])
def test_autoencoder_fits_any_side(side):
    out = Autoencoder(16)(torch.zeros(2, 3, side, side), (side // 4, side // 4))
    assert out.shape == (2, 16, side // 4, side // 4)


def test_quantile_matches_torch():
    x = torch.randn(10_001)
    for q in (0.0, 0.5, 0.9, 0.995, 0.999, 1.0):
        torch.testing.assert_close(quantile(x, q), torch.quantile(x, q))


def test_hard_feature_loss_averages_the_top_tail():
    detector = EfficientAD(**TINY, training=TINY_TRAINING)
    x = torch.rand(2, 3, SIZE, SIZE)
    terms = detector.losses(x, x, None)
    net = detector.network
    teacher = net.teacher_features(x)
    student = net.student(net.normalise_input(x))[:, :16]
    distance = (teacher - student).pow(2)
    expected = distance[distance >= torch.quantile(distance.flatten(), 0.999)].mean()
    torch.testing.assert_close(terms["hard"], expected)
    assert set(terms) == {"hard", "ae", "stae", "loss"}


def test_colour_jitter_is_seeded_and_bounded():
    x = torch.rand(4, 3, 16, 16)
    a = jitter_colours(x, torch.Generator().manual_seed(0))
    b = jitter_colours(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_map_normalisation_uses_validation_quantiles():
    torch.manual_seed(0)
    detector = EfficientAD(**TINY, training=TINY_TRAINING)
    val = images(6, seed=1)
    detector.fit(images(8), val)
    q = detector.network.quantiles
    assert torch.isfinite(q).all() and q[1] > q[0] and q[3] > q[2]
    # on the validation images, the normalised ST map's 0.9 quantile maps to 0, 0.995 to 0.1
    x = torch.stack([item[0] for item in val])
    map_st, _ = detector.network.maps(x)
    normalised = 0.1 * (map_st - q[0]) / (q[1] - q[0])
    torch.testing.assert_close(quantile(normalised, 0.9), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(quantile(normalised, 0.995), torch.tensor(0.1), atol=1e-5, rtol=0)
    assert "quantiles" in {k.split(".")[-1] for k in detector.state_dict()["network"]}


def test_training_reduces_the_student_loss_and_logs_terms():
    torch.manual_seed(0)
    detector = EfficientAD(**TINY, training=replace(TINY_TRAINING, epochs=6, lr=1e-3))
    detector.fit(images(8), images(4, seed=1))
    history = detector.history
    assert {"train_hard", "train_ae", "train_stae", "train_loss", "val_loss"} <= set(history[0])
    assert history[-1]["train_hard"] < history[0]["train_hard"]


def test_predict_before_fit_fails():
    with pytest.raises(RuntimeError, match="fit"):
        EfficientAD(**TINY, training=TINY_TRAINING).predict(torch.rand(1, 3, SIZE, SIZE))


def test_too_small_images_fail_clearly():
    detector = EfficientAD(**TINY, padding=False, training=TINY_TRAINING)
    with pytest.raises(ValueError, match="at least 64"):
        detector.fit(images(4, size=32))


def test_teacher_weights_file_skips_distillation(tmp_path, caplog):
    torch.manual_seed(3)
    teacher = pdn_small(16, True, width=8)
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="clad.models.efficientad"):
        detector = EfficientAD(**TINY, teacher_weights=str(path), training=TINY_TRAINING)
        detector.fit(images(8), images(4, seed=1))
    assert "teacher loaded from" in caplog.text
    assert "distilling" not in caplog.text
    for ours, theirs in zip(detector.network.teacher.parameters(), teacher.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_distillation_and_penalty_switch_are_logged(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="clad.models.efficientad"):
        EfficientAD(**TINY, training=TINY_TRAINING).fit(images(8), images(4, seed=1))
    assert "distilling the PDN teacher" in caplog.text
    assert "penalty is off" in caplog.text


def test_penalty_images_are_used_when_given(tmp_path):
    for i in range(4):
        folder = tmp_path / "tiny" / "train" / f"n0{i}" / "images"
        folder.mkdir(parents=True)
        array = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"n0{i}_0.JPEG")
    torch.manual_seed(0)
    detector = EfficientAD(
        **TINY, imagenet_train_path=str(tmp_path / "tiny"), training=TINY_TRAINING
    )
    detector.fit(images(8), images(4, seed=1))
    assert "train_penalty" in detector.history[0]


def test_fit_continues_from_the_current_teacher():
    torch.manual_seed(0)
    detector = EfficientAD(**TINY, training=TINY_TRAINING)
    detector.fit(images(8), images(4, seed=1))
    teacher = [p.clone() for p in detector.network.teacher.parameters()]
    detector.fit(images(8, seed=2), images(4, seed=3))
    for before, after in zip(teacher, detector.network.teacher.parameters()):
        torch.testing.assert_close(before, after)  # distilled once, then frozen


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return quality_root(tmp_path_factory, "efficientad_quality", 64, categories=["nut"])


@pytest.mark.slow
def test_efficientad_separates_synthetic_defects(synthetic_root):
    training = training_for(EfficientAD, epochs=80, batch_size=8, lr=1e-3, patience=0, device="cpu")
    image, pixel = evaluate_detector(
        lambda: EfficientAD(pdn_width=32, out_channels=64, distill_steps=300, training=training),
        synthetic_root,
        "nut",
        64,
        "efficientad",
        validation="last",
    )
    # measured (this test, seed 0, 64 px, 28 train / 4 val images, efficientnet-lite0 ImageNet
    # weights, CPU, about 5 min): image 0.950, pixel 0.922. With another validation split
    # 0.900 / 0.928; after 20 epochs only 0.69 / 0.31. Floors leave margin for other platforms
    # but fail an untrained or broken model.
    assert image >= 0.8
    assert pixel >= 0.85
