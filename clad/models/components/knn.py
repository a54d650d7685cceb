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
from typing import Literal

import torch
from torch import Tensor

from clad.profiling import timed

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
