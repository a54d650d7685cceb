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
    2. the queries are searched against N alone (``listed`` nearest); r = min(r, d_L(N)) and,
       merged with the list and cut to ``listed`` entries, r = min(r, d_{L+1});
    3. a query whose nearest listed distance is <= r has its exact nearest row of B' (any row
       closer would be within r, so in the list); the others (every listed row dropped and no
       new one within r) are searched against all of B'.

    A batch seen for the first time, or with another bank lineage, is searched against the
    whole bank. The cost of a changed bank is the new rows (|Q| x |N|) plus the queries whose
    nearest rows were all dropped, not |Q| x |B'|. Results equal a search of the whole bank up
    to float rounding of the distances (each is computed by the same backend, in another
    grouping) and the order of exact ties.

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
        self.deltas: dict[tuple[int, int], tuple[tuple, Tensor, KnnIndex | None]] = {}
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

    def new_rows(self, index: KnnIndex, old: RowSet) -> tuple[Tensor, KnnIndex | None]:
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
            sub = KnnIndex(index.bank[positions.to(index.bank.device)], index.backend)
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
        if sub is not None:  # 2. the new rows
            self.stats["new_rows"] += queries.shape[0]
            new_distances, found = sub.search(queries, listed)  # [Q, l]
            new_distances = new_distances.to(distances.device)
            if len(sub) > listed:
                radius = torch.minimum(radius, new_distances[:, -1])
            new_keys = rows.keys()[positions[found.to(positions.device)]].to(keys.device)
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
