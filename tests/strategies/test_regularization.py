"""EWC and LwF: what the detector is fed, what each keeps and counts, and the properties of
their penalties."""

import pytest
import torch

from clad.errors import ConfigError
from clad.models.base import training_for
from clad.strategies.regularization import EWC, LwF, distillation_loss
from tests.fakes import RecordingDetector, RecordingTrained, counts, param_bytes, unit_tasks

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


def test_ewc_lambda_is_twice_avalanches_for_the_same_penalty():
    """The paper's (lambda / 2) here; Avalanche's ``EWCPlugin`` adds lambda * sum F d^2."""
    from types import SimpleNamespace

    from avalanche.training.plugins import EWCPlugin
    from avalanche.training.utils import ParamData

    torch.manual_seed(0)
    strategy = EWC(RecordingTrained, ewc_lambda=6.0)
    strategy.learn(unit_tasks([8])[0])
    detector = strategy.detector
    with torch.no_grad():
        for p in detector.trainable_parameters().values():
            p.add_(0.03)
    plugin = EWCPlugin(ewc_lambda=3.0)  # half of ours
    for name in strategy.anchors[0]:
        anchor, fisher = strategy.anchors[0][name], strategy.fishers[0][name]
        plugin.saved_params[0][name] = ParamData(name, init_tensor=anchor.clone())
        plugin.importances[0][name] = ParamData(name, init_tensor=fisher.clone())
    run = SimpleNamespace(
        clock=SimpleNamespace(train_exp_counter=1),
        device="cpu",
        model=detector.network,
        loss=torch.zeros(()),
    )
    plugin.before_backward(run)
    ours = float(strategy.penalty(detector).detach())
    assert ours > 0
    assert float(run.loss.detach()) == pytest.approx(ours, rel=1e-5)


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
            recon_width=4,
            seg_width=4,
            recon_disc_width=4,
            seg_disc_width=4,
            training=training_for(RDNA, epochs=1, device="cpu"),
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
    detector = ConvAE(latent_channels=4, training=training_for(ConvAE, epochs=1, device="cpu"))
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
