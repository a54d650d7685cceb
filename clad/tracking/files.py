"""Atomic writes of run outputs (JSON, CSV, torch checkpoints) and the one JSON reader: every
failure is one line naming the file."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
            permission, a file where a folder should be, a full disk), including torch's own
            write failures (``torch.save`` reports a full disk as a RuntimeError of its zip
            writer, ``TORCH_WRITE_FAILURES``).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{shown_path(path)}: cannot write ({err.strerror or err})") from None
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
            raise OutputError(f"{shown_path(path)}: cannot write ({err.strerror or err})") from None
        if isinstance(err, RuntimeError) and any(m in str(err) for m in TORCH_WRITE_FAILURES):
            raise OutputError(
                f"{shown_path(path)}: cannot write (torch's writer failed: {_first_line(err)}); "
                "is the disk full?"
            ) from None
        raise


TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")
"""Parts of the RuntimeError messages of torch's zip writer when a write fails (a full disk:
``[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``)."""


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


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


class _DuplicateKeyError(ValueError):
    """A JSON object that names a key twice (``json`` would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses a key given twice in one object."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKeyError(key)
        data[key] = value
    return data


def read_json(path: Path, error: type[Exception] = OutputError) -> Any:
    """The JSON in ``path``, strictly: UTF-8, no key twice in one object.

    Every JSON file clad reads goes through here (``clad.config.files.read_json`` too), so a
    damaged or hand-edited file is one line naming it rather than ``Expecting value: line 1
    column 1 (char 0)``.

    Raises:
        error: (``OutputError`` unless the caller names another, e.g. ``ConfigError``) naming
            ``path`` and what is wrong: unreadable, not UTF-8, not JSON, a key twice, nested
            too deeply for Python's parser.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise error(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as err:
        raise error(
            f"{path}: key {shown_text(str(err))!r} appears twice in one object (the last would "
            "silently win); keep one"
        ) from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON: {err}") from None
    except RecursionError:
        raise error(
            f"{path}: nested too deeply to read (more than Python's recursion limit of "
            "arrays/objects inside one another)"
        ) from None


def shown_text(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for a message, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown_path(path: Path | str, limit: int = 200) -> str:
    """A path for a message: whole up to ``limit`` characters, else its start and end (a run
    name of megabytes is not echoed whole)."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(text)} characters)"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(jsonable(rows))
    atomic_write(path, lambda h: h.write(buffer.getvalue().encode()))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing its checksum, damaged, holding more than
    tensors and plain containers, or lacking an entry; the message names the file."""


class CheckpointEntryError(CheckpointError, KeyError):
    """An entry a checkpoint lacks; a ``KeyError`` too, so code that asks and catches that
    still works. Its message is the text, not ``KeyError``'s quoted repr."""

    __str__ = BaseException.__str__


class CheckpointState(dict):
    """A plain dict of a loaded checkpoint whose missing key raises ``CheckpointError`` naming
    the file and the dotted key, wherever the state is applied (the runner, a strategy, a
    detector): a well-formed checkpoint of another version or an edited one is then one line,
    not ``KeyError: 'detector'``. ``get`` and ``in`` behave as on any dict."""

    def __init__(self, data: dict, path: Path, where: str = "") -> None:
        super().__init__(
            (key, _checked(value, path, f"{where}.{key}" if where else str(key)))
            for key, value in data.items()
        )
        self.path, self.where = path, where

    def __missing__(self, key: object) -> Any:
        name = f"{self.where}.{key}" if self.where else str(key)
        raise CheckpointEntryError(
            f"{self.path}: no {name!r} entry (a checkpoint of another clad version or "
            "strategy, or edited); resume from another checkpoint or start again with "
            "--overwrite"
        )


def _checked(value: Any, path: Path, where: str) -> Any:
    """Plain dicts (not a module's ``OrderedDict`` state, which keeps its ``_metadata``) become
    ``CheckpointState``, through lists and tuples."""
    if type(value) is dict:
        return CheckpointState(value, path, where)
    if type(value) in (list, tuple):
        return type(value)(_checked(v, path, where) for v in value)
    return value


def _plain(value: Any) -> Any:
    """``CheckpointState`` (kept by a strategy from the state it resumed from) back to plain
    dicts, so the next checkpoint holds only what ``weights_only`` loading accepts."""
    if isinstance(value, CheckpointState) or type(value) is dict:
        return {key: _plain(v) for key, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    return value


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """A write-only stream that passes bytes on to ``handle`` and hashes them as they go (no
    ``seek``: a writer that needed one would fail, not hash the wrong bytes)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: Path, obj: Any) -> None:
    """``torch.save`` through an atomic write, then ``<name>.sha256`` with the file's digest and
    size: a checkpoint counts only once its checksum is written after it.

    The digest is taken from the bytes as they are written (the file is not read back), and
    torch's own zip CRC-32 is not computed: the SHA-256 checks the whole file on load
    (``load_checkpoint``). That makes ``torch.save`` of 720 MB take 0.4 s instead of 1.9 s;
    the ``fsync`` after it (the disk) then dominates: a 745 MB checkpoint takes about 3 s
    either way on a disk that syncs about 300 MB/s."""
    from torch.utils.serialization import config

    plain = _plain(obj)
    written: list[_HashingWriter] = []

    def write(handle: IO[bytes]) -> None:
        writer = _HashingWriter(handle)
        crc = config.save.compute_crc32
        config.save.compute_crc32 = False
        try:
            torch.save(plain, writer)  # type: ignore[arg-type]
        finally:
            config.save.compute_crc32 = crc
        written.append(writer)

    atomic_write(path, write)
    writer = written[-1]
    if writer.size != path.stat().st_size:  # not one sequential stream: hash the file
        digest = _digest(path)
    else:
        digest = writer.digest.hexdigest()
    line = f"{digest} {path.stat().st_size}\n"
    atomic_write(checksum_path(path), lambda h: h.write(line.encode()))


class CheckpointWriter:
    """Writes checkpoints on one background thread, in the order given, so that the disk's
    sync (seconds for a large state) overlaps the next task instead of holding the run.

    ``submit`` takes a deep copy of the object first (the run goes on changing its state and
    its lists) and writes it with ``save_checkpoint`` (atomic, checksum after the file); an
    object that cannot be copied is written at once. A write that failed raises its error
    (``OutputError`` naming the file) at the next ``submit`` or at ``wait``; ``close`` waits
    for every write, so a run that stops, however it stops, leaves its checkpoints written."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, path: Path, obj: Any) -> None:
        self._raise_failed()
        try:
            snapshot = copy.deepcopy(obj)
        except Exception:  # noqa: BLE001  (an object deepcopy does not take: write it now)
            save_checkpoint(path, obj)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="clad-checkpoint")
        self._pending.append(self._pool.submit(save_checkpoint, path, snapshot))

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()

    def wait(self) -> None:
        """Block until every submitted checkpoint is written; raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self, raise_errors: bool = True) -> None:
        """``wait``, then stop the thread; with ``raise_errors`` False (a run already failing)
        a failed write does not replace the error in flight."""
        try:
            if raise_errors:
                self.wait()
            else:
                for future in self._pending:
                    future.exception()
                self._pending = []
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def load_checkpoint(path: Path) -> Any:
    """A checkpoint written by ``save_checkpoint``: its size and digest checked, loaded as data
    only (``weights_only=True``: tensors and plain containers; nothing in it runs).

    Returns:
        The saved object; its plain dicts are ``CheckpointState``, so reading an entry the file
        lacks is a ``CheckpointError`` naming the file and the entry.

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
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, unsupported globals, truncated archives
        raise CheckpointError(
            f"{path}: not a clad checkpoint of tensors and plain data ({_first_line(err)})"
        ) from None
    return _checked(saved, path, "")
