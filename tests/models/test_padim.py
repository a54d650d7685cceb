"""PaDiM: streaming Gaussian statistics equal a joint fit; maps and state."""

from __future__ import annotations

import torch
from torch.utils.data import ConcatDataset, TensorDataset

from clad.models.base import training_for
from clad.models.components.gaussian import Accumulator, add_stats, gaussian
from clad.models.padim import Padim

SIZE = 32


def images(n: int, seed: int, level: float = 0.5) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = (level + 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return TensorDataset(x, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


def tiny(**overrides) -> Padim:
    params = {"backbone": "resnet18", "weights": "none", "n_features": 20}
    training = training_for(Padim, device="cpu", batch_size=3)
    return Padim(**{**params, **overrides}, training=training)


def test_streaming_sums_give_the_sample_covariance():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(50, 5, 7, generator=g, dtype=torch.float64) + 3  # [N, D, P]
    sums = Accumulator()
    for part in data.split(13):
        sums.add(part)
    mean, cov = gaussian(sums.stats(), eps=0.0)
    torch.testing.assert_close(mean, data.mean(0).T)
    for p in range(7):
        torch.testing.assert_close(cov[p], torch.cov(data[:, :, p].T))


def test_accumulator_keeps_the_covariance_under_a_large_common_offset():
    """float32 batch products about a shift: the covariance of features whose mean is 100x
    their spread still matches a float64 computation to 1e-4 (raw float32 sums of x x^T would
    lose it to cancellation)."""
    g = torch.Generator().manual_seed(1)
    data = 100 + torch.randn(300, 6, 4, generator=g, dtype=torch.float64)  # [N, D, P]
    sums = Accumulator()
    for part in data.split(32):
        sums.add(part.float())
    mean, cov = gaussian(sums.stats(), eps=0.0)
    reference = data.float().double()  # the float32 inputs the accumulator saw
    torch.testing.assert_close(mean, reference.mean(0).T, rtol=1e-6, atol=1e-5)
    for p in range(4):
        torch.testing.assert_close(cov[p], torch.cov(reference[:, :, p].T), rtol=1e-4, atol=1e-4)


def test_pooled_statistics_equal_a_joint_fit_on_the_union():
    torch.manual_seed(0)
    detector = tiny()
    first, second = images(5, 0, 0.4), images(7, 1, 0.6)
    pooled = detector.merge_memories(
        [detector.build_memory(first), detector.build_memory(second)], budget=None
    )
    joint = detector.build_memory(ConcatDataset([first, second]))
    mean_p, cov_p = gaussian(pooled, 0.01)
    mean_j, cov_j = gaussian(joint, 0.01)
    torch.testing.assert_close(mean_p, mean_j, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cov_p, cov_j, rtol=1e-5, atol=1e-5)
    assert float(pooled["count"]) == 12


def test_add_stats_is_exact_sum():
    a, b = Accumulator(), Accumulator()
    a.add(torch.ones(2, 3, 2))
    b.add(2 * torch.ones(3, 3, 2))
    total = add_stats([a.stats(), b.stats()])
    assert float(total["count"]) == 5
    torch.testing.assert_close(total["total"], torch.full((2, 3), 8.0, dtype=torch.float64))


def test_maps_and_image_score_are_consistent():
    torch.manual_seed(0)
    detector = tiny()
    detector.fit(images(8, 0))
    x = images(3, 4)[:][0]
    x[0, :, 4:16, 4:16] = 1.0
    scores = detector.predict(x)
    assert scores.pixel.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(scores.image, scores.pixel.flatten(1).amax(1))
    assert scores.image[0] > scores.image[1:].max()


def test_embed_is_the_channel_subset_of_the_upsampled_concatenation():
    """The subset is taken per layer before upsampling; that must equal the definition
    (upsample every layer to the finest grid, concatenate, then pick ``channels`` in order)."""
    torch.manual_seed(3)
    detector = tiny(n_features=40)
    x = images(2, 5)[:][0]
    features = detector.extractor(x)
    grid = features[0].shape[-2:]
    upsampled = [torch.nn.functional.interpolate(f, size=grid, mode="nearest") for f in features]
    expected = torch.cat(upsampled, 1).index_select(1, detector.channels)
    assert not torch.equal(detector.channels, detector.channels.sort().values)  # a real shuffle
    torch.testing.assert_close(detector.embed(x), expected, rtol=0, atol=0)
