"""Reading configuration files: one JSON object, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clad.errors import ConfigError


def read_json(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a configuration file; name a .json file in it")
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data
