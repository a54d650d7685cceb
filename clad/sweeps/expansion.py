"""A sweep file expanded into its cells: one validated run configuration per grid point and
seed, with the run name it writes under."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clad.config import apply_overrides, validate_config
from clad.errors import ConfigError
from clad.sweeps.spec import (
    BLOCK_NAME_AXES,
    RUN_NAME_PATTERN,
    SEED_AXIS,
    SweepSpec,
    base_config,
)


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``config`` is the validated config dump (None when invalid)."""

    run_name: str
    seed: int
    axes: dict[str, Any]
    detector: str
    strategy: str
    config: dict[str, Any] | None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.run_name}/seed_{self.seed}"

    def folder(self, sweep_dir: Path) -> Path:
        return sweep_dir / self.run_name / f"seed_{self.seed}"


@dataclass
class Sweep:
    """An expanded sweep: its cells and where they write."""

    spec: SweepSpec
    source: str
    cells: list[Cell]
    sweep_dir: Path
    overrides: tuple[str, ...] = ()  # the --set items applied to every cell

    @property
    def output_root(self) -> Path:
        return self.sweep_dir.parent


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; raises KeyError when absent."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    """A copy of ``data`` with ``key`` set; ``detector.name`` or ``strategy.name`` replace the
    block."""
    if key in BLOCK_NAME_AXES:
        data = json.loads(json.dumps(data))
        data[key.split(".")[0]] = {"name": value}
        return data
    try:
        return apply_overrides(data, [f"{key}={json.dumps(value)}"])
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def matches(condition: dict[str, Any], data: dict[str, Any], seed: int) -> bool:
    """Whether a cell's config (and seed) matches every ``key: value`` of ``condition``; a list
    value accepts any of its items (to match a list-valued key, wrap it: ``[[a, b]]``)."""
    for key, expected in condition.items():
        if key == SEED_AXIS:
            actual: Any = seed
        else:
            try:
                actual = get_dotted(data, key)
            except KeyError:
                return False
        accepted = expected if isinstance(expected, list) else [expected]
        if actual not in accepted:
            return False
    return True


def value_label(value: Any) -> str:
    """A short file-name-safe text for an axis value (a block gives its ``name``)."""
    if isinstance(value, dict):
        if "name" in value:
            return str(value["name"])
        import hashlib

        return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
    if isinstance(value, list):
        return "-".join(value_label(v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", str(value))


def derive_run_name(spec: SweepSpec, data: dict[str, Any], axis_values: dict[str, Any]) -> str:
    """``<detector>_<strategy>`` plus ``<last key part><value>`` for every other axis, or the
    spec's ``run_name`` template with ``{dotted.key}`` fields taken from the cell's config."""
    if spec.run_name is not None:

        def field_value(match: re.Match) -> str:
            key = match.group(1)
            try:
                return value_label(get_dotted(data, key))
            except KeyError:
                raise ConfigError(
                    f"run_name template: {key!r} is not set in the cell's config "
                    f"({spec.run_name!r})"
                ) from None

        return re.sub(r"\{([^{}]+)\}", field_value, spec.run_name)
    parts = [
        value_label(data.get("detector", {}).get("name", "detector")),
        value_label(data.get("strategy", {}).get("name", "strategy")),
    ]
    for key, value in axis_values.items():
        if key in (SEED_AXIS, *BLOCK_NAME_AXES, "detector", "strategy"):
            continue
        parts.append(f"{key.split('.')[-1]}{value_label(value)}")
    return "_".join(parts)


def expand(
    spec: SweepSpec,
    sweep_path: Path,
    overrides: Sequence[str] = (),
    output: str | None = None,
) -> Sweep:
    """Every cell of the grid in axis order (the last axis varies fastest), excluded ones left
    out. Cells whose config does not validate are kept with their ``error``."""
    base, base_name = base_config(spec, sweep_path)
    probe = apply_overrides(base, list(overrides))
    root = output or spec.output or probe.get("output", {}).get("dir", "output")
    sweep_dir = Path(root) / spec.name
    keys = list(spec.axes)
    cells: list[Cell] = []
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for combination in itertools.product(*(spec.axes[k] for k in keys)):
        axis_values = dict(zip(keys, combination))
        seed = int(axis_values.get(SEED_AXIS, 0))
        where = f"{sweep_path} cell {describe(axis_values)}"
        data = set_dotted(base, "wandb.group", spec.name, where)
        for key, value in axis_values.items():
            if key != SEED_AXIS:
                data = set_dotted(data, key, value, where)
        if any(matches(rule, data, seed) for rule in spec.exclude):
            continue
        for rule in spec.overrides:
            if matches(rule.when, data, seed):
                for key, value in rule.set.items():
                    data = set_dotted(data, key, value, where)
        data = apply_overrides(data, list(overrides))
        run_name = derive_run_name(spec, data, axis_values)
        if not RUN_NAME_PATTERN.match(run_name):
            raise ConfigError(
                f"{where}: run name {run_name!r} has characters other than "
                "letters, digits, '_', '.', '-'; set a run_name template"
            )
        data["run_name"] = run_name
        data = set_dotted(data, "output.dir", str(sweep_dir), where)
        if (run_name, seed) in seen:
            raise ConfigError(
                f"{sweep_path}: cells {describe(seen[(run_name, seed)])} and "
                f"{describe(axis_values)} both get run name {run_name!r}; add a run_name "
                'template to the sweep file, e.g. "{detector.name}_{strategy.name}_'
                '{training.epochs}"'
            )
        seen[(run_name, seed)] = axis_values
        detector = str(data.get("detector", {}).get("name", "?"))
        strategy = str(data.get("strategy", {}).get("name", "?"))
        try:
            # the dataset and the device are checked where the cell runs (a Ray worker may
            # hold data and GPUs that the driver does not)
            config = validate_config(data, where, check_machine=False).model_dump()
            error = None
        except ConfigError as err:
            config, error = None, str(err).replace(f"{where}:", "", 1).strip()
        cells.append(Cell(run_name, seed, axis_values, detector, strategy, config, error))
    if not cells:
        raise ConfigError(f"{sweep_path}: every cell is excluded; nothing to run")
    return Sweep(spec, str(sweep_path), cells, sweep_dir, tuple(overrides))


def describe(axis_values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={value_label(v)}" for k, v in axis_values.items()) + "}"
