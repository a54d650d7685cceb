"""FrEIA coupling modules of the 2D flows (``clad.models.components.flows`` builds flows from
them): FastFlow's conv subnetworks, AST's conditional affine coupling. Importing this module
imports FrEIA."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import FrEIA.modules as fm
import torch
from torch import Tensor, nn


def conv_subnet(kernel_size: int, hidden_ratio: float) -> Callable[[int, int], nn.Module]:
    """A coupling subnetwork constructor: conv(k) -> ReLU -> conv(k), ``hidden_ratio`` * in wide.

    FrEIA calls the result as ``f(channels_in, channels_out)``; padding keeps h and w.
    """

    def build(channels_in: int, channels_out: int) -> nn.Module:
        hidden = max(1, int(channels_in * hidden_ratio))
        return nn.Sequential(
            nn.Conv2d(channels_in, hidden, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, channels_out, kernel_size, padding=kernel_size // 2),
        )

    return build


def soft_clamp(log_scale: Tensor, clamp: float) -> Tensor:
    """``clamp * 0.636 * atan(s / clamp)``: about ``s`` near 0, within +-clamp everywhere."""
    return clamp * 0.636 * torch.atan(log_scale / clamp)


class CouplingSubnet(nn.Module):
    """conv(k) -> ReLU -> conv(k), replicate padding, output times a scalar that starts at 0."""

    def __init__(self, channels_in: int, channels_out: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.layers = nn.Sequential(
            nn.Conv2d(channels_in, hidden, kernel_size, padding=pad, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv2d(hidden, channels_out, kernel_size, padding=pad, padding_mode="replicate"),
        )
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) * self.gain


class ConditionalAffineCoupling(fm.InvertibleModule):
    """Affine coupling of both channel halves, conditioned on a map, with a per-position
    log-determinant (so that it can be masked).

    Forward with ``x = [x1, x2]`` and condition ``c``:
    ``y1 = x1 * exp(s1) + t1`` with ``(s1, t1) = net1([x2, c])``, then
    ``y2 = x2 * exp(s2) + t2`` with ``(s2, t2) = net2([y1, c])``; the log-scales are soft-clamped
    and ``log|det|`` [B, h, w] is the sum of both over channels.
    """

    def __init__(
        self,
        dims_in: list[tuple[int, ...]],
        dims_c: list[tuple[int, ...]] | None = None,
        hidden: int = 64,
        kernel_size: int = 3,
        clamp: float = 1.9,
    ) -> None:
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        condition = sum(d[0] for d in dims_c) if dims_c else 0
        self.split = channels // 2
        self.rest = channels - self.split
        self.clamp = clamp
        self.net1 = CouplingSubnet(self.rest + condition, 2 * self.split, hidden, kernel_size)
        self.net2 = CouplingSubnet(self.split + condition, 2 * self.rest, hidden, kernel_size)

    def _affine(self, net: nn.Module, source: Tensor, c: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        params = net(torch.cat([source, *c], dim=1))  # [B, 2 n, h, w]
        log_scale, shift = params.chunk(2, dim=1)  # [B, n, h, w] each
        return soft_clamp(log_scale, self.clamp), shift

    def forward(
        self, x: Sequence[Tensor], c: Sequence[Tensor] = (), rev: bool = False, jac: bool = True
    ) -> tuple[tuple[Tensor], Tensor]:
        first, second = x[0][:, : self.split], x[0][:, self.split :]
        if not rev:
            s1, t1 = self._affine(self.net1, second, c)
            first = first * s1.exp() + t1
            s2, t2 = self._affine(self.net2, first, c)
            second = second * s2.exp() + t2
            log_det = s1.sum(dim=1) + s2.sum(dim=1)  # [B, h, w]
        else:
            s2, t2 = self._affine(self.net2, first, c)
            second = (second - t2) * (-s2).exp()
            s1, t1 = self._affine(self.net1, second, c)
            first = (first - t1) * (-s1).exp()
            log_det = -(s1.sum(dim=1) + s2.sum(dim=1))
        return (torch.cat([first, second], dim=1),), log_det

    def output_dims(self, input_dims: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return input_dims
