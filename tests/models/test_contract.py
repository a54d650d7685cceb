"""Contract tests over the whole detector registry (tiny settings, random-init backbones): the
checks of ``clad.testing``, which a plugin detector runs with ``check_detector``."""

from __future__ import annotations

import pytest

import clad.models  # noqa: F401  (fills the detector table)
from clad.errors import ConfigError
from clad.models.base import Training, training_for
from clad.registry import detector_table, validate_params
from clad.testing import (
    DETECTOR_CHECKS,
    ContractError,
    DetectorCase,
    check_detector,
    detector_case,
)

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
    "dcase_ae": {"n_mels": 32, "frames": 5, "hidden": 16, "bottleneck": 4, "depth": 2},
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
    "pix2pix_inpaint": {"ngf": 4, "ndf": 4, "depth": 5, "smoothing_sigma": 1.0},
    "pix2pix_scaling": {
        "downscaled_side": 8,
        "ngf": 4,
        "ndf": 4,
        "depth": 5,
        "smoothing_sigma": 1.0,
    },
    "padim": {"weights": "none", "backbone": "resnet18"},
    "dne": {"weights": "none", "backbone": "resnet18"},
    "ucad": {"vit": "vit_tiny_patch16_224", "weights": "none", "feature_layer": 1},
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


def case(name: str) -> DetectorCase:
    """Detector ``name`` with its TINY settings, as ``clad.testing.check_detector`` builds it."""
    cls = detector_table()[name]
    training = {k: v for k, v in TINY_TRAINING.items() if k in cls.training_keys}
    return detector_case(name, TINY[name], training, SIZE)


def test_every_registered_detector_has_contract_settings():
    assert set(detector_table()) <= set(TINY), set(detector_table()) - set(TINY)


def test_a_setting_the_detector_does_not_take_fails():
    cls = detector_table()["conv_ae"]
    with pytest.raises(ConfigError, match="epochz"):
        validate_params(cls, {"epochz": 1}, "detector conv_ae")


@pytest.mark.parametrize("check", DETECTOR_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("name", sorted(detector_table()))
def test_every_detector_keeps_the_contract(name, check):
    """``clad.testing``'s checks, the ones a plugin detector runs with ``check_detector``."""
    check(case(name))


def test_a_broken_detector_fails_the_checks_by_name():
    class Forgetful(detector_table()["conv_ae"]):
        """Loads no state: the round trip must catch it."""

        def load_state_dict(self, state: dict) -> None:
            self.history = list(state["history"])  # counts as fitted, weights stay random

    with pytest.raises(ContractError, match="Forgetful'.*state round trip"):
        check_detector(Forgetful, {}, TINY_TRAINING)
