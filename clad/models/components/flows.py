"""2D normalizing flows for FastFlow and AST, built with FrEIA (Ardizzone et al., "Framework for
Easily Invertible Architectures", https://github.com/vislearn/FrEIA): FrEIA's ``AllInOneBlock``
sequences (``flow_2d``, FastFlow) and AST's conditional affine couplings with fixed permutations
(``conditional_flow``; the coupling modules are in ``clad.models.components.couplings``).

FrEIA (and SciPy with it) is imported when a flow is built, not when a detector module is: so a
configuration naming a flow detector is checked without loading it.

A flow maps a feature map ``x`` [B, C, h, w] to ``z`` of the same shape together with
``log|det dz/dx|`` [B]. Under a standard-normal prior on ``z`` the negative log-likelihood is

    -log p(x) = 0.5 * sum(z^2) - log|det dz/dx| + 0.5 * C h w log(2 pi),

and the constant term is dropped everywhere here. Each step of ``flow_2d`` is FrEIA's
``AllInOneBlock``: an affine coupling whose subnetwork sees half the channels (plus condition
channels, if any), soft-clamped log-scales ``clamp * tanh(s)``, an ActNorm-like global affine
and a fixed random channel permutation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import FrEIA.framework as ff


@contextlib.contextmanager
def numpy_state_kept(seed_from_torch: bool) -> Iterator[None]:
    """Restore NumPy's global RNG state after the block, so that building a flow leaves it as
    it was. FrEIA draws channel permutations from ``np.random``: with ``seed_from_torch`` the
    block first seeds NumPy from torch's RNG, so the permutations follow ``torch.manual_seed``
    (``PermuteRandom(seed=k)`` seeds NumPy itself)."""
    saved = np.random.get_state()
    if seed_from_torch:
        np.random.seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    try:
        yield
    finally:
        np.random.set_state(saved)


def flow_2d(
    channels: int,
    steps: int,
    kernel_sizes: Sequence[int],
    hidden_ratio: float,
    clamp: float,
    condition_channels: int = 0,
) -> ff.SequenceINN:
    """A sequence of ``steps`` ``AllInOneBlock`` couplings on [C, h, w] maps, for any h and w.

    Step ``i`` uses a ``kernel_sizes[i % len(kernel_sizes)]`` conv subnet, so ``(3, 1)`` gives
    FastFlow's alternating 3x3 / 1x1 subnetworks and ``(3,)`` 3x3 only. With
    ``condition_channels > 0`` every step also takes a condition map [B, Cc, h, w] (e.g. AST's
    positional encoding), concatenated to its subnetwork's input.

    The blocks are declared on [C, 1, 1]: FrEIA's ``AllInOneBlock`` uses the spatial size only
    to count pixels at run time, so one flow serves every input size.
    """
    if steps < 1:
        raise ValueError(f"a flow needs at least one step, got {steps}")
    import FrEIA.framework as ff
    import FrEIA.modules as fm

    from clad.models.components.couplings import conv_subnet

    flow = ff.SequenceINN(channels, 1, 1)
    with numpy_state_kept(seed_from_torch=True):
        for step in range(steps):
            kernel = kernel_sizes[step % len(kernel_sizes)]
            flow.append(
                fm.AllInOneBlock,
                cond=0 if condition_channels else None,
                cond_shape=(condition_channels, 1, 1) if condition_channels else None,
                subnet_constructor=conv_subnet(kernel, hidden_ratio),
                affine_clamping=clamp,
                permute_soft=False,
            )
    return flow


def conditional_flow(
    channels: int, condition_channels: int, kernel_sizes: Sequence[int], hidden: int, clamp: float
) -> ff.SequenceINN:
    """One (fixed permutation, coupling) pair per entry of ``kernel_sizes``; block ``k``'s
    permutation is drawn with seed ``k``, as in the official code. Declared on [C, 1, 1]: the
    blocks work at any h and w."""
    import FrEIA.framework as ff
    import FrEIA.modules as fm

    from clad.models.components.couplings import ConditionalAffineCoupling

    flow = ff.SequenceINN(channels, 1, 1)
    with numpy_state_kept(seed_from_torch=False):  # PermuteRandom(seed=k) reseeds NumPy
        for k, kernel in enumerate(kernel_sizes):
            flow.append(fm.PermuteRandom, seed=k)
            flow.append(
                ConditionalAffineCoupling,
                cond=0,
                cond_shape=(condition_channels, 1, 1),
                hidden=hidden,
                kernel_size=kernel,
                clamp=clamp,
            )
    return flow


def run_flow(
    flow: ff.SequenceINN, x: Tensor, condition: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(z [B, C, h, w], log|det dz/dx| [B])``, computed in float32 (also under autocast)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        if condition is None:
            return flow(x)
        return flow(x, c=[condition.float()])


def gaussian_nll(z: Tensor, log_jac_det: Tensor) -> Tensor:
    """Per-sample ``0.5 * sum(z^2) - log|det|`` [B] (standard-normal prior, constant dropped)."""
    return 0.5 * z.pow(2).flatten(1).sum(dim=1) - log_jac_det


def position_nll(z: Tensor) -> Tensor:
    """Per-position ``0.5 * mean_c z^2`` [B, h, w]: the map-level -log-likelihood used to score.

    The log-determinant is shared by all positions of a sample up to the coupling terms and
    is left out, as in FastFlow's and AST's published scoring.
    """
    return 0.5 * z.pow(2).mean(dim=1)
