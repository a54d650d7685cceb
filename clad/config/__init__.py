"""The run configuration: typed blocks (``schema``), file reading (``files``), ``--set``
overrides and loading (``loading``), and the translation of the CLAD benchmark's own files
(``clad_format``)."""

from clad.benchmarks.spec import AudioConfig, DatasetConfig, SyntheticConfig
from clad.config.files import read_json
from clad.config.loading import (
    apply_overrides,
    is_clad_format,
    load_config,
    parse_value,
    read_config,
)
from clad.config.schema import (
    DETECTOR_CONTEXT,
    STRATEGY_CONTEXT,
    Components,
    RunConfig,
    TrainingConfig,
    build_detector,
    validate_config,
)

__all__ = [
    "DETECTOR_CONTEXT",
    "STRATEGY_CONTEXT",
    "AudioConfig",
    "Components",
    "DatasetConfig",
    "RunConfig",
    "SyntheticConfig",
    "TrainingConfig",
    "apply_overrides",
    "build_detector",
    "is_clad_format",
    "load_config",
    "parse_value",
    "read_config",
    "read_json",
    "validate_config",
]
