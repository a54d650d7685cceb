"""CLAD's compressed replay with a pix2pix super-resolution restorer (``compressed_replay_sr``):
what the detector and the restorer are fed, the stored 32 x 32 forms (kept, or degenerating
as in CLAD), the bytes counted, and exact state round trips."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clad.errors import ConfigError
from clad.models.base import tensor_bytes
from clad.models.components.pix2pix import downscale, upscale
from clad.registry import strategy_table, validate_params
from clad.strategies.compressed_sr import CompressedReplaySR
from clad.strategies.replay import Replay
from tests.fakes import RecordingDetector, RecordingLatent, counts, unit_pairs, unit_tasks

SIDE = 32
TINY = {
    "stored_side": 8,
    "restorer_ngf": 2,
    "restorer_ndf": 2,
    "restorer_depth": 3,
    "restorer_epochs": 1,
    "restorer_batch_size": 4,
}


class ImageRecorder(RecordingDetector):
    """Keeps the images of every ``fit`` call, as uint8 [N, C, H, W]."""

    name = "image_recorder"

    def __init__(self) -> None:
        super().__init__()
        self.images: list[Tensor] = []
        self.kinds: list[str] = []

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        super().fit(train, val)
        self.kinds.append(type(train).__name__)
        stacked = torch.stack([train[i][0] for i in range(len(train))])
        self.images.append((stacked * 255).round().to(torch.uint8))


def rows(images: Tensor) -> list[bytes]:
    """The images as a sorted list of their bytes (a multiset that ignores the order)."""
    return sorted(image.numpy().tobytes() for image in images)


def strategy(tasks, mem_size: int = 6, make=ImageRecorder, **changes) -> CompressedReplaySR:
    return CompressedReplaySR(make, tasks, mem_size=mem_size, **{**TINY, **changes})


def test_registered_under_its_own_name():
    assert strategy_table()["compressed_replay_sr"] is CompressedReplaySR
    assert strategy_table()["downscaled_replay"] is not CompressedReplaySR


def test_the_detector_gets_the_task_plus_the_balanced_memory_restored():
    torch.manual_seed(0)
    tasks = unit_tasks([12, 12, 12], side=SIDE)
    sr = strategy(tasks)
    sr.learn(tasks[0])
    for t in (1, 2):
        restored = sr.memory()  # the restorer as it is after task t - 1
        assert restored is not None and len(restored) == 6
        sr.learn(tasks[t])
        fed = sr.detector.images[t]
        current = (torch.stack([tasks[t].train[i][0] for i in range(12)]) * 255).round()
        expected = torch.cat([current.to(torch.uint8), restored.images])
        assert rows(fed) == rows(expected)
    # the memory is replay's: mem_size // (t + 1) per task
    assert {t: len(v) for t, v in sr.memory_indices().items()} == {0: 2, 1: 2, 2: 2}
    assert isinstance(sr, Replay)


def test_stored_forms_are_downscaled_uint8_and_never_change_without_degeneration():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10, 10], side=SIDE)
    sr = strategy(tasks)
    sr.learn(tasks[0])
    first = {k: v.clone() for k, v in sr.stored.items()}
    for task in tasks[1:]:
        sr.learn(task)
    for (t, i), stored in sr.stored.items():
        assert stored.dtype == torch.uint8 and stored.shape == (3, 8, 8)
        assert torch.equal(stored, downscale(tasks[t].train[i][0][None], 8)[0])
        if (t, i) in first:
            assert torch.equal(stored, first[(t, i)])


def test_degenerative_stores_the_downscaled_restoration_of_old_images():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10, 10], side=SIDE)
    sr = strategy(tasks, degenerative=True)
    sr.learn(tasks[0])
    sr.learn(tasks[1])
    restored = sr.memory()  # what task 2 replays (the restorer after task 1)
    keys = sorted(sr.stored)
    by_key = dict(zip(keys, restored.images, strict=True))
    sr.learn(tasks[2])
    old = [k for k in sr.stored if k[0] < 2]
    assert old  # tasks 0 and 1 keep 2 images each
    for key in old:
        expected = downscale(by_key[key][None].float() / 255, 8)[0]
        assert torch.equal(sr.stored[key], expected)
    new = [k for k in sr.stored if k[0] == 2]
    for t, i in new:  # images entering the memory are stored from the originals
        assert torch.equal(sr.stored[(t, i)], downscale(tasks[t].train[i][0][None], 8)[0])


def test_the_restorer_learns_each_task_and_its_replayed_images():
    torch.manual_seed(0)
    tasks = unit_tasks([12, 12], side=SIDE)
    sr = strategy(tasks)
    before = {k: v.clone() for k, v in sr.restorer.state_dict().items()}
    sr.learn(tasks[0])
    assert any(not torch.equal(v, before[k]) for k, v in sr.restorer.state_dict().items())
    sr.learn(tasks[1])
    assert [record["images"] for record in sr.restorer_history] == [12, 12 + 6]
    assert {"loss", "gan", "l1", "disc"} <= set(sr.restorer_history[0])

    frozen = strategy(tasks, restorer_epochs=0)
    start = {k: v.clone() for k, v in frozen.restorer.state_dict().items()}
    frozen.learn(tasks[0])
    assert frozen.restorer_history == []
    assert all(torch.equal(v, start[k]) for k, v in frozen.restorer.state_dict().items())


def test_the_restorer_learns_to_undo_the_downscaling():
    """Trained on smooth images, the restorer's error falls below an untrained one's."""
    torch.manual_seed(0)
    tasks = unit_tasks([16], side=SIDE)
    sr = strategy(tasks, restorer_epochs=15, restorer_lr=2e-3, restorer_ngf=4, restorer_ndf=4)
    originals = torch.stack([tasks[0].train[i][0] for i in range(16)])
    stored = list(downscale(originals, 8))

    def error() -> float:
        restored = sr.restore(stored, (3, SIDE, SIDE)).float() / 255
        return float((restored - originals).abs().mean())

    untrained = error()
    sr.train_restorer(tasks[0].train)
    assert error() < 0.5 * untrained


def test_memory_counts_the_stored_bytes_and_the_restorer_weights():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10], side=SIDE)
    sr = strategy(tasks, mem_size=8)
    for task in tasks:
        sr.learn(task)
    restorer = tensor_bytes(sr.restorer.state_dict())
    generator = sum(p.numel() * 4 for p in sr.restorer.generator.parameters())
    critic = sum(p.numel() * 4 for p in sr.restorer.discriminator.parameters())
    assert restorer == generator + critic  # float32 weights, no buffers
    assert sr.memory_bytes() == 8 * 3 * 8 * 8 + restorer
    assert sr.cost_bytes()["memory"] == sr.memory_bytes()


def test_sides_the_unet_cannot_take_are_padded_and_cropped_back():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 6], side=20)  # not a multiple of 2^3
    sr = strategy(tasks, mem_size=4)
    for task in tasks:
        sr.learn(task)
    memory = sr.memory()
    assert memory is not None and memory.images.shape == (4, 3, 20, 20)


def test_state_round_trips_exactly():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10], side=SIDE)
    sr = strategy(tasks)
    for task in tasks:
        sr.learn(task)
    fresh = strategy(tasks)
    fresh.load_state_dict(sr.state_dict())
    assert fresh.memory_bytes() == sr.memory_bytes()
    assert fresh.restorer_history == sr.restorer_history
    assert sorted(fresh.stored) == sorted(sr.stored)
    assert all(torch.equal(fresh.stored[k], v) for k, v in sr.stored.items())
    for key, value in sr.restorer.state_dict().items():
        assert torch.equal(fresh.restorer.state_dict()[key], value), key
    assert torch.equal(fresh.memory().images, sr.memory().images)


def test_any_detector_can_be_fed_and_replayed_pairs_are_images():
    torch.manual_seed(0)
    tasks = unit_tasks([8, 8], side=SIDE)
    sr = strategy(tasks, mem_size=4, make=lambda: RecordingLatent(SIDE))
    for task in tasks:
        sr.learn(task)
    fits = sr.detector.fits
    assert counts(fits[1])[1] == 8 and len(fits[1]) == 8 + 4
    assert len(unit_pairs(sr.memory())) == 4


def test_settings_out_of_range_are_refused():
    context = ("make_detector", "tasks")
    for bad in (
        {"stored_side": 0},
        {"restorer_depth": 1},
        {"restorer_batch_size": 0},
        {"restorer_lr": -1.0},
        {"mem_size": 0},
    ):
        with pytest.raises(ConfigError):
            validate_params(CompressedReplaySR, bad, "strategy", context)
    defaults = validate_params(CompressedReplaySR, {}, "strategy", context)
    assert defaults["stored_side"] == 32 and defaults["restorer_depth"] == 8
    assert defaults["restorer_epochs"] == 5 and defaults["restorer_batch_size"] == 1
    assert defaults["restorer_lr"] == 2e-4 and defaults["l1_weight"] == 100.0


def test_upscale_of_the_stored_form_is_the_restorers_input():
    torch.manual_seed(0)
    tasks = unit_tasks([4], side=SIDE)
    sr = strategy(tasks)
    images = torch.rand(2, 3, SIDE, SIDE)
    torch.testing.assert_close(
        sr.restorer_input(images), upscale(downscale(images, 8), (SIDE, SIDE))
    )


def test_batch_mixing_feeds_clads_batches_to_the_detector_and_the_restorer():
    torch.manual_seed(0)
    tasks = unit_tasks([12, 12], side=SIDE)
    sr = strategy(tasks, mixing="batch")
    for task in tasks:
        sr.learn(task)
    assert sr.detector.kinds == ["TensorDataset", "ReplayBatches"]
    # task 1: 12 current images in batches of 4, each with 4 replayed: 3 x 8 images an epoch
    assert [record["images"] for record in sr.restorer_history] == [12, 24]
    dataset = strategy(tasks)
    for task in tasks:
        dataset.learn(task)
    assert dataset.detector.kinds == ["TensorDataset", "ConcatDataset"]


def test_batch_mixing_needs_a_trained_detector():
    from clad.models.patchcore import PatchCore

    arguments = validate_params(
        CompressedReplaySR, {"mixing": "batch"}, "strategy", ("make_detector", "tasks")
    )
    with pytest.raises(ConfigError, match="mixing"):
        CompressedReplaySR.check_arguments(arguments, PatchCore)
    CompressedReplaySR.check_arguments({"mixing": "dataset"}, PatchCore)
