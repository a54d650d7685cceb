"""Atomic writes of run outputs: JSON, CSV, torch checkpoints."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from clad.errors import OutputError


def _file_mode() -> int:
    """The mode ``open`` would give a new file under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``; the file
    gets the mode the umask gives new files (``mkstemp``'s own is 0600).

    A crash mid-write leaves the previous file (or none), never a truncated one.

    Raises:
        OutputError: naming ``path``, when the folder cannot be made or the file written (no
            permission, a file where a folder should be, a full disk).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing its checksum, damaged, or holding more than
    tensors and plain containers; the message names the file."""


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, obj: Any) -> None:
    """``torch.save`` through an atomic write, then ``<name>.sha256`` with the file's digest and
    size: a checkpoint counts only once its checksum is written after it."""
    atomic_write(path, lambda h: torch.save(obj, h))
    line = f"{_digest(path)} {path.stat().st_size}\n"
    atomic_write(checksum_path(path), lambda h: h.write(line.encode()))


def load_checkpoint(path: Path) -> Any:
    """A checkpoint written by ``save_checkpoint``: its size and digest checked, loaded as data
    only (``weights_only=True``: tensors and plain containers; nothing in it runs).

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    sums = checksum_path(path)
    if not sums.is_file():
        raise CheckpointError(
            f"{path}: no checksum file {sums.name} (not written by clad, or "
            "interrupted while saving)"
        )
    try:
        digest, size = sums.read_text().split()
    except ValueError:
        raise CheckpointError(f"{sums}: unreadable checksum") from None
    if path.stat().st_size != int(size) or _digest(path) != digest:
        raise CheckpointError(f"{path}: damaged (size or checksum differs from {sums.name})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, unsupported globals, truncated archives
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a clad checkpoint of tensors and plain data ({first[:200]})"
        ) from None
