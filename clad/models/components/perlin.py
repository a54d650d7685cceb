"""2D Perlin noise and thresholded Perlin masks (DRAEM's anomaly shapes), in pure torch.

Perlin (SIGGRAPH 1985 / 2002): random unit gradients sit on a lattice of ``res`` cells per axis;
a pixel's value is the gradient dot products with its four cell corners, blended with the
quintic fade ``6t^5 - 15t^4 + 10t^3``. Values lie in about [-0.7, 0.7].

DRAEM (Zavrtanik et al., ICCV 2021) draws a noise with ``2^a x 2^b`` cells, ``a, b`` uniform
in ``[min_scale, max_scale)`` (0 and 6 in its code), rotates it by a random angle in
[-90, 90] degrees and thresholds it at 0.5. ``perlin_mask`` does the same; every random draw
comes from the ``torch.Generator`` passed in, so a seed fixes the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fade(t: Tensor) -> Tensor:
    """Perlin's quintic interpolant ``6t^5 - 15t^4 + 10t^3``."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(size: tuple[int, int], res: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Perlin noise of ``size`` (H, W) with ``res`` (rows, cols) lattice cells: [H, W] float32.

    Any ``size`` works: the noise is drawn on the next multiple of ``res`` and cropped.
    """
    height, width = size
    rows, cols = res
    if min(height, width, rows, cols) < 1:
        raise ValueError(f"perlin_noise: size {size} and res {res} must be positive")
    cell_h, cell_w = math.ceil(height / rows), math.ceil(width / cols)
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # [R+1, C+1, 2]
    # position inside the cell, in [0, 1): [cell_h, cell_w, 2], the same for every cell
    ys = (torch.arange(cell_h, dtype=torch.float32) + 0.5) / cell_h
    xs = (torch.arange(cell_w, dtype=torch.float32) + 0.5) / cell_w
    local = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # [h, w, 2]

    def corner(dy: int, dx: int) -> Tensor:
        g = gradients[dy : dy + rows, dx : dx + cols]  # [R, C, 2]
        offset = local - torch.tensor([dy, dx], dtype=torch.float32)  # [h, w, 2]
        return torch.einsum("rcd,hwd->rhcw", g, offset)  # [R, h, C, w]

    t = fade(local)
    ty, tx = t[..., 0][None, :, None, :], t[..., 1][None, :, None, :]  # [1, h, 1, w]
    top = torch.lerp(corner(0, 0), corner(0, 1), tx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), tx)
    noise = math.sqrt(2) * torch.lerp(top, bottom, ty)  # [R, h, C, w]
    return noise.reshape(rows * cell_h, cols * cell_w)[:height, :width]  # [H', W'] -> [H, W]


def rotate(image: Tensor, degrees: float) -> Tensor:
    """Rotate an [H, W] map about its centre (bilinear; the corners that come from outside the
    map are 0, as imgaug's ``Affine`` fills them in DRAEM's code)."""
    theta = math.radians(degrees)
    height, width = image.shape
    matrix = torch.tensor(
        [
            [math.cos(theta), -math.sin(theta) * height / width, 0.0],
            [math.sin(theta) * width / height, math.cos(theta), 0.0],
        ],
        dtype=torch.float32,
    )[None]  # [1, 2, 3], in normalised coordinates, corrected for the aspect ratio
    grid = F.affine_grid(matrix, [1, 1, height, width], align_corners=False)
    out = F.grid_sample(
        image[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[0, 0]


def random_perlin_noise(
    size: tuple[int, int],
    generator: torch.Generator,
    min_scale: int = 0,
    max_scale: int = 6,
    max_rotation: float = 90.0,
) -> Tensor:
    """DRAEM's noise: ``2^a x 2^b`` cells (``a, b`` uniform in ``[min_scale, max_scale)``),
    rotated by an angle uniform in ``[-max_rotation, max_rotation]`` degrees: [H, W]."""
    if not 0 <= min_scale < max_scale:
        raise ValueError(f"need 0 <= min_scale < max_scale, got {min_scale}, {max_scale}")
    scale = torch.randint(min_scale, max_scale, (2,), generator=generator)
    noise = perlin_noise(size, (2 ** int(scale[0]), 2 ** int(scale[1])), generator)
    angle = (2 * float(torch.rand((), generator=generator)) - 1) * max_rotation
    return rotate(noise, angle)


def perlin_mask(
    size: tuple[int, int],
    generator: torch.Generator,
    threshold: float = 0.5,
    min_scale: int = 0,
    max_scale: int = 6,
) -> Tensor:
    """A binary anomaly mask [H, W] (float 0/1): ``random_perlin_noise > threshold``.

    With DRAEM's settings (threshold 0.5, scales 1..32 cells) a mask covers a few percent of the
    image on average and is sometimes empty.
    """
    noise = random_perlin_noise(size, generator, min_scale, max_scale)
    return (noise > threshold).float()
