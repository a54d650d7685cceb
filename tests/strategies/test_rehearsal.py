"""DER++ and A-GEM: what the detector is fed, the DER term's value, A-GEM's projection rule,
what each stores and counts, and their state round trips."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from clad.errors import ConfigError
from clad.models.base import TrainedDetector
from clad.registry import detector_table
from clad.strategies.regularization import distillation_loss
from clad.strategies.rehearsal import AGEM, DER, agem_projection, from_uint8, to_uint8
from tests.fakes import RecordingDetector, RecordingTrained, counts, unit_tasks


def learnt(strategy, tasks):
    for task in tasks:
        strategy.learn(task)
    return strategy


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# ------------------------------------------------------------------ DER++


def test_der_feeds_the_current_task_only_and_keeps_a_reservoir_of_mem_size_images():
    torch.manual_seed(0)
    strategy = learnt(DER(RecordingTrained, mem_size=5), unit_tasks([6, 5, 4]))
    assert [counts(f) for f in strategy.detector.fits] == [{0: 6}, {1: 5}, {2: 4}]
    assert strategy.detector.regularizer is None  # removed after each fit
    records = strategy.records()
    assert len(records) == 5 and strategy.seen == 15
    assert len({tuple(r) for r in records.tolist()}) == 5


def test_der_stores_each_image_with_the_outputs_it_had_when_stored():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5])
    strategy = DER(RecordingTrained, mem_size=4)
    strategy.learn(tasks[0])
    detector = strategy.detector
    for k, (t, i) in enumerate(strategy.records().tolist()):
        image = tasks[t].train[i][0]
        assert torch.equal(strategy.images[k], to_uint8(image[None])[0])
        with torch.no_grad():
            expected = detector.network(from_uint8(strategy.images[k : k + 1]))
        torch.testing.assert_close(strategy.outputs[0][k : k + 1], expected)
    kept = {tuple(r): strategy.outputs[0][k] for k, r in enumerate(strategy.records().tolist())}
    strategy.learn(tasks[1])
    for k, r in enumerate(strategy.records().tolist()):
        if tuple(r) in kept:  # an image kept from task 0 keeps its task-0 outputs
            torch.testing.assert_close(strategy.outputs[0][k], kept[tuple(r)])


def test_der_term_is_alpha_mse_of_the_stored_outputs_plus_beta_loss_of_another_batch():
    torch.manual_seed(0)
    strategy = DER(RecordingTrained, mem_size=4, alpha=0.3, beta=0.7, batch_size_mem=4)
    strategy.learn(unit_tasks([6])[0])
    detector = strategy.detector
    batch = torch.zeros(2, 3, 8, 8)
    torch.manual_seed(5)
    value = strategy.term(detector, batch)
    torch.manual_seed(5)  # the same draws, by hand
    first, second = strategy.sample(4), strategy.sample(4)
    x1, x2 = from_uint8(strategy.images[first]), from_uint8(strategy.images[second])
    mse = distillation_loss(detector.network(x1), strategy.outputs[0][first])
    expected = 0.3 * mse + 0.7 * detector.loss(x2)
    torch.testing.assert_close(value, expected)
    # at the weights the outputs were stored with, the dark-knowledge term is 0
    assert float(mse.detach()) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        detector.network.weight.add_(0.1)
    moved = distillation_loss(detector.network(x1), strategy.outputs[0][first])
    assert float(moved.detach()) > 1e-4


def test_der_with_beta_zero_is_der_without_the_loss_term():
    torch.manual_seed(0)
    strategy = DER(RecordingTrained, mem_size=4, alpha=1.0, beta=0.0)
    strategy.learn(unit_tasks([6])[0])
    with torch.no_grad():
        strategy.detector.network.weight.add_(0.1)
    torch.manual_seed(5)
    value = strategy.term(strategy.detector, torch.zeros(4, 3, 8, 8))
    torch.manual_seed(5)
    first = strategy.sample(4)
    expected = distillation_loss(
        strategy.detector.network(from_uint8(strategy.images[first])), strategy.outputs[0][first]
    )
    torch.testing.assert_close(value, expected)


def test_der_adds_its_term_to_the_training_loss_from_the_second_task_on():
    torch.manual_seed(0)
    strategy = learnt(DER(RecordingTrained, mem_size=4), unit_tasks([6, 5]))
    first, second = strategy.detector.history[:2], strategy.detector.history[2:]
    assert all("train_regularizer" not in h for h in first)
    assert all(h["train_regularizer"] > 0 for h in second)


def test_der_counts_images_at_one_byte_and_outputs_at_four():
    torch.manual_seed(0)
    strategy = learnt(DER(RecordingTrained, mem_size=4), unit_tasks([6, 5]))
    values = 4 * 3 * 8 * 8  # the images; the 1x1 convolution's outputs have the same shape
    assert strategy.memory_bytes() == values + 4 * values
    assert strategy.cost_bytes()["memory"] == 5 * values


def test_der_state_round_trips_its_buffer_and_keeps_sampling_the_same_way():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5, 4])
    strategy = learnt(DER(RecordingTrained, mem_size=4), tasks[:2])
    fresh = DER(RecordingTrained, mem_size=4)
    fresh.load_state_dict(round_trip(strategy.state_dict()))
    assert torch.equal(fresh.records(), strategy.records())
    assert torch.equal(fresh.images, strategy.images)
    torch.testing.assert_close(fresh.outputs, strategy.outputs)
    torch.manual_seed(9)
    strategy.learn(tasks[2])
    torch.manual_seed(9)
    fresh.learn(tasks[2])
    assert torch.equal(fresh.records(), strategy.records())  # the reservoir's weights came back


def test_der_refuses_detectors_it_cannot_feed():
    with pytest.raises(ConfigError, match="regularises a trained network"):
        DER.check_arguments({}, RecordingDetector)
    with pytest.raises(ConfigError, match="adversarial"):
        DER.check_arguments({}, detector_table()["rdna"])

    class NoOutputs(RecordingTrained):
        distillation_outputs = TrainedDetector.distillation_outputs

    with pytest.raises(ConfigError, match="does not define distillation_outputs"):
        DER.check_arguments({}, NoOutputs)
    DER.check_arguments({}, detector_table()["stfpm"])


# ------------------------------------------------------------------ A-GEM


def test_agem_projection_on_hand_made_gradients():
    reference = torch.tensor([1.0, 0.0])
    agreeing = torch.tensor([1.0, 2.0])
    assert agem_projection(agreeing, reference) is agreeing  # g . g_ref >= 0: unchanged
    orthogonal = torch.tensor([0.0, 3.0])
    assert agem_projection(orthogonal, reference) is orthogonal
    conflicting = torch.tensor([-2.0, 1.0])  # g . g_ref = -2
    projected = agem_projection(conflicting, reference)
    torch.testing.assert_close(projected, torch.tensor([0.0, 1.0]))
    assert float(projected @ reference) == pytest.approx(0.0)
    # not axis-aligned: g~ = g - (g . r / r . r) r
    g, r = torch.tensor([1.0, -3.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    torch.testing.assert_close(agem_projection(g, r), g - (-2.0 / 2.0) * r)


def test_agem_transform_projects_the_batch_gradient_against_the_memory_gradient():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5])
    strategy = AGEM(RecordingTrained, patterns_per_experience=3, sample_size=3)
    strategy.learn(tasks[0])
    detector = strategy.detector
    params = detector.trainable_parameters()
    batch = torch.stack([tasks[1].train[i][0] for i in range(4)])

    def gradient_of(images) -> torch.Tensor:
        for p in params.values():
            p.grad = None
        detector.loss(images).backward()
        return torch.cat([p.grad.reshape(-1) for p in params.values()])

    reference = gradient_of(from_uint8(strategy.memories[0]))  # sample_size = the whole memory
    for sign in (1.0, -1.0):  # a gradient that agrees with the reference, and one that does not
        noise = torch.randn_like(reference)
        current = sign * reference + 0.1 * reference.norm() * noise / noise.norm()
        offset = 0
        for p in params.values():
            p.grad = current[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        strategy.project(detector, params)
        result = torch.cat([p.grad.reshape(-1) for p in params.values()])
        torch.testing.assert_close(result, agem_projection(current, reference))
    assert strategy.projections == 1
    assert gradient_of(batch).shape == reference.shape


def test_agem_feeds_the_current_task_only_and_keeps_patterns_per_task():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5, 2])
    strategy = learnt(AGEM(RecordingTrained, patterns_per_experience=3, sample_size=4), tasks)
    assert [counts(f) for f in strategy.detector.fits] == [{0: 6}, {1: 5}, {2: 2}]
    assert [len(m) for m in strategy.memories] == [3, 3, 2]
    assert strategy.detector.gradient_transform is None  # removed after each fit
    for task, memory in zip(tasks, strategy.memories, strict=True):
        stored = {round(float(from_uint8(m)[1].mean()) * 255) for m in memory}
        assert all(0 <= i < len(task.train) for i in stored)
        assert {round(float(from_uint8(m)[0].mean()) * 255) for m in memory} == {task.task_id}
    assert strategy.memory_bytes() == 8 * 3 * 8 * 8  # one byte per value


def test_agem_reference_batch_is_balanced_over_the_stored_tasks():
    torch.manual_seed(0)
    strategy = learnt(
        AGEM(RecordingTrained, patterns_per_experience=4, sample_size=6), unit_tasks([6, 5, 4])
    )
    batch = strategy.reference_batch()
    tasks = [round(float(image[0].mean()) * 255) for image in batch]
    assert sorted(tasks) == [0, 0, 1, 1, 2, 2]


def test_agem_applies_its_transform_in_the_detectors_backward_step():
    torch.manual_seed(0)
    tasks = unit_tasks([6, 5])
    strategy = AGEM(RecordingTrained, patterns_per_experience=3, sample_size=3)
    strategy.learn(tasks[0])
    seen = []
    original = strategy.project
    strategy.project = lambda detector, params: (seen.append(1), original(detector, params))
    strategy.learn(tasks[1])
    assert len(seen) == 2 * (5 // 4 + 1)  # every step of both epochs (batches of 4)


def test_agem_state_round_trips():
    torch.manual_seed(0)
    strategy = learnt(AGEM(RecordingTrained, patterns_per_experience=3), unit_tasks([6, 5]))
    fresh = AGEM(RecordingTrained, patterns_per_experience=3)
    fresh.load_state_dict(round_trip(strategy.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(fresh.memories, strategy.memories, strict=True))
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(fresh.predict(x, None).image, strategy.predict(x, None).image)


def test_agem_refuses_memory_banks_and_adversarial_detectors():
    with pytest.raises(ConfigError, match="regularises a trained network"):
        AGEM.check_arguments({}, RecordingDetector)
    with pytest.raises(ConfigError, match="adversarial"):
        AGEM.check_arguments({}, detector_table()["aegan"])
    AGEM.check_arguments({}, detector_table()["conv_ae"])


# ------------------------------------------------------------------ the detector hook


def test_a_gradient_transform_runs_between_backward_and_the_optimizer_step():
    detector = RecordingTrained(epochs=1)
    optimizer = torch.optim.SGD(detector.network.parameters(), lr=1.0)
    before = {n: p.detach().clone() for n, p in detector.network.named_parameters()}

    def zero_the_bias(params: dict[str, nn.Parameter]) -> None:
        assert all(p.grad is not None for p in params.values())  # after backward
        gradient = params["bias"].grad
        assert gradient is not None
        gradient.zero_()

    detector.set_gradient_transform(zero_the_bias)
    detector.backward_step(detector.loss(torch.rand(2, 3, 4, 4)), optimizer)
    assert torch.equal(detector.network.bias, before["bias"])  # the step used the new gradient
    assert not torch.equal(detector.network.weight, before["weight"])
    detector.set_gradient_transform(None)
    assert detector.gradient_transform is None


def test_adversarial_detectors_refuse_a_gradient_transform():
    cls = detector_table()["rdna"]
    detector = cls.__new__(cls)  # the refusal reads the class only
    with pytest.raises(TypeError, match="adversarial"):
        cls.set_gradient_transform(detector, lambda params: None)
