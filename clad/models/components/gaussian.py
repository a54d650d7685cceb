"""Per-position Gaussians from streaming sums, and Mahalanobis distances (PaDiM).

For P positions and D channels the sufficient statistics of n feature maps x_i [P, D] are
``count`` = n, ``total`` = sum_i x_i [P, D] and ``outer`` = sum_i x_i x_i^T [P, D, D], kept in
float64. Sums of statistics are statistics of the union, so the Gaussian of several tasks
pooled is exact (not an average of per-task estimates). From them, per position:

    mean = total / n
    cov  = (outer - n mean mean^T) / (n - 1) + eps I        (n >= 2; n = 1: eps I)

which equals the unbiased sample covariance of all the data, plus the regulariser ``eps I``
of the PaDiM paper (0.01).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Accumulator:
    """Streaming statistics of feature batches [B, D, P], exact to float32 rounding of
    *centred* values, fast on a CPU.

    ``sum_i x_i x_i^T`` is accumulated about a fixed per-position shift ``c`` (the first
    batch's mean): with ``y = x - c``, ``sum x x^T = S + t c^T + c t^T + n c c^T`` where
    ``S = sum y y^T`` and ``t = sum y``. ``S`` and ``t`` are float32 sums of centred values
    (no large common part to cancel, so float32 keeps about 7 significant digits of the
    covariance); each batch costs one float32 batched matrix product added in place, and the
    float64 statistics are formed once, in ``stats``.
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift: Tensor | None = None  # [P, D] float32
        self.total: Tensor | None = None  # [P, D] float32, sum of y
        self.scatter: Tensor | None = None  # [P, D, D] float32, sum of y y^T

    def add(self, features: Tensor) -> None:
        """Add ``features`` [B, D, P]."""
        x = features.float().transpose(1, 2).contiguous()  # [B, P, D] (a cheap copy)
        if self.shift is None:
            self.shift = x.mean(0)
            positions, channels = self.shift.shape
            self.total = x.new_zeros(positions, channels)
            self.scatter = x.new_zeros(positions, channels, channels)
        assert self.total is not None and self.scatter is not None  # set with ``shift``
        y = x - self.shift  # [B, P, D]
        self.count += y.shape[0]
        self.total += y.sum(0)
        centred = y.transpose(0, 1)  # [P, B, D] view, unit stride over D
        self.scatter.baddbmm_(centred.transpose(1, 2), centred)

    def stats(self) -> dict:
        """``count``, ``total`` [P, D] and ``outer`` [P, D, D] in float64."""
        if self.shift is None:
            raise ValueError("no samples: nothing accumulated")
        assert self.total is not None and self.scatter is not None  # set with ``shift``
        c, t = self.shift.double(), self.total.double()
        outer = self.scatter.double()
        outer.baddbmm_(t[:, :, None], c[:, None, :]).baddbmm_(c[:, :, None], t[:, None, :])
        outer.baddbmm_(c[:, :, None], c[:, None, :], alpha=self.count)
        return {
            "count": torch.tensor(float(self.count), dtype=torch.float64, device=c.device),
            "total": t + self.count * c,
            "outer": outer,
        }


def add_stats(parts: list[dict]) -> dict:
    """Statistics of the union of the samples behind ``parts``."""
    return {key: sum(part[key] for part in parts) for key in ("count", "total", "outer")}


def gaussian(stats: dict, eps: float) -> tuple[Tensor, Tensor]:
    """(mean [P, D], regularised covariance [P, D, D]) in float64."""
    n = float(stats["count"])
    if n < 1:
        raise ValueError("no samples: cannot fit a Gaussian")
    mean = stats["total"] / n
    channels = mean.shape[1]
    eye = torch.eye(channels, dtype=torch.float64, device=mean.device)
    if n < 2:
        return mean, eps * eye.expand(mean.shape[0], channels, channels).clone()
    # (outer - n mean mean^T) / (n - 1) in one pass over the [P, D, D] float64 array
    covariance = torch.baddbmm(
        stats["outer"], mean[:, :, None], mean[:, None, :], beta=1 / (n - 1), alpha=-n / (n - 1)
    )
    covariance.diagonal(dim1=1, dim2=2).add_(eps)
    return mean, covariance


def inverse_covariance(covariance: Tensor) -> Tensor:
    """Inverse of symmetric positive-definite matrices [P, D, D] via Cholesky."""
    return torch.cholesky_inverse(torch.linalg.cholesky(covariance))


def mahalanobis(features: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """sqrt((x - mean)^T precision (x - mean)) per position: [B, D, P] -> [B, P]."""
    delta = (features.permute(2, 0, 1) - mean[:, None, :]).contiguous()  # [P, B, D]
    squared = ((delta @ precision) * delta).sum(2)  # [P, B]
    return squared.clamp(min=0).sqrt().T  # [B, P]
