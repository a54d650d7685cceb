"""The typed run configuration and its one validation.

Every block forbids unknown keys. The ``dataset`` block is the benchmarks' own
(``clad.benchmarks.spec``), so readers never import the configuration. The ``detector`` and
``strategy`` blocks are ``{"name": ...}`` plus the parameters of the chosen class; those are
validated against the class's constructor signature (types and ranges, see ``clad.registry``)
and its ``check_arguments``, the ``training`` block against what the detector uses, the
categories against the dataset's folders and the device against the machine: all of it once,
in ``validate_config``, before any data is read. The result keeps what it validated
(``RunConfig.components``): the classes, their arguments and the ``Training`` value, which the
runner builds from without checking anything again.

Importing this module imports ``clad.models`` and ``clad.strategies`` (torch and the detector
modules; the heavy libraries they use are imported when a detector is built).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
)

import clad.models  # noqa: F401  (fills the detector table)
import clad.strategies  # noqa: F401  (fills the strategy table)
from clad.benchmarks.catalog import check_categories
from clad.benchmarks.spec import DatasetConfig
from clad.errors import ConfigError
from clad.models.base import TRAINING_KEYS, Detector, Training, check_device
from clad.models.components.precision import Precision
from clad.registry import (
    detector_table,
    format_validation_error,
    parameter_names,
    resolve,
    validate_params,
)
from clad.strategies.base import Strategy

STRATEGY_CONTEXT = ("make_detector", "tasks")
"""Strategy constructor arguments the runner supplies (never set from a config)."""
DETECTOR_CONTEXT = ("training",)
"""Detector constructor arguments the runner supplies: the ``Training`` value."""
DATASET_ARGUMENTS = ("input_mode", "input_size")
"""Detector constructor arguments filled from the dataset block (never set in the detector
block): ``input_mode`` (``dataset.mode``) and ``input_size`` (the images' side)."""


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingConfig(Block):
    """Training settings. A key left out (null) keeps the detector's own default
    (``training_defaults``: STFPM's lr 0.4, AST's 72 epochs, ...); a key the detector does not
    use (``training_keys``: memory-bank detectors take only ``batch_size``, ``device`` and
    ``num_workers``) is refused. The values that ran are in ``config.json`` under
    ``resolved.training``."""

    epochs: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    patience: NonNegativeInt | None = None
    device: str = "auto"
    num_workers: NonNegativeInt = 0
    precision: Precision | None = None
    deterministic: bool = True  # torch's deterministic algorithms (and cuBLAS's workspace)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if value != "auto" and value != "cpu" and not value.startswith("cuda"):
            raise ValueError("expected auto, cpu, cuda or cuda:<index>")
        if value.startswith("cuda") and value != "cuda":
            index = value.removeprefix("cuda:")
            if not value.startswith("cuda:") or not index.isdigit():
                raise ValueError("expected auto, cpu, cuda or cuda:<index>")
        return value


class EvaluationConfig(Block):
    threshold_quantile: float = Field(0.99, gt=0.0, le=1.0)
    aupro_fpr_limit: float = Field(0.3, gt=0.0, le=1.0)
    overlays_per_task: int = Field(3, ge=0)
    batch_size: int = Field(32, ge=1)
    feature_cache_mb: float = Field(1024.0, ge=0.0)  # frozen backbones' test features; 0: off
    oracle_routing: bool = True  # methods that route to per-task parts: also score each
    # category with its own task's part (the oracle matrices); costs one more scoring pass


class OutputConfig(Block):
    dir: str = "output"
    plots: bool = True
    checkpoints: bool = True


class WandbConfig(Block):
    enabled: bool = True
    # None: as wandb itself decides (WANDB_MODE, else online when logged in, else offline);
    # set, it wins over both (clad.tracking.loggers.wandb_mode)
    mode: Literal["offline", "online"] | None = None
    project: str = "clad"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = []


@dataclass(frozen=True)
class Components:
    """What a validated configuration builds: the detector and strategy classes (with the names
    the configuration gave them: a built-in's name, an import path or an entry point), their
    constructor arguments and the detector's ``Training`` value."""

    detector_name: str
    detector: type[Detector]
    detector_arguments: dict[str, Any]
    training: Training
    strategy_name: str
    strategy: type[Strategy]
    strategy_arguments: dict[str, Any]

    def make_detector(self) -> Detector:
        """A new detector with the validated arguments (and the training settings, when its
        constructor takes them)."""
        # Each detector's constructor has its own keywords (checked by name at run time).
        make: Callable[..., Detector] = self.detector
        if "training" in parameter_names(self.detector):
            return make(**self.detector_arguments, training=self.training)
        return make(**self.detector_arguments)

    def build_strategy(self, tasks: Sequence[Any]) -> Strategy:
        """The strategy over ``tasks``, given the context arguments its constructor names."""
        context = {"make_detector": self.make_detector, "tasks": tasks}
        names = parameter_names(self.strategy)
        given = {k: v for k, v in context.items() if k in names}
        make: Callable[..., Strategy] = self.strategy
        return make(**given, **self.strategy_arguments)

    def record(self) -> dict[str, Any]:
        """What runs, every default filled in (``config.json``'s ``resolved``)."""
        return {
            "detector": {"name": self.detector_name, **self.detector_arguments},
            "training": {
                k: v for k, v in dataclasses.asdict(self.training).items() if k in self.uses
            },
            "strategy": {"name": self.strategy_name, **self.strategy_arguments},
        }

    @property
    def uses(self) -> tuple[str, ...]:
        """The training keys the detector uses."""
        return tuple(getattr(self.detector, "training_keys", ()))


class RunConfig(Block):
    run_name: str = Field(  # a plain folder name, short enough for every file system
        max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
    )
    dataset: DatasetConfig = DatasetConfig()
    detector: dict[str, Any]
    strategy: dict[str, Any]
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    wandb: WandbConfig = WandbConfig()
    _components: Components | None = PrivateAttr(default=None)

    @property
    def components(self) -> Components:
        """The validated classes and arguments (``validate_config`` fills them)."""
        if self._components is None:
            raise RuntimeError("RunConfig.components: validate the config with validate_config")
        return self._components

    def detector_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.detector.items() if k != "name"}

    def strategy_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.strategy.items() if k != "name"}


def validate_config(
    data: dict[str, Any],
    source: str,
    overrides: Sequence[str] = (),
    check_machine: bool = True,
    override_label: str = "--set {key}",
) -> RunConfig:
    """Validate a raw dict, once, before any data is read. Each problem is one line
    ``<source>: <field>: <problem>``, with ``source`` the file, or, for a field that one of
    ``overrides`` (``key=value`` items, or keys) set, ``override_label`` with that key
    (``--set training.lr`` on the command line, ``overrides['training.lr']`` in Python).

    ``check_machine``: also check what depends on the machine that runs it: the dataset's
    folders and the training device (a sweep's driver leaves them to the machines that run the
    cells)."""

    def blame(field: str) -> str | None:
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if field == key or field.startswith(key + ".") or key.startswith(field + "."):
                return override_label.format(key=key)
        return None

    try:
        config = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RunConfig, source, "", blame)) from None
    for block in ("detector", "strategy"):
        if "name" not in getattr(config, block):
            raise ConfigError(f"{blame(block) or source}: {block}.name: required but missing")
    detector_cls = resolve(
        "detector", config.detector["name"], Detector, blame("detector.name") or source
    )
    strategy_cls = resolve(
        "strategy", config.strategy["name"], Strategy, blame("strategy.name") or source
    )
    detector_arguments = _detector_arguments(detector_cls, config, source, blame)
    training = _training(detector_cls, config, source, blame)
    strategy_arguments = validate_params(
        strategy_cls, config.strategy_params(), f"{source}: strategy", STRATEGY_CONTEXT, blame
    )
    _checked(
        lambda: strategy_cls.check_arguments(strategy_arguments, detector_cls),
        source,
        f"strategy {config.strategy['name']!r}",
        blame,
    )
    if check_machine:
        dataset = config.dataset
        _checked(
            lambda: check_categories(dataset.name, dataset.root, dataset.category_list),
            source,
            None,
            blame,
        )
        _checked(lambda: check_device(training.device), source, None, blame)
    config._components = Components(
        config.detector["name"],
        detector_cls,
        detector_arguments,
        training,
        config.strategy["name"],
        strategy_cls,
        strategy_arguments,
    )
    return config


def _checked(
    check: Callable[[], None],
    source: str,
    owner: str | None,
    blame: Callable[[str], str | None] = lambda field: None,
) -> None:
    """Run a check; its ``ValueError`` becomes one ``ConfigError`` line naming where the value
    came from (``source``, or the ``--set`` that set the field the message starts with) and
    ``owner``, the detector or strategy whose check it is."""
    try:
        check()
    except ValueError as err:
        text = str(err)
        field = text.split(":", 1)[0]
        origin = (blame(field) if "." in field and " " not in field else None) or source
        raise ConfigError(f"{origin}: {owner + ': ' if owner else ''}{text}") from None


def _detector_arguments(
    cls: type, config: RunConfig, source: str, blame: Callable[[str], str | None]
) -> dict[str, Any]:
    """The detector's validated constructor arguments: its block's parameters plus those filled
    from the dataset (``DATASET_ARGUMENTS``), then its ``check_arguments``."""
    params = config.detector_params()
    for key in TRAINING_KEYS:
        if key in params:
            raise ConfigError(
                f"{blame(f'detector.{key}') or source}: detector.{key}: set it in the training "
                f"block (training.{key})"
            )
    if "input_mode" in params:
        raise ConfigError(f"{source}: detector.input_mode: set the inputs with dataset.mode")
    if "input_size" in params:
        raise ConfigError(
            f"{source}: detector.input_size: the images' side comes from dataset.image_size "
            "(or dataset.crop_size)"
        )
    names = parameter_names(cls)
    dataset = config.dataset
    if dataset.mode != "rgb" and "input_mode" not in names:
        takes = sorted(n for n, c in detector_table().items() if "input_mode" in parameter_names(c))
        raise ConfigError(
            f"{source}: dataset.mode {dataset.mode!r}: detector {config.detector['name']!r} "
            f"takes RGB images only; detectors that take depth: {', '.join(takes) or 'none'}"
        )
    filled: dict[str, Any] = {}
    if "input_mode" in names:
        filled["input_mode"] = dataset.mode
    if "input_size" in names:
        filled["input_size"] = dataset.input_size[0]
    arguments = validate_params(
        cls, {**filled, **params}, f"{source}: detector", DETECTOR_CONTEXT, blame
    )
    check = getattr(cls, "check_arguments", None)
    if check is not None:
        _checked(
            lambda: check(arguments, dataset.input_size),
            source,
            f"detector {config.detector['name']!r}",
            lambda field: blame(f"detector.{field}") or blame(field),
        )
    return arguments


def _training(
    cls: type, config: RunConfig, source: str, blame: Callable[[str], str | None]
) -> Training:
    """The detector's ``training_defaults`` with the training keys the run sets; a set key
    the detector does not use is an error naming both."""
    block = config.training
    given = {
        key: getattr(block, key)
        for key in TRAINING_KEYS
        if key in block.model_fields_set and getattr(block, key) is not None
    }
    uses = tuple(getattr(cls, "training_keys", ()))
    for key in given:
        if key not in uses:
            takes = ", ".join(f"training.{k}" for k in uses) or "no training settings"
            raise ConfigError(
                f"{blame(f'training.{key}') or source}: training.{key}: detector "
                f"{config.detector['name']!r} does not use it (it takes {takes})"
            )
    return dataclasses.replace(getattr(cls, "training_defaults", Training()), **given)


def build_detector(
    name: str, settings: dict[str, Any], input_size: tuple[int, int] | None = None
) -> Detector:
    """A detector built in Python from one flat dict of its constructor arguments and training
    keys (``{"weights": "none", "epochs": 2, "device": "cpu"}``), checked as a configuration's
    ``detector`` and ``training`` blocks are (``input_size``: also run its
    ``check_arguments`` for inputs of that [H, W]). For benchmarks and scripts."""
    cls = resolve("detector", name, Detector, "settings")
    given = {k: v for k, v in settings.items() if k in TRAINING_KEYS and v is not None}
    uses = tuple(getattr(cls, "training_keys", ()))
    unused = sorted(set(given) - set(uses))
    if unused:
        raise ConfigError(f"settings: detector {name!r} does not use {', '.join(unused)}")
    params = {k: v for k, v in settings.items() if k not in TRAINING_KEYS}
    arguments = validate_params(cls, params, f"settings: detector {name}", DETECTOR_CONTEXT)
    if input_size is not None:
        _checked(lambda: cls.check_arguments(arguments, input_size), "settings", name)
    training = dataclasses.replace(getattr(cls, "training_defaults", Training()), **given)
    if "training" in parameter_names(cls):
        return cls(**arguments, training=training)
    return cls(**arguments)
