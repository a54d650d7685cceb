"""The Strategy contract: a strategy decides what data a detector sees, and nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from clad.models.base import COST_KINDS, Detector
from clad.records import Scores, Task

DetectorFactory = Callable[[], Detector]


def concat(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset from several (the single one itself when there is just one)."""
    return datasets[0] if len(datasets) == 1 else ConcatDataset(list(datasets))


class Strategy(ABC):
    """Feeds tasks to one or more detectors.

    Context arguments (``make_detector``, ``tasks``) come from the runner; every other keyword
    argument of a subclass's ``__init__`` is a config field of the ``strategy`` block.

    Attributes:
        task_aware: when True the runner passes the test task's id to ``predict`` (an oracle
            task identity: ``single_model`` picks the test task's own model with it).
        sees_future_tasks: when True the model has learnt every task before the first row
            (joint training), so forward transfer is not defined for it.
    """

    name: ClassVar[str]
    task_aware: ClassVar[bool] = False
    sees_future_tasks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A strategy's ``name`` is its registered name (``register_strategy``); a class defined
        outside clad (a plugin) is named after itself."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        """Checks that the constructor's types and ranges cannot state: chiefly whether
        ``detector`` (the configured detector's class) is one this strategy can feed. Raise
        ``ConfigError`` or ``ValueError`` naming the setting. Run once, when a configuration is
        loaded, before any data is read. By default there is nothing to check."""
        return None

    def __init__(self, make_detector: DetectorFactory) -> None:
        self.make_detector = make_detector
        self.detector: Detector | None = None

    @abstractmethod
    def learn(self, task: Task) -> None:
        """Train on what this strategy allows for ``task`` (tasks arrive in stream order)."""

    def _current(self) -> Detector:
        if self.detector is None:
            self.detector = self.make_detector()
        return self.detector

    def predict(self, x: Tensor, task_id: int | None) -> Scores:
        """Scores for ``x`` [B, 3, H, W]; ``task_id`` is given only to task-aware strategies."""
        if self.detector is None:
            raise RuntimeError(f"strategy {self.name!r}: predict called before any learn")
        return self.detector.predict(x)

    def predict_routed(self, x: Tensor, task_id: int | None) -> tuple[Scores, Tensor | None]:
        """``predict``'s scores and, for a task-agnostic method that keeps one part per task
        and sends each image to one of them (per-task banks, UCAD's prompts and memories), the
        index of the task whose part scored each image ([B] long); None for a method without
        parts. By default: the detector's own ``predict_routed(x)`` when it has one (a detector
        that routes internally), else ``(predict(x, task_id), None)``."""
        routed = getattr(self.detector, "predict_routed", None)
        if routed is not None and not self.task_aware:
            return routed(x)
        return self.predict(x, task_id), None

    def predict_part(self, x: Tensor, task_id: int) -> Scores | None:
        """Scores of ``x`` by task ``task_id``'s part, whatever the routing would choose (oracle
        routing), or None for a method without parts. By default the detector's own
        ``predict_part`` when it has one."""
        part = getattr(self.detector, "predict_part", None)
        return None if part is None else part(x, task_id)

    def calibration_tasks(self, t: int, n_tasks: int) -> tuple[int, ...]:
        """The tasks whose validation images the strategy holds after learning task ``t`` (of
        ``n_tasks``): the runner recomputes their F1 thresholds with the current model. By
        default the current task's only; the others keep the thresholds they had."""
        return (t,)

    def detectors(self) -> list[Detector]:
        """Every detector this strategy keeps (for size accounting)."""
        return [] if self.detector is None else [self.detector]

    def training_history(self) -> list[list[dict[str, Any]]]:
        """Per-epoch training records of everything this strategy trains, one list per trained
        part, in a stable order: a part's list only grows, and a new part is added at the end
        (the runner takes each task's new records as what grew while it learnt). By default
        the ``history`` of each of ``detectors()`` (a trained detector's; an empty list for a
        detector that trains no epochs)."""
        return [list(getattr(detector, "history", [])) for detector in self.detectors()]

    def memory_bytes(self) -> int:
        """Bytes of what the strategy itself stores beside its detectors (replay images,
        per-task banks); 0 for strategies that keep nothing. A detector's own memory (a
        PatchCore bank) is the detector's, counted in its ``cost_bytes``."""
        return 0

    def cost_bytes(self) -> dict[str, int]:
        """Bytes by kind (``clad.models.base.COST_KINDS``) of everything the strategy keeps:
        every detector's, plus ``memory_bytes`` under ``memory``. Nothing is counted twice."""
        total = dict.fromkeys(COST_KINDS, 0)
        for detector in self.detectors():
            for kind, value in detector.cost_bytes().items():
                total[kind] += value
        total["memory"] += self.memory_bytes()
        return total

    def state_dict(self) -> dict:
        return {"detector": None if self.detector is None else self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["detector"] is None:
            self.detector = None
        else:
            self._current().load_state_dict(state["detector"])


def detector_name(detector: type) -> str:
    """A detector class's registered name (its class name for an unregistered class)."""
    return getattr(detector, "name", detector.__name__)


def copy_state(copy: Detector | None) -> dict | None:
    """The state of a detector copy a strategy keeps (LwF's teacher, generative replay's
    generator), or None when it keeps none yet."""
    return None if copy is None else copy.state_dict()


def restore_copy(state: dict | None, make_detector: DetectorFactory) -> Detector | None:
    """A detector copy rebuilt from ``copy_state``'s result (None stays None)."""
    if state is None:
        return None
    restored = make_detector()
    restored.load_state_dict(state)
    return restored


def copy_bytes(copy: Detector | None) -> int:
    """The memory a kept copy counts: its trained weights (a pretrained backbone is counted
    once, with the detector)."""
    return 0 if copy is None else copy.cost_bytes()["trainable"]
