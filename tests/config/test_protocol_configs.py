"""The shipped real-protocol configurations run the reference methods: replay mixed into every
batch as CLAD does, DNE at the official code's input size and continual rule, AEGAN-AD's DCASE
files with its official window sampling."""

from __future__ import annotations

import pytest

from clad.config import load_config
from clad.models.base import TrainedDetector
from clad.registry import detector_table
from tests.paths import REPO

CONFIGS = REPO / "configurations"
PROTOCOLS = ("mvtec", "visa", "mvtec_ad2")
REPLAY_FILES = sorted(
    path
    for protocol in PROTOCOLS
    for path in (CONFIGS / protocol).glob("*_replay.json")
    if "downscaled" not in path.name and "generative" not in path.name
)


@pytest.mark.parametrize("path", REPLAY_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_replay_configs_mix_memory_into_every_batch_of_a_trained_detector(path):
    config = load_config(path, check_machine=False)
    trained = issubclass(detector_table()[config.detector["name"]], TrainedDetector)
    # memory-bank detectors make one pass over the images: nothing to mix (refused)
    assert config.strategy.get("mixing", "dataset") == ("batch" if trained else "dataset")


def test_replay_configs_are_found():
    names = {path.name for path in REPLAY_FILES}
    assert {"stfpm_replay.json", "cfa_replay.json", "vae_latent_replay.json"} <= names


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dne_configs_resize_to_224_without_a_crop_and_refit_as_the_official_code(protocol):
    for path in sorted((CONFIGS / protocol).glob("dne_*.json")):
        config = load_config(path, check_machine=False)
        assert config.dataset.image_size == 224 and config.dataset.crop_size is None, path
    cl = load_config(CONFIGS / protocol / "dne_cl.json", check_machine=False)
    assert cl.strategy == {"name": "cl", "variant": "resample"}


@pytest.mark.parametrize("year", ["2020", "2022"])
def test_dcase_configs_use_aegans_official_window_sampling(year):
    for path in sorted((CONFIGS / f"dcase{year}").glob("aegan_*.json")):
        config = load_config(path, check_machine=False)
        assert config.detector.get("patches_per_clip") is None, path  # every window, each epoch
        assert config.training.batch_size == 512  # windows per batch, as the official code
