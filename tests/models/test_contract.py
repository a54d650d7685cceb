"""Contract tests over the whole detector registry (tiny settings, random-init backbones)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import clad.models  # noqa: F401  (fills the detector table)
from clad.errors import ConfigError
from clad.models.base import Training, training_for
from clad.registry import detector_table, validate_params

# Per-detector arguments that keep the contract tests fast; every registered detector needs one.
TINY: dict[str, dict] = {
    "aegan": {
        "n_mels": 32,
        "patch_frames": 16,
        "patch_hop": 8,
        "patches_per_clip": 2,
        "nz": 16,
        "ndf": 8,
        "ngf": 8,
    },
    "conv_ae": {},
    "unet_ae": {},
    "stfpm": {"weights": "none", "backbone": "resnet18"},
    "fastflow": {"weights": "none", "backbone": "resnet18", "flow_steps": 2},
    "ast": {
        "weights": "none",
        "kernel_sizes": [3, 5],
        "teacher_hidden": 8,
        "student_hidden": 8,
        "student_blocks": 1,
    },
    "cfa": {"weights": "none", "backbone": "resnet18", "memory_size": 64},
    "efficientad": {
        "weights": "none",
        "distill_steps": 2,
        "out_channels": 16,
        "pdn_width": 8,
    },
    "st": {
        "weights": "none",
        "distill_steps": 2,
        "out_channels": 16,
        "pdn_width": 8,
    },
    "vae": {"input_size": 32, "latent_dim": 16},
    "draem": {"recon_width": 4, "disc_width": 4, "score_window": 7},
    "rdna": {
        "recon_width": 4,
        "seg_width": 4,
        "recon_disc_width": 4,
        "seg_disc_width": 4,
        "score_window": 7,
    },
    "patchcore": {"weights": "none", "backbone": "resnet18"},
    "padim": {"weights": "none", "backbone": "resnet18"},
    "dne": {"weights": "none", "backbone": "resnet18"},
}
# The training settings of every detector: one epoch (trained detectors), batches of 4, the CPU.
TINY_TRAINING = {"epochs": 1, "batch_size": 4, "device": "cpu"}
SIZE = 32


def tiny_training(name: str, **changes) -> Training:
    """Detector ``name``'s own training defaults with TINY_TRAINING and ``changes`` set, for the
    fields it uses (``training_keys``: a memory bank has no epochs)."""
    cls = detector_table()[name]
    given = {**TINY_TRAINING, **changes}
    return training_for(cls, **{k: v for k, v in given.items() if k in cls.training_keys})


def make(name: str):
    """The detector with its TINY arguments and training; a key it does not take fails
    (validate_params)."""
    cls = detector_table()[name]
    arguments = validate_params(cls, TINY[name], f"detector {name}", ("training",))
    return cls(**arguments, training=tiny_training(name))


def normal_data(n: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.2, 0.8, SIZE)[None, None, :].expand(n, 3, SIZE, SIZE)
    images = (base + 0.05 * torch.rand(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return TensorDataset(images, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


def test_every_registered_detector_has_contract_settings():
    assert set(detector_table()) <= set(TINY), set(detector_table()) - set(TINY)


def test_a_setting_the_detector_does_not_take_fails():
    cls = detector_table()["conv_ae"]
    with pytest.raises(ConfigError, match="epochz"):
        validate_params(cls, {"epochz": 1}, "detector conv_ae")


@pytest.fixture(params=sorted(detector_table()))
def name(request) -> str:
    return request.param


def fit_predict(name: str, seed: int):
    torch.manual_seed(seed)
    detector = make(name)
    detector.fit(normal_data(), normal_data(4, seed=1))
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    return detector, x, detector.predict(x)


def test_scores_are_finite_and_shaped(name):
    _, _, scores = fit_predict(name, 0)
    assert scores.image.shape == (3,)
    assert torch.isfinite(scores.image).all()
    if scores.pixel is not None:
        assert scores.pixel.shape == (3, SIZE, SIZE)
        assert torch.isfinite(scores.pixel).all()


def test_deterministic_under_a_seed(name):
    _, _, a = fit_predict(name, 0)
    _, _, b = fit_predict(name, 0)
    torch.testing.assert_close(a.image, b.image)
    if a.pixel is not None:
        torch.testing.assert_close(a.pixel, b.pixel)


def test_predict_has_no_side_effects(name):
    detector, x, first = fit_predict(name, 0)
    second = detector.predict(x)
    torch.testing.assert_close(first.image, second.image)


def test_state_round_trips(name, tmp_path):
    detector, x, before = fit_predict(name, 0)
    path = tmp_path / "state.pt"
    torch.save(detector.state_dict(), path)
    torch.manual_seed(123)
    fresh = make(name)
    fresh.load_state_dict(torch.load(path, weights_only=False))
    after = fresh.predict(x)
    torch.testing.assert_close(before.image, after.image)
    if before.pixel is not None:
        torch.testing.assert_close(before.pixel, after.pixel)


def test_predict_before_fit_fails_naming_the_detector(name):
    torch.manual_seed(0)
    detector = make(name)
    assert not detector.is_fitted
    x = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(RuntimeError, match=f"{name}: predict called before fit"):
        detector.predict(x)


def test_a_loaded_state_counts_as_fitted(name):
    detector, x, _ = fit_predict(name, 0)
    assert detector.is_fitted
    fresh = make(name)
    fresh.load_state_dict(detector.state_dict())
    assert fresh.is_fitted
