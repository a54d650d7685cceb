"""Shared base of the memory-bank detectors (PatchCore, PaDiM): one pass, explicit memory.

A memory-bank detector has a frozen backbone and learns nothing by gradient descent: ``fit``
makes one pass over the normal images and stores what it extracted as its *memory*, a dict of
tensors (PatchCore: a coreset of patch features; PaDiM: the sufficient statistics of a Gaussian
per patch position). The memory is explicit state: the ``cl`` strategy reads it
(``memory``), combines memories of several tasks (``merge_memories``) and puts the result back
(``set_memory``); ``predict`` never changes it. ``fit`` *replaces* the memory with one built from
the data it is given, so under ``naive`` the detector forgets the earlier tasks, under
``replay`` it remembers what the replayed images show, and under ``multi_task`` it holds all.

Scoring is split into ``embed`` (backbone features of a batch) and ``score`` (features against a
*prepared* memory: a search index or inverted covariances), so a strategy holding several
memories computes the features of a test batch once and scores them against each memory.
``score`` also returns a routing distance per image (how far the image is from that memory:
mean nearest-neighbour distance or mean Mahalanobis distance over patches), used to route test
images to the closest of several per-task memories.

``score`` takes the test batch's ``key`` (``batch_key``: a digest of the input images, None
where there is none): a detector may keep per-batch results under it across evaluations, as
long as its scores stay exactly those of a fresh computation (PatchCore's nearest bank rows,
``IncrementalSearch``: after a ``cl`` merge only the new rows are searched). The protocol
scores every test set after every task, so the same batches come back against a memory that
changed by a selection of its rows.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clad.models.base import (
    LOADER_KEYS,
    Detector,
    Training,
    private_generator,
    resolve_device,
    tensor_bytes,
)
from clad.models.components.backbone import FeatureExtractor, batch_digest
from clad.records import Scores, dataset_length

Memory = dict[str, Tensor]
ClVariant = Literal["single_bank", "per_task", "resample", "average"]
"""The ``cl`` strategy's variants (``clad.strategies.memory_bank``); ``resample`` is DNE's,
``average`` PaDiM's (CLAD's)."""


def on_cpu(scores: Scores) -> Scores:
    """Scores as float32 CPU tensors (``pixel`` stays None for detectors without maps)."""
    pixel = None if scores.pixel is None else scores.pixel.float().cpu()
    return Scores(image=scores.image.float().cpu(), pixel=pixel)


class MemoryBankDetector(Detector):
    """Base class: subclasses define ``embed``, ``build_memory``, ``prepare``, ``score`` and
    ``merge_memories``; this class provides ``fit``, ``predict`` and the state dict.

    Attributes:
        memory: the current memory (None before ``fit``/``set_memory``).
        timings: seconds spent in the last ``build_memory``, by phase (``feature``, ...).
    """

    extractor: FeatureExtractor
    # the ``cl`` strategy's default variant
    cl_variant: ClassVar[ClVariant] = "single_bank"
    training_keys = LOADER_KEYS  # one pass over the images: batches, device, loader workers

    def __init__(self, training: Training | None = None) -> None:
        self.training = training or type(self).training_defaults
        self.device = resolve_device(self.training.device)
        self.memory: Memory | None = None
        self._prepared: object | None = None
        self.timings: dict[str, float] = {}

    @property
    def batch_size(self) -> int:
        return self.training.batch_size

    @property
    def num_workers(self) -> int:
        return self.training.num_workers

    # --- what subclasses define -------------------------------------------------------------
    @abstractmethod
    def embed(self, x: Tensor, reuse: bool = True) -> Tensor:
        """Features of a batch ``x`` [B, 3, H, W] in [0, 1] on the device: patch features
        [B, C, h, w] (PatchCore, PaDiM) or one embedding per image [B, D] (DNE).
        ``reuse``: the frozen backbone's outputs for a batch seen before
        (``FeatureExtractor.reused``); building a memory passes False (training images are not
        scored again)."""

    @abstractmethod
    def build_memory(self, data: Dataset) -> Memory:
        """A memory built from the images of ``data`` (one pass); does not change ``self``
        except for ``timings``."""

    @abstractmethod
    def prepare(self, memory: Memory) -> object:
        """The search structure ``score`` needs for ``memory`` (index, inverse covariances)."""

    @abstractmethod
    def score(
        self, embedding: Tensor, prepared: Any, size: Sequence[int], key: Hashable | None = None
    ) -> tuple[Scores, Tensor]:
        """Scores of ``embedding`` [B, C, h, w] against a prepared memory (what this detector's
        ``prepare`` returns), with maps at ``size`` (H, W) (None for a detector without maps:
        DNE), and the routing distance [B] (lower = the memory explains the image better).
        ``key``: the batch's ``batch_key`` (module docstring). Tensors stay on the device."""

    @abstractmethod
    def merge_memories(self, memories: Sequence[Memory], budget: int | None) -> Memory:
        """One memory summarising several (of different tasks), within ``budget`` when the
        memory has a size to budget."""

    def shrink_memory(self, memory: Memory, budget: int) -> Memory:
        """``memory`` reduced to at most ``budget`` stored items (default: unchanged)."""
        return memory

    def memory_items(self, memory: Memory) -> int:
        """Number of stored items counted against a budget (0 when not budgeted)."""
        return 0

    # --- shared machinery -------------------------------------------------------------------
    def images(self, data: Dataset) -> Iterator[Tensor]:
        """Batches of images [B, 3, H, W] of ``data``, in order, on the device."""
        loader = DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=False,
            generator=private_generator(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, _, _ in loader:
            yield images.to(self.device, non_blocking=True)

    def set_memory(self, memory: Memory) -> None:
        """Replace the memory (and its search structure)."""
        self.memory = {k: v.to(self.device) for k, v in memory.items()}
        self._prepared = self.prepare(self.memory)

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        """Replace the memory with one built from ``train`` (``val`` is not needed)."""
        if dataset_length(train) == 0:
            raise ValueError(f"{type(self).__name__}.fit: the training set is empty")
        memory = self.build_memory(train)
        began = time.perf_counter()
        self.set_memory(memory)
        self.timings["prepare"] = time.perf_counter() - began

    @property
    def is_fitted(self) -> bool:
        return self.memory is not None

    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        key = self.batch_key(x)
        with torch.no_grad():
            embedding = self.embed(x.to(self.device))
            scores, _ = self.score(embedding, self._prepared, x.shape[-2:], key)
        return on_cpu(scores)

    @staticmethod
    def batch_key(x: Tensor) -> Hashable | None:
        """The key of a test batch (``score``): the exact digest of a CPU batch's bytes
        (``batch_digest``, shared with the feature cache), None for a batch on another device."""
        return batch_digest(x) if x.device.type == "cpu" else None

    def memory_bytes(self) -> int:
        return 0 if self.memory is None else tensor_bytes(self.memory)

    def cost_bytes(self) -> dict[str, int]:
        """``trainable``: the drawn parameters (``extra_state``: PaDiM's channel subset);
        ``pretrained``: the frozen backbone; ``memory``: the bank or Gaussian statistics."""
        return {
            "trainable": tensor_bytes(self.extra_state()),
            "pretrained": tensor_bytes(self.extractor.state_dict()),
            "memory": self.memory_bytes(),
        }

    def extra_state(self) -> dict[str, Tensor]:
        """State besides the memory that a restored detector needs (random draws)."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore what ``extra_state`` returned."""

    def state_dict(self) -> dict:
        """The memory, the extra state, and the backbone's weights when they are a random
        initialisation (named weights are reloaded from their source instead)."""
        memory = None if self.memory is None else {k: v.cpu() for k, v in self.memory.items()}
        backbone = None
        if self.extractor.weights == "none":
            backbone = {k: v.cpu() for k, v in self.extractor.state_dict().items()}
        return {
            "memory": memory,
            "extra": {k: v.cpu() for k, v in self.extra_state().items()},
            "backbone": backbone,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["backbone"] is not None:
            self.extractor.load_state_dict(state["backbone"])
        self.load_extra_state(state["extra"])
        if state["memory"] is None:
            self.memory, self._prepared = None, None
        else:
            self.set_memory(state["memory"])
