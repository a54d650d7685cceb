"""Exact Euclidean k-nearest-neighbour search over a memory bank: faiss or torch, same answers.

``KnnIndex(bank, backend)`` holds a bank [M, C] and answers ``search(queries [Q, C], k)`` with
(distances [Q, k] as plain L2 norms, ascending; indices [Q, k] int64). Backends:

* ``"faiss"``: ``IndexFlatL2`` (exact); on a CUDA device with faiss-gpu installed, the GPU
  version of the same index.
* ``"torch"``: squared distances ``|q|^2 - 2 q.b + |b|^2`` in chunks of queries, then
  ``topk``; runs on the bank's device.
* ``"auto"``: faiss when it can be imported, else torch.

Both are exact; they may differ in the last float bits of a distance, and so in the order of
exact ties, but not otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from clad.profiling import phase, timed

KnnBackend = Literal["auto", "faiss", "torch"]
QUERY_CHUNK = 4096  # torch backend: queries per distance matrix (chunk x M floats)


@functools.cache
def faiss_module():
    """The faiss module, or None when it is not installed (imported lazily, once)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = faiss_module()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@functools.cache
def _gpu_resources():
    return faiss_module().StandardGpuResources()


def resolve_backend(backend: KnnBackend) -> Literal["faiss", "torch"]:
    if backend == "auto":
        return "faiss" if faiss_module() is not None else "torch"
    if backend == "faiss" and faiss_module() is None:
        raise ImportError(
            "knn backend 'faiss' asked for, but faiss is not installed "
            "(pip install faiss-cpu, or faiss-gpu for CUDA)"
        )
    if backend not in ("faiss", "torch"):
        raise ValueError(f"unknown knn backend {backend!r}; known: auto, faiss, torch")
    return backend


def torch_knn(queries: Tensor, bank: Tensor, k: int, bank_norms: Tensor | None = None):
    """Exact kNN by dense distance matrices: (L2 distances [Q, k], indices [Q, k])."""
    if bank_norms is None:
        bank_norms = (bank * bank).sum(1)  # [M]
    distances, indices = [], []
    for start in range(0, queries.shape[0], QUERY_CHUNK):
        chunk = queries[start : start + QUERY_CHUNK]  # [q, C]
        squared = (chunk * chunk).sum(1, keepdim=True) - 2 * chunk @ bank.T + bank_norms  # [q, M]
        values, index = torch.topk(squared, k, dim=1, largest=False, sorted=True)
        distances.append(values.clamp_(min=0).sqrt_())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


class KnnIndex:
    """An exact L2 index over ``bank`` [M, C] (float32), built once, searched many times.

    Args:
        bank: [M, C] memory bank (its device decides CPU or GPU search).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (module docstring).
    """

    def __init__(self, bank: Tensor, backend: KnnBackend = "auto") -> None:
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(
                f"memory bank must be a non-empty [M, C] matrix, got {tuple(bank.shape)}"
            )
        self.bank = bank.detach().float().contiguous()
        self.backend = resolve_backend(backend)
        self.device = self.bank.device
        self._index = None
        self._norms = None
        if self.backend == "faiss":
            faiss = faiss_module()
            index = faiss.IndexFlatL2(self.bank.shape[1])
            if self.device.type == "cuda" and faiss_has_gpu():
                gpu = self.device.index if self.device.index is not None else 0
                index = faiss.index_cpu_to_gpu(_gpu_resources(), gpu, index)
            index.add(self.bank.cpu().numpy())
            self._index = index
        else:
            self._norms = (self.bank * self.bank).sum(1)

    def __len__(self) -> int:
        return self.bank.shape[0]

    @functools.cached_property
    def rows(self) -> RowSet:
        """The bank's row keys (``IncrementalSearch``), computed on first use."""
        return RowSet(self.bank)

    @timed("search")
    def search(self, queries: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """k nearest bank rows of each query: (distances [Q, k] on the queries' device, L2,
        ascending; indices [Q, k] int64). ``k`` is capped at the bank size."""
        k = min(k, len(self))
        queries = queries.detach().float()
        if self._index is None:
            distances, indices = torch_knn(queries.to(self.device), self.bank, k, self._norms)
            return distances.to(queries.device), indices.to(queries.device)
        squared, indices = self._index.search(queries.cpu().contiguous().numpy(), k)
        distances = torch.from_numpy(squared).clamp_(min=0).sqrt_()
        return distances.to(queries.device), torch.from_numpy(indices).to(queries.device)


def squared_distances(queries: Tensor, rows: Tensor, row_norms: Tensor | None = None) -> Tensor:
    """[Q, M] squared L2 distances ``|q|^2 - 2 q.r + |r|^2``, clamped at zero."""
    if row_norms is None:
        row_norms = (rows * rows).sum(1)
    squared = (queries * queries).sum(1, keepdim=True) - 2 * queries @ rows.T + row_norms
    return squared.clamp_(min=0)


class CellIndex:
    """Exact k-nearest search *within a bound* over rows grouped in cells.

    The rows are grouped around ``ceil(M / cell_size)`` centres (rows chosen by greedy k-center,
    so they spread over the data), each row in the cell of its nearest centre; a cell keeps its
    radius R (largest distance of its rows to its centre). A query q with bound b needs a row
    r of cell c only if ``|q - r| < b``, and ``|q - r| >= |q - c| - R``: a cell with
    ``|q - c| - R >= b`` is skipped whole. The centres are rows too, so the k-th nearest centre
    tightens b before any cell is opened. Where the queries lie far from the rows (test patches
    of one product against rows of another), nearly every cell is skipped; the work is then
    |Q| x (number of cells) instead of |Q| x M.

    ``search(queries, k, bound)`` returns every query's k nearest rows *among those closer than
    its bound* (distances ascending, inf and position -1 where fewer were found): exact, the
    same rows a full search would list there, up to float rounding at the bound and exact ties.
    A query whose open cells hold more than ``dense_share`` of the rows (test patches of the
    product the rows come from) is searched against all rows instead (``KnnIndex``, its k
    nearest whatever the bound), which is faster there.
    """

    def __init__(
        self,
        rows: Tensor,
        cell_size: int = 64,
        backend: KnnBackend = "auto",
        dense_share: float = 0.1,
    ) -> None:
        from clad.models.components.coreset import greedy_order

        self.backend = backend
        self.dense_share = dense_share
        self._dense: KnnIndex | None = None
        self.rows = rows.detach().float().contiguous()  # [M, C]
        n_rows = self.rows.shape[0]
        n_cells = max(1, math.ceil(n_rows / cell_size))
        centre_index, _ = greedy_order(self.rows, n_cells, start=0)  # in the search's time
        centres = self.rows[centre_index.to(self.rows.device)]  # [K, C]
        to_centres = squared_distances(self.rows, centres)  # [M, K]
        nearest, owner = to_centres.min(1)
        order = torch.argsort(owner, stable=True)  # rows grouped by cell
        counts = torch.bincount(owner, minlength=n_cells)
        self.positions = order  # [M]: row position of each grouped row
        self.grouped = self.rows[order]  # [M, C]
        self.grouped_norms = (self.grouped * self.grouped).sum(1)
        self.ends = torch.cumsum(counts, 0).tolist()  # [K]
        self.centres = centres
        self.centre_norms = (centres * centres).sum(1)
        radius = torch.zeros(n_cells, device=self.rows.device)
        radius.scatter_reduce_(0, owner, nearest.sqrt(), "amax")
        # rounding slack: distances from the norm expansion carry an absolute error
        self.slack = 1e-4 * float(self.grouped_norms.max().sqrt()) + 1e-6
        self.radius = radius + self.slack  # [K]
        self.counts = counts
        self.stats = {"pairs": 0, "opened": 0, "dense": 0}

    def __len__(self) -> int:
        return self.rows.shape[0]

    @timed("search")
    def search(self, queries: Tensor, k: int, bound: Tensor) -> tuple[Tensor, Tensor]:
        """The k nearest rows closer than ``bound`` [Q] (inf: no bound) of each query:
        (distances [Q, k], ascending, inf where none; row positions [Q, k], -1 where none)."""
        queries = queries.detach().float().to(self.rows.device)
        n_queries = queries.shape[0]
        to_centres = squared_distances(queries, self.centres, self.centre_norms).sqrt_()  # [Q, K]
        limit = bound.to(to_centres.device).float().clone()
        if self.centres.shape[0] >= k:  # the centres are rows: their k-th distance is a bound
            kth = torch.topk(to_centres, k, dim=1, largest=False).values[:, -1]
            limit = torch.minimum(limit, kth + self.slack)
        open_cells = (to_centres - self.radius) < limit[:, None]  # [Q, K]
        distances = torch.full((n_queries, k), math.inf, device=queries.device)
        positions = torch.full((n_queries, k), -1, dtype=torch.long, device=queries.device)
        # queries that would open most cells are searched against all rows at once (a dense
        # search runs several times faster per pair than the per-cell products)
        needed = open_cells.float() @ self.counts.float()  # [Q] rows in open cells
        dense = needed > self.dense_share * len(self)
        if bool(dense.any()):
            which = torch.nonzero(dense).squeeze(1)
            self.stats["dense"] += which.numel()
            if self._dense is None:
                self._dense = KnnIndex(self.rows, self.backend)
            found_d, found_p = self._dense.search(queries[which], k)
            distances[which, : found_d.shape[1]] = found_d.to(distances.device)
            positions[which, : found_p.shape[1]] = found_p.to(positions.device)
            open_cells[which] = False
        query_norms = (queries * queries).sum(1)
        limit_squared = limit * limit
        found_query, found_row, found_distance = [], [], []
        begin = 0
        for cell, end in enumerate(self.ends):
            which = torch.nonzero(open_cells[:, cell]).squeeze(1)
            if end > begin and which.numel():
                self.stats["opened"] += 1
                self.stats["pairs"] += which.numel() * (end - begin)
                rows = self.grouped[begin:end]  # [m, C]
                squared = query_norms[which, None] - 2 * queries[which] @ rows.T
                squared = (squared + self.grouped_norms[begin:end]).clamp_(min=0)  # [w, m]
                hit_query, hit_row = torch.nonzero(
                    squared < limit_squared[which, None], as_tuple=True
                )
                if hit_query.numel():
                    found_query.append(which[hit_query])
                    found_row.append(hit_row + begin)
                    found_distance.append(squared[hit_query, hit_row])
            begin = end
        if found_query:
            query = torch.cat(found_query)
            row = torch.cat(found_row)
            distance = torch.cat(found_distance).sqrt_()
            order = torch.argsort(distance, stable=True)
            order = order[torch.argsort(query[order], stable=True)]  # by query, then distance
            query, row, distance = query[order], row[order], distance[order]
            first = torch.searchsorted(query, query, side="left")
            rank = torch.arange(query.numel(), device=query.device) - first
            keep = rank < k
            distances[query[keep], rank[keep]] = distance[keep]
            positions[query[keep], rank[keep]] = self.positions[row[keep]]
        return distances, positions


def row_keys(bank: Tensor) -> Tensor:
    """[M] int64: an 8-byte BLAKE2b digest of each row's float32 bytes, so a row is known by its
    content wherever it moves (equal rows get equal keys, which is harmless: they are at equal
    distances from every query)."""
    rows = bank.detach().float().cpu().contiguous().numpy()  # [M, C]
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows)
    return torch.from_numpy(np.frombuffer(digests, dtype=np.int64).copy())


class RowSet:
    """The row keys of one bank (``row_keys``), sorted for membership tests and lookups."""

    def __init__(self, bank: Tensor) -> None:
        keys = row_keys(bank).to(bank.device)  # [M]
        self.sorted, self.order = torch.sort(keys)  # [M], [M]: sorted[i] = keys[order[i]]

    def __len__(self) -> int:
        return self.sorted.shape[0]

    def contains(self, keys: Tensor) -> Tensor:
        """Which of ``keys`` (any shape) are rows of this bank: bool, same shape."""
        return torch.isin(keys, self.sorted)

    def positions(self, keys: Tensor) -> Tensor:
        """Row positions of ``keys`` (all rows of this bank), same shape."""
        found = torch.searchsorted(self.sorted, keys.reshape(-1).contiguous())
        found = found.clamp_(max=len(self) - 1)
        return self.order[found].view(keys.shape)

    def keys(self) -> Tensor:
        """[M] keys in bank order."""
        keys = torch.empty_like(self.sorted)
        keys[self.order] = self.sorted
        return keys


@dataclass
class Listed:
    """What is kept for one test batch and one bank lineage: the ``listed`` nearest rows of
    every query (keys [Q, L] int64 and L2 distances [Q, L], ascending, inf where empty), the
    radius within which the list holds every row of the bank (``radius`` [Q]), and the bank
    they were found in."""

    keys: Tensor
    distances: Tensor
    radius: Tensor
    rows: RowSet

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.distances, self.radius))


class IncrementalSearch:
    """Exact nearest bank rows of test batches, kept across banks that change by selection.

    Under ``cl`` the bank after a task is a selection of the previous bank's rows plus rows of
    the new task, and the protocol scores every test set after every task. For each test batch
    (``key``: a digest of its images) and each bank lineage (successive banks that share rows),
    this keeps every query's ``listed`` nearest rows (by content key, ``row_keys``) and a radius
    r such that *every* row of the bank closer than r is in the list. When the bank changes
    from B to B' = (B ∩ B') ∪ N (N: the rows that are new):

    1. listed rows no longer in B' are struck out; the list still holds every row of B ∩ B'
       closer than r;
    2. the queries are searched against N alone, for their ``listed`` nearest rows closer than r
       (``CellIndex``: cells of N far from a query are skipped, so a test set of one product
       costs little against another product's rows); r = min(r, d_L(N)) and, merged with the
       list and cut to ``listed`` entries, r = min(r, d_{L+1});
    3. a query whose nearest listed distance is <= r has its exact nearest row of B' (any row
       closer would be within r, so in the list); the others (every listed row dropped and no
       new one within r) are searched against all of B'.

    A batch seen for the first time, or with another bank lineage, is searched against the
    whole bank. The cost of a changed bank is the new rows near the queries (at most
    |Q| x |N|) plus the queries whose nearest rows were all dropped, not |Q| x |B'|. The rows
    found are those of a search of the whole bank, up to float rounding of the distances (the
    new rows' distances come from another grouping of the same arithmetic) and the order of
    exact ties; PatchCore recomputes the nearest row's distance directly, so both give it the
    same score.

    Lineage: a bank sharing any row with the last bank of a lineage continues it (per_task
    keeps one lineage per task's bank). Entries are kept least recently used first out within
    ``capacity_mb``.
    """

    def __init__(self, listed: int = 4, capacity_mb: float = 512) -> None:
        self.listed = listed
        self.capacity_bytes = int(capacity_mb * 2**20)
        self.entries: OrderedDict[tuple, Listed] = OrderedDict()
        self.bytes = 0
        self.heads: list[tuple[int, weakref.ref[RowSet]]] = []
        self.lineages = itertools.count()
        # (id of a bank's rows, id of an older bank's rows) -> (weak references to both, the
        # positions of the rows the older bank lacks, an index over them)
        self.deltas: dict[tuple[int, int], tuple[tuple, Tensor, CellIndex | None]] = {}
        self.stats = {"full": 0, "new_rows": 0, "researched": 0, "reused": 0}

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
        self.heads.clear()
        self.deltas.clear()

    def lineage(self, rows: RowSet) -> int:
        """The lineage of a bank: that of the last bank it shares a row with, else a new one."""
        for i, (number, ref) in enumerate(self.heads):
            head = ref()
            if head is rows:
                return number
            if head is not None and bool(head.contains(rows.sorted).any()):
                self.heads[i] = (number, weakref.ref(rows))
                return number
        self.heads = [(n, ref) for n, ref in self.heads if ref() is not None]
        number = next(self.lineages)
        self.heads.append((number, weakref.ref(rows)))
        return number

    def nearest(self, index: KnnIndex, queries: Tensor, key: Hashable) -> tuple[Tensor, Tensor]:
        """Each query's nearest bank row: (L2 distances [Q], row positions in ``index``'s
        bank [Q], int64), on the queries' device."""
        with phase("search"):
            rows = index.rows
            entry_key = (self.lineage(rows), key)
            entry = self.entries.pop(entry_key, None)
            if entry is not None:
                self.bytes -= entry.nbytes
            if entry is None or entry.keys.shape[0] != queries.shape[0]:
                entry = self.full(index, queries)
            elif entry.rows is not rows:
                entry = self.update(index, queries, entry)
            else:
                self.stats["reused"] += queries.shape[0]
            self.put(entry_key, entry)
            distances = entry.distances[:, 0].to(queries.device)
            positions = rows.positions(entry.keys[:, 0]).to(queries.device)
            return distances, positions

    def put(self, entry_key: tuple, entry: Listed) -> None:
        if entry.nbytes > self.capacity_bytes:
            return
        self.entries[entry_key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.capacity_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes

    def full(self, index: KnnIndex, queries: Tensor) -> Listed:
        """Every query searched against the whole bank."""
        self.stats["full"] += queries.shape[0]
        rows = index.rows
        distances, positions = index.search(queries, self.listed)  # [Q, l], l <= listed
        keys = rows.keys()[positions.to(rows.sorted.device)].to(distances.device)
        if len(index) > self.listed:
            radius = distances[:, -1].clone()
        else:  # every row is listed
            radius = torch.full_like(distances[:, 0], math.inf)
        return Listed(*self._padded(keys, distances), radius, rows)

    def _padded(self, keys: Tensor, distances: Tensor) -> tuple[Tensor, Tensor]:
        """[Q, l] lists padded to ``listed`` columns (key 0, distance inf)."""
        missing = self.listed - keys.shape[1]
        if missing <= 0:
            return keys, distances
        q = keys.shape[0]
        return (
            torch.cat([keys, keys.new_zeros(q, missing)], 1),
            torch.cat([distances, distances.new_full((q, missing), math.inf)], 1),
        )

    def new_rows(self, index: KnnIndex, old: RowSet) -> tuple[Tensor, CellIndex | None]:
        """Positions of ``index``'s rows that ``old`` lacks, and an index over them (None when
        there are none); kept for the next batch against the same pair of banks."""
        pair = (id(index.rows), id(old))
        found = self.deltas.get(pair)
        if found is not None and found[0][0]() is index.rows and found[0][1]() is old:
            return found[1], found[2]
        fresh = ~old.contains(index.rows.keys())  # [M] bool
        positions = torch.nonzero(fresh).squeeze(1)
        sub = None
        if positions.numel():
            sub = CellIndex(index.bank[positions.to(index.bank.device)], backend=index.backend)
        # pairs whose newer bank is not this one are dropped: they are not used again
        self.deltas = {p: d for p, d in self.deltas.items() if d[0][0]() is index.rows}
        self.deltas[pair] = ((weakref.ref(index.rows), weakref.ref(old)), positions, sub)
        return positions, sub

    def update(self, index: KnnIndex, queries: Tensor, entry: Listed) -> Listed:
        """The entry moved from its bank to ``index``'s (the class docstring's steps 1-3)."""
        rows, listed = index.rows, self.listed
        keys, distances, radius = entry.keys, entry.distances.clone(), entry.radius.clone()
        distances[~rows.contains(keys)] = math.inf  # 1. rows struck out of the bank
        distances, order = torch.sort(distances, dim=1)
        keys = torch.gather(keys, 1, order)
        positions, sub = self.new_rows(index, entry.rows)
        if sub is not None:  # 2. the new rows (only those closer than r can matter)
            self.stats["new_rows"] += queries.shape[0]
            new_distances, found = sub.search(queries, listed, radius)  # [Q, l]
            new_distances = new_distances.to(distances.device)
            if len(sub) > listed:  # l found: no other new row is closer than the l-th
                radius = torch.minimum(radius, new_distances[:, -1])
            found = found.to(positions.device)
            new_keys = rows.keys()[positions[found.clamp(min=0)]].to(keys.device)
            new_keys[(found < 0).to(keys.device)] = 0  # none within r
            distances = torch.cat([distances, new_distances], 1)
            keys = torch.cat([keys, new_keys], 1)
            distances, order = torch.sort(distances, dim=1)
            keys = torch.gather(keys, 1, order)
            radius = torch.minimum(radius, distances[:, listed])
            keys, distances = keys[:, :listed].contiguous(), distances[:, :listed].contiguous()
        lost = ~(distances[:, 0] <= radius)  # 3. no listed row is surely the nearest
        if bool(lost.any()):
            which = torch.nonzero(lost).squeeze(1)
            self.stats["researched"] += which.numel()
            again = self.full(index, queries[which.to(queries.device)])
            keys[which], distances[which], radius[which] = again.keys, again.distances, again.radius
        return Listed(keys, distances, radius, rows)
