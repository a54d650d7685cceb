"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Sec. 3.2), made fast.

The greedy k-center rule (Gonzalez 1985): start from one point; repeatedly add the point whose
distance to its nearest selected point is largest. Selected in this order, every prefix of the
result is itself the greedy coreset of that size, and the covering radius of a prefix of size m
is at most twice the optimal one for m centres. As in the paper, distances are computed after a
random linear projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss), which
preserves distances approximately and makes each step cheaper.

Two exact implementations of the same rule:

* ``"dense"``: each step computes the distance of the new centre to all N points (N * d work,
  one matrix-vector product) and keeps the running minimum. Best on a GPU, where the step is a
  few kernels with no host synchronisation.
* ``"pruned"``: the same selections with far less work, for CPUs. Points are grouped into
  blocks of at most ``block_size`` points, each block lying in the Voronoi cell of one selected
  centre c with a known radius R (the largest distance of its points to c). When a new centre p
  is added, a point x of the block can only move closer if ``d(x, p) < m(x)`` (its current
  distance to the coreset), and ``d(x, p) >= d(p, c) - R``; so a block whose
  ``d(p, c) - R`` exceeds the square root of its largest ``m(x)`` is skipped whole. Blocks are
  rebuilt from the current Voronoi cells whenever the number of centres has doubled, so they
  shrink as the coreset grows and each step touches only the points near the new centre.
  Selections are made in rounds: the ``candidates`` farthest points and their pairwise
  distances decide exactly the next several greedy picks (as long as the best candidate stays
  above the farthest non-candidate, which can only get closer), and each round updates the
  blocks once for all its new centres with one batched matrix product per group of blocks,
  each block against only the new centres that can reach it. torch runs single-threaded here
  (the work is many small tensor operations, which OpenMP fork/join slows down, badly so on a
  loaded machine); the groups of blocks of one update are spread over as many Python threads
  as torch had threads (they touch disjoint blocks; torch releases the GIL inside its ops).

Both use squared Euclidean distances ``|x|^2 - 2 x.c + |c|^2`` on mean-centred float32
features (centring changes no distance and reduces rounding), clamped at zero.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from clad.profiling import timed

CoresetMethod = Literal["auto", "dense", "pruned"]


def random_projection(
    features: Tensor, dim: int, generator: torch.Generator | None = None
) -> Tensor:
    """Project ``features`` [N, C] to [N, dim] with a Gaussian random matrix scaled by
    1/sqrt(dim) (distances preserved in expectation). With ``dim >= C`` the features are
    returned unchanged: a projection could only add distortion.

    The matrix is drawn on the CPU from ``generator`` (the global torch RNG when None), so the
    result does not depend on the device.
    """
    n_channels = features.shape[1]
    if dim >= n_channels:
        return features
    matrix = torch.randn(n_channels, dim, generator=generator) / math.sqrt(dim)  # [C, dim]
    return features @ matrix.to(features.device, features.dtype)


def coreset_size(n_points: int, ratio: float) -> int:
    """Number of points kept for a coreset ``ratio`` in (0, 1]: ``max(1, int(n * ratio))``."""
    if not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return max(1, int(n_points * ratio))


def greedy_coreset(
    features: Tensor,
    n_select: int,
    start: int | None = None,
    method: CoresetMethod = "auto",
    block_size: int = 128,
) -> Tensor:
    """Indices of a greedy k-center coreset of ``features`` [N, d], in selection order.

    Args:
        features: [N, d] points (already projected; any float dtype, any device).
        n_select: number of points to select, ``1 <= n_select <= N``.
        start: index of the first centre; drawn from the global torch RNG when None.
        method: ``"dense"``, ``"pruned"`` or ``"auto"`` (dense on CUDA, pruned otherwise).
        block_size: points per block of the pruned method.

    Returns:
        [n_select] int64 indices (CPU), distinct, where index i is the point farthest from
        indices[:i] (ties: the lowest index within the first block or row holding the maximum).
    """
    return greedy_coreset_radii(features, n_select, start, method, block_size)[0]


def greedy_order(
    features: Tensor,
    n_select: int,
    start: int | None = None,
    method: CoresetMethod = "auto",
    block_size: int = 128,
) -> tuple[Tensor, Tensor]:
    """``greedy_coreset`` and each selected point's *selection radius*: its distance to the
    points selected before it (the covering radius of the prefix just before it was added;
    inf for the first point), non-increasing along the selection order. Not a phase of the
    profile (``greedy_coreset_radii`` is); for selections that belong to another phase (the
    search's cells, ``knn.CellIndex``).

    Returns:
        ([n_select] int64 indices, [n_select] float32 radii), both on the CPU.
    """
    n_points = features.shape[0]
    if not 1 <= n_select <= n_points:
        raise ValueError(f"n_select must be in [1, {n_points}], got {n_select}")
    if start is None:
        start = int(torch.randint(n_points, (1,)).item())
    points = features.detach().float()
    points = (points - points.mean(0, keepdim=True)).contiguous()  # [N, d]
    if method == "auto":
        method = "dense" if points.device.type == "cuda" else "pruned"
    if method == "dense":
        index, squared = _dense(points, n_select, start)
        return index.cpu(), squared.cpu().sqrt()
    if method == "pruned":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # many small ops: OpenMP fork/join costs more than it gives
        try:
            index, squared = _pruned(points.cpu(), n_select, start, block_size, workers=threads)
            return index, squared.sqrt()
        finally:
            torch.set_num_threads(threads)
    raise ValueError(f"unknown coreset method {method!r}; known: auto, dense, pruned")


# ``greedy_order`` timed as the profile's ``coreset`` phase: what the detectors call
greedy_coreset_radii = timed("coreset")(greedy_order)


def _dense(points: Tensor, n_select: int, start: int) -> tuple[Tensor, Tensor]:
    """Plain greedy k-center: one [N] distance update per selection, no host sync. Returns
    the selections and their squared selection radii."""
    n_points = points.shape[0]
    squared_norms = (points * points).sum(1)  # [N]
    min_dist = torch.full((n_points,), math.inf, device=points.device)
    selected = torch.empty(n_select, dtype=torch.long, device=points.device)
    radii = torch.empty(n_select, device=points.device)
    index = torch.tensor(start, device=points.device)
    for i in range(n_select):
        selected[i] = index
        radii[i] = min_dist[index]
        centre = points[index]  # [d]
        dist = squared_norms - 2 * (points @ centre) + squared_norms[index]  # [N]
        torch.minimum(min_dist, dist.clamp_(min=0), out=min_dist)
        min_dist[index] = 0
        index = torch.argmax(min_dist)
    return selected, radii


def _select_round(values: Tensor, coords: Tensor, norms: Tensor, budget: int, candidates: int):
    """The next greedy selections that can be decided from the ``candidates`` farthest points.

    ``values`` [L] are squared distances to the coreset in some layout (padding = -inf),
    ``coords`` [L, d] and ``norms`` [L] the points there. Every point outside the top
    ``candidates`` has a value <= tau (the smallest candidate value), and values only decrease;
    so while the largest candidate value, updated for the centres picked in this round, is
    still >= tau, it is the global maximum and the greedy rule picks it.

    Returns:
        ([s] positions (into the layout) of the selected points, in selection order, s >= 1;
        [s] their squared distances to the coreset when selected).
    """
    n_valid = int(torch.isfinite(values).sum())
    count = min(candidates, n_valid)
    top_values, top = torch.topk(values, count)  # [T], descending
    tau = float(top_values[-1]) if count < n_valid else -math.inf
    points = coords[top]  # [T, d]
    squared = (norms[top][:, None] - 2 * points @ points.T + norms[top][None, :]).clamp_(min=0)
    current = top_values.numpy().copy()  # [T]
    pairwise = squared.numpy()  # [T, T]
    picked: list[int] = []
    radii: list[float] = []
    while len(picked) < budget:
        j = int(current.argmax())
        if current[j] < tau:
            break
        picked.append(j)
        radii.append(float(current[j]))
        np.minimum(current, pairwise[j], out=current)
        current[j] = -np.inf
    return top[torch.tensor(picked)], radii


def _pruned(
    points: Tensor,
    n_select: int,
    start: int,
    block_size: int,
    candidates: int = 1024,
    workers: int = 1,
) -> tuple[Tensor, Tensor]:
    """Greedy k-center on the CPU, in rounds (see ``_select_round``) with Voronoi-block
    pruning of the distance updates (see the module docstring). Same selections as
    ``_dense`` up to float rounding; also returns their squared selection radii."""
    layout = _Layout(points, workers)
    layout.dense_update(layout.slot_of(torch.tensor([start])), 0)
    selected = [start]
    radii = [math.inf]
    last_build = 1
    while len(selected) < n_select:
        slots, values = _select_round(
            layout.min_dist, layout.coords, layout.norms, n_select - len(selected), candidates
        )
        first_id = len(selected)
        new_points = layout.point_index[slots]
        selected.extend(new_points.tolist())
        radii.extend(values)
        # Blocks pay off once there are enough centres and each cell still holds several
        # blocks' worth of points; until then (and for small N, possibly throughout) the
        # plain update over all points is used.
        if (
            first_id >= 64
            and first_id >= 2 * last_build
            and points.shape[0] / first_id >= 2 * block_size
        ):
            layout.build_blocks(torch.tensor(selected[:first_id]), block_size)
            last_build = first_id
            slots = layout.slot_of(new_points)
        if layout.blocks is None:
            layout.dense_update(slots, first_id)
        else:
            layout.block_update(slots, first_id)
    return (
        torch.tensor(selected[:n_select], dtype=torch.long),
        torch.tensor(radii[:n_select], dtype=torch.float32),
    )


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads, made once per size (``_Layout.block_update``)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="clad-coreset")


class _Layout:
    """Points, their distance to the coreset and their nearest centre, stored in slots.

    Before ``build_blocks`` the slots are the points in order; after, the points are grouped
    by the Voronoi cell of their nearest centre into blocks of ``block_size`` slots (padded
    slots: index -1, distance -inf). Every block keeps the centre of its cell and its radius
    at build time, and the largest distance to the coreset among its points (``block_max``).
    """

    def __init__(self, points: Tensor, workers: int = 1) -> None:
        n_points = points.shape[0]
        self.workers = workers
        self.points = points
        self.point_norms = (points * points).sum(1)  # [N]
        self.coords = points  # [L, d]
        self.norms = self.point_norms  # [L]
        self.point_index = torch.arange(n_points)  # [L] -> point, -1 for padding
        self.min_dist = torch.full((n_points,), math.inf)  # [L] squared distance to coreset
        self.owner = torch.zeros(n_points, dtype=torch.long)  # [L] id of the nearest centre
        self.slack = 1e-3 * float(self.point_norms.mean().sqrt()) + 1e-12
        self.blocks: dict[str, Tensor] | None = None
        self.block_size = n_points

    def slot_of(self, index: Tensor) -> Tensor:
        slots = torch.empty(self.points.shape[0], dtype=torch.long)
        valid = self.point_index >= 0
        slots[self.point_index[valid]] = torch.nonzero(valid).squeeze(1)
        return slots[index]

    def dense_update(self, slots: Tensor, first_id: int, rows: int = 16384) -> None:
        """Update every slot for the new centres at ``slots`` (ids first_id, first_id+1, ...)."""
        centres = self.coords[slots]  # [s, d]
        centre_norms = self.norms[slots]  # [s]
        for begin in range(0, self.coords.shape[0], rows):
            part = slice(begin, begin + rows)
            squared = self.norms[part, None] - 2 * self.coords[part] @ centres.T  # [r, s]
            nearest, which = (squared + centre_norms).min(1)  # [r]
            nearest.clamp_(min=0)
            closer = nearest < self.min_dist[part]
            self.min_dist[part] = torch.where(closer, nearest, self.min_dist[part])
            self.owner[part] = torch.where(closer, which + first_id, self.owner[part])
        self.min_dist[slots] = 0
        self.owner[slots] = torch.arange(first_id, first_id + len(slots))

    def build_blocks(self, centres: Tensor, block_size: int) -> None:
        """Regroup the points by the Voronoi cells of ``centres`` (point indices, by id)."""
        valid = self.point_index >= 0
        index = self.point_index[valid]
        min_dist = torch.empty(self.points.shape[0])
        owner = torch.empty(self.points.shape[0], dtype=torch.long)
        min_dist[index] = self.min_dist[valid]
        owner[index] = self.owner[valid]
        n_points, n_cells = self.points.shape[0], centres.shape[0]
        order = torch.argsort(owner, stable=True)  # [N] points grouped by cell
        counts = torch.bincount(owner, minlength=n_cells)  # [K]
        blocks_per_cell = (counts + block_size - 1) // block_size  # [K]
        n_blocks = int(blocks_per_cell.sum())
        cell_of_point = owner[order]  # [N]
        rank = torch.arange(n_points) - (torch.cumsum(counts, 0) - counts)[cell_of_point]  # [N]
        first_block = torch.cumsum(blocks_per_cell, 0) - blocks_per_cell  # [K]
        slot = (first_block[cell_of_point] + rank // block_size) * block_size + rank % block_size

        size = n_blocks * block_size
        self.block_size = block_size
        self.point_index = torch.full((size,), -1, dtype=torch.long)
        self.point_index[slot] = order
        self.coords = self.points.new_zeros(size, self.points.shape[1])
        self.coords[slot] = self.points[order]
        self.norms = self.points.new_zeros(size)
        self.norms[slot] = self.point_norms[order]
        self.min_dist = self.points.new_full((size,), -math.inf)
        self.min_dist[slot] = min_dist[order]
        self.owner = torch.zeros(size, dtype=torch.long)
        self.owner[slot] = owner[order]
        block_max = self.min_dist.view(n_blocks, block_size).amax(1)  # [B]
        self.blocks = {
            "cell": torch.repeat_interleave(torch.arange(n_cells), blocks_per_cell),  # [B]
            "radius": block_max.clamp(min=0).sqrt(),  # [B] (distances are to the cell centre)
            "max": block_max,  # [B]
            "centres": self.points[centres],  # [K, d]
            "centre_norms": self.point_norms[centres],  # [K]
        }

    def block_update(self, slots: Tensor, first_id: int, group: int = 64) -> None:
        """Update, for the new centres at ``slots``, only the blocks they can reach.

        Centre c can lower a distance in block b only if d(c, cell centre) - radius_b
        <= sqrt(block_max_b); per block, the reachable centres are gathered (padded to the
        largest count in a group of blocks) and one batched matrix product gives the distances.
        """
        blocks = self.blocks
        assert blocks is not None  # built by ``build_blocks`` before any update
        size = self.block_size
        n_blocks = blocks["max"].shape[0]
        centres = self.coords[slots]  # [s, d]
        centre_norms = self.norms[slots]  # [s]
        to_cells = blocks["centre_norms"] - 2 * centres @ blocks["centres"].T  # [s, K]
        to_cells = (to_cells + centre_norms[:, None]).clamp_(min=0).sqrt_()
        reach = blocks["max"].clamp(min=0).sqrt() + self.slack  # [B]
        relevant = (to_cells[:, blocks["cell"]] - blocks["radius"]) <= reach  # [s, B]
        counts = relevant.sum(0)  # [B]
        active = torch.nonzero(counts).squeeze(1)
        active = active[torch.argsort(counts[active])]  # similar counts share a group
        active_counts = counts[active]  # [A], ascending
        rows, cols = relevant.T[active].nonzero(as_tuple=True)  # row-major pairs
        rank = torch.arange(rows.shape[0]) - (torch.cumsum(active_counts, 0) - active_counts)[rows]
        widest = int(active_counts[-1]) if active.shape[0] else 0
        all_which = torch.zeros(active.shape[0], widest, dtype=torch.long)  # [A, w]
        all_which[rows, rank] = cols  # centre numbers reaching each active block
        all_usable = torch.zeros(active.shape[0], widest, dtype=torch.bool)
        all_usable[rows, rank] = True
        coords = self.coords.view(n_blocks, size, -1)
        norms = self.norms.view(n_blocks, size)
        min_dist = self.min_dist.view(n_blocks, size)
        owner = self.owner.view(n_blocks, size)

        def update(begin: int) -> None:
            chunk = active[begin : begin + group]  # [g]
            width = int(active_counts[min(begin + group, active.shape[0]) - 1])
            which = all_which[begin : begin + group, :width]  # [g, r]
            usable = all_usable[begin : begin + group, :width]  # [g, r]
            extra = torch.where(usable, centre_norms[which], math.inf)  # [g, r]
            squared = torch.baddbmm(
                extra[:, None, :], coords[chunk], centres[which].transpose(1, 2), alpha=-2
            )  # [g, S, r]
            nearest, pick = squared.min(2)  # [g, S]
            nearest = (nearest + norms[chunk]).clamp_(min=0)
            current = min_dist[chunk]
            closer = nearest < current
            min_dist[chunk] = torch.where(closer, nearest, current)
            owner[chunk] = torch.where(
                closer, torch.gather(which, 1, pick) + first_id, owner[chunk]
            )

        begins = range(0, active.shape[0], group)
        if self.workers > 1 and len(begins) > 1:
            # groups touch disjoint blocks: Python threads (torch releases the GIL in its ops)
            # run them side by side without OpenMP's per-op fork/join
            list(_pool(self.workers).map(update, begins))
        else:
            for begin in begins:
                update(begin)
        self.min_dist[slots] = 0
        self.owner[slots] = torch.arange(first_id, first_id + len(slots))
        touched = torch.unique(slots // size)
        for part in (active, touched):
            blocks["max"][part] = min_dist[part].amax(1)
