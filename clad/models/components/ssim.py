"""Structural-similarity and smoothing maps (kornia) used by reconstruction detectors."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor


def ssim_distance_map(x: Tensor, y: Tensor, window: int = 11) -> Tensor:
    """1 - SSIM per pixel, averaged over channels: [B, C, H, W] x2 -> [B, H, W] in [0, 2]."""
    ssim = kornia.metrics.ssim(x, y, window_size=window)  # [B, C, H, W]
    return (1.0 - ssim).mean(dim=1)


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of [B, H, W] maps with a kernel of 2 * ceil(4 sigma) + 1 pixels.

    kornia's separable ``gaussian_blur2d`` with reflect borders, computed as two matrix
    products ``G_H @ map @ G_W^T`` with the blur (padding folded in) as an [n, n] matrix per
    side (``blur_matrix``): the same operator, several times faster on a CPU than a
    one-channel convolution with a long kernel. Equal to kornia's result to float rounding
    (test); kornia itself is used where the kernel is wider than the map (its own error)."""
    if sigma <= 0:
        return maps
    size = 2 * int(4 * sigma + 0.5) + 1
    height, width = maps.shape[-2:]
    if size // 2 >= min(height, width):
        blurred = kornia.filters.gaussian_blur2d(
            maps[:, None], (size, size), (sigma, sigma), border_type="reflect"
        )
        return blurred[:, 0]
    rows = blur_matrix(height, size, float(sigma), maps.device, maps.dtype)  # [H, H]
    cols = blur_matrix(width, size, float(sigma), maps.device, maps.dtype)  # [W, W]
    return rows @ maps @ cols.T


def upsample_smooth(patch: Tensor, size: Sequence[int], sigma: float) -> Tensor:
    """Patch scores [B, h, w] upsampled bilinearly (``align_corners=False``) to ``size``
    (H, W) and smoothed by ``gaussian_smooth``: ``A_H @ patch @ A_W^T`` with
    ``A = blur @ upsample`` ([H, h]), the product of the two linear maps each side (both are
    separable), so no [B, H, W] intermediate is blurred. Equal to interpolate-then-blur to
    float rounding (test)."""
    height, width = int(size[0]), int(size[1])
    span = 2 * int(4 * sigma + 0.5) + 1 if sigma > 0 else 1
    if sigma > 0 and span // 2 >= min(height, width):
        maps = F.interpolate(patch[:, None], size=(height, width), mode="bilinear")
        return gaussian_smooth(maps[:, 0], sigma)
    rows = _upsample_blur(patch.shape[-2], height, float(sigma), patch.device, patch.dtype)
    cols = _upsample_blur(patch.shape[-1], width, float(sigma), patch.device, patch.dtype)
    return rows @ patch @ cols.T


@functools.lru_cache(maxsize=32)
def blur_matrix(n: int, size: int, sigma: float, device: torch.device, dtype) -> Tensor:
    """[n, n] matrix of kornia's 1-D Gaussian (``size`` taps) with reflect padding: row i
    holds the weights of output i over the inputs."""
    kernel = kornia.filters.get_gaussian_kernel1d(size, sigma, dtype=torch.float64)[0]
    radius = size // 2
    index = torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None]  # [n, size]
    index = index.abs()  # reflect at 0 (edge not repeated)
    index = torch.where(index > n - 1, 2 * (n - 1) - index, index)  # reflect at n - 1
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.scatter_add_(1, index, kernel.expand(n, -1).contiguous())
    return matrix.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _upsample_blur(n_in: int, n_out: int, sigma: float, device: torch.device, dtype) -> Tensor:
    """[n_out, n_in]: 1-D linear upsampling (align_corners=False), then the blur."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]  # [1, n_in, n_in]
    upsample = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T
    if sigma > 0:
        size = 2 * int(4 * sigma + 0.5) + 1
        upsample = blur_matrix(n_out, size, sigma, torch.device("cpu"), torch.float64) @ upsample
    return upsample.to(device=device, dtype=dtype)


def top_fraction_mean(maps: Tensor, fraction: float) -> Tensor:
    """Mean of the largest ``fraction`` of each map's pixels: [B, H, W] -> [B]."""
    flat = maps.flatten(1)  # [B, H*W]
    k = max(1, int(round(fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)
