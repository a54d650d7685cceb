"""The ``cl`` strategy of memory-bank detectors (PatchCore, PaDiM): memory that grows across
tasks under a budget, compressed by coreset, task-agnostic at test time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
from pydantic import PositiveInt
from torch import Tensor
from torch.utils.data import Dataset

from clad.errors import ConfigError
from clad.models.base import seeded_generator, tensor_bytes
from clad.models.memory_bank import ClVariant, Memory, MemoryBankDetector, on_cpu
from clad.records import Scores, Task
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy, detector_name

Variant = ClVariant


@runtime_checkable
class Resampling(Protocol):
    """A memory-bank detector with DNE's continual refit (``variant: resample``)."""

    def resampled_memory(
        self, past: Sequence[Memory], data: Dataset, generator: torch.Generator
    ) -> tuple[Memory, Memory]: ...


@runtime_checkable
class Averaging(Protocol):
    """A memory-bank detector with CLAD's PaDiM average (``variant: average``)."""

    def average_memories(self, average: Memory | None, memory: Memory) -> Memory: ...


@register_strategy("cl")
class ContinualMemoryBank(Strategy):
    """Continual learning for memory-bank detectors, task-agnostic at test time.

    After each task t the detector builds the task's memory M_t from task t's training images
    alone (``build_memory``: PatchCore's coreset with its ``coreset_ratio``; PaDiM's Gaussian
    sums). What happens next depends on ``variant``:

    ``single_bank`` (default for PatchCore and PaDiM): one memory for all tasks seen.
        PatchCore: bank_t = the ``mem_size_cl`` rows of (bank_{t-1} U M_t) with the largest
        greedy selection radii, a new row's radius lowered to its distance to bank_{t-1}
        (``PatchCore.merge_memories``, ``merge: "radius"``: greedy k-center continued from
        bank_{t-1}; each task keeps a greedy prefix of its own coreset; it costs one search of
        the new rows against the bank), or, with ``merge: "coreset"``, the greedy k-center
        coreset of the union rerun on a projection drawn afresh; nothing is cut while the
        union fits the budget. The bank never holds more than
        ``mem_size_cl`` vectors, so memory and nearest-neighbour search cost stay bounded however
        many tasks come; test images are scored against the one bank, so no task id is needed.
        PaDiM: the exact pooled Gaussian of all tasks seen, from summed streaming statistics
        (count, sum, sum of outer products): the same Gaussian a joint fit on the union of the
        tasks' training images gives (not CLAD's average of per-task inverse covariances:
        ``average``).
        Its size does not grow with tasks; ``mem_size_cl`` does not apply.

    ``per_task`` (PatchCore: CLAD's ``cl``): one memory per task seen, and routing at test time.
        PatchCore: after task t every bank is reduced to ``mem_size_cl // (t + 1)`` vectors
        (greedy k-center coreset of that bank: its greedy prefix under ``merge: "radius"``, a
        greedy pass rerun on it under ``"coreset"``), so the total stays within ``mem_size_cl``.
        PaDiM: one Gaussian per task (no budget). A test image is scored against every task's
        memory and takes the scores of the memory with the lowest routing distance (PatchCore:
        mean over patches of the nearest-neighbour distance; PaDiM: mean Mahalanobis distance).
        For PatchCore this is CLAD's rule (``Trainer_patchcore`` in CLAD's
        ``src/trainer/trainer_patchcore.py``: every bank re-coresetted to
        ``int(mem_size_cl / (t + 1))`` after task t, a test image routed to the bank with the
        smallest mean nearest-neighbour distance over its patches and scored by that bank), but
        for one step: CLAD coresets task t's full patch library straight to its share, here
        task t's ``coreset_ratio`` bank is coresetted to it (a coreset of a coreset).

    ``average`` (PaDiM: CLAD's ``cl``, ``Trainer_PaDiM`` in CLAD's
        ``src/trainer/trainer_padim.py``): one Gaussian per patch position whose mean and
        precision are the running averages, with equal task weights, of the tasks' means and
        precisions (``Padim.average_memories``); its size does not grow with tasks. Only
        detectors with ``average_memories`` (PaDiM) take it.

    ``resample`` (DNE's default, the official code's rule): the task Gaussians are kept, and
        the detector scores with one Gaussian refitted to samples of the past tasks' Gaussians
        and the current task's embeddings (``Dne.resampled_memory``; samples drawn with a
        generator seeded from the run's torch RNG). Only detectors with ``resampled_memory``
        (DNE) take it.

    DNE (``detector: dne``) runs here too: its memory is a Gaussian of pooled image embeddings
    per task. ``resample`` is its default; ``per_task`` scores each test image by the closest
    task Gaussian (clad's extension: zero forgetting by construction, memory growing by one
    Gaussian per task); ``single_bank`` pools the task Gaussians into one moment-matched
    Gaussian (clad's closed form of what ``resample`` samples). It has no maps and no budget.

    Args:
        make_detector: factory of the detector (must be a ``MemoryBankDetector``).
        mem_size_cl: total memory budget in stored vectors (PatchCore bank rows), >= 1.
        variant: ``"single_bank"``, ``"per_task"``, ``"average"`` or ``"resample"``; None = the
            detector's ``cl_variant`` (``single_bank`` for PatchCore and PaDiM, ``resample`` for
            DNE). CLAD's files set ``per_task`` for PatchCore and ``average`` for PaDiM.
    """

    detector: MemoryBankDetector | None  # ``_current`` checks the type

    def __init__(
        self,
        make_detector: DetectorFactory,
        mem_size_cl: PositiveInt = 20000,
        variant: Variant | None = None,
    ) -> None:
        super().__init__(make_detector)
        self.mem_size_cl = mem_size_cl
        self.task_memories: list[Memory] = []  # per_task and resample
        self._prepared: list[object] = []
        detector = self._current()  # fail now, not after the first task, without memory
        self.variant: Variant = variant or detector.cl_variant
        type(self).check_arguments({"variant": self.variant}, type(detector))

    def _current(self) -> MemoryBankDetector:
        detector = super()._current()
        type(self).check_arguments({}, type(detector))
        assert isinstance(detector, MemoryBankDetector)
        return detector

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        if not issubclass(detector, MemoryBankDetector):
            raise ConfigError(
                f"strategy.name: 'cl' works with memory-bank detectors only (patchcore, padim, "
                f"dne); detector {detector_name(detector)!r} is not one: use naive, replay, "
                "multi_task, cumulative or single_model with it"
            )
        variant = arguments.get("variant") or detector.cl_variant
        needs = {"resample": "resampled_memory", "average": "average_memories"}
        if variant in needs and not callable(getattr(detector, needs[variant], None)):
            what = {
                "resample": "DNE's refit of one Gaussian from resampled task Gaussians",
                "average": "CLAD's PaDiM average of the tasks' means and precisions",
            }[variant]
            raise ConfigError(
                f"strategy.variant: {variant!r} is {what}; detector "
                f"{detector_name(detector)!r} has none: use single_bank or per_task"
            )

    def learn(self, task: Task) -> None:
        detector = self._current()
        if self.variant == "resample":
            assert isinstance(detector, Resampling)  # ``check_arguments``
            memory, scoring = detector.resampled_memory(
                self.task_memories, task.train, seeded_generator()
            )
            self.task_memories.append(memory)
            detector.set_memory(scoring)
            return
        memory = detector.build_memory(task.train)
        if self.variant == "average":
            assert isinstance(detector, Averaging)  # ``check_arguments``
            detector.set_memory(detector.average_memories(detector.memory, memory))
            return
        if self.variant == "single_bank":
            parts = [memory] if detector.memory is None else [detector.memory, memory]
            detector.set_memory(detector.merge_memories(parts, self.mem_size_cl))
            return
        self.task_memories.append(memory)
        share = max(1, self.mem_size_cl // len(self.task_memories))
        kept = self.task_memories
        self.task_memories = [
            m if detector.memory_items(m) <= share else detector.shrink_memory(m, share)
            for m in kept
        ]
        # a memory left as it was keeps its prepared index (and the results kept for it)
        self._prepared = [
            self._prepared[i] if new is old and i < len(self._prepared) else detector.prepare(new)
            for i, (new, old) in enumerate(zip(self.task_memories, kept))
        ]

    def predict(self, x: Tensor, task_id: int | None) -> Scores:
        if self.detector is None or (self.variant == "per_task" and not self._prepared):
            raise RuntimeError("strategy cl: predict called before any learn")
        detector = self._current()
        if self.variant != "per_task":
            return detector.predict(x)
        return self.route(x)[0]

    def predict_routed(self, x: Tensor, task_id: int | None) -> tuple[Scores, Tensor | None]:
        """``per_task``: the scores and the task each image was routed to (the runner's routing
        accuracy); the other variants keep no part per task to route to (None)."""
        if self.variant != "per_task":
            return self.predict(x, task_id), None
        if not self._prepared:
            raise RuntimeError("strategy cl: predict called before any learn")
        return self.route(x)

    def predict_part(self, x: Tensor, task_id: int) -> Scores | None:
        """``per_task``: the scores of task ``task_id``'s memory alone (oracle routing)."""
        if self.variant != "per_task":
            return None
        detector = self._current()
        key = detector.batch_key(x)
        with torch.no_grad():
            embedding = detector.embed(x.to(detector.device))
            scores, _ = detector.score(embedding, self._prepared[task_id], x.shape[-2:], key)
        return on_cpu(scores)

    def route(self, x: Tensor) -> tuple[Scores, Tensor]:
        """Per-task variant: scores of the memory with the lowest routing distance per image,
        and the chosen task numbers [B] (positions in the order tasks were learnt)."""
        detector = self._current()
        key = detector.batch_key(x)
        with torch.no_grad():
            embedding = detector.embed(x.to(detector.device))
            results = [detector.score(embedding, p, x.shape[-2:], key) for p in self._prepared]
        distances = torch.stack([route for _, route in results])  # [T, B]
        chosen = distances.argmin(0)  # [B]
        rows = torch.arange(x.shape[0], device=chosen.device)
        image = torch.stack([s.image for s, _ in results])[chosen, rows]  # [B]
        pixel = None
        if results[0][0].pixel is not None:
            # one detector: every memory's scores have maps when the first one's have
            maps = cast(list[Tensor], [s.pixel for s, _ in results])
            pixel = torch.stack(maps)[chosen, rows]  # [B, H, W]
        return on_cpu(Scores(image=image, pixel=pixel)), chosen.cpu()

    def memories(self) -> list[Memory]:
        """The memories held now: one for single_bank and average, one per task for per_task,
        one per task and the scoring one (last) for resample."""
        scoring = (
            [] if self.detector is None or self.detector.memory is None else [self.detector.memory]
        )
        if self.variant == "per_task":
            return list(self.task_memories)
        if self.variant == "resample":
            return [*self.task_memories, *scoring]
        return scoring

    def memory_items(self) -> int:
        """Stored vectors counted against ``mem_size_cl`` (PatchCore bank rows)."""
        if self.detector is None:
            return 0
        return sum(self.detector.memory_items(m) for m in self.memories())

    def memory_bytes(self) -> int:
        """Bytes of the per-task memories this strategy holds (``per_task``, ``resample``); the
        single bank or scoring Gaussian is the detector's memory and is counted by the detector
        (``cost_bytes``)."""
        return sum(tensor_bytes(m) for m in self.task_memories)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "task_memories": [{k: v.cpu() for k, v in m.items()} for m in self.task_memories],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.detector is None:
            return
        detector = self._current()
        self.task_memories = [
            {k: v.to(detector.device) for k, v in m.items()} for m in state["task_memories"]
        ]
        if self.variant == "per_task":
            self._prepared = [detector.prepare(m) for m in self.task_memories]
