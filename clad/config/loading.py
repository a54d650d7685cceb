"""From a file (or a dict) and overrides to a validated run configuration (ours or CLAD's)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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


def set_values(raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` (deep-copied) with dotted keys set to Python values (``{"training.epochs": 1,
    "dataset.categories": ["stripes", "disc"]}``): the Python API's overrides."""
    data = json.loads(json.dumps(raw))
    for key, value in values.items():
        parts = str(key).strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"overrides[{key!r}]: {part!r} is not a block")
            node = child
        node[parts[-1]] = json.loads(json.dumps(value))  # plain JSON values, as a file holds
    return data


def config_from_dict(raw: Mapping[str, Any], prefix: str = "[clad]") -> dict[str, Any]:
    """A run config given as a dict: CLAD's format translated, a ``"base"`` merged in
    (relative to the working folder)."""
    data = json.loads(json.dumps(raw))
    source = Path.cwd() / "<config>.json"
    if is_clad_format(data):
        data, ignored = translate(data, source)
        if ignored:
            print(f"{prefix} CLAD keys with no meaning here, ignored: {', '.join(ignored)}")
        return data
    return merge_base(data, source, ())


def read_config(path: str | Path, prefix: str = "[clad]") -> dict[str, Any]:
    """A run config file as a raw dict: CLAD's format translated (the keys it ignores printed
    after ``prefix``), and a ``"base"`` file merged in (see ``merge_base``)."""
    path = Path(path)
    raw = read_json(path)
    if is_clad_format(raw):
        raw, ignored = translate(raw, path)
        if ignored:
            print(f"{prefix} {path}: CLAD keys with no meaning here, ignored: {', '.join(ignored)}")
        return raw
    return merge_base(raw, path, (path.resolve(),))


def merge_base(raw: dict[str, Any], path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``raw`` on top of the config named by its ``"base"`` key (a path relative to ``path``'s
    folder; a base may name a base of its own). Blocks merge key by key, the file's values
    winning; a ``detector`` or ``strategy`` block that names another class than the base's
    replaces it whole (parameters belong to one class); lists and values replace."""
    if "base" not in raw:
        return raw
    name = raw["base"]
    if not isinstance(name, str):
        raise ConfigError(f"{path}: base: expected the path of a run config, got {name!r}")
    base_path = (path.parent / name).resolve()
    if base_path in chain:
        raise ConfigError(
            f"{path}: base: {name!r} names itself (through {' -> '.join(str(c) for c in chain)})"
        )
    if not base_path.is_file():
        raise ConfigError(
            f"{path}: base: {base_path} not found (bases are relative to {path.parent})"
        )
    base = merge_base(read_json(base_path), base_path, (*chain, base_path))
    child = {k: v for k, v in raw.items() if k != "base"}
    return _merged(base, child)


def _merged(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        old = out.get(key)
        same_class = not (
            key in ("detector", "strategy")
            and isinstance(old, dict)
            and isinstance(value, dict)
            and "name" in value
            and value.get("name") != old.get("name")
        )
        if isinstance(old, dict) and isinstance(value, dict) and same_class:
            out[key] = _merged(old, value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    check_machine: bool = True,
) -> RunConfig:
    """Read a run config (a file: ours, with its base, or CLAD's format; or a dict of the same),
    apply overrides and validate it (``validate_config``; ``check_machine=False`` leaves out
    the dataset's folders and the device, for a config that runs elsewhere).

    ``overrides``: ``--set`` items (``["training.epochs=1"]``, values parsed as the command line
    does) or a dict of dotted keys to Python values (``{"training.epochs": 1}``)."""
    if isinstance(path, Mapping):
        raw, source = config_from_dict(path), "<config dict>"
    else:
        raw, source = read_config(path), str(path)
    if isinstance(overrides, Mapping):
        data = set_values(raw, overrides)
        keys = [str(key) for key in overrides]
        return validate_config(data, source, keys, check_machine, "overrides[{key!r}]")
    items = list(overrides or [])
    return validate_config(apply_overrides(raw, items), source, items, check_machine)


def is_clad_format(raw: dict[str, Any]) -> bool:
    return "architecture" in raw or "sample_strategy" in raw
