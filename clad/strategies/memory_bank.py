"""The ``cl`` strategy of memory-bank detectors (PatchCore, PaDiM): memory that grows across
tasks under a budget, compressed by coreset, task-agnostic at test time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from pydantic import PositiveInt
from torch import Tensor

from clad.errors import ConfigError
from clad.models.base import tensor_bytes
from clad.models.memory_bank import Memory, MemoryBankDetector, on_cpu
from clad.records import Scores, Task
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy, detector_name

Variant = Literal["single_bank", "per_task"]


@register_strategy("cl")
class ContinualMemoryBank(Strategy):
    """Continual learning for memory-bank detectors, task-agnostic at test time.

    After each task t the detector builds the task's memory M_t from task t's training images
    alone (``build_memory``: PatchCore's coreset with its ``coreset_ratio``; PaDiM's Gaussian
    sums). What happens next depends on ``variant``:

    ``single_bank`` (default for PatchCore and PaDiM): one memory for all tasks seen.
        PatchCore: bank_t = greedy k-center coreset of (bank_{t-1} U M_t) with
        ``mem_size_cl`` vectors, selected on a random projection drawn afresh for that merge
        (as the per-task coreset draws its own; the vectors kept are full-dimensional, so only
        which ones are kept depends on the draw); nothing is re-coresetted while the union fits
        the budget. The bank never holds more than
        ``mem_size_cl`` vectors, so memory and nearest-neighbour search cost stay bounded however
        many tasks come; test images are scored against the one bank, so no task id is needed.
        PaDiM: the exact pooled Gaussian of all tasks seen, from summed streaming statistics
        (count, sum, sum of outer products): the same Gaussian a joint fit on the union of the
        tasks' training images gives (not CLAD's average of per-task inverse covariances).
        Its size does not grow with tasks; ``mem_size_cl`` does not apply.

    ``per_task`` (CLAD's variant): one memory per task seen, and routing at test time.
        PatchCore: after task t every bank is reduced to ``mem_size_cl // (t + 1)`` vectors
        (greedy k-center coreset of that bank), so the total stays within ``mem_size_cl``.
        PaDiM: one Gaussian per task (no budget). A test image is scored against every task's
        memory and takes the scores of the memory with the lowest routing distance (PatchCore:
        mean over patches of the nearest-neighbour distance; PaDiM: mean Mahalanobis distance).

    DNE (``detector: dne``) runs here too: its memory is a Gaussian of pooled image embeddings
    per task, and its default variant is ``per_task`` (each test image scored by the closest task
    Gaussian, the method's own semantics); ``single_bank`` pools the task Gaussians into one
    (moment-matched, the official code's choice). It has no maps and no budget.

    Args:
        make_detector: factory of the detector (must be a ``MemoryBankDetector``).
        mem_size_cl: total memory budget in stored vectors (PatchCore bank rows), >= 1.
        variant: ``"single_bank"`` or ``"per_task"``; None = the detector's ``cl_variant``
            (``single_bank`` for PatchCore and PaDiM, ``per_task`` for DNE).
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
        self.task_memories: list[Memory] = []  # per_task only
        self._prepared: list[object] = []
        detector = self._current()  # fail now, not after the first task, without memory
        self.variant: Variant = variant or detector.cl_variant

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

    def learn(self, task: Task) -> None:
        detector = self._current()
        memory = detector.build_memory(task.train)
        if self.variant == "single_bank":
            parts = [memory] if detector.memory is None else [detector.memory, memory]
            detector.set_memory(detector.merge_memories(parts, self.mem_size_cl))
            return
        self.task_memories.append(memory)
        share = max(1, self.mem_size_cl // len(self.task_memories))
        self.task_memories = [
            m if detector.memory_items(m) <= share else detector.shrink_memory(m, share)
            for m in self.task_memories
        ]
        self._prepared = [detector.prepare(m) for m in self.task_memories]

    def predict(self, x: Tensor, task_id: int | None) -> Scores:
        if self.detector is None or (self.variant == "per_task" and not self._prepared):
            raise RuntimeError("strategy cl: predict called before any learn")
        detector = self._current()
        if self.variant == "single_bank":
            return detector.predict(x)
        return self.route(x)[0]

    def route(self, x: Tensor) -> tuple[Scores, Tensor]:
        """Per-task variant: scores of the memory with the lowest routing distance per image,
        and the chosen task numbers [B] (positions in the order tasks were learnt)."""
        detector = self._current()
        with torch.no_grad():
            embedding = detector.embed(x.to(detector.device))
            results = [detector.score(embedding, p, x.shape[-2:]) for p in self._prepared]
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
        """The memories held now (one for single_bank, one per task for per_task)."""
        if self.variant == "per_task":
            return list(self.task_memories)
        return (
            [] if self.detector is None or self.detector.memory is None else [self.detector.memory]
        )

    def memory_items(self) -> int:
        """Stored vectors counted against ``mem_size_cl`` (PatchCore bank rows)."""
        if self.detector is None:
            return 0
        return sum(self.detector.memory_items(m) for m in self.memories())

    def memory_bytes(self) -> int:
        """Bytes of the per-task memories this strategy holds (``per_task``); the single bank is
        the detector's memory and is counted by the detector (``cost_bytes``)."""
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
        self._prepared = [detector.prepare(m) for m in self.task_memories]
