"""Run and sweep folders: what they hold, and a run folder's lifecycle.

A run folder (``<output>/<run_name>/seed_<n>/``) is taken by one process at a time
(``run_lock``), refused when it already holds a run unless the run is resumed or overwritten,
and on ``--overwrite`` its old entries are set aside (``.replaced/``) until the new run finishes
(restored if it fails). ``.replaced/`` may hold the only finished copy of a run (an
``--overwrite`` killed before it ended leaves it), so it is removed only once a newer run
finished. Resuming starts from the newest checkpoint that loads. Sweeps and the comparison
report read run folders through ``disk_state`` and the file names here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clad.errors import OutputError
from clad.tracking import files

ERROR_FILE = "error.txt"  # why a run failed (a sweep writes it)
LOG_FILE = "log.txt"  # a sweep cell's console output
MANIFEST = "sweep.json"  # a sweep folder's list of expected runs
FINISHED = "finished.json"  # written by a run as its very last step (after plots and loggers)


@dataclass(frozen=True)
class CellState:
    """``state`` one of finished, partial, failed, pending, corrupt (a ``metrics.json`` or
    ``config.json`` that does not read), changed, invalid; and, for a sweep's closing summary,
    running (another process held the cell)."""

    state: str
    detail: str = ""
    restart: bool = False  # partial or failed with another config: start again, do not resume


def disk_state(folder: Path) -> CellState:
    """What a cell's folder holds: finished (every task in ``metrics.json`` and the run's last
    step, ``finished.json``, done), partial (tasks done or checkpoints: resumable), failed,
    pending, or corrupt (its ``metrics.json`` or ``config.json`` does not read: the detail
    names the file and why)."""
    metrics = folder / "metrics.json"
    done, total = 0, None
    try:
        if (folder / "config.json").is_file():
            files.read_json(folder / "config.json")
        if metrics.is_file():
            record = files.read_json(metrics)
            done, total = int(record["completed_tasks"]), len(record["tasks"])
    except OutputError as err:
        return CellState("corrupt", str(err)[:300])
    except (ValueError, KeyError, TypeError):
        return CellState("corrupt", f"{metrics}: not a metrics record (completed_tasks, tasks)")
    if total is not None and done == total and (folder / FINISHED).is_file():
        return CellState("finished", f"{done}/{total} tasks")
    error = folder / ERROR_FILE
    if error.is_file():
        lines = error.read_text(errors="replace").strip().splitlines()
        return CellState("failed", _error_headline(lines))
    checkpoints = list((folder / "checkpoints").glob("task_*.pt"))
    if total is not None or checkpoints:
        progress = f"{done}/{total} tasks" if total else f"{len(checkpoints)} checkpoints"
        if total is not None and done == total:
            progress += ", its last files not written"
        return CellState("partial", progress)
    return CellState("pending")


def _error_headline(lines: list[str]) -> str:
    """The most telling line of an error file: the last non-traceback line, else the first."""
    body = [line for line in lines if line and not line.startswith((" ", "Traceback", "#"))]
    return body[-1][:300] if body else (lines[0][:300] if lines else "failed")


RUN_FILES = ("config.json", "metrics.json", "checkpoints", FINISHED)
"""Entries that make a folder hold a run."""
KEPT = (".lock", LOG_FILE)  # a sweep's lock and log stay where they are on --overwrite
REPLACED = ".replaced"
FAILED = ".failed"


class RunExistsError(RuntimeError):
    """The output folder already holds a run and neither resume nor overwrite was asked, another
    process runs it, or ``--resume`` was given settings that change the results."""


class RunBusyError(RunExistsError):
    """Another living process holds the folder's lock (a run, or a sweep of a sweep folder)."""


@contextlib.contextmanager
def pid_lock(path: Path, busy: Callable[[str], str]) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` (created when missing), holding this
    process's ``pid <n>`` while held. The kernel releases it when the process dies, so a killed
    holder's lock is never stale.

    Raises:
        RunBusyError: ``busy(holder)`` (``holder``: ``pid <n>`` of the process that holds it).
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            raise RunBusyError(busy(handle.read().strip() or "another process")) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock (``pid_lock``) on ``.<folder name>.lock`` beside the run folder, taken
    before anything in it is read or changed; held until the run ends."""
    return pid_lock(
        folder.parent / f".{folder.name}.lock",
        lambda holder: (
            f"{folder} is being run now by {holder}; wait for it to end (one run per folder)"
        ),
    )


class RunFolder:
    """One run's folder and its lifecycle (module docstring); every method expects the
    caller to hold ``run_lock(path)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def checkpoints(self) -> list[Path]:
        """``checkpoints/task_<t>.pt`` files, by task."""
        return sorted(
            (self.path / "checkpoints").glob("task_*.pt"), key=lambda p: int(p.stem.split("_")[1])
        )

    def saved_text(self) -> str:
        """What the run has kept on disk so far, for the line printed when it is stopped."""
        checkpoints = self.checkpoints()
        if not checkpoints:
            return f"no task finished yet in {self.path}"
        last = max(int(p.stem.split("_")[1]) for p in checkpoints)
        return f"tasks 0..{last} are saved in {self.path}"

    def holds_a_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse a file in the folder's place, and a folder that holds a run unless it is
        resumed or overwritten."""
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"{self.path} is a file, not a run folder")
        if self.holds_a_run() and not (resume or overwrite):
            raise RunExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or --overwrite "
                "to start it again"
            )

    def saved_config(self) -> dict | None:
        """The saved ``config.json``, or None when there is none."""
        saved = self.path / "config.json"
        return files.read_json(saved) if saved.is_file() else None

    def check_writable(self) -> None:
        """The folder can be made and written (a probe file), before any training."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write_probe_{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:
                raise OutputError(
                    f"{files.shown_path(self.path)}: a folder name is too long for the file "
                    "system (run_name and --output make the path); choose a shorter one"
                ) from None
            raise OutputError(
                f"{files.shown_path(self.path)}: cannot write the run's outputs there "
                f"({err.strerror or err}); choose another output folder (--output) or fix its "
                "permissions"
            ) from None

    def _run_entries(self) -> list[Path]:
        """The folder's entries that belong to its run (not the sweep's lock and log, not the
        set-aside or failed folders)."""
        return [e for e in self.path.iterdir() if e.name not in (*KEPT, REPLACED, FAILED)]

    def _move_to_failed(self) -> Path:
        """The run's entries into a fresh ``.failed/`` (an earlier failed attempt there goes)."""
        failed = self.path / FAILED
        if failed.exists():
            shutil.rmtree(failed)
        failed.mkdir()
        for entry in self._run_entries():
            entry.rename(failed / entry.name)
        return failed

    def set_aside(self) -> Path | None:
        """Move the old run's entries into ``.replaced/`` (``--overwrite``; restored if the
        new run fails, deleted when it finishes); a sweep's ``log.txt`` and lock stay. None
        when the folder holds no run and nothing is set aside.

        A ``.replaced/`` already there was left by an ``--overwrite`` that was killed, and may
        hold the only finished copy of the run: it is kept, and the killed attempt's files in
        the folder go to ``.failed/`` (a line says so). Only when the folder itself holds a
        finished run (the killed attempt was resumed to its end) is the older backup dropped
        and the newer run set aside instead.
        """
        aside = self.path / REPLACED
        if aside.is_dir():
            current = disk_state(self.path)
            if current.state != "finished":
                if self._run_entries():
                    failed = self._move_to_failed()
                    print(
                        f"[clad] {self.path} holds a killed --overwrite attempt ({current.state}"
                        f"{': ' + current.detail if current.detail else ''}): its files are "
                        f"moved to {failed}; the run set aside before it stays in {aside}"
                    )
                return aside
            print(
                f"[clad] {self.path} holds a finished run newer than the older set-aside run "
                f"in {aside}: the older one is removed, the newer one set aside"
            )
            shutil.rmtree(aside)
        if not self.holds_a_run():
            return None
        aside.mkdir()
        for entry in self._run_entries():
            entry.rename(aside / entry.name)
        return aside

    def restore(self, aside: Path) -> None:
        """A failed ``--overwrite`` run: its partial outputs go to ``.failed/``, the old run
        comes back; the line printed says whether that run was finished."""
        failed = self._move_to_failed()
        for entry in aside.iterdir():
            entry.rename(self.path / entry.name)
        aside.rmdir()
        back = disk_state(self.path)
        if back.state == "finished":
            what = f"the previous run in {self.path} is restored (finished, {back.detail})"
        elif back.state == "pending":
            what = f"{self.path} holds no previous run's results"
        else:
            detail = f": {back.detail}" if back.detail else ""
            what = (
                f"the previous run's files are back in {self.path} (it was not finished: "
                f"{back.state}{detail})"
            )
        print(f"[clad] the new run failed: {what}; the failed attempt's outputs are in {failed}")

    def clean_temporary_files(self) -> None:
        """Leftovers of writes cut short (``.<name>.<random>.tmp``)."""
        for path in self.path.rglob(".*.tmp"):
            path.unlink(missing_ok=True)

    def last_good_checkpoint(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads (``files.load_checkpoint``). One without its
        checksum file was never completely written and does not count (a line says so); a
        damaged or foreign one is skipped with a line naming it. None when none counts; an
        error naming them when every one that counts is unusable."""
        counted = []
        for path in self.checkpoints():
            if files.checksum_path(path).is_file():
                counted.append(path)
            else:
                print(
                    f"[clad] ignoring {path}: its checksum was never written (interrupted "
                    "while saving)"
                )
        problems = []
        for path in reversed(counted):
            try:
                return files.load_checkpoint(path), path
            except files.CheckpointError as err:
                print(f"[clad] skipping checkpoint: {err}")
                problems.append(str(err))
        if not counted:
            return None
        raise files.CheckpointError(
            f"{self.path}: no usable checkpoint to resume from ({'; '.join(problems)}); start "
            "the run again with --overwrite"
        )
