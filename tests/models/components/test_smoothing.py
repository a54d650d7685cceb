"""Map smoothing as matrix products: the same operator as kornia's separable Gaussian blur with
reflect borders (and bilinear upsampling before it), to float rounding."""

from __future__ import annotations

import kornia
import pytest
import torch
import torch.nn.functional as F

from clad.models.components.ssim import gaussian_smooth, upsample_smooth


def kornia_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    size = 2 * int(4 * sigma + 0.5) + 1
    return kornia.filters.gaussian_blur2d(
        maps[:, None], (size, size), (sigma, sigma), border_type="reflect"
    )[:, 0]


@pytest.mark.parametrize(
    ("height", "width", "sigma"), [(64, 64, 4.0), (48, 80, 2.3), (40, 40, 0.7)]
)
def test_gaussian_smooth_is_korniass_blur(height, width, sigma):
    maps = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        gaussian_smooth(maps, sigma), kornia_blur(maps, sigma), atol=1e-6, rtol=1e-5
    )


def test_gaussian_smooth_of_a_narrow_map_and_sigma_zero():
    maps = torch.rand(2, 10, 60, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="Padding size"):  # wider kernel than map
        kornia_blur(maps, 4.0)
    with pytest.raises(RuntimeError, match="Padding size"):  # kornia's own error, kept
        gaussian_smooth(maps, 4.0)
    assert gaussian_smooth(maps, 0.0) is maps


@pytest.mark.parametrize(
    ("grid", "size", "sigma"),
    [((28, 28), (224, 224), 4.0), ((8, 10), (64, 80), 1.5), ((7, 7), (56, 56), 0.0)],
)
def test_upsample_smooth_is_interpolate_then_blur(grid, size, sigma):
    patch = torch.rand(4, *grid, generator=torch.Generator().manual_seed(2))
    upsampled = F.interpolate(patch[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    expected = kornia_blur(upsampled, sigma) if sigma > 0 else upsampled
    torch.testing.assert_close(upsample_smooth(patch, size, sigma), expected, atol=1e-6, rtol=1e-5)
