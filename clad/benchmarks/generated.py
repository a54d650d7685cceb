"""What every synthetic generator shares: completion markers, seeds, a file lock, atomic writes.

A generated folder (a category of ``synthetic``, ``synthetic3d``, or a machine of
``synthetic_audio``) is written to a hidden temporary folder next to its place and renamed into
place only once complete, with a ``.complete`` marker inside: JSON of the parameters it was
written with, and (``FILES_KEY``) the list of the files written. A folder whose marker records
the asked-for parameters is kept; one written with other parameters is replaced, but only when
it holds nothing but the files its marker lists (anything else, a user's run folder put there,
is named in an error and nothing is deleted); a folder without a readable marker was not written
by a generator and is never touched.
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
FILES_KEY = "written_files"  # the marker's list of the files written (relative POSIX paths)
FOREIGN_SHOWN = 5  # foreign entries named in the refusal


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


def _raw_marker(folder: Path) -> Any | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):  # absent or unreadable: not a generator's folder
        return None


def read_marker(folder: Path) -> Any | None:
    """The JSON recorded in ``folder/.complete`` (without its list of written files), or None
    when absent or unreadable."""
    marker = _raw_marker(folder)
    if isinstance(marker, dict):
        return {key: value for key, value in marker.items() if key != FILES_KEY}
    return marker


def written_files(folder: Path) -> list[str] | None:
    """The files the marker of ``folder`` lists as written (relative POSIX paths), or None when
    it lists none (no marker, or one written before the list was recorded)."""
    marker = _raw_marker(folder)
    files = marker.get(FILES_KEY) if isinstance(marker, dict) else None
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return files
    return None


def foreign_entries(folder: Path) -> list[str] | None:
    """Entries of a generated ``folder`` that its marker does not list (relative POSIX paths; a
    folder none of whose files is listed is named once, not descended into), or None when the
    marker lists no files."""
    listed = written_files(folder)
    if listed is None:
        return None
    files = {*listed, MARKER}
    folders = {parent.as_posix() for f in listed for parent in Path(f).parents} - {"."}
    foreign = []
    pending = [folder]
    while pending:
        for entry in sorted(pending.pop().iterdir()):
            relative = entry.relative_to(folder).as_posix()
            if entry.is_dir() and not entry.is_symlink() and relative in folders:
                pending.append(entry)
            elif relative not in files or entry.is_dir():
                foreign.append(relative + ("/" if entry.is_dir() else ""))
    return sorted(foreign)


def check_only_generated(folder: Path, owner: str) -> None:
    """Refuse to replace a generated ``folder`` that holds anything its marker does not list.

    Raises:
        FileExistsError: naming the folder and its foreign entries, or saying that its marker
            (from an older clad) does not list the files written.
    """
    foreign = foreign_entries(folder)
    if foreign is None:
        raise FileExistsError(
            f"{folder}: the {owner} wrote it with other settings but did not record the files "
            "it wrote (an older clad), so it cannot tell them from yours; delete the folder "
            "yourself to regenerate it, or choose another root"
        )
    if foreign:
        shown = ", ".join(foreign[:FOREIGN_SHOWN])
        more = f" and {len(foreign) - FOREIGN_SHOWN} more" if len(foreign) > FOREIGN_SHOWN else ""
        raise FileExistsError(
            f"{folder}: written by the {owner} with other settings, but it also holds entries "
            f"the {owner} did not write ({shown}{more}); nothing was deleted: move them out (or "
            "choose another root) to regenerate it"
        )


def _files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative POSIX paths, sorted)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


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
    ``target`` and returns what the marker records; the marker (with the list of the files
    drawn) is written last, then the folder is renamed to ``target``. A killed write leaves no
    half folder under ``target``'s name. An earlier generation at ``target`` (a folder with a
    readable marker) is replaced only when it holds nothing but the files its marker lists
    (checked before drawing, and again once it is moved aside: then it is moved back); when
    another process renamed the same generation into place first, its folder is kept.

    Args:
        target: the folder to (re)write.
        write: draws the files into the folder it is given; returns the marker's content.
        owner: the generator, as named in the error (e.g. ``"synthetic generator"``).
        sort_keys: write the marker's keys in sorted order (False keeps their order).

    Raises:
        FileExistsError: when ``target`` exists without a readable marker (not a generator's),
            or holds entries its marker does not list (``check_only_generated``).
    """
    if target.exists():
        if read_marker(target) is None:
            raise FileExistsError(
                f"{target} exists but was not written by the {owner} (no readable "
                f"{MARKER} marker); move it away or choose another root"
            )
        check_only_generated(target, owner)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = unique_tag()
    partial = target.parent / f".{target.name}.partial-{tag}"
    try:
        marker = write(partial)
        write_marker(partial, {**marker, FILES_KEY: _files_under(partial)}, sort_keys=sort_keys)
        if target.exists():  # stale generation: move aside, check again, then remove
            stale = target.parent / f".{target.name}.stale-{tag}"
            try:
                os.rename(target, stale)
            except FileNotFoundError:  # another process moved it first
                pass
            else:
                try:
                    check_only_generated(stale, owner)
                except FileExistsError:
                    os.rename(stale, target)  # something arrived meanwhile: put it all back
                    check_only_generated(target, owner)  # raises, naming the target
                    raise
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(partial, target)
        except OSError:
            if read_marker(target) != marker:  # else another process wrote the same files
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
