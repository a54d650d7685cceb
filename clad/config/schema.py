"""The typed run configuration and its validation.

Every block forbids unknown keys. The ``dataset`` block is the benchmarks' own
(``clad.benchmarks.spec``), so readers never import the configuration. The ``detector`` and
``strategy`` blocks are ``{"name": ...}`` plus the parameters of the chosen class; those are
validated against the class's constructor signature (see ``clad.registry``), so a misspelled
parameter fails at load time, naming the file and the field. Importing this module imports
``clad.models`` and ``clad.strategies``, which fills the registry's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import clad.models  # noqa: F401  (fills the detector table)
import clad.strategies  # noqa: F401  (fills the strategy table)
from clad.benchmarks.spec import DatasetConfig
from clad.errors import ConfigError
from clad.registry import (
    detector_table,
    format_validation_error,
    lookup,
    parameter_names,
    strategy_table,
    validate_params,
)

# Runner-supplied arguments of detector/strategy constructors (never set from config).
STRATEGY_CONTEXT = ("make_detector", "tasks")
# Shared training settings injected into detectors whose constructor names them.
TRAINING_KEYS = ("epochs", "batch_size", "lr", "patience", "device", "num_workers", "precision")


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingConfig(Block):
    """Shared training settings, passed to every detector whose constructor names them. A key
    left out (null) keeps the detector's own default (STFPM's lr 0.4, AST's epochs, ...); the
    values that ran are in ``config.json`` under ``resolved``."""

    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    patience: int | None = Field(None, ge=0)
    device: str = "auto"
    num_workers: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # None: each detector's own
    deterministic: bool = True  # torch's deterministic algorithms (and cuBLAS's workspace)


class EvaluationConfig(Block):
    threshold_quantile: float = Field(0.99, gt=0.0, le=1.0)
    aupro_fpr_limit: float = Field(0.3, gt=0.0, le=1.0)
    overlays_per_task: int = Field(3, ge=0)
    batch_size: int = Field(32, ge=1)
    feature_cache_mb: float = Field(1024.0, ge=0.0)  # frozen backbones' test features; 0: off


class OutputConfig(Block):
    dir: str = "output"
    plots: bool = True
    checkpoints: bool = True


class WandbConfig(Block):
    enabled: bool = True
    mode: Literal["offline", "online"] = "offline"
    project: str = "clad"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = []


class RunConfig(Block):
    run_name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")  # a plain folder name
    dataset: DatasetConfig = DatasetConfig()
    detector: dict[str, Any]
    strategy: dict[str, Any]
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    wandb: WandbConfig = WandbConfig()

    def detector_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.detector.items() if k != "name"}

    def strategy_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.strategy.items() if k != "name"}


def validate_config(data: dict[str, Any], source: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Validate a raw dict. Each problem is one line ``<source>: <field>: <problem>`` with
    ``source`` the file, or ``--set <key>`` for a field that one of ``overrides`` set."""

    def blame(field: str) -> str | None:
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if field == key or field.startswith(key + ".") or key.startswith(field + "."):
                return f"--set {key}"
        return None

    try:
        config = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RunConfig, source, "", blame)) from None
    for block in ("detector", "strategy"):
        if "name" not in getattr(config, block):
            raise ConfigError(f"{blame(block) or source}: {block}.name: required but missing")
    detector_cls = lookup(
        detector_table(), config.detector["name"], "detector", blame("detector.name") or source
    )
    strategy_cls = lookup(
        strategy_table(), config.strategy["name"], "strategy", blame("strategy.name") or source
    )
    params = config.detector_params()
    for key in TRAINING_KEYS:
        if key in params:
            raise ConfigError(
                f"{source}: detector.{key}: set it in the training block (training.{key})"
            )
    if "input_mode" in params:
        raise ConfigError(
            f"{source}: detector.input_mode: set the inputs with dataset.mode instead"
        )
    if "input_size" in params:
        raise ConfigError(
            f"{source}: detector.input_size: the images' side comes from dataset.image_size "
            "(or dataset.crop_size)"
        )
    if config.dataset.mode != "rgb" and "input_mode" not in parameter_names(detector_cls):
        takes = sorted(n for n, c in detector_table().items() if "input_mode" in parameter_names(c))
        raise ConfigError(
            f"{source}: dataset.mode {config.dataset.mode!r}: detector "
            f"{config.detector['name']!r} takes RGB images only; detectors that take depth: "
            f"{', '.join(takes) or 'none'}"
        )
    validate_params(
        detector_cls,
        {**_training_for(detector_cls, config), **params},
        f"{source}: detector",
        blame=blame,
    )
    validate_params(
        strategy_cls, config.strategy_params(), f"{source}: strategy", STRATEGY_CONTEXT, blame
    )
    return config


def _training_for(detector_cls: type, config: RunConfig) -> dict[str, Any]:
    """The shared training keys the config sets (not null) and the detector's constructor names,
    ``input_mode`` (the dataset's ``mode``) and ``input_size`` (the images' side: the dataset's
    ``crop_size``, else its ``image_size``) for detectors that take them."""
    names = parameter_names(detector_cls)
    shared = {k: v for k, v in config.training.model_dump().items() if k in names and v is not None}
    if "input_mode" in names:
        shared["input_mode"] = config.dataset.mode
    if "input_size" in names:
        shared["input_size"] = (
            getattr(config.dataset, "crop_size", None) or config.dataset.image_size
        )
    return shared


def resolved(config: RunConfig) -> dict[str, Any]:
    """What runs, every default filled in: the detector's and the strategy's constructor
    arguments (the runner's context arguments left out)."""
    strategy_cls = strategy_table()[config.strategy["name"]]
    strategy = validate_params(strategy_cls, config.strategy_params(), "strategy", STRATEGY_CONTEXT)
    return {
        "detector": {"name": config.detector["name"], **detector_kwargs(config)},
        "strategy": {"name": config.strategy["name"], **strategy},
    }


def detector_kwargs(config: RunConfig) -> dict[str, Any]:
    """Constructor arguments of the configured detector: its params plus shared training keys."""
    cls = detector_table()[config.detector["name"]]
    return validate_params(
        cls, {**_training_for(cls, config), **config.detector_params()}, "detector"
    )
