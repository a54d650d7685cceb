"""Atomic writes of run outputs: JSON, CSV, torch checkpoints."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``.

    A crash mid-write leaves the previous file (or none), never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(value: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(jsonable(data), indent=2, sort_keys=False, allow_nan=False)
    atomic_write(path, lambda h: h.write(text.encode() + b"\n"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(jsonable(rows))
    atomic_write(path, lambda h: h.write(buffer.getvalue().encode()))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda h: torch.save(obj, h))


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
