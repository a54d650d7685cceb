"""Continuous drift: one category seen at ``DRIFT_STEPS`` steps, each step's images corrupted
more than the last's (the drift protocols of DINOSaur, Weatherly and Lin, arXiv 2605.24251;
official code Continue-Edge-AI-Lab/Rethinking-Continual-AD, ``main.py`` ``data_aug`` and
``datasets/transforms.py``).

Severities per step (the official ``data_aug`` lists):

- ``color``: a factor ``1 + v`` or ``1 - v`` (sign drawn per image) applied to brightness,
  contrast and saturation, ``v`` in the step's window ``[0.05 s, 0.05 (s + 1)]``, s = 0..9.
- ``blur``: a Gaussian blur of kernel ``2 s + 1`` pixels and sigma ``0.5 (s + 1)``.
- ``geometric``: an affine map with rotation up to ``2 (s + 1)`` degrees, translation up to
  ``s + 1`` pixels per axis, scale ``1 - 0.01 (s + 1)`` and shear up to ``s + 1`` degrees;
  masks move with their images.

Step s's test set is the category's test set under step s's corruption (each image's draw
seeded by the step and its index, so every evaluation sees the same images). Step s's training
set is the category's training images, each corrupted once with a severity drawn from the easier
range up to step s (the official code's ``replay=True``: ``v ~ U(0, hi)`` for colour, ``sigma ~
U(0.5, sigma_s)`` for blur, every affine parameter ``~ U(0, its step value)``).

Where ours differs from the official code: the corruptions are drawn once per image (seeded)
rather than at every epoch; the official geometric test transform passes the scale value
(0.01 to 0.10) to the affine map as the scale factor itself, which shrinks the image to 1-10 % of
its size (a likely bug behind the chance-level scores every method gets on its geometric
protocol); here the scale factor is ``1 - value``. The official protocols run on Magnetic Tile
Defects; here on any one image category (``dataset.categories``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DRIFT_STEPS = 10


def drift_steps(category: str, kind: str) -> tuple[tuple[str, ...], ...]:
    """The step names of a drift of ``category``: one task per step, ``<category>_<kind><s>``
    (s = 1..10)."""
    return tuple((f"{category}_{kind}{s + 1}",) for s in range(DRIFT_STEPS))


@dataclass(frozen=True)
class Corruption:
    """One step's corruption of one image kind (``color``, ``blur``, ``geometric``), at step
    ``step`` (0-based); ``train`` draws from the easier range up to the step."""

    kind: str
    step: int
    train: bool

    def draw(self, index: int) -> dict[str, float]:
        """The parameters of image ``index``'s corruption, seeded by the step and the index."""
        rng = np.random.default_rng([self.step, index, int(self.train)])
        s = self.step + 1
        if self.kind == "color":
            low = 0.0 if self.train else 0.05 * self.step
            v = rng.uniform(low, 0.05 * s)
            return {"factor": 1 + v if rng.random() < 0.5 else 1 - v}
        if self.kind == "blur":
            sigma = 0.5 * s
            return {
                "kernel": 2 * self.step + 1,
                "sigma": rng.uniform(0.5, sigma) if self.train else sigma,
            }
        low = 0.0 if self.train else 1.0  # test: the step's values; train: up to them
        return {
            "angle": float(rng.choice([-1, 1])) * rng.uniform(low * 2 * self.step, 2 * s),
            "dx": float(rng.choice([-1, 1])) * rng.uniform(low * self.step, s),
            "dy": float(rng.choice([-1, 1])) * rng.uniform(low * self.step, s),
            "scale": 1 - rng.uniform(low * 0.01 * self.step, 0.01 * s),
            "shear": float(rng.choice([-1, 1])) * rng.uniform(low * self.step, s),
        }

    def apply(self, image: Tensor, mask: Tensor, index: int) -> tuple[Tensor, Tensor]:
        """``image`` [C, H, W] in [0, 1] and ``mask`` [1, H, W] corrupted."""
        import torchvision.transforms.v2.functional as TF  # torchvision loads torch._dynamo

        p = self.draw(index)
        if self.kind == "color":
            f = p["factor"]
            out = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(image, f), f), f)
            return out.clamp(0, 1), mask
        if self.kind == "blur":
            if p["kernel"] < 3:
                return image, mask  # a 1-pixel kernel blurs nothing
            return TF.gaussian_blur(image, [p["kernel"]] * 2, [p["sigma"]] * 2), mask
        args = {
            "angle": p["angle"],
            "translate": [round(p["dx"]), round(p["dy"])],
            "scale": p["scale"],
            "shear": [p["shear"], 0.0],
        }
        moved = TF.affine(image, interpolation=TF.InterpolationMode.BILINEAR, **args)
        moved_mask = TF.affine(mask, interpolation=TF.InterpolationMode.NEAREST, **args)
        return moved.clamp(0, 1), moved_mask


class DriftDataset(Dataset):
    """``data``'s items (image, mask, label) with ``corruption`` applied."""

    def __init__(self, data: Dataset, corruption: Corruption) -> None:
        self.data = data
        self.corruption = corruption

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]  # map-style datasets have a length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor | int]:
        image, mask, label = self.data[index]
        with torch.no_grad():
            image, mask = self.corruption.apply(image, mask, index)
        return image, mask, label
