"""A fresh detector per task, chosen by task id at test time (task-aware upper bound)."""

from __future__ import annotations

from torch import Tensor

from clad.models.base import Detector
from clad.records import Scores, Task
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy


@register_strategy("single_model")
class SingleModel(Strategy):
    """Task t trains a new detector on task t only; ``predict`` uses the test task's own model.
    A task not learnt yet (a column right of the diagonal) is scored by the latest model, so the
    forward-transfer cells stay comparable with the other strategies."""

    task_aware = True

    def __init__(self, make_detector: DetectorFactory) -> None:
        super().__init__(make_detector)
        self.models: dict[int, Detector] = {}

    def learn(self, task: Task) -> None:
        detector = self.make_detector()
        detector.fit(task.train, task.val)
        self.models[task.task_id] = detector
        self.detector = detector

    def predict(self, x: Tensor, task_id: int | None) -> Scores:
        if not self.models:
            raise RuntimeError("single_model: predict called before any learn")
        if task_id is None:
            raise ValueError("single_model is task-aware: predict needs the task id")
        return self.models.get(task_id, self.models[max(self.models)]).predict(x)

    def detectors(self) -> list[Detector]:
        return list(self.models.values())

    def state_dict(self) -> dict:
        return {"models": {t: m.state_dict() for t, m in self.models.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.models = {}
        for t, saved in state["models"].items():
            detector = self.make_detector()
            detector.load_state_dict(saved)
            self.models[t] = detector
        self.detector = self.models[max(self.models)] if self.models else None
