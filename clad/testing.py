"""The contract checks every built-in detector and strategy passes, for a method written outside
clad to pass too, in one line of its own tests::

    from clad.testing import check_detector, check_strategy

    def test_my_detector_keeps_the_contract():
        check_detector(MyDetector, {"k": 3}, training={"batch_size": 4, "device": "cpu"})

    def test_my_strategy_keeps_the_contract():
        check_strategy(MyStrategy, {"mem_size": 4})

A failed check raises ``ContractError`` (an ``AssertionError``) naming the check, the class and
what was expected. The checks run on tiny random images (32 px) on the CPU, with whatever
settings are given (keep them small: one epoch, small widths). clad's own contract tests
(``tests/models/test_contract.py``, ``tests/strategies/test_contract.py``) run these same
functions over every registered detector and strategy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from clad.config import DETECTOR_CONTEXT, STRATEGY_CONTEXT
from clad.models.base import COST_KINDS, TRAINING_KEYS, Detector, Training
from clad.records import Scores, Task
from clad.registry import parameter_names, resolve, validate_params
from clad.strategies.base import Strategy


class ContractError(AssertionError):
    """A detector or strategy broke the contract; the message names the check and the class."""


def _fail(check: str, owner: str, message: str) -> ContractError:
    return ContractError(f"{owner}: {check}: {message}")


def normal_images(n: int, size: int, channels: int = 3, seed: int = 0) -> TensorDataset:
    """``n`` smooth normal images [channels, size, size] in [0, 1] (a ramp with a little noise),
    with empty masks and label 0, as a task's datasets yield them."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.2, 0.8, size)[None, None, :].expand(n, channels, size, size)
    images = (base + 0.05 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)
    return TensorDataset(images, torch.zeros(n, 1, size, size), torch.zeros(n).long())


@dataclass(frozen=True)
class DetectorCase:
    """A detector class with validated constructor arguments and training settings, as a
    configuration would build it."""

    cls: type[Detector]
    arguments: dict[str, Any]
    training: Training
    size: int
    channels: int

    @property
    def label(self) -> str:
        return f"detector {self.cls.name!r}"

    def make(self, seed: int = 0) -> Detector:
        """A new detector, built after seeding torch with ``seed``."""
        torch.manual_seed(seed)
        cls: Any = self.cls  # a concrete detector class: its constructor is the schema
        if "training" in parameter_names(cls):
            return cls(**self.arguments, training=self.training)
        return cls(**self.arguments)


def detector_case(
    detector: type[Detector] | str,
    settings: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    input_size: int = 32,
    channels: int = 3,
) -> DetectorCase:
    """Check that ``detector``'s constructor is a configuration schema and build a case:
    ``settings`` validate against its signature (no ``*args``/``**kwargs``, unknown keys
    refused), ``training`` holds only keys of its ``training_keys``, and its
    ``check_arguments`` accepts them for ``input_size`` px inputs."""
    cls = (
        resolve("detector", detector, Detector, "check_detector")
        if isinstance(detector, str)
        else detector
    )
    owner = f"detector {getattr(cls, 'name', cls.__name__)!r}"
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise _fail("class", owner, "not a subclass of clad.models.base.Detector")
    try:
        arguments = validate_params(cls, dict(settings or {}), "detector", DETECTOR_CONTEXT)
    except TypeError as err:
        raise _fail("signature", owner, str(err)) from None
    given = dict(training or {})
    unknown = sorted(set(given) - set(TRAINING_KEYS))
    unused = sorted(set(given) - set(cls.training_keys) - set(unknown))
    if unknown or unused:
        raise _fail(
            "training settings",
            owner,
            f"unknown keys {unknown}, keys it does not use {unused} (training_keys: "
            f"{list(cls.training_keys)})",
        )
    if not isinstance(cls.training_defaults, Training):
        raise _fail("training settings", owner, "training_defaults is not a Training value")
    if not set(cls.training_keys) <= set(TRAINING_KEYS):
        raise _fail("training settings", owner, f"training_keys {cls.training_keys} unknown")
    cls.check_arguments(arguments, (input_size, input_size))
    trained = dataclasses.replace(cls.training_defaults, **given)
    return DetectorCase(cls, arguments, trained, input_size, channels)


def _fit_predict(case: DetectorCase, seed: int) -> tuple[Detector, torch.Tensor, Scores]:
    detector = case.make(seed)
    detector.fit(
        normal_images(8, case.size, case.channels), normal_images(4, case.size, case.channels, 1)
    )
    x = torch.rand(
        3, case.channels, case.size, case.size, generator=torch.Generator().manual_seed(7)
    )
    return detector, x, detector.predict(x)


def check_predict_before_fit_fails(case: DetectorCase) -> None:
    """``predict`` before anything was learnt raises a ``RuntimeError`` naming the detector, and
    ``is_fitted`` is False."""
    detector = case.make()
    if detector.is_fitted:
        raise _fail("is_fitted", case.label, "True before fit")
    x = torch.rand(2, case.channels, case.size, case.size)
    try:
        detector.predict(x)
    except RuntimeError as err:
        if case.cls.name not in str(err):
            raise _fail(
                "predict before fit", case.label, f"message {err!s} names no detector"
            ) from None
        return
    raise _fail("predict before fit", case.label, "no RuntimeError (use check_fitted())")


def check_scores(case: DetectorCase) -> None:
    """After ``fit`` on normal images, ``predict`` gives finite image scores [B] and, when the
    detector has maps, finite maps [B, H, W] at input resolution."""
    _, _, scores = _fit_predict(case, 0)
    if tuple(scores.image.shape) != (3,) or not torch.isfinite(scores.image).all():
        raise _fail("scores", case.label, f"image scores {scores.image} are not 3 finite values")
    if scores.pixel is not None:
        shape = (3, case.size, case.size)
        if tuple(scores.pixel.shape) != shape or not torch.isfinite(scores.pixel).all():
            raise _fail("scores", case.label, f"maps of shape {tuple(scores.pixel.shape)}")


def check_deterministic(case: DetectorCase) -> None:
    """The same seed gives the same scores."""
    _, _, first = _fit_predict(case, 0)
    _, _, second = _fit_predict(case, 0)
    _same(first, second, "deterministic under a seed", case.label)


def check_predict_has_no_side_effects(case: DetectorCase) -> None:
    """Scoring the same batch twice gives the same scores."""
    detector, x, first = _fit_predict(case, 0)
    _same(first, detector.predict(x), "predict has no side effects", case.label)


def check_state_round_trips(case: DetectorCase) -> None:
    """``state_dict`` saved with ``torch.save`` and loaded into a fresh detector (built under
    another seed) gives the same scores, and the loaded detector counts as fitted."""
    import io

    detector, x, before = _fit_predict(case, 0)
    buffer = io.BytesIO()
    torch.save(detector.state_dict(), buffer)
    buffer.seek(0)
    fresh = case.make(123)
    try:
        fresh.load_state_dict(torch.load(buffer, weights_only=False))
    except Exception as err:  # noqa: BLE001
        raise _fail("state round trip", case.label, f"load_state_dict: {err}") from None
    if not fresh.is_fitted:
        raise _fail("state round trip", case.label, "a loaded fitted state is not is_fitted")
    _same(before, fresh.predict(x), "state round trip", case.label)


def check_costs(case: DetectorCase) -> None:
    """``cost_bytes`` gives a non-negative whole number of bytes for each of ``COST_KINDS``."""
    detector, _, _ = _fit_predict(case, 0)
    costs = detector.cost_bytes()
    if set(costs) != set(COST_KINDS):
        raise _fail("cost_bytes", case.label, f"keys {sorted(costs)}, expected {COST_KINDS}")
    if not all(isinstance(v, int) and v >= 0 for v in costs.values()):
        raise _fail("cost_bytes", case.label, f"values {costs} are not bytes")


DETECTOR_CHECKS: tuple[Callable[[DetectorCase], None], ...] = (
    check_predict_before_fit_fails,
    check_scores,
    check_deterministic,
    check_predict_has_no_side_effects,
    check_state_round_trips,
    check_costs,
)
"""Every detector check, in the order ``check_detector`` runs them."""


def _same(a: Scores, b: Scores, check: str, owner: str) -> None:
    try:
        torch.testing.assert_close(a.image, b.image)
        if (a.pixel is None) != (b.pixel is None):
            raise AssertionError("maps on one side only")
        if a.pixel is not None and b.pixel is not None:
            torch.testing.assert_close(a.pixel, b.pixel)
    except AssertionError as err:
        raise _fail(check, owner, str(err).splitlines()[0]) from None


def check_detector(
    detector: type[Detector] | str,
    settings: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    input_size: int = 32,
    channels: int = 3,
) -> None:
    """Run every check a built-in detector passes (``DETECTOR_CHECKS``) on ``detector`` (a
    class, a registered name, an import path or an entry-point name) built with ``settings``
    (its constructor arguments) and ``training`` (keys of ``Training`` it uses).

    Raises:
        ContractError: naming the first check that failed.
    """
    case = detector_case(detector, settings, training, input_size, channels)
    for check in DETECTOR_CHECKS:
        check(case)


# --------------------------------------------------------------------------- strategies

TINY_DETECTORS: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = (
    ("conv_ae", {"latent_channels": 8}, {"epochs": 1, "batch_size": 4, "device": "cpu"}),
    ("patchcore", {"weights": "none", "backbone": "resnet18"}, {"batch_size": 4, "device": "cpu"}),
    ("vae", {"input_size": 32, "latent_dim": 8}, {"epochs": 1, "batch_size": 4, "device": "cpu"}),
)
"""Small built-in detectors a strategy is checked with: the first one it accepts."""


class TaskImages(Dataset):
    """Images, masks and labels yielded as the readers' datasets yield them: (image [C, H, W],
    mask [1, H, W], label int)."""

    def __init__(self, images: Tensor, masks: Tensor, labels: Tensor) -> None:
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.images[index], self.masks[index], int(self.labels[index])


def tiny_tasks(count: int = 2, size: int = 32) -> list[Task]:
    """``count`` small tasks of normal training and validation images and test images with a
    bright square on half of them (label 1)."""
    tasks = []
    for t in range(count):
        train, val, test = (
            TaskImages(*normal_images(n, size, seed=seed).tensors)
            for n, seed in ((8, t), (4, 20 + t), (6, 10 + t))
        )
        test.images[3:, :, 8:16, 8:16] = 1.0
        test.masks[3:, :, 8:16, 8:16] = 1.0
        test.labels[3:] = 1
        tasks.append(Task(task_id=t, name=f"task{t}", train=train, val=val, test=test))
    return tasks


@dataclass(frozen=True)
class StrategyCase:
    """A strategy class with validated arguments and the detector it feeds."""

    cls: type[Strategy]
    arguments: dict[str, Any]
    detector: DetectorCase

    @property
    def label(self) -> str:
        return f"strategy {self.cls.name!r}"

    def make(self, tasks: list[Task], seed: int = 0) -> Strategy:
        """A new strategy over ``tasks`` (its detectors built by the case's detector)."""
        torch.manual_seed(seed)
        context: dict[str, Any] = {"make_detector": self.detector.make, "tasks": tasks}
        names = parameter_names(self.cls)
        given = {k: v for k, v in context.items() if k in names}
        return self.cls(**given, **self.arguments)


def strategy_case(
    strategy: type[Strategy] | str,
    settings: Mapping[str, Any] | None = None,
    detector: type[Detector] | str | None = None,
    detector_settings: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> StrategyCase:
    """Check that ``strategy``'s constructor is a configuration schema (context arguments
    ``make_detector`` and ``tasks`` aside) and pick its detector: ``detector`` with its
    settings, or the first of ``TINY_DETECTORS`` its ``check_arguments`` accepts."""
    cls = (
        resolve("strategy", strategy, Strategy, "check_strategy")
        if isinstance(strategy, str)
        else strategy
    )
    owner = f"strategy {getattr(cls, 'name', cls.__name__)!r}"
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise _fail("class", owner, "not a subclass of clad.strategies.base.Strategy")
    try:
        arguments = validate_params(cls, dict(settings or {}), "strategy", STRATEGY_CONTEXT)
    except TypeError as err:
        raise _fail("signature", owner, str(err)) from None
    if detector is not None:
        case = detector_case(detector, detector_settings, training)
        cls.check_arguments(arguments, case.cls)
        return StrategyCase(cls, arguments, case)
    refusals = []
    for name, tiny, tiny_training in TINY_DETECTORS:
        case = detector_case(name, tiny, tiny_training)
        try:
            cls.check_arguments(arguments, case.cls)
        except ValueError as err:
            refusals.append(f"{name}: {err}")
            continue
        return StrategyCase(cls, arguments, case)
    raise _fail("detector", owner, f"accepts none of the tiny detectors ({'; '.join(refusals)})")


def check_predict_before_learn_fails(case: StrategyCase) -> None:
    """``predict`` before any ``learn`` raises a ``RuntimeError``."""
    strategy = case.make(tiny_tasks())
    try:
        strategy.predict(torch.rand(2, 3, 32, 32), 0)
    except RuntimeError:
        return
    raise _fail("predict before learn", case.label, "no RuntimeError")


def _learnt(case: StrategyCase, tasks: list[Task]) -> Strategy:
    strategy = case.make(tasks)
    for task in tasks:
        strategy.learn(task)
    return strategy


def _score(strategy: Strategy, tasks: list[Task]) -> list[Scores]:
    scores = []
    for task in tasks:
        images = torch.stack([task.test[i][0] for i in range(len(task.test))])  # type: ignore[arg-type]
        scores.append(strategy.predict(images, task.task_id if strategy.task_aware else None))
    return scores


def check_learns_and_scores_every_task(case: StrategyCase) -> None:
    """After learning each task in turn, every task's test images get finite scores, and
    ``calibration_tasks`` names tasks of the stream."""
    tasks = tiny_tasks()
    strategy = case.make(tasks)
    for t, task in enumerate(tasks):
        strategy.learn(task)
        for scores in _score(strategy, tasks):
            if not torch.isfinite(scores.image).all():
                raise _fail("scores", case.label, f"non-finite image scores after task {t}")
        held = strategy.calibration_tasks(t, len(tasks))
        if not all(0 <= k < len(tasks) for k in held):
            raise _fail("calibration_tasks", case.label, f"{held} after task {t}")


def check_strategy_state_round_trips(case: StrategyCase) -> None:
    """``state_dict`` loaded into a fresh strategy (under another seed) gives the same scores,
    and ``cost_bytes`` counts each of ``COST_KINDS`` in whole bytes."""
    import io

    tasks = tiny_tasks()
    strategy = _learnt(case, tasks)
    before = _score(strategy, tasks)
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    fresh = case.make(tasks, seed=123)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    try:
        after = _score(fresh, tasks)
    except Exception as err:  # noqa: BLE001  (whatever fails, the round trip did)
        raise _fail("state round trip", case.label, f"the restored strategy: {err}") from None
    for a, b in zip(before, after, strict=True):
        _same(a, b, "state round trip", case.label)
    costs = strategy.cost_bytes()
    if set(costs) != set(COST_KINDS) or not all(
        isinstance(v, int) and v >= 0 for v in costs.values()
    ):
        raise _fail("cost_bytes", case.label, f"{costs}, expected bytes for {COST_KINDS}")


STRATEGY_CHECKS: tuple[Callable[[StrategyCase], None], ...] = (
    check_predict_before_learn_fails,
    check_learns_and_scores_every_task,
    check_strategy_state_round_trips,
)
"""Every strategy check, in the order ``check_strategy`` runs them."""


def check_strategy(
    strategy: type[Strategy] | str,
    settings: Mapping[str, Any] | None = None,
    detector: type[Detector] | str | None = None,
    detector_settings: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> None:
    """Run every check a built-in strategy passes (``STRATEGY_CHECKS``) on ``strategy`` (a
    class, a registered name, an import path or an entry-point name) with ``settings`` (its
    constructor arguments), feeding ``detector`` (default: the first small built-in it accepts)
    on three tiny tasks.

    Raises:
        ContractError: naming the first check that failed.
    """
    case = strategy_case(strategy, settings, detector, detector_settings, training)
    for check in STRATEGY_CHECKS:
        check(case)
