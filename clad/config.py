"""Typed run configuration: JSON loading, ``--set`` overrides, and CLAD-format translation.

Every block forbids unknown keys. The ``detector`` and ``strategy`` blocks are ``{"name": ...}``
plus the parameters of the chosen class; those are validated against the class's constructor
signature (see ``clad.registry``), so a misspelled parameter fails at load time, naming the file
and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clad.registry import (
    ConfigError,
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
TRAINING_KEYS = ("epochs", "batch_size", "lr", "patience", "device", "num_workers")


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticConfig(Block):
    """How the built-in synthetic set is generated when ``dataset.root`` does not exist yet."""

    seed: int = 0
    image_size: int = Field(128, ge=32, le=512)
    n_train: int = Field(40, ge=2)
    n_test_good: int = Field(10, ge=1)
    n_test_per_defect: int = Field(4, ge=1)


class SyntheticAudioConfig(Block):
    """How the built-in synthetic machine sounds are generated (``benchmarks.synthetic_audio``).

    Counts are per section: ``n_train`` normal training clips (source domain in the dcase2022
    layout), ``n_train_target`` target-domain ones (dcase2022 only), ``n_test`` normal and
    ``n_test`` anomalous test clips (per domain in dcase2022).
    """

    seed: int = 0
    layout: Literal["dcase2020", "dcase2022"] = "dcase2022"
    sections: int = Field(2, ge=1, le=50)
    n_train: int = Field(30, ge=2)
    n_train_target: int = Field(3, ge=1)
    n_test: int = Field(10, ge=1)
    duration_s: float = Field(2.0, ge=0.1, le=60.0)


class AudioConfig(Block):
    """Log-mel features of machine sounds (``clad.benchmarks.audio_features``).

    ``frames``: columns kept per clip (cut, or wrapped when the clip is shorter; 313 = 10 s at hop
    512). ``db_range``: [low, high] dB mapped to [0, 1]; null = the min and max over the first
    task's training clips. ``cache_dir``: null = ``<root>/.clad_cache``.
    """

    sample_rate: int = Field(16000, ge=1000)
    n_fft: int = Field(1024, ge=16)
    hop_length: int = Field(512, ge=1)
    n_mels: int = Field(128, ge=4)
    fmin: float = Field(0.0, ge=0.0)
    fmax: float | None = Field(None, gt=0.0)
    top_db: float | None = Field(80.0, gt=0.0)
    frames: int = Field(313, ge=4)
    db_range: tuple[float, float] | None = None
    cache_dir: str | None = None
    synthetic: SyntheticAudioConfig = SyntheticAudioConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AudioConfig:
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"fmax {self.fmax} exceeds sample_rate / 2 = {nyquist}")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError(f"fmin {self.fmin} must lie below fmax ({self.fmax or nyquist})")
        if self.db_range is not None and not self.db_range[1] > self.db_range[0]:
            raise ValueError(f"db_range must be [low, high] with low < high, got {self.db_range}")
        return self


AUDIO_DATASETS = ("dcase2020", "dcase2022", "synthetic_audio")


DATASETS_3D = {"mvtec3d": "mvtec3d", "synthetic3d": "synthetic3d", "mvtec": "mvtec3d",
               "synthetic": "synthetic3d"}


class DatasetConfig(Block):
    """Which data, in which order, at which size.

    3D data (MVTec 3D-AD layout): ``name`` ``mvtec3d`` or ``synthetic3d``, or CLAD's
    ``use_3D_dataset: true`` with ``mvtec``/``synthetic`` (translated to those names). ``mode``
    picks the inputs: ``rgb`` [3 channels], ``depth`` [2: height above the background plane,
    foreground] or ``rgb+depth`` [5] (``clad.benchmarks.mvtec3d``); AST's names ``RGB`` and
    ``combi`` are accepted. ``depth`` and ``rgb+depth`` need a detector that takes an
    ``input_mode``.
    """

    name: Literal[
        "synthetic", "mvtec", "mvtec3d", "synthetic3d", "dcase2020", "dcase2022",
        "synthetic_audio",
    ] = "synthetic"
    root: str = "data/synthetic"
    categories: list[str] | None = None
    image_size: int = Field(64, ge=16, le=1024)
    crop_size: int | None = Field(None, ge=16, le=1024)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    use_3D_dataset: bool = False
    mode: Literal["rgb", "depth", "rgb+depth"] = "rgb"
    synthetic: SyntheticConfig = SyntheticConfig()
    audio: AudioConfig | None = None  # audio datasets only; filled with the defaults for them

    @field_validator("mode", mode="before")
    @classmethod
    def _ast_mode_names(cls, value: Any) -> Any:
        """AST's names for the modes are accepted too: RGB, depth, combi."""
        return {"RGB": "rgb", "combi": "rgb+depth"}.get(value, value)

    @model_validator(mode="after")
    def _three_d(self) -> DatasetConfig:
        if self.use_3D_dataset and self.name not in DATASETS_3D:
            raise ValueError(
                f"use_3D_dataset applies to mvtec/mvtec3d/synthetic/synthetic3d, not {self.name!r}"
            )
        if self.use_3D_dataset or self.name in ("mvtec3d", "synthetic3d"):
            self.name = DATASETS_3D[self.name]
            self.use_3D_dataset = True
            if self.name == "synthetic3d" and "root" not in self.model_fields_set:
                self.root = "data/synthetic3d"
        elif self.mode != "rgb":
            raise ValueError(
                f"mode {self.mode!r} needs a 3D dataset (name mvtec3d or synthetic3d, or "
                "use_3D_dataset: true); 2D datasets have RGB only"
            )
        return self

    @field_validator("categories")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) == 0:
            raise ValueError("needs at least one category")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("categories must not repeat")
        return value

    @model_validator(mode="after")
    def _audio_block(self) -> DatasetConfig:
        if self.name in AUDIO_DATASETS and self.audio is None:
            self.audio = AudioConfig()
        elif self.name not in AUDIO_DATASETS and self.audio is not None:
            raise ValueError(
                f"the audio block applies to {', '.join(AUDIO_DATASETS)} only, not {self.name!r}"
            )
        return self

    @property
    def modality(self) -> Literal["image", "audio"]:
        """``"audio"`` for machine sounds (log-mel inputs, DCASE metrics), else ``"image"``."""
        return "audio" if self.name in AUDIO_DATASETS else "image"


class TrainingConfig(Block):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    patience: int = Field(5, ge=0)
    device: str = "auto"
    num_workers: int = Field(0, ge=0)


class EvaluationConfig(Block):
    threshold_quantile: float = Field(0.99, gt=0.0, le=1.0)
    aupro_fpr_limit: float = Field(0.3, gt=0.0, le=1.0)
    overlays_per_task: int = Field(3, ge=0)
    batch_size: int = Field(32, ge=1)


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
    run_name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
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


def parse_value(text: str) -> Any:
    """Parse an override value: JSON when it parses, ``[a,b]`` as a list of strings, else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        return [parse_value(item.strip()) for item in text[1:-1].split(",") if item.strip()]
    return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (a deep copy is returned)."""
    data = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. training.epochs=1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a block")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return data


def validate_config(data: dict[str, Any], source: str) -> RunConfig:
    """Validate a raw dict; errors are prefixed with ``source`` (the file name)."""
    try:
        config = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n" + format_validation_error(err, "", RunConfig)) from None
    for block in ("detector", "strategy"):
        if "name" not in getattr(config, block):
            raise ConfigError(f"{source}: {block}.name is required")
    detector_cls = lookup(detector_table(), config.detector["name"], "detector", source)
    strategy_cls = lookup(strategy_table(), config.strategy["name"], "strategy", source)
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
    if config.dataset.mode != "rgb" and "input_mode" not in parameter_names(detector_cls):
        takes = sorted(n for n, c in detector_table().items() if "input_mode" in parameter_names(c))
        raise ConfigError(
            f"{source}: dataset.mode {config.dataset.mode!r}: detector "
            f"{config.detector['name']!r} takes RGB images only; detectors that take depth: "
            f"{', '.join(takes) or 'none'}"
        )
    validate_params(
        detector_cls, {**_training_for(detector_cls, config), **params}, f"{source}: detector"
    )
    validate_params(
        strategy_cls, config.strategy_params(), f"{source}: strategy", STRATEGY_CONTEXT
    )
    return config


def _training_for(detector_cls: type, config: RunConfig) -> dict[str, Any]:
    """The shared training keys the detector's constructor names, and ``input_mode`` (the
    dataset's ``mode``) for detectors that take one."""
    names = parameter_names(detector_cls)
    shared = {k: v for k, v in config.training.model_dump().items() if k in names}
    if "input_mode" in names:
        shared["input_mode"] = config.dataset.mode
    return shared


def detector_kwargs(config: RunConfig) -> dict[str, Any]:
    """Constructor arguments of the configured detector: its params plus shared training keys."""
    cls = detector_table()[config.detector["name"]]
    return validate_params(
        cls, {**_training_for(cls, config), **config.detector_params()}, "detector"
    )


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config (ours or CLAD's format), apply overrides and validate it."""
    path = Path(path)
    raw = read_json(path)
    if is_clad_format(raw):
        from clad.clad_format import translate

        raw, ignored = translate(raw, path)
        if ignored:
            print(f"[clad] {path}: CLAD keys with no meaning here, ignored: {', '.join(ignored)}")
    return validate_config(apply_overrides(raw, overrides or []), str(path))


def is_clad_format(raw: dict[str, Any]) -> bool:
    return "architecture" in raw or "sample_strategy" in raw
