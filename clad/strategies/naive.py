"""Naive fine-tuning: the current task's normal images only, from the previous state."""

from __future__ import annotations

from clad.records import Task
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy


@register_strategy("naive")
class Naive(Strategy):
    """One detector trained on each task in turn. Trained detectors continue from their weights;
    memory-bank detectors rebuild their bank from the current task (their ``fit`` replaces it)."""

    def __init__(self, make_detector: DetectorFactory) -> None:
        super().__init__(make_detector)

    def learn(self, task: Task) -> None:
        self._current().fit(task.train, task.val)
