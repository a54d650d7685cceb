"""What each strategy lets a detector see: replay balance and budgets, joint, cumulative,
single_model's per-task models."""

from collections import Counter

import pytest
import torch

from clad.errors import ConfigError
from clad.registry import validate_params
from clad.strategies.joint import Cumulative, MultiTask
from clad.strategies.naive import Naive
from clad.strategies.replay import Replay
from clad.strategies.single_model import SingleModel
from tests.fakes import RecordingDetector, fake_tasks


def task_counts(seen):
    return Counter(t for t, _ in seen)


def test_naive_sees_only_the_current_task_and_keeps_one_detector():
    tasks = fake_tasks([5, 6, 7])
    strategy = Naive(RecordingDetector)
    for task in tasks:
        strategy.learn(task)
    fits = strategy.detector.fits
    assert [task_counts(f) for f in fits] == [{0: 5}, {1: 6}, {2: 7}]
    assert len(strategy.detectors()) == 1


def test_replay_memory_is_balanced_over_past_tasks_and_within_budget():
    torch.manual_seed(0)
    tasks = fake_tasks([20, 20, 20, 20])
    strategy = Replay(RecordingDetector, tasks, mem_size=10)
    for task in tasks:
        strategy.learn(task)
    fits = strategy.detector.fits
    assert task_counts(fits[0]) == {0: 20}
    assert task_counts(fits[1]) == {1: 20, 0: 10}
    assert task_counts(fits[2]) == {2: 20, 0: 5, 1: 5}
    assert task_counts(fits[3]) == {3: 20, 0: 4, 1: 3, 2: 3}  # 10 = 4 + 3 + 3, remainder first
    held = strategy.memory_indices()
    assert sum(len(v) for v in held.values()) == 10
    # the memory of earlier tasks is a subset of what was held before (reservoir shrinking)
    assert set(fits[3]) - {(3, i) for i in range(20)} <= set(fits[2])
    assert strategy.memory_bytes() == 10 * 3 * 4 * 4


def test_replay_is_seeded_and_its_state_round_trips():
    def run(seed):
        torch.manual_seed(seed)
        tasks = fake_tasks([15, 15, 15])
        strategy = Replay(RecordingDetector, tasks, mem_size=6)
        for task in tasks[:2]:
            strategy.learn(task)
        return strategy, tasks

    a, tasks = run(1)
    b, _ = run(1)
    c, _ = run(2)
    assert a.memory_indices() == b.memory_indices()
    assert a.memory_indices() != c.memory_indices()
    restored = Replay(RecordingDetector, tasks, mem_size=6)
    restored.load_state_dict(a.state_dict())
    assert restored.memory_indices() == a.memory_indices()
    torch.manual_seed(5)
    a.learn(tasks[2])
    torch.manual_seed(5)
    restored.learn(tasks[2])
    assert restored.memory_indices() == a.memory_indices()
    assert restored.detector.fits == a.detector.fits


def test_replay_rejects_an_empty_memory():
    # the range is the constructor's type (PositiveInt): a config is checked against it at load
    with pytest.raises(ConfigError, match=r"strategy\.mem_size: .*greater than 0"):
        validate_params(Replay, {"mem_size": 0}, "strategy", ("make_detector", "tasks"))


def test_multi_task_trains_once_on_everything():
    tasks = fake_tasks([3, 4, 5])
    strategy = MultiTask(RecordingDetector, tasks)
    for task in tasks:
        strategy.learn(task)
    assert len(strategy.detector.fits) == 1
    assert task_counts(strategy.detector.fits[0]) == {0: 3, 1: 4, 2: 5}


def test_cumulative_retrains_on_all_seen_tasks():
    tasks = fake_tasks([3, 4, 5])
    strategy = Cumulative(RecordingDetector, tasks)
    for task in tasks:
        strategy.learn(task)
    counts = [task_counts(f) for f in strategy.detector.fits]
    assert counts == [{0: 3}, {0: 3, 1: 4}, {0: 3, 1: 4, 2: 5}]


def test_single_model_keeps_a_fresh_model_per_task_and_routes_by_task_id():
    tasks = fake_tasks([3, 4, 5])
    strategy = SingleModel(RecordingDetector)
    strategy.learn(tasks[0])
    strategy.learn(tasks[1])
    assert len(strategy.detectors()) == 2
    assert [task_counts(m.fits[0]) for m in strategy.detectors()] == [{0: 3}, {1: 4}]
    x = torch.zeros(2, 3, 4, 4)
    # each model has fitted exactly once, so each scores offset 1; check routing by identity
    strategy.models[0].offset = 10.0
    assert strategy.predict(x, 0).image.tolist() == [10.0, 10.0]
    assert strategy.predict(x, 1).image.tolist() == [1.0, 1.0]
    assert strategy.predict(x, 2).image.tolist() == [1.0, 1.0]  # unseen: latest model
    with pytest.raises(ValueError, match="task id"):
        strategy.predict(x, None)
    restored = SingleModel(RecordingDetector)
    restored.load_state_dict(strategy.state_dict())
    assert restored.predict(x, 0).image.tolist() == [10.0, 10.0]
