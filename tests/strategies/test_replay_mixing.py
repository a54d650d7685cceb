"""Replay's ``mixing``: CLAD's batches (B current + B memory images per batch, the memory drawn
evenly over past tasks, seeded) against the memory appended once (``dataset``)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import Tensor

from clad.errors import ConfigError
from clad.models.base import BatchedDataset
from clad.models.patchcore import PatchCore
from clad.strategies.replay import Replay, ReplayBatches, ReplayBatchSampler
from tests.fakes import RecordingTrained, unit_pairs, unit_tasks


class BatchRecorder(RecordingTrained):
    """A trained fake that records the (task id, index) pairs of every training batch."""

    def __init__(self, epochs: int = 2) -> None:
        super().__init__(epochs)
        self.batches: list[list[tuple[int, int]]] = []

    def training_step(self, images: Tensor, optimizer) -> dict[str, float]:
        self.batches.append(unit_pairs(list(zip(images, images, images, strict=True))))
        return super().training_step(images, optimizer)


def learn_all(mixing: str, sizes: list[int], mem_size: int, seed: int = 0) -> Replay:
    torch.manual_seed(seed)
    strategy = Replay(BatchRecorder, unit_tasks(sizes), mem_size=mem_size, mixing=mixing)
    for task in strategy.tasks:
        strategy.learn(task)
    return strategy


def test_batch_mixing_gives_each_batch_b_current_and_b_memory_images():
    torch.manual_seed(0)
    strategy = Replay(BatchRecorder, unit_tasks([12, 10, 9]), mem_size=6, mixing="batch")
    held_before = []
    for task in strategy.tasks:
        held_before.append({(t, i) for t, idx in strategy.memory_indices().items() for i in idx})
        strategy.learn(task)
    detector = strategy.detector
    # task 0: no memory, the detector's own loader (12 images, batch 4: 3 batches x 2 epochs)
    first, second, third = detector.batches[:6], detector.batches[6:10], detector.batches[10:]
    assert all(Counter(t for t, _ in b) == {0: 4} for b in first)
    # task 1 (10 images): 10 // 4 = 2 batches per epoch, the last partial batch dropped (CLAD)
    assert len(second) == 4
    for batch in second:
        assert Counter(t for t, _ in batch) == {1: 4, 0: 4}
    assert len(third) == 4  # task 2 (9 images): 2 batches per epoch
    for batch in third:
        tasks = Counter(t for t, _ in batch)
        assert tasks[2] == 4 and tasks[0] + tasks[1] == 4
    # memory images come from what the memory held while the task was learnt
    for t, batches in ((1, second), (2, third)):
        replayed = {pair for batch in batches for pair in batch if pair[0] < t}
        assert replayed <= held_before[t]
    assert {t for t, _ in held_before[2]} == {0, 1} and len(held_before[2]) == 6
    held = strategy.memory_indices()
    assert {len(v) for v in held.values()} == {2}  # after task 2: 6 // 3 per task
    # as a plain dataset (what fit iterates by index) it is the task plus the memory, once each
    assert Counter(t for t, _ in detector.fits[2]) == {2: 9, 0: 3, 1: 3}


def test_batch_memory_is_drawn_from_the_memory_evenly_over_past_tasks():
    generator = torch.Generator().manual_seed(0)
    groups = [torch.tensor([1000]), torch.arange(2000, 2005), torch.arange(3000, 3020)]
    sampler = ReplayBatchSampler(400, groups, 8, generator)
    assert len(sampler) == 50
    per_task: Counter = Counter()
    for batch in sampler:
        assert len(batch) == 16
        current = [i for i in batch if i < 400]
        memory = [i for i in batch if i >= 400]
        assert len(current) == 8 and len(memory) == 8
        assert all(any(bool((g == i).any()) for g in groups) for i in memory)
        per_task.update(i // 1000 for i in memory)
    assert set(per_task) == {1, 2, 3}
    # each memory image's task uniform over the 3 past tasks, whatever their memory sizes
    for count in per_task.values():
        assert abs(count / 400 - 1 / 3) < 0.06


def test_batch_sampler_covers_the_current_task_once_and_is_seeded():
    groups = [torch.arange(10, 14)]

    def batches(seed: int) -> list[list[int]]:
        return list(ReplayBatchSampler(10, groups, 3, torch.Generator().manual_seed(seed)))

    one = batches(1)
    assert one == batches(1) and one != batches(2)
    current = [i for b in one for i in b if i < 10]
    assert len(current) == 9 and len(set(current)) == 9  # 3 batches of 3, one image dropped
    # fewer current images than a batch: one batch of all of them
    small = list(ReplayBatchSampler(2, groups, 8, torch.Generator().manual_seed(0)))
    assert len(small) == 1 and sorted(i for i in small[0] if i < 10) == [0, 1]
    assert len(small[0]) == 4


def test_batch_mixing_is_seeded_and_its_state_round_trips():
    sizes, mem = [8, 8, 8], 4
    a = learn_all("batch", sizes, mem, seed=3)
    b = learn_all("batch", sizes, mem, seed=3)
    c = learn_all("batch", sizes, mem, seed=4)
    assert a.detector.batches == b.detector.batches
    assert a.detector.batches != c.detector.batches

    torch.manual_seed(3)
    tasks = unit_tasks(sizes)
    first = Replay(BatchRecorder, tasks, mem_size=mem, mixing="batch")
    for task in tasks[:2]:
        first.learn(task)
    restored = Replay(BatchRecorder, tasks, mem_size=mem, mixing="batch")
    restored.load_state_dict(first.state_dict())
    done = len(first.detector.batches)
    torch.manual_seed(9)
    first.learn(tasks[2])
    torch.manual_seed(9)
    restored.learn(tasks[2])
    assert restored.detector.batches == first.detector.batches[done:]
    for p, q in zip(
        first.detector.network.parameters(), restored.detector.network.parameters(), strict=True
    ):
        assert torch.equal(p, q)


def test_dataset_mixing_appends_the_memory_once_and_uses_the_plain_loader():
    strategy = learn_all("dataset", [12, 10, 9], mem_size=6)
    third = strategy.detector.batches[-6:]  # task 2: 9 + 6 images, batch 4: 4 batches x 2
    seen = Counter(t for b in strategy.detector.batches[-8:] for t, _ in b)
    assert seen == {2: 18, 0: 6, 1: 6}  # every image once per epoch, 2 epochs
    assert len(third[-1]) == 3  # the last partial batch is kept


def test_replay_batches_is_a_batched_dataset_read_plainly_once():
    tasks = unit_tasks([5, 3])
    memory = tasks[0].train
    mixed = ReplayBatches(tasks[1].train, memory, [0] * 5)
    assert isinstance(mixed, BatchedDataset)
    assert not isinstance(memory, BatchedDataset)
    assert len(mixed) == 8
    assert Counter(t for t, _ in unit_pairs(mixed)) == {1: 3, 0: 5}
    with pytest.raises(ValueError, match="task ids"):
        ReplayBatches(tasks[1].train, memory, [0] * 4)


def test_batch_mixing_is_refused_for_a_memory_bank_detector():
    with pytest.raises(ConfigError, match=r"strategy\.mixing: 'batch'.*patchcore"):
        Replay.check_arguments({"mem_size": 10, "mixing": "batch"}, PatchCore)
    Replay.check_arguments({"mem_size": 10, "mixing": "dataset"}, PatchCore)
    Replay.check_arguments({"mem_size": 10, "mixing": "batch"}, RecordingTrained)


@pytest.mark.parametrize(
    "name, settings",
    [
        ("replay", {"mem_size": 4, "mixing": "batch"}),
        ("latent_replay", {"mem_size": 4, "mixing": "batch", "regenerate": True}),
    ],
    ids=["replay", "latent_replay"],
)
def test_batch_mixing_keeps_the_strategy_contract(name, settings):
    """The public contract checks (seeded, state round trip, predict) with a real tiny
    trained detector (conv_ae for replay, vae for latent replay)."""
    from clad.testing import STRATEGY_CHECKS, strategy_case

    case = strategy_case(name, settings)
    for check in STRATEGY_CHECKS:
        check(case)
