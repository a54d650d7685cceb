"""Perlin noise and DRAEM-style Perlin masks: shapes, values, coverage, determinism."""

from __future__ import annotations

import pytest
import torch

from clad.models.components.perlin import (
    perlin_mask,
    perlin_noise,
    random_perlin_noise,
    rotate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("size", "res"), [((64, 64), (4, 4)), ((37, 50), (3, 5)), ((8, 8), (8, 8))]
)
def test_noise_has_the_requested_shape_and_range(size, res):
    noise = perlin_noise(size, res, gen())
    assert noise.shape == size
    assert noise.dtype == torch.float32
    assert noise.abs().max() <= 1.0
    assert noise.std() > 0.05


def test_noise_is_smooth_at_low_resolution():
    noise = perlin_noise((64, 64), (2, 2), gen())
    step = (noise[1:] - noise[:-1]).abs().max()
    assert step < 0.1  # neighbouring pixels differ little with 32-pixel cells


def test_noise_is_zero_on_lattice_points():
    # Perlin noise vanishes at the lattice corners; with 8 px cells the first pixel centre sits
    # half a pixel away from one, so it is small
    noise = perlin_noise((64, 64), (8, 8), gen())
    assert noise[0, 0].abs() < 0.1


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (256, 256)])
def test_mask_is_binary_and_shaped(size):
    mask = perlin_mask(size, gen())
    assert mask.shape == size
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_mask_coverage_is_in_draem_range():
    g = gen(1)
    coverage = torch.tensor([perlin_mask((64, 64), g).mean().item() for _ in range(100)])
    # measured (seed 1, 100 masks, 64 px): mean 0.04, about 5 % of masks empty, max about 0.2;
    # DRAEM's own masks (threshold 0.5) cover a few percent of the image on average
    assert 0.01 < coverage.mean() < 0.15
    assert (coverage > 0).float().mean() > 0.8
    assert coverage.max() < 0.5


def test_lower_threshold_covers_more():
    low = perlin_mask((64, 64), gen(3), threshold=0.0).mean()
    high = perlin_mask((64, 64), gen(3), threshold=0.5).mean()
    assert low > high


def test_same_seed_same_mask_and_different_seed_different_mask():
    a = perlin_mask((64, 64), gen(5))
    b = perlin_mask((64, 64), gen(5))
    torch.testing.assert_close(a, b)
    c = random_perlin_noise((64, 64), gen(6))
    d = random_perlin_noise((64, 64), gen(7))
    assert not torch.equal(c, d)


def test_rotation_by_zero_is_identity():
    noise = perlin_noise((32, 32), (4, 4), gen())
    torch.testing.assert_close(rotate(noise, 0.0), noise, atol=1e-5, rtol=0)


def test_bad_arguments_fail():
    with pytest.raises(ValueError):
        perlin_noise((0, 8), (1, 1), gen())
    with pytest.raises(ValueError):
        random_perlin_noise((8, 8), gen(), min_scale=3, max_scale=3)
