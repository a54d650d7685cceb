"""EWC, LwF, compressed, latent and generative replay: what the detector is fed, what memory
each strategy holds and counts, and the properties of their penalties."""

from collections import Counter

import pytest
import torch
from torchvision.io import encode_jpeg

from clad.errors import ConfigError
from clad.models.base import tensor_bytes
from clad.strategies.regularization import EWC, LwF, distillation_loss
from clad.strategies.stored_replay import (
    CompressedReplay,
    GenerativeReplay,
    LatentReplay,
    to_uint8,
)
from tests.fakes import RecordingDetector, RecordingLatent, RecordingTrained, unit_tasks


def counts(seen):
    return Counter(t for t, _ in seen)


def param_bytes(detector) -> int:
    return sum(p.numel() * p.element_size() for p in detector.network.parameters())


# ------------------------------------------------------------------ EWC


def test_ewc_feeds_the_current_task_only_and_counts_one_anchor_and_fisher_per_task():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5, 4])
    strategy = EWC(RecordingTrained, ewc_lambda=10.0)
    for k, task in enumerate(tasks):
        strategy.learn(task)
        assert strategy.memory_bytes() == (k + 1) * 2 * param_bytes(strategy.detector)
    assert [counts(f) for f in strategy.detector.fits] == [{0: 6}, {1: 5}, {2: 4}]
    assert strategy.cost_bytes()["memory"] == 3 * 2 * param_bytes(strategy.detector)
    assert strategy.detector.regularizer is None  # removed after each fit


def test_ewc_penalty_is_zero_at_the_old_parameters_and_grows_quadratically_away():
    torch.manual_seed(0)
    strategy = EWC(RecordingTrained, ewc_lambda=10.0)
    strategy.learn(unit_tasks([8])[0])
    detector = strategy.detector
    assert float(strategy.penalty(detector).detach()) == 0.0
    fisher = strategy.fishers[0]
    assert all(bool((f >= 0).all()) for f in fisher.values())
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    start = {n: p.detach().clone() for n, p in detector.trainable_parameters().items()}
    penalties = []
    for step in (0.01, 0.02, 0.04):
        with torch.no_grad():
            for name, p in detector.trainable_parameters().items():
                p.copy_(start[name] + step)
        penalties.append(float(strategy.penalty(detector).detach()))
    assert 0 < penalties[0] < penalties[1] < penalties[2]
    assert penalties[1] / penalties[0] == pytest.approx(4.0, rel=1e-3)
    # by hand: lambda / 2 * sum F * step^2
    expected = 0.5 * 10.0 * sum(float(f.sum()) for f in fisher.values()) * 0.04**2
    assert penalties[2] == pytest.approx(expected, rel=1e-4)


def test_ewc_penalty_enters_the_training_loss_and_holds_the_weights_back():
    tasks = unit_tasks([8, 8])
    moved = {}
    for lam in (0.0, 1e4):
        torch.manual_seed(0)
        strategy = EWC(lambda: RecordingTrained(epochs=5), ewc_lambda=lam)
        strategy.learn(tasks[0])
        anchor = strategy.anchors[0]
        strategy.learn(tasks[1])
        params = strategy.detector.trainable_parameters()
        moved[lam] = sum(float((params[n].detach() - anchor[n]).abs().sum()) for n in params)
        history = strategy.detector.history[-1]
        assert (history["train_regularizer"] > 0) == (lam > 0)
    assert moved[1e4] < moved[0.0]


def test_ewc_online_keeps_one_pair_and_the_state_round_trips():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 6, 6])
    strategy = EWC(RecordingTrained, ewc_lambda=1.0, mode="online", decay=0.5)
    for task in tasks:
        strategy.learn(task)
    assert len(strategy.anchors) == len(strategy.fishers) == 1
    assert strategy.memory_bytes() == 2 * param_bytes(strategy.detector)
    restored = EWC(RecordingTrained, ewc_lambda=1.0, mode="online", decay=0.5)
    restored.load_state_dict(strategy.state_dict())
    assert float(restored.penalty(restored.detector).detach()) == float(
        strategy.penalty(strategy.detector).detach()
    )


def test_ewc_and_lwf_refuse_detectors_they_cannot_regularise():
    task = unit_tasks([4])[0]
    for strategy in (EWC(RecordingDetector), LwF(RecordingDetector)):
        with pytest.raises(ConfigError, match="trained network"):
            strategy.learn(task)
    from clad.models.rdna import RDNA

    with pytest.raises(TypeError, match="adversarial"):
        RDNA(
            epochs=1, recon_width=4, seg_width=4, recon_disc_width=4, seg_disc_width=4, device="cpu"
        ).set_regularizer(lambda images: images.sum())


# ------------------------------------------------------------------ LwF


def test_lwf_loss_is_zero_when_the_model_equals_its_previous_copy():
    torch.manual_seed(0)
    strategy = LwF(RecordingTrained, lwf_weight=2.0)
    strategy.learn(unit_tasks([6])[0])
    images = torch.rand(4, 3, 8, 8)
    for training in (False, True):
        strategy.detector.network.train(training)
        assert float(strategy.distillation(strategy.detector, images).detach()) == 0.0
    with torch.no_grad():
        strategy.detector.network.weight.add_(0.1)
    assert float(strategy.distillation(strategy.detector, images).detach()) > 0


def test_lwf_loss_is_zero_for_a_copy_with_dropout_in_training_mode():
    from clad.models.autoencoder import ConvAE

    torch.manual_seed(0)
    detector = ConvAE(latent_channels=4, epochs=1, device="cpu")
    detector.network = torch.nn.Sequential(detector.network, torch.nn.Dropout(0.5)).train()
    strategy = LwF(lambda: detector)
    strategy.detector = detector
    strategy.previous = LwF.frozen_copy(detector)
    assert float(strategy.distillation(detector, torch.rand(2, 3, 16, 16)).detach()) == 0.0


def test_lwf_feeds_the_current_task_only_and_counts_the_frozen_copy():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5])
    strategy = LwF(RecordingTrained, lwf_weight=1.0)
    assert strategy.memory_bytes() == 0
    for task in tasks:
        strategy.learn(task)
    assert [counts(f) for f in strategy.detector.fits] == [{0: 6}, {1: 5}]
    assert strategy.memory_bytes() == param_bytes(strategy.detector)
    assert "train_regularizer" in strategy.detector.history[-1]
    assert "train_regularizer" not in strategy.detector.history[0]
    restored = LwF(RecordingTrained)
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.previous.network.weight, strategy.previous.network.weight)


def test_distillation_loss_averages_over_outputs():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert float(distillation_loss((a, a), (a, b))) == pytest.approx(0.5)


# ------------------------------------------------------------------ compressed replay


def test_compressed_replay_feeds_the_balanced_memory_decoded_at_full_size():
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


def test_compressed_replay_stores_exactly_the_bytes_it_reports():
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


def test_compressed_replay_at_half_scale_fits_four_times_the_images_in_replays_bytes():
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


def test_compressed_replay_rejects_bad_settings():
    tasks = unit_tasks([4])
    with pytest.raises(ValueError, match="scale"):
        CompressedReplay(RecordingLatent, tasks, scale=0.0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        CompressedReplay(RecordingLatent, tasks, jpeg_quality=0)


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
