"""PatchCore: bank size, explicit memory, merging, and quality floors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from clad.models.base import training_for
from clad.models.patchcore import PatchCore
from tests.paths import SHARED_DATA

SIZE = 32


def images(n: int, seed: int, level: float = 0.5) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = (level + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return TensorDataset(x, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


def tiny(**overrides) -> PatchCore:
    params = {"backbone": "resnet18", "weights": "none"}
    training = training_for(PatchCore, device="cpu", batch_size=4)
    return PatchCore(**{**params, **overrides}, training=training)


def test_bank_is_the_coreset_of_the_training_patches():
    torch.manual_seed(0)
    detector = tiny(coreset_ratio=0.25)
    detector.fit(images(6, 0))
    patches = 6 * (SIZE // 8) ** 2
    assert detector.memory["bank"].shape == (patches // 4, 128 + 256)
    # the rows and their selection radii (float32 each)
    assert detector.memory_bytes() == patches // 4 * (384 + 1) * 4
    radius = detector.memory["radius"]
    assert radius[0] == float("inf") and bool((radius[1:-1] >= radius[2:]).all())
    assert set(detector.timings) >= {"feature", "coreset"}


def test_fit_replaces_the_memory_and_predict_keeps_it():
    torch.manual_seed(0)
    detector = tiny()
    detector.fit(images(4, 0))
    first = detector.memory["bank"].clone()
    detector.fit(images(4, 1, level=0.3))
    assert not torch.equal(first, detector.memory["bank"])
    bank = detector.memory["bank"].clone()
    detector.predict(images(2, 5)[:][0])
    assert torch.equal(bank, detector.memory["bank"])


def test_faiss_and_torch_backends_score_the_same():
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    a = tiny(knn_backend="faiss")
    a.fit(images(4, 0))
    b = tiny(knn_backend="torch")
    b.load_state_dict(a.state_dict())
    x = images(3, 9, level=0.6)[:][0]
    sa, sb = a.predict(x), b.predict(x)
    torch.testing.assert_close(sa.image, sb.image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sa.pixel, sb.pixel, rtol=1e-4, atol=1e-4)


def test_merge_respects_the_budget():
    torch.manual_seed(0)
    detector = tiny()
    one, two = detector.build_memory(images(4, 0)), detector.build_memory(images(4, 1, 0.2))
    merged = detector.merge_memories([one, two], budget=10)
    assert merged["bank"].shape[0] == 10
    union = detector.merge_memories([one, two], budget=None)
    assert union["bank"].shape[0] == one["bank"].shape[0] + two["bank"].shape[0]


def separated_banks(n_tasks: int = 3, rows: int = 200, dim: int = 16):
    """Banks of tasks whose features lie far apart, each in greedy order with its radii."""
    g = torch.Generator().manual_seed(0)
    detector = tiny(projection_dim=dim)
    banks = []
    for t in range(n_tasks):
        spread = 0.5 + t  # tasks of different spread get different shares
        features = 100.0 * t + spread * torch.randn(rows * 4, dim, generator=g)
        banks.append(detector.merge_memories([{"bank": features}], budget=rows))
    return detector, banks


def test_radius_merge_keeps_greedy_prefixes_by_radius():
    detector, banks = separated_banks()
    merged = detector.merge_memories(banks, budget=300)
    assert merged["bank"].shape[0] == 300 and merged["radius"].shape == (300,)
    kept, dropped = [], []
    for bank in banks:
        same = bank["bank"][:, None] == merged["bank"][None]  # [rows, 300, dim]
        is_kept = same.all(2).any(1)  # [rows]
        count = int(is_kept.sum())
        assert bool(is_kept[:count].all())  # each task keeps a prefix of its greedy order
        kept.append(bank["radius"][is_kept])
        dropped.append(bank["radius"][~is_kept])
    assert float(torch.cat(kept).min()) >= float(torch.cat(dropped).max())
    shares = [len(k) for k in kept]
    assert shares[0] < shares[1] < shares[2]  # the wider task gets more rows
    # a bank cut to its own budget is its greedy prefix
    shrunk = detector.shrink_memory(banks[1], 50)
    assert torch.equal(shrunk["bank"], banks[1]["bank"][:50])


def test_radius_merge_drops_what_an_earlier_bank_already_holds():
    """A task that repeats an earlier one (the same rows, a little noise) adds little: its rows
    lie close to the bank's, so the merge keeps the earlier bank's rows first."""
    detector, banks = separated_banks(n_tasks=2)
    g = torch.Generator().manual_seed(2)
    repeat = banks[0]["bank"] + 1e-3 * torch.randn(banks[0]["bank"].shape, generator=g)
    again = {"bank": repeat, "radius": banks[0]["radius"].clone()}
    merged = detector.merge_memories([banks[0], again], budget=200)
    assert torch.equal(
        merged["bank"],
        banks[0]["bank"][torch.argsort(banks[0]["radius"], descending=True, stable=True)],
    )
    # a task of its own (far away) still gets its share
    merged = detector.merge_memories([banks[0], again, banks[1]], budget=300)
    from_third = (merged["bank"][:, None] == banks[1]["bank"][None]).all(2).any(1)
    assert int(from_third.sum()) > 50


def test_radius_merge_covers_separated_tasks_as_the_coreset_of_the_union():
    """Where tasks do not overlap, the radius merge covers the union as well as rerunning
    the greedy coreset on it (covering radius within 15 %)."""
    detector, banks = separated_banks()
    union = torch.cat([b["bank"] for b in banks])
    by_radius = detector.merge_memories(banks, budget=240)["bank"]
    detector.merge = "coreset"
    torch.manual_seed(1)
    by_coreset = detector.merge_memories(banks, budget=240)["bank"]
    cover = [float(torch.cdist(union, b).min(1).values.max()) for b in (by_radius, by_coreset)]
    assert cover[0] <= 1.15 * cover[1]


def test_anomalies_score_higher_than_normal_images():
    """A pasted bright square must stand out, with its map peaking where it is."""
    torch.manual_seed(0)
    detector = tiny(weights="none", coreset_ratio=0.5)
    detector.fit(images(8, 0))
    normal = images(4, 3)[:][0]
    anomalous = normal.clone()
    anomalous[:, :, 8:20, 8:20] = 1.0
    scores = detector.predict(torch.cat([normal, anomalous]))
    assert scores.image[4:].min() > scores.image[:4].max()
    inside = scores.pixel[4:, 8:20, 8:20].mean()
    outside = scores.pixel[4:, 24:, 24:].mean()
    assert inside > outside


REAL = SHARED_DATA / "mvtec_ad"


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "bottle").is_dir(), reason=f"real MVTec bottle not found at {REAL}")
def test_real_bottle_quality_with_lite0():
    """PatchCore with efficientnet-lite0 at 128 px on real bottle (measured 256 px: 1.000 image
    and 0.972 pixel AUROC); the floor catches a broken model."""
    from sklearn.metrics import roc_auc_score

    from clad.benchmarks.mvtec import ImageDataset, read_category

    train, test = read_category(REAL, "bottle")
    torch.manual_seed(0)
    detector = PatchCore(coreset_ratio=0.1, training=training_for(PatchCore, device="cpu"))
    detector.fit(ImageDataset(train, 128))
    test_set = ImageDataset(test, 128)
    x = test_set.images.float() / 255
    scores = torch.cat([detector.predict(x[i : i + 32]).image for i in range(0, len(x), 32)])
    assert roc_auc_score(np.array(test_set.labels), scores.numpy()) > 0.97


def test_incremental_search_scores_as_a_search_of_the_whole_bank_over_several_merges():
    """Banks that change as ``cl`` changes them (a coreset of the last bank and a new task's
    rows, within a budget): the detector that keeps each test batch's nearest rows scores every
    batch as the one that searches the whole bank, and searches only what changed."""
    torch.manual_seed(0)
    incremental = tiny(coreset_ratio=0.5)
    torch.manual_seed(0)  # the same random backbone
    brute = tiny(coreset_ratio=0.5, incremental_search=False)
    tests = [images(3, 100 + k, level)[:][0] for k, level in enumerate((0.2, 0.5, 0.8, 0.4))]
    for t, level in enumerate((0.2, 0.5, 0.8, 0.4)):
        memory = incremental.build_memory(images(4, t, level))
        parts = [memory] if incremental.memory is None else [incremental.memory, memory]
        merged = incremental.merge_memories(parts, budget=40)
        incremental.set_memory(merged)
        brute.set_memory(merged)
        for x in tests:
            a, b = incremental.predict(x), brute.predict(x)
            torch.testing.assert_close(a.image, b.image, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(a.pixel, b.pixel, rtol=1e-6, atol=1e-6)
    stats = incremental.search_cache.stats
    patches = len(tests) * 3 * (SIZE // 8) ** 2
    assert stats["new_rows"] == 3 * patches  # after every merge but the first
    assert stats["full"] == patches + stats["researched"] < 2 * patches


def test_incremental_search_is_a_detector_setting():
    assert tiny().search_cache is not None
    assert tiny(incremental_search=False).search_cache is None
