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
    STRATEGY_CONTEXT,
    TRAINING_KEYS,
    RunConfig,
    detector_kwargs,
    resolved,
    validate_config,
)

__all__ = [
    "STRATEGY_CONTEXT",
    "TRAINING_KEYS",
    "AudioConfig",
    "DatasetConfig",
    "RunConfig",
    "SyntheticConfig",
    "apply_overrides",
    "detector_kwargs",
    "is_clad_format",
    "load_config",
    "parse_value",
    "read_config",
    "read_json",
    "resolved",
    "validate_config",
]
