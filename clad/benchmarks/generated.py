"""What every synthetic generator shares: completion markers, seeds, a file lock, atomic writes.

A generated folder (a category of ``synthetic``, ``synthetic3d``, or a machine of
``synthetic_audio``) is written to a hidden temporary folder next to its place and renamed into
place only once complete, with a ``.complete`` marker inside: JSON of the parameters it was
written with. A folder whose marker records the asked-for parameters is kept; one written with
other parameters is replaced; a folder without a readable marker was not written by a generator
and is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

MARKER = ".complete"  # the completion marker's file name, inside a generated folder


def stable_id(text: str) -> int:
    """CRC32 of a name: a seed component that is the same in every process (unlike hash())."""
    return zlib.crc32(text.encode("utf-8"))


def unique_tag() -> str:
    """A name suffix no other process or call uses: ``<pid>-<8 hex digits>``."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old content or the new one, never a part."""
    temporary = path.parent / f".{path.name}.partial-{unique_tag()}"
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_marker(folder: Path) -> Any | None:
    """The JSON recorded in ``folder/.complete``, or None when absent or unreadable."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(folder: Path, data: dict, *, sort_keys: bool = True) -> Path:
    """Write ``data`` as JSON to ``folder/.complete`` atomically.

    Args:
        folder: the generated folder (it must exist).
        data: what the marker records.
        sort_keys: JSON keys in sorted order (False keeps ``data``'s order).

    Returns:
        The marker's path.
    """
    path = folder / MARKER
    write_text_atomically(path, json.dumps(data, sort_keys=sort_keys))
    return path


def is_complete(folder: Path, params: dict, key: str | None = None) -> bool:
    """Whether ``folder``'s marker records ``params``: the whole marker, or its entry ``key``
    when the marker records more than the parameters."""
    marker = read_marker(folder)
    if key is not None:
        return isinstance(marker, dict) and marker.get(key) == params
    return marker == params


class FileLock:
    """An exclusive ``flock`` on a file while inside the block (no-op where fcntl is absent),
    so that processes sharing a root take turns, e.g. at rebuilding the VisA split file."""

    def __init__(self, path: Path):
        self.path = path
        self.handle: TextIO | None = None

    def __enter__(self) -> FileLock:
        self.handle = self.path.open("a")
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the lock
            self.handle = None


def write_folder(
    target: Path,
    write: Callable[[Path], dict],
    owner: str,
    *,
    sort_keys: bool = True,
) -> None:
    """Write a generated folder atomically to ``target``.

    ``write(partial)`` draws every file into a hidden temporary folder ``partial`` next to
    ``target`` and returns what the marker records; the marker is written last, then the folder
    is renamed to ``target``. A killed write leaves no half folder under ``target``'s name. An
    earlier generation at ``target`` (a folder with a readable marker) is moved aside and
    removed; when another process renamed the same generation into place first, its folder is
    kept.

    Args:
        target: the folder to (re)write.
        write: draws the files into the folder it is given; returns the marker's content.
        owner: the generator, as named in the error (e.g. ``"synthetic generator"``).
        sort_keys: write the marker's keys in sorted order (False keeps their order).

    Raises:
        FileExistsError: when ``target`` exists without a readable marker (not a generator's).
    """
    if target.exists() and read_marker(target) is None:
        raise FileExistsError(
            f"{target} exists but was not written by the {owner} (no readable "
            f"{MARKER} marker); move it away or choose another root"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = unique_tag()
    partial = target.parent / f".{target.name}.partial-{tag}"
    try:
        marker = write(partial)
        write_marker(partial, marker, sort_keys=sort_keys)
        if target.exists():  # stale generation: move aside, then remove
            stale = target.parent / f".{target.name}.stale-{tag}"
            try:
                os.rename(target, stale)
            except FileNotFoundError:  # another process moved it first
                pass
            else:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(partial, target)
        except OSError:
            if read_marker(target) != marker:  # else another process wrote the same files
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
