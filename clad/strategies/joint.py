"""Upper bounds that see past data in full: joint (multi-task) and cumulative training."""

from __future__ import annotations

from collections.abc import Sequence

from clad.records import Task
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy, concat


@register_strategy("multi_task")
class MultiTask(Strategy):
    """Joint training: at the first task, one detector learns all tasks' training data at once
    (validation: all tasks' validation splits); later ``learn`` calls change nothing. Every row of
    the result matrices is therefore the same joint model: the non-continual upper bound."""

    sees_future_tasks = True

    def __init__(self, make_detector: DetectorFactory, tasks: Sequence[Task]) -> None:
        super().__init__(make_detector)
        self.tasks = tasks

    def calibration_tasks(self, t: int, n_tasks: int) -> tuple[int, ...]:
        """Joint training holds every task's data: every threshold, at every row."""
        return tuple(range(n_tasks))

    def learn(self, task: Task) -> None:
        if self.detector is not None:
            return
        self._current().fit(
            concat([t.train for t in self.tasks]), concat([t.val for t in self.tasks])
        )


@register_strategy("cumulative")
class Cumulative(Strategy):
    """At task t, continue training on the union of tasks 0..t (train and validation splits)."""

    def __init__(self, make_detector: DetectorFactory, tasks: Sequence[Task]) -> None:
        super().__init__(make_detector)
        self.tasks = tasks

    def calibration_tasks(self, t: int, n_tasks: int) -> tuple[int, ...]:
        """Cumulative training holds the data of every task seen."""
        return tuple(range(t + 1))

    def learn(self, task: Task) -> None:
        seen = self.tasks[: task.task_id + 1]
        self._current().fit(concat([t.train for t in seen]), concat([t.val for t in seen]))
