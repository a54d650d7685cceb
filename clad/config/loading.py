"""From a file and ``--set`` overrides to a validated run configuration (ours or CLAD's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clad.config.clad_format import translate
from clad.config.files import read_json
from clad.config.schema import RunConfig, validate_config
from clad.errors import ConfigError


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


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config (ours or CLAD's format), apply overrides and validate it."""
    path = Path(path)
    raw = read_json(path)
    if is_clad_format(raw):
        raw, ignored = translate(raw, path)
        if ignored:
            print(f"[clad] {path}: CLAD keys with no meaning here, ignored: {', '.join(ignored)}")
    return validate_config(apply_overrides(raw, overrides or []), str(path))


def is_clad_format(raw: dict[str, Any]) -> bool:
    return "architecture" in raw or "sample_strategy" in raw
