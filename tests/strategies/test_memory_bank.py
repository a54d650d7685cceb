"""The ``cl`` strategy: budgets after every task, routing, pooled PaDiM, resume, errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

from clad.errors import ConfigError
from clad.models.base import training_for
from clad.models.components.gaussian import gaussian
from clad.models.padim import Padim
from clad.models.patchcore import PatchCore
from clad.records import Task
from clad.strategies.memory_bank import ContinualMemoryBank
from tests.fakes import RecordingDetector

SIZE = 32


def images(n: int, seed: int, level: float) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = (level + 0.03 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return TensorDataset(x, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


def tasks(levels: list[float], n: int = 4) -> list[Task]:
    return [
        Task(
            task_id=t,
            name=f"t{t}",
            train=images(n, t, lv),
            val=images(2, 50 + t, lv),
            test=images(2, 100 + t, lv),
        )
        for t, lv in enumerate(levels)
    ]


def patchcore() -> PatchCore:
    return PatchCore(
        backbone="resnet18",
        weights="none",
        coreset_ratio=0.5,
        training=training_for(PatchCore, device="cpu", batch_size=4),
    )


def padim() -> Padim:
    return Padim(
        backbone="resnet18",
        weights="none",
        n_features=16,
        training=training_for(Padim, device="cpu", batch_size=4),
    )


@pytest.mark.parametrize("variant", ["single_bank", "per_task"])
def test_budget_holds_after_every_task(variant):
    torch.manual_seed(0)
    strategy = ContinualMemoryBank(patchcore, mem_size_cl=20, variant=variant)
    for task in tasks([0.2, 0.4, 0.6, 0.8]):
        strategy.learn(task)
        assert 0 < strategy.memory_items() <= 20
        scores = strategy.predict(task.test[:][0], None)
        assert torch.isfinite(scores.image).all() and scores.pixel.shape == (2, SIZE, SIZE)
    # each row and its selection radius, float32
    assert strategy.cost_bytes()["memory"] == strategy.memory_items() * (128 + 256 + 1) * 4
    held = strategy.memory_bytes()  # what the strategy holds beside the detector
    assert held == (0 if variant == "single_bank" else strategy.cost_bytes()["memory"])


def test_single_bank_keeps_every_task_represented():
    torch.manual_seed(0)
    strategy = ContinualMemoryBank(patchcore, mem_size_cl=30)
    for task in tasks([0.1, 0.9]):
        strategy.learn(task)
    detector = strategy.detector
    for level, seed in ((0.1, 7), (0.9, 8)):
        x = images(2, seed, level)[:][0]
        _, route = detector.score(detector.embed(x), detector._prepared, x.shape[-2:])
        assert float(route.max()) < 50  # both tasks' patches have near neighbours in the bank


def test_per_task_routing_picks_the_right_bank():
    torch.manual_seed(0)
    strategy = ContinualMemoryBank(patchcore, mem_size_cl=60, variant="per_task")
    levels = [0.1, 0.5, 0.9]
    for task in tasks(levels):
        strategy.learn(task)
    for t, level in enumerate(levels):
        _, chosen = strategy.route(images(3, 200 + t, level)[:][0])
        assert chosen.tolist() == [t, t, t]


def test_pooled_padim_equals_joint_fit():
    torch.manual_seed(0)
    strategy = ContinualMemoryBank(padim)
    stream = tasks([0.3, 0.7], n=5)
    for task in stream:
        strategy.learn(task)
    joint = strategy.detector.build_memory(ConcatDataset([t.train for t in stream]))
    mean_s, cov_s = gaussian(strategy.detector.memory, 0.01)
    mean_j, cov_j = gaussian(joint, 0.01)
    # exact sums; the features themselves differ in float32 rounding with the batch split
    torch.testing.assert_close(mean_s.cpu(), mean_j.cpu(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cov_s.cpu(), cov_j.cpu(), rtol=1e-5, atol=1e-5)


def test_average_is_clads_running_mean_of_means_and_precisions():
    """CLAD's PaDiM ``cl``: MEAN = (t * MEAN + mean_t) / (t + 1), COV (the precision) alike."""
    from clad.models.components.gaussian import inverse_covariance

    torch.manual_seed(0)
    strategy = ContinualMemoryBank(padim, variant="average")
    stream = tasks([0.2, 0.5, 0.8], n=5)
    for task in stream:
        strategy.learn(task)
    detector = strategy.detector
    eps = detector.covariance_eps
    each = [gaussian(detector.build_memory(task.train), eps) for task in stream]
    mean = sum(m for m, _ in each) / 3
    precision = sum(inverse_covariance(c) for _, c in each) / 3
    memory = detector.memory
    torch.testing.assert_close(memory["mean"].double().cpu(), mean.cpu(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        memory["precision"].double().cpu(), precision.cpu(), rtol=1e-3, atol=1e-3
    )
    assert float(memory["tasks"]) == 3
    assert len(strategy.memories()) == 1 and strategy.memory_bytes() == 0  # the detector's
    # scoring uses the averaged Gaussian as is
    x = stream[0].test[:][0]
    torch.testing.assert_close(strategy.predict(x, None).image, detector.predict(x).image)
    restored = ContinualMemoryBank(padim, variant="average")
    restored.load_state_dict(strategy.state_dict())
    torch.testing.assert_close(restored.predict(x, None).image, detector.predict(x).image)


def test_average_is_padims_alone():
    with pytest.raises(ConfigError, match=r"strategy\.variant: 'average'.*'patchcore'"):
        ContinualMemoryBank.check_arguments({"variant": "average"}, PatchCore)
    ContinualMemoryBank.check_arguments({"variant": "average"}, Padim)


@pytest.mark.parametrize("variant", ["single_bank", "per_task"])
def test_state_round_trip_resumes(variant, tmp_path):
    torch.manual_seed(0)
    strategy = ContinualMemoryBank(patchcore, mem_size_cl=25, variant=variant)
    stream = tasks([0.2, 0.8])
    strategy.learn(stream[0])
    path = tmp_path / "cl.pt"
    torch.save(strategy.state_dict(), path)
    x = stream[1].test[:][0]
    before = strategy.predict(x, None)
    torch.manual_seed(99)
    restored = ContinualMemoryBank(patchcore, mem_size_cl=25, variant=variant)
    restored.load_state_dict(torch.load(path, weights_only=False))
    after = restored.predict(x, None)
    torch.testing.assert_close(before.image, after.image)
    torch.testing.assert_close(before.pixel, after.pixel)


def test_rejects_detectors_without_memory():
    with pytest.raises(ConfigError, match="'cl' works with memory-bank detectors.*'recording'"):
        ContinualMemoryBank(RecordingDetector)
    with pytest.raises(ConfigError, match="'cl' works with memory-bank detectors.*'recording'"):
        ContinualMemoryBank.check_arguments({}, RecordingDetector)  # what a config load runs


def test_per_task_banks_report_their_routing_and_score_each_part_alone():
    torch.manual_seed(0)
    stream = tasks([0.2, 0.8])
    strategy = ContinualMemoryBank(patchcore, mem_size_cl=10**6, variant="per_task")
    for task in stream:
        strategy.learn(task)
    images = torch.cat([stream[0].test.tensors[0][:2], stream[1].test.tensors[0][:2]])
    scores, routes = strategy.predict_routed(images, None)
    assert routes is not None and routes.shape == (4,)
    torch.testing.assert_close(scores.image, strategy.predict(images, None).image)
    assert routes.tolist() == [0, 0, 1, 1]  # each image to its own task's bank
    for k in range(len(stream)):
        alone = strategy.predict_part(images, k)
        assert alone is not None
        chosen = routes == k
        torch.testing.assert_close(alone.image[chosen], scores.image[chosen])
    single = ContinualMemoryBank(patchcore, mem_size_cl=10**6, variant="single_bank")
    single.learn(stream[0])
    assert single.predict_routed(images, None)[1] is None  # one bank: nothing to route
    assert single.predict_part(images, 0) is None


@pytest.mark.parametrize("variant", ["single_bank", "per_task"])
def test_incremental_search_gives_the_matrices_of_a_full_search(variant, tiny_config, tmp_path):
    """Through the runner on the tiny synthetic stream (three tasks, every test set after every
    task): PatchCore under ``cl`` with and without ``incremental_search`` writes the same
    matrices (routing included), to 1e-6."""
    import json

    import numpy as np

    from clad.config import load_config
    from clad.runner import Run

    records = {}
    for incremental in (True, False):
        data = json.loads(tiny_config.read_text())
        data["detector"] = {
            "name": "patchcore",
            "backbone": "resnet18",
            "weights": "none",
            "coreset_ratio": 0.5,
            "incremental_search": incremental,
        }
        data["strategy"] = {"name": "cl", "mem_size_cl": 60, "variant": variant}
        data["training"] = {"batch_size": 8, "device": "cpu"}
        data["evaluation"] = {"overlays_per_task": 0, "batch_size": 4}
        data["output"] = {"dir": str(tmp_path / f"out_{incremental}"), "plots": False}
        path = tmp_path / f"config_{incremental}.json"
        path.write_text(json.dumps(data))
        config = load_config(path)
        records[incremental] = Run(config, 0, loggers=[]).execute()
    fast, full = records[True], records[False]
    for kind in ("matrices", "category_matrices", "oracle_matrices"):
        assert fast.get(kind, {}).keys() == full.get(kind, {}).keys()
        for metric, values in fast.get(kind, {}).items():
            np.testing.assert_allclose(
                np.array(values, dtype=float),
                np.array(full[kind][metric], dtype=float),
                rtol=1e-6,
                atol=1e-6,
                equal_nan=True,
                err_msg=f"{kind} {metric}",
            )
    for kind in ("image", "pixel"):
        np.testing.assert_allclose(
            fast["thresholds"][kind], full["thresholds"][kind], rtol=1e-6, equal_nan=True
        )
    if variant == "per_task":
        np.testing.assert_array_equal(fast["routing"], full["routing"])
