"""Frozen backbones' outputs are reused for inputs seen before, with identical scores, and a
detector whose own network trains never scores with stale features."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import clad.models  # noqa: F401  (fills the detector table)
from clad.models.base import training_for
from clad.models.components.backbone import FEATURE_CACHE, FeatureExtractor
from clad.registry import detector_table

SIZE = 32
SETTINGS = {
    "patchcore": {},
    "padim": {},
    "stfpm": {},
    "cfa": {},
    "fastflow": {"flow_steps": 2},
}
EPOCHS = {"stfpm": 1, "cfa": 1, "fastflow": 1}  # the trained detectors' epochs


def data(n: int, seed: int) -> TensorDataset:
    images = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(images, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


def make(name: str):
    cls = detector_table()[name]
    training = training_for(cls, device="cpu", batch_size=4, epochs=EPOCHS.get(name))
    return cls(backbone="resnet18", weights="none", training=training, **SETTINGS[name])


@pytest.fixture(autouse=True)
def fresh_cache():
    FEATURE_CACHE.configure(64)
    yield
    FEATURE_CACHE.configure(1024)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_reused_features_give_identical_scores(name):
    torch.manual_seed(0)
    detector = make(name)
    detector.fit(data(8, 0))
    x = data(3, 1).tensors[0]
    first = detector.predict(x)  # computes and stores the backbone's outputs
    assert FEATURE_CACHE.misses >= 1 and FEATURE_CACHE.hits == 0
    second = detector.predict(x)  # reuses them
    assert FEATURE_CACHE.hits >= 1
    FEATURE_CACHE.configure(0)  # off: computed afresh
    third = detector.predict(x)
    for scores in (second, third):
        assert torch.equal(first.image, scores.image)
        assert torch.equal(first.pixel, scores.pixel)


def test_a_detector_that_trains_on_top_never_scores_stale_features():
    torch.manual_seed(0)
    detector = make("cfa")
    detector.fit(data(8, 0))
    x = data(3, 1).tensors[0]
    before = detector.predict(x)
    detector.fit(data(8, 2))  # the adaptor and the memory change; the frozen backbone does not
    after = detector.predict(x)  # the backbone's outputs come from the cache
    assert FEATURE_CACHE.hits >= 1
    FEATURE_CACHE.configure(0)
    assert torch.equal(after.pixel, detector.predict(x).pixel)
    assert not torch.equal(before.pixel, after.pixel)


def test_extractors_with_other_weights_do_not_share_entries():
    torch.manual_seed(0)
    a = FeatureExtractor("resnet18", ("layer1",), "none")
    b = FeatureExtractor("resnet18", ("layer1",), "none")  # another random initialisation
    x = torch.rand(2, 3, SIZE, SIZE)
    assert not torch.equal(a.reused(x)[0], b.reused(x)[0])
    assert torch.equal(a.reused(x)[0], a(x)[0])


def test_a_new_random_extractor_never_reads_a_freed_ones_entries():
    """``id()`` of a freed extractor is given to the next object of its size: a cache keyed by
    it handed a new random extractor (even another architecture) the old one's features."""
    import gc

    x = torch.rand(2, 3, SIZE, SIZE)
    for _ in range(20):
        first = FeatureExtractor("resnet18", ("layer1",), "none")
        first.reused(x)
        del first
        gc.collect()
        second = FeatureExtractor("resnet18", ("layer2",), "none")
        assert torch.equal(second.reused(x)[0], second(x)[0])


def test_the_budget_is_kept():
    FEATURE_CACHE.configure(1)  # 1 MB
    extractor = FeatureExtractor("resnet18", ("layer1",), "none")
    for seed in range(20):  # 2 x 64 x 8 x 8 float32 = 32 KB per batch of 2
        extractor.reused(
            torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        )
    assert 0 < FEATURE_CACHE.bytes <= 2**20
