"""Cost accounting: trainable weights, frozen pretrained weights and stored memory, each byte
counted once, the same way for every detector and strategy (``cost_bytes``)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.data import TensorDataset

from clad.models.autoencoder import ConvAE
from clad.models.base import tensor_bytes, training_for
from clad.models.patchcore import PatchCore
from clad.models.stfpm import STFPM
from clad.records import Task
from clad.strategies.joint import MultiTask
from clad.strategies.memory_bank import ContinualMemoryBank
from clad.strategies.naive import Naive
from clad.strategies.replay import Replay
from clad.strategies.single_model import SingleModel

SIZE = 32


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A resnet18 state dict on disk: 'pretrained' weights that are reloaded, not saved."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


def data(n: int, seed: int) -> TensorDataset:
    images = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(images, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


def tasks() -> list[Task]:
    return [Task(t, f"t{t}", data(6, t), data(2, 10 + t), data(3, 20 + t)) for t in range(2)]


def strategy_for(label: str, resnet_file: str):
    def patchcore():
        return PatchCore(
            backbone="resnet18",
            weights=resnet_file,
            coreset_ratio=0.5,
            training=training_for(PatchCore, device="cpu", batch_size=4),
        )

    def autoencoder():
        return ConvAE(training=training_for(ConvAE, epochs=1, batch_size=4, device="cpu"))

    builders = {
        "patchcore naive": lambda: Naive(patchcore),
        "patchcore cl single_bank": lambda: ContinualMemoryBank(patchcore, mem_size_cl=30),
        "patchcore cl per_task": lambda: ContinualMemoryBank(
            patchcore, mem_size_cl=30, variant="per_task"
        ),
        "patchcore single_model": lambda: SingleModel(patchcore),
        "conv_ae naive": lambda: Naive(autoencoder),
        "conv_ae multi_task": lambda: MultiTask(autoencoder, tasks()),
        "conv_ae single_model": lambda: SingleModel(autoencoder),
    }
    return builders[label]()


LABELS = [
    "patchcore naive",
    "patchcore cl single_bank",
    "patchcore cl per_task",
    "patchcore single_model",
    "conv_ae naive",
    "conv_ae multi_task",
    "conv_ae single_model",
]


@pytest.mark.parametrize("label", LABELS)
def test_the_columns_add_up_to_the_saved_state(label, resnet_file):
    torch.manual_seed(0)
    strategy = strategy_for(label, resnet_file)
    for task in tasks():
        strategy.learn(task)
    costs = strategy.cost_bytes()
    # the saved state holds the fitted weights and the stored memory, and nothing else
    assert tensor_bytes(strategy.state_dict()) == costs["trainable"] + costs["memory"]
    backbones = sum(
        tensor_bytes(d.extractor.state_dict())
        for d in strategy.detectors()
        if hasattr(d, "extractor")
    )
    assert costs["pretrained"] == backbones  # one backbone per detector kept
    if label.startswith("patchcore"):
        assert costs["pretrained"] > 0 and costs["memory"] > 0
    else:
        assert costs["pretrained"] == 0 and costs["memory"] == 0 and costs["trainable"] > 0


def test_the_single_bank_is_counted_once(resnet_file):
    torch.manual_seed(0)
    strategy = strategy_for("patchcore cl single_bank", resnet_file)
    for task in tasks():
        strategy.learn(task)
    bank = tensor_bytes(strategy.detector.memory)
    assert strategy.memory_bytes() == 0  # the strategy holds nothing beside the detector
    assert strategy.cost_bytes()["memory"] == bank


def test_replay_counts_its_images_at_one_byte_per_value(resnet_file):
    torch.manual_seed(0)
    stream = tasks()
    strategy = Replay(
        lambda: ConvAE(training=training_for(ConvAE, epochs=1, batch_size=4, device="cpu")),
        stream,
        mem_size=4,
    )
    for task in stream:
        strategy.learn(task)
    costs = strategy.cost_bytes()
    assert costs["memory"] == 4 * 3 * SIZE * SIZE
    assert costs["trainable"] == tensor_bytes(strategy.detector.state_dict())


def test_a_frozen_teacher_is_pretrained_and_not_saved(resnet_file):
    torch.manual_seed(0)
    quick = training_for(STFPM, epochs=1, batch_size=4, device="cpu")
    detector = STFPM(backbone="resnet18", weights=resnet_file, training=quick)
    detector.fit(data(4, 0))
    costs = detector.cost_bytes()
    teacher = tensor_bytes(detector.network.teacher.state_dict())
    student = tensor_bytes(detector.network.student.state_dict())
    assert costs == {"trainable": student, "pretrained": teacher, "memory": 0}
    state = detector.state_dict()
    assert tensor_bytes(state) == student
    torch.manual_seed(1)
    fresh = STFPM(backbone="resnet18", weights=resnet_file, training=quick)
    fresh.load_state_dict(state)  # the teacher comes from the weights file
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(fresh.predict(x).pixel, detector.predict(x).pixel)


def test_a_state_that_does_not_fit_is_refused_clearly(resnet_file):
    detector = STFPM(
        backbone="resnet18",
        weights=resnet_file,
        training=training_for(STFPM, epochs=1, device="cpu"),
    )
    state = detector.state_dict()
    state["network"] = {k: v for k, v in state["network"].items() if "stages.4" not in k}
    with pytest.raises(RuntimeError, match="stfpm: the saved state does not fit"):
        detector.load_state_dict(state)
