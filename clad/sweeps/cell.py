"""Running one sweep cell, in whatever process calls it: exactly as ``main.py`` runs a seed, with
the cell's output in its ``log.txt`` and any failure in its ``error.txt``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from clad.config import validate_config
from clad.runner import Run
from clad.sweeps.jobs import CellJob, CellResult
from clad.tracking.files import atomic_write
from clad.tracking.run_folders import ERROR_FILE, LOG_FILE, RunBusyError


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so native libraries too,
    and ``sys.stdout``/``sys.stderr``) to ``path`` (appended), restoring them afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log, open(path, "a", buffering=1) as text:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            # Python-level streams too, where something (pytest, a notebook) replaced them
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def write_error(folder: Path, label: str, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    body = f"# {label} failed at {stamp} (log: {LOG_FILE})\n{text.rstrip()}\n"
    atomic_write(folder / ERROR_FILE, lambda h: h.write(body.encode()))


def run_cell(job: CellJob) -> CellResult:
    """Run one cell exactly as ``main.py`` runs a seed: ``Run(config, seed, output, resume,
    overwrite).execute()``. Never raises: an exception is written to ``error.txt`` beside the
    run's outputs and returned as a failed result. Output goes to the cell's ``log.txt``.

    A cell that another process holds (a sweep's cell lock, or a ``main.py`` run's lock) is
    left to it: an ``elsewhere`` result, nothing written to its folder."""
    began = time.perf_counter()
    if job.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu
    if job.threads is not None:
        set_threads(job.threads)
    folder = job.folder()
    folder.mkdir(parents=True, exist_ok=True)
    with cell_lock(folder) as holder:
        if holder is not None:
            return running_elsewhere(job, f"another process ({holder}) is running this cell now")
        return _run_locked(job, folder, began)


def running_elsewhere(job: CellJob, message: str) -> CellResult:
    """The result of a cell left to the process that holds it."""
    return CellResult(job.label, False, message, 0.0, elsewhere=True)


def set_threads(count: int) -> None:
    """CPU threads of this process's run: OpenMP/MKL (for libraries not loaded yet) and torch."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(count)
    import torch

    torch.set_num_threads(count)


@contextlib.contextmanager
def cell_lock(folder: Path) -> Iterator[str | None]:
    """An exclusive ``flock`` on ``<folder>/.lock`` holding this process's pid; yields None
    when taken, else the holder (``pid <n>``), so no two processes run one cell at once.
    Advisory, and only as reliable as the file system's locks (local disks: yes; some NFS
    setups: no)."""
    import fcntl

    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            yield handle.read().strip() or "another process"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_locked(job: CellJob, folder: Path, began: float) -> CellResult:
    (folder / ERROR_FILE).unlink(missing_ok=True)
    try:
        with output_to(folder / LOG_FILE):
            print(
                f"[sweep] {job.label}: pid {os.getpid()}, resume={job.resume}, "
                f"overwrite={job.overwrite}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}",
                flush=True,
            )
            config = validate_config(job.config, job.source)
            record = Run(
                config, job.seed, job.output_root, resume=job.resume, overwrite=job.overwrite
            ).execute()
    except RunBusyError as err:  # a main.py run holds the folder: left to it
        return running_elsewhere(job, str(err).splitlines()[0][:300])
    except BaseException as err:  # noqa: BLE001  (KeyboardInterrupt too: the cell is recorded)
        write_error(folder, job.label, traceback.format_exc())
        seconds = time.perf_counter() - began
        message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if isinstance(err, KeyboardInterrupt):
            message = "interrupted"
        return CellResult(job.label, False, message, seconds)
    summary = {k: v for k, v in record["summary"].items() if v is not None}
    return CellResult(job.label, True, final_message(summary), time.perf_counter() - began, summary)


def final_message(summary: dict) -> str:
    """The line a finished cell prints: its final average image AUROC, or AUC and pAUC for a
    machine-sound run (whose summary has no image AUROC)."""
    if "final_avg/image_auroc" not in summary and "final_avg/auc" in summary:
        auc, pauc = summary["final_avg/auc"], summary.get("final_avg/pauc")
        return f"final avg AUC {auc:.3f}" + ("" if pauc is None else f", pAUC {pauc:.3f}")
    auroc = summary.get("final_avg/image_auroc")
    return "final avg image AUROC " + ("n/a" if auroc is None else f"{auroc:.3f}")
