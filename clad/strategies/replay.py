"""Experience replay with a memory balanced over past tasks (Avalanche storage policy)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from pydantic import PositiveInt
from torch.utils.data import Dataset, Subset, TensorDataset

from clad.records import Task, dataset_length
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy, concat

if TYPE_CHECKING:
    from avalanche.training.storage_policy import ExperienceBalancedBuffer


def balanced_buffer(mem_size: int) -> ExperienceBalancedBuffer:
    """Avalanche's experience-balanced reservoir buffer of ``mem_size`` records (Avalanche is
    imported here, when a strategy is built, not when configurations are checked)."""
    from avalanche.training.storage_policy import ExperienceBalancedBuffer

    return ExperienceBalancedBuffer(max_size=mem_size, adaptive_size=True)


@register_strategy("replay")
class Replay(Strategy):
    """Train on the current task plus ``mem_size`` images of earlier tasks.

    The memory is Avalanche's ``ExperienceBalancedBuffer``: after task t it holds
    ``mem_size // (t + 1)`` (remainder to the earliest) randomly chosen training images from each
    of tasks 0..t, chosen by reservoir sampling with the run's seeded torch RNG. The buffer
    stores ``(task_id, index)`` records; the images are read from the tasks' training sets.
    While learning task t the memory holds tasks 0..t-1 only, and the detector sees the
    concatenation of task t's training set and the memory, so shuffled batches mix them.
    Model selection uses task t's validation split.
    """

    def __init__(
        self, make_detector: DetectorFactory, tasks: Sequence[Task], mem_size: PositiveInt = 100
    ) -> None:
        super().__init__(make_detector)
        self.tasks = tasks
        self.mem_size = mem_size
        self.buffer = balanced_buffer(mem_size)

    def memory_indices(self) -> dict[int, list[int]]:
        """Task id -> indices into that task's training set held in memory."""
        held: dict[int, list[int]] = {}
        for group in self.buffer.buffer_groups.values():
            for i in range(len(group.buffer)):
                task_id, index = group.buffer[i]
                held.setdefault(int(task_id), []).append(int(index))
        return held

    def memory(self) -> Dataset | None:
        parts = [Subset(self.tasks[t].train, idx) for t, idx in self.memory_indices().items()]
        return concat(parts) if parts else None

    def learn(self, task: Task) -> None:
        memory = self.memory()
        train = task.train if memory is None else concat([task.train, memory])
        self._current().fit(train, task.val)
        records = TensorDataset(
            torch.full((dataset_length(task.train),), task.task_id),
            torch.arange(dataset_length(task.train)),
        )
        from avalanche.benchmarks.utils import AvalancheDataset

        experience = SimpleNamespace(dataset=AvalancheDataset([records]))
        self.buffer.post_adapt(None, experience)

    def memory_bytes(self) -> int:
        count = sum(len(v) for v in self.memory_indices().values())
        if count == 0:
            return 0
        image = self.tasks[0].train[0][0]
        return count * image.numel()  # stored as uint8: one byte per value

    def state_dict(self) -> dict:
        groups = {}
        for g, group in self.buffer.buffer_groups.items():
            rows = [group.buffer[i] for i in range(len(group.buffer))]
            groups[g] = {
                "records": torch.tensor([[int(a), int(b)] for a, b in rows]).reshape(-1, 2),
                "weights": group._buffer_weights.clone(),
                "max_size": group.max_size,
            }
        return {**super().state_dict(), "groups": groups, "num_exps": self.buffer._num_exps}

    def load_state_dict(self, state: dict) -> None:
        from avalanche.benchmarks.utils import AvalancheDataset
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        super().load_state_dict(state)
        self.buffer = balanced_buffer(self.mem_size)
        self.buffer._num_exps = state["num_exps"]
        for g, saved in state["groups"].items():
            group = ReservoirSamplingBuffer(saved["max_size"])
            records = saved["records"]  # [N, 2]: task id, index
            group.buffer = AvalancheDataset([TensorDataset(records[:, 0], records[:, 1])])
            group._buffer_weights = saved["weights"]
            self.buffer.buffer_groups[g] = group
