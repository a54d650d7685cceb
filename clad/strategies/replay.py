"""Experience replay with a memory balanced over past tasks (Avalanche storage policy)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import PositiveInt
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset, TensorDataset

from clad.errors import ConfigError
from clad.models.base import TrainedDetector
from clad.records import Task, dataset_length
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy, concat, detector_name

if TYPE_CHECKING:
    from avalanche.training.storage_policy import ExperienceBalancedBuffer


def balanced_buffer(mem_size: int) -> ExperienceBalancedBuffer:
    """Avalanche's experience-balanced reservoir buffer of ``mem_size`` records (Avalanche is
    imported here, when a strategy is built, not when configurations are checked)."""
    from avalanche.training.storage_policy import ExperienceBalancedBuffer

    return ExperienceBalancedBuffer(max_size=mem_size, adaptive_size=True)


Mixing = Literal["batch", "dataset"]


class ReplayBatchSampler(Sampler[list[int]]):
    """CLAD's replay batches (``Memory.create_batch_data`` in CLAD's ``src/memory.py``).

    One pass: the current task's ``n_current`` images in a random order, cut into batches of
    ``batch_size`` (the last partial batch dropped, as CLAD's training loader does:
    ``drop_last=True`` in ``StrategyAD.training_task``; a task with fewer images than
    ``batch_size`` gives one batch of all of them). Each batch of b current images gets b memory
    images drawn with replacement: each one's task uniform over the past tasks
    (``np.random.choice(tasks, size=b, replace=True)``), then an image uniform within that
    task's memory; the 2b indices are shuffled together. Every draw comes from ``generator``.

    Args:
        n_current: the current task's images, indices ``0 .. n_current - 1``.
        groups: per past task, the indices of its memory images (each non-empty).
        batch_size: B.
        generator: the source of every random draw.
    """

    def __init__(
        self,
        n_current: int,
        groups: Sequence[Tensor],
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.n_current = n_current
        self.groups = list(groups)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return max(1, self.n_current // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n_current, generator=self.generator)  # [N]
        size = min(self.batch_size, self.n_current)
        sizes = torch.tensor([len(g) for g in self.groups])  # [T_past]
        for start in range(0, len(self) * size, size):
            current = order[start : start + size]  # [b]
            tasks = torch.randint(len(self.groups), (size,), generator=self.generator)  # [b]
            offsets = (torch.rand(size, generator=self.generator) * sizes[tasks]).long()  # [b]
            memory = torch.stack(
                [self.groups[int(t)][int(o)] for t, o in zip(tasks, offsets, strict=True)]
            )  # [b]
            batch = torch.cat([current, memory])  # [2b]
            yield batch[torch.randperm(len(batch), generator=self.generator)].tolist()


class ReplayBatches(Dataset):
    """The current task's training set and a replay memory, batched as CLAD batches replay
    (``ReplayBatchSampler``): a ``clad.models.base.BatchedDataset``. Read as a plain dataset
    (items ``0 .. n_current - 1`` the current task's, then the memory's, each once), it is the
    concatenation, so unshuffled passes and memory-bank detectors see every image once.

    Args:
        current: the current task's training set.
        memory: the replay memory.
        memory_tasks: the task of each memory item, in order (len == len(memory)).
    """

    def __init__(self, current: Dataset, memory: Dataset, memory_tasks: Sequence[int]) -> None:
        if len(memory_tasks) != dataset_length(memory):
            raise ValueError(
                f"ReplayBatches: {len(memory_tasks)} task ids for {dataset_length(memory)} "
                "memory images"
            )
        self.data: ConcatDataset = ConcatDataset([current, memory])
        self.n_current = dataset_length(current)
        positions = torch.arange(len(memory_tasks)) + self.n_current
        task_ids = torch.tensor(list(memory_tasks))
        self.groups = [positions[task_ids == t] for t in sorted(set(memory_tasks))]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        return self.data[index]

    def batch_sampler(self, batch_size: int, generator: torch.Generator) -> ReplayBatchSampler:
        return ReplayBatchSampler(self.n_current, self.groups, batch_size, generator)


@register_strategy("replay")
class Replay(Strategy):
    """Train on the current task plus ``mem_size`` images of earlier tasks.

    The memory is Avalanche's ``ExperienceBalancedBuffer``: after task t it holds
    ``mem_size // (t + 1)`` (remainder to the earliest) randomly chosen training images from each
    of tasks 0..t, chosen by reservoir sampling with the run's seeded torch RNG (CLAD's
    ``MemoryReplay.memory_update`` keeps ``mem_size // (t + 1)`` per task too). The buffer
    stores ``(task_id, index)`` records; the images are read from the tasks' training sets.
    While learning task t the memory holds tasks 0..t-1 only. Model selection uses task t's
    validation split. How the detector sees the memory is ``mixing``:

    ``"dataset"`` (default): the concatenation of task t's training set and the memory, each
        image once per epoch, shuffled together: old images are M / (n_t + M) of an epoch
        (about 12 % with M = 40 on screw's 288 training images).
    ``"batch"`` (CLAD's ``Memory.create_batch_data``, used by all of CLAD's trainers): every
        batch of B current images gets B memory images drawn with replacement, each one's task
        uniform over the past tasks (``ReplayBatches``); an epoch is one pass over the current
        task (last partial batch dropped, as CLAD's loader), and half of every step is replay
        whatever ``mem_size``. Only trained detectors have batches: a memory-bank detector
        (one pass over the images) refuses it. The first task has no memory and trains as
        under ``"dataset"``.

    Args:
        make_detector: the detector factory (the runner's).
        tasks: the stream's tasks (the memory reads their training sets).
        mem_size: images kept over all past tasks.
        mixing: ``"dataset"`` or ``"batch"`` (above).
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        tasks: Sequence[Task],
        mem_size: PositiveInt = 100,
        mixing: Mixing = "dataset",
    ) -> None:
        super().__init__(make_detector)
        self.tasks = tasks
        self.mem_size = mem_size
        self.mixing: Mixing = mixing
        self.buffer = balanced_buffer(mem_size)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_mixing(arguments.get("mixing", "dataset"), detector)

    def memory_indices(self) -> dict[int, list[int]]:
        """Task id -> indices into that task's training set held in memory."""
        held: dict[int, list[int]] = {}
        for group in self.buffer.buffer_groups.values():
            for i in range(len(group.buffer)):
                task_id, index = group.buffer[i]
                held.setdefault(int(task_id), []).append(int(index))
        return held

    def memory(self) -> Dataset | None:
        """The memory's images, task by task in task order (None while empty)."""
        held = sorted(self.memory_indices().items())
        parts = [Subset(self.tasks[t].train, idx) for t, idx in held]
        return concat(parts) if parts else None

    def memory_tasks(self) -> list[int]:
        """The task of each item of ``memory()``, in order: task by task, in task order."""
        return [t for t, indices in sorted(self.memory_indices().items()) for _ in indices]

    def training_set(self, task: Task) -> Dataset:
        """What the detector learns ``task`` from: its training set and the memory, mixed as
        ``mixing`` says (the training set alone while the memory is empty)."""
        memory = self.memory()
        if memory is None:
            return task.train
        if self.mixing == "batch":
            return ReplayBatches(task.train, memory, self.memory_tasks())
        return concat([task.train, memory])

    def learn(self, task: Task) -> None:
        self._current().fit(self.training_set(task), task.val)
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


def check_mixing(mixing: str, detector: type) -> None:
    """A ``ConfigError`` when ``mixing`` is ``"batch"`` and ``detector`` (a class) has no
    training batches to mix (a memory-bank detector makes one pass over the images)."""
    if mixing == "batch" and not issubclass(detector, TrainedDetector):
        raise ConfigError(
            f"strategy.mixing: 'batch' mixes memory into training batches; detector "
            f"{detector_name(detector)!r} trains no batches (one pass over the images, each "
            "seen once): use mixing 'dataset'"
        )
