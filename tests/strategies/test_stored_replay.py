"""Compressed, latent and generative replay: what the detector is fed and what memory each
strategy holds and counts."""

import dataclasses

import pytest
import torch
from torchvision.io import encode_jpeg

from clad.errors import ConfigError
from clad.models.base import tensor_bytes
from clad.registry import validate_params
from clad.strategies.stored_replay import (
    CompressedReplay,
    GenerativeReplay,
    LatentReplay,
    NormalImages,
    to_uint8,
)
from tests.fakes import (
    RecordingDetector,
    RecordingLatent,
    RecordingTrained,
    counts,
    unit_tasks,
)

# ------------------------------------------------------------------ EWC

# ------------------------------------------------------------------ downscaled replay


def test_downscaled_replay_feeds_the_balanced_memory_decoded_at_full_size():
    torch.manual_seed(0)
    tasks = unit_tasks([20, 20, 20])
    strategy = CompressedReplay(RecordingLatent, tasks, mem_size=10, scale=0.5)
    for task in tasks:
        strategy.learn(task)
    fits = strategy.detector.fits
    assert counts(fits[1]) == {1: 20, 0: 10}
    assert counts(fits[2]) == {2: 20, 0: 5, 1: 5}
    held = {(t, i) for t, idx in strategy.memory_indices().items() for i in idx}
    assert len(held) == 10
    # the decoded images are the stored ones (constant images survive resizing exactly)
    memory = strategy.memory()
    assert tuple(memory[0][0].shape) == (3, 8, 8)
    from tests.fakes import unit_pairs

    assert set(unit_pairs(memory)) == held


def test_downscaled_replay_stores_exactly_the_bytes_it_reports():
    torch.manual_seed(0)
    tasks = unit_tasks([12, 12], side=16)
    strategy = CompressedReplay(RecordingLatent, tasks, mem_size=8, scale=0.5)
    for task in tasks:
        strategy.learn(task)
    assert strategy.memory_bytes() == 8 * 3 * 8 * 8  # 8 images of 3 x 8 x 8 uint8
    assert strategy.memory_bytes() == sum(v.numel() for v in strategy.stored.values())

    jpeg = CompressedReplay(RecordingLatent, tasks, mem_size=8, scale=1.0, jpeg_quality=50)
    for task in tasks:
        jpeg.learn(task)
    expected = sum(
        len(encode_jpeg(to_uint8(tasks[t].train[i][0]), quality=50))
        for t, idx in jpeg.memory_indices().items()
        for i in idx
    )
    assert jpeg.memory_bytes() == expected
    assert jpeg.cost_bytes()["memory"] == expected
    restored = CompressedReplay(RecordingLatent, tasks, mem_size=8, scale=1.0, jpeg_quality=50)
    restored.load_state_dict(jpeg.state_dict())
    assert restored.memory_bytes() == expected
    assert torch.equal(restored.memory().images, jpeg.memory().images)


def test_downscaled_replay_at_half_scale_fits_four_times_the_images_in_replays_bytes():
    from clad.strategies.replay import Replay

    torch.manual_seed(0)
    tasks = unit_tasks([40, 40], side=16)
    replay, compressed = (
        Replay(RecordingLatent, tasks, 5),
        CompressedReplay(RecordingLatent, tasks, 20, scale=0.5),
    )
    for task in tasks:
        replay.learn(task)
        compressed.learn(task)
    assert compressed.memory_bytes() == replay.memory_bytes()


def test_downscaled_replay_rejects_bad_settings():
    context = ("make_detector", "tasks")
    with pytest.raises(ConfigError, match=r"strategy\.scale: .*greater than 0"):
        validate_params(CompressedReplay, {"scale": 0.0}, "strategy", context)
    with pytest.raises(ConfigError, match=r"strategy\.jpeg_quality: .*greater than or equal to 1"):
        validate_params(CompressedReplay, {"jpeg_quality": 0}, "strategy", context)


# ------------------------------------------------------------------ latent and generative


def test_latent_replay_stores_codes_only_and_decodes_them_for_the_next_task():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10, 10])
    strategy = LatentReplay(RecordingLatent, tasks, mem_size=6)
    for task in tasks:
        strategy.learn(task)
    fits = strategy.detector.fits
    assert counts(fits[1]) == {1: 10, 0: 6}
    assert counts(fits[2]) == {2: 10, 0: 3, 1: 3}
    held = {(t, i) for t, idx in strategy.memory_indices().items() for i in idx}
    replayed = {pair for pair in fits[2] if pair[0] < 2}  # decoded from the stored codes
    assert {pair for pair in held if pair[0] < 2} <= replayed
    assert all(v.shape == (3,) and v.dtype == torch.float32 for v in strategy.stored.values())
    assert strategy.memory_bytes() == 6 * 3 * 4  # 6 codes of 3 float32
    assert strategy.detector.decoded == 6 + 6  # decoded when tasks 1 and 2 were learnt


class DriftingLatent(RecordingLatent):
    """A latent fake whose every decode adds 1/255 to channel 2 (0.5 in ``unit_tasks``), so an
    image tells how many times it went through the decoder; ``fit`` records (task, index,
    passes) of every image."""

    name = "drifting_latent"

    def fit(self, train, val=None) -> None:
        seen = []
        for i in range(len(train)):
            image = train[i][0]
            t, index, extra = (round(float(image[c].mean()) * 255) for c in range(3))
            seen.append((t, index, extra - 128))  # 0.5 -> 128 in uint8
        self.fits.append(seen)
        self.offset += 1.0

    def decode(self, codes):
        images = super().decode(codes)
        images[:, 2] = (torch.round(images[:, 2] * 255) + 1) / 255  # one more pass, in uint8
        return images


def replayed_passes(fit: list[tuple[int, int, int]], current: int) -> dict[int, set[int]]:
    """Past task -> the numbers of decoder passes of its replayed images."""
    passes: dict[int, set[int]] = {}
    for t, _, n in fit:
        if t != current:
            passes.setdefault(t, set()).add(n)
    return passes


def test_latent_replay_regenerate_passes_kept_images_through_every_later_model():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10, 10, 10])
    strategy = LatentReplay(DriftingLatent, tasks, mem_size=6, regenerate=True)
    for task in tasks:
        strategy.learn(task)
    fits = strategy.detector.fits
    # CLAD: an image of task k replayed at task t went through the models after k .. t-1
    assert replayed_passes(fits[1], 1) == {0: {1}}
    assert replayed_passes(fits[2], 2) == {0: {2}, 1: {1}}
    assert replayed_passes(fits[3], 3) == {0: {3}, 1: {2}, 2: {1}}
    # images are kept (uint8, C * H * W bytes each), not codes
    assert all(v.dtype == torch.uint8 and v.shape == (3, 8, 8) for v in strategy.stored.values())
    assert strategy.memory_bytes() == 6 * 3 * 8 * 8


def test_latent_replay_without_regenerate_decodes_each_code_once_per_task():
    torch.manual_seed(0)
    tasks = unit_tasks([10, 10, 10, 10])
    strategy = LatentReplay(DriftingLatent, tasks, mem_size=6)
    for task in tasks:
        strategy.learn(task)
    fits = strategy.detector.fits
    assert replayed_passes(fits[3], 3) == {0: {1}, 1: {1}, 2: {1}}


def test_latent_replay_regenerate_state_round_trips():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 6, 6])
    first = LatentReplay(DriftingLatent, tasks, mem_size=4, regenerate=True)
    for task in tasks[:2]:
        first.learn(task)
    restored = LatentReplay(DriftingLatent, tasks, mem_size=4, regenerate=True)
    restored.load_state_dict(first.state_dict())
    torch.manual_seed(1)
    first.learn(tasks[2])
    torch.manual_seed(1)
    restored.learn(tasks[2])
    assert restored.detector.fits[-1] == first.detector.fits[-1]
    assert replayed_passes(first.detector.fits[-1], 2) == {0: {2}, 1: {1}}
    assert sorted(restored.stored) == sorted(first.stored)
    assert all(torch.equal(restored.stored[k], first.stored[k]) for k in first.stored)


class TrainedLatentFake(RecordingTrained):
    """A trained fake with an exact encoder and decoder (a code is the mean colour)."""

    def encode(self, images):
        return images.mean(dim=(2, 3))

    def decode(self, codes):
        return codes[:, :, None, None].expand(-1, -1, 8, 8).clone()

    def sample_codes(self, n, generator):
        return torch.rand(n, 3, generator=generator)


def test_latent_replay_takes_replays_mixing():
    arguments = {"mem_size": 4, "regenerate": True, "mixing": "batch"}
    validated = validate_params(LatentReplay, arguments, "strategy", ("make_detector", "tasks"))
    assert validated == arguments
    LatentReplay.check_arguments(validated, TrainedLatentFake)
    with pytest.raises(ConfigError, match="mixing"):
        LatentReplay.check_arguments(validated, RecordingLatent)  # not trained: no batches


def test_latent_replay_batch_mixing_feeds_b_current_and_b_replayed_images():
    class Batches(TrainedLatentFake):
        def __init__(self) -> None:
            super().__init__(epochs=1)
            self.batches: list[list[int]] = []

        def training_step(self, images, optimizer):
            self.batches.append([round(float(x[0].mean()) * 255) for x in images])
            return super().training_step(images, optimizer)

    torch.manual_seed(0)
    # labels as ints, as the datasets' and the replayed images' (so a batch of both collates)
    tasks = [
        dataclasses.replace(task, train=NormalImages(to_uint8(task.train.tensors[0])))
        for task in unit_tasks([8, 9])
    ]
    strategy = LatentReplay(Batches, tasks, mem_size=4, regenerate=True, mixing="batch")
    for task in tasks:
        strategy.learn(task)
    second = strategy.detector.batches[2:]  # task 0: 8 images in 2 batches of 4
    assert len(second) == 2  # 9 // 4
    assert all(sorted(batch) == [0] * 4 + [1] * 4 for batch in second)


def test_latent_and_generative_replay_need_an_encoder():
    tasks = unit_tasks([4])
    with pytest.raises(ConfigError, match="encoder"):
        LatentReplay(RecordingDetector, tasks, mem_size=2).learn(tasks[0])
    with pytest.raises(ConfigError, match="encoder"):
        GenerativeReplay(RecordingDetector, mem_size=2).learn(tasks[0])


def test_generative_replay_feeds_generated_images_and_counts_the_frozen_model():
    torch.manual_seed(0)
    tasks = unit_tasks([5, 5])
    strategy = GenerativeReplay(RecordingLatent, mem_size=7)
    strategy.learn(tasks[0])
    assert strategy.memory_bytes() == strategy.generator.cost_bytes()["trainable"]
    previous = strategy.generator
    strategy.learn(tasks[1])
    fits = strategy.detector.fits
    assert len(fits[0]) == 5 and len(fits[1]) == 5 + 7
    assert strategy.detector.decoded == 0  # the frozen copy generates, not the detector
    assert previous.decoded == 7 and strategy.generator is not previous


def test_generative_replay_counts_a_trained_network_as_memory():
    class TrainedLatent(RecordingTrained):
        def encode(self, images):
            return images.mean(dim=(2, 3))

        def decode(self, codes):
            return codes[:, :, None, None].expand(-1, -1, 8, 8).clone()

        def sample_codes(self, n, generator):
            return torch.rand(n, 3, generator=generator)

    torch.manual_seed(0)
    strategy = GenerativeReplay(TrainedLatent, mem_size=3)
    strategy.learn(unit_tasks([4])[0])
    assert strategy.memory_bytes() == tensor_bytes(strategy.detector.network.state_dict()) > 0
    restored = GenerativeReplay(TrainedLatent, mem_size=3)
    restored.load_state_dict(strategy.state_dict())
    assert restored.memory_bytes() == strategy.memory_bytes()
    assert torch.equal(restored.generator.network.weight, strategy.generator.network.weight)
