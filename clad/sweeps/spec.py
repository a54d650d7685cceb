"""The sweep file: its typed blocks, reading it, and the base run configuration it names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clad.config import read_config, read_json
from clad.errors import ConfigError
from clad.registry import format_validation_error

SEED_AXIS = "seed"
SEED_LIMIT = 2**32  # as main.py's --seed: NumPy's global seed is a 32-bit unsigned integer
BLOCK_NAME_AXES = ("detector.name", "strategy.name")
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellOverride(Block):
    """``set`` (dotted key -> value) applies to every cell matching ``when`` (dotted key -> value,
    or a list of accepted values; an empty ``when`` matches every cell)."""

    when: dict[str, Any] = {}
    set: dict[str, Any]


class Resources(Block):
    """What one run uses: ``cpus`` CPU threads (both backends; Ray also reserves that many
    CPUs) and, on Ray, ``gpus`` (None: 1 when the cluster has GPUs and the run's
    ``training.device`` is ``auto`` or ``cuda``, else 0; fractions share a GPU)."""

    cpus: float = Field(1.0, gt=0)
    gpus: float | None = Field(None, ge=0)


class SweepSpec(Block):
    name: str = Field(pattern=RUN_NAME_PATTERN.pattern)
    description: str = ""
    base: str | dict[str, Any]
    axes: dict[str, list[Any]]
    overrides: list[CellOverride] = []
    exclude: list[dict[str, Any]] = []
    run_name: str | None = None
    output: str | None = None
    resources: Resources = Resources()

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not axes:
            raise ValueError('needs at least one axis, e.g. {"seed": [0, 1, 2]}')
        for key, values in axes.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
            dumped = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(dumped)) != len(dumped):
                raise ValueError(f"axis {key!r} repeats a value")
            if key == SEED_AXIS and not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < SEED_LIMIT
                for v in values
            ):
                raise ValueError(f"axis 'seed' takes integers from 0 to {SEED_LIMIT - 1}")
        return axes


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; errors name the file and the field."""
    path = Path(path)
    raw = read_json(path)
    try:
        return SweepSpec(**raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, SweepSpec, str(path))) from None


def base_config(spec: SweepSpec, sweep_path: Path) -> tuple[dict[str, Any], str]:
    """The base run config as a raw dict (CLAD format translated) and its name for messages.

    A relative path is looked up from the current folder, then from the sweep file's folder.
    """
    if isinstance(spec.base, dict):
        return json.loads(json.dumps(spec.base)), f"{sweep_path}: base"
    candidate = Path(spec.base)
    if not candidate.is_absolute() and not candidate.exists():
        beside = sweep_path.parent / candidate
        if beside.exists():
            candidate = beside
    if not candidate.is_file():
        raise ConfigError(f"{sweep_path}: base: run configuration {spec.base!r} not found")
    return read_config(candidate, "[sweep]"), str(candidate)
