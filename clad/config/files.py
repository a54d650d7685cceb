"""Reading configuration files: one JSON object, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clad.errors import ConfigError
from clad.tracking import files


def read_json(path: Path) -> dict[str, Any]:
    """A configuration file's JSON object (``clad.tracking.files.read_json``: UTF-8, no key
    twice in one object).

    Raises:
        ConfigError: naming ``path``: a folder, missing, unreadable, not UTF-8, not JSON, a key
            given twice, nested too deeply, or not an object at the top level.
    """
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a configuration file; name a .json file in it")
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    data = files.read_json(path, error=ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data
