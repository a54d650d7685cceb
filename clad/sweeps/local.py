"""The local backend: a bounded pool of spawned processes, one fresh process per cell.

The local backend gives every cell its own spawned process rather than reusing workers: a run
that is killed (the out-of-memory killer, a segfault in a native library) is then attributed to
exactly that cell, nothing leaks from one run into the next, a GPU is pinned per process through
``CUDA_VISIBLE_DEVICES`` before torch is imported, and its memory is returned when the run ends.
The price is one interpreter start and import per run (about 9 s on a 2-core CPU; nothing next
to a real run).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

from clad.errors import ConfigError
from clad.sweeps.cell import final_message, run_cell, write_error
from clad.sweeps.jobs import CellJob, CellResult
from clad.tracking.files import read_json
from clad.tracking.run_folders import ERROR_FILE, disk_state

OnDone = Callable[[CellResult], None]
BUSY_EXIT = 4  # a cell process's exit code when another process holds the cell


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when the sweep process dies, so a killed sweep
    leaves no orphan writing into a folder that a re-run is about to resume."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _local_main(job: CellJob, target: Callable[[CellJob], CellResult] | None, parent: int) -> None:
    """Entry point of a spawned cell process; the exit code says how the cell ended."""
    _die_with_parent()
    if os.getppid() != parent:  # the sweep died while this process was starting
        sys.exit(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep process handles Ctrl-C
    result = (target or run_cell)(job)
    sys.exit(0 if result.ok else BUSY_EXIT if result.elsewhere else 1)


def cuda_devices() -> list[str]:
    """GPU ids this process may use (``CUDA_VISIBLE_DEVICES`` order), empty without CUDA."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def uses_cuda(device: str) -> bool:
    return device in ("auto", "cuda")


def run_local(
    jobs: Sequence[CellJob],
    workers: int | None,
    on_done: OnDone,
    threads: int = 1,
    target: Callable[[CellJob], CellResult] | None = None,
) -> None:
    """Run ``jobs`` in at most ``workers`` spawned processes at a time, one process per cell.

    With CUDA, ``workers`` defaults to the number of GPUs and slot i gets GPU i % n (runs whose
    ``training.device`` is ``auto`` or ``cuda``); without, to 1. Each run gets ``threads`` CPU
    threads. A process that dies without reporting (killed by a signal, e.g. the out-of-memory
    killer) gets an ``error.txt`` naming the signal. ``target`` replaces ``run_cell`` (a
    module-level function; for tests).
    """
    import multiprocessing
    from multiprocessing.connection import wait

    gpus = cuda_devices() if any(uses_cuda(j.device) for j in jobs) else []
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    workers = workers or max(1, len(gpus))
    if gpus and workers > len(gpus):
        print(f"[sweep] {workers} workers on {len(gpus)} GPUs: some GPUs run several cells")
    if workers * threads > available_cpus():
        print(
            f"[sweep] {workers} workers x {threads} threads on {available_cpus()} CPUs: "
            "oversubscribed"
        )
    print(
        f"[sweep] local backend: {workers} worker process(es) of {threads} CPU thread(s)"
        + (f", GPUs {','.join(gpus)}" if gpus else ""),
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    queue = deque(jobs)
    free = list(range(workers))
    running: dict[int, tuple] = {}  # sentinel -> (process, job, slot, start time)
    try:
        while queue or running:
            while queue and free:
                slot, job = free.pop(0), queue.popleft()
                gpu = gpus[slot % len(gpus)] if gpus and uses_cuda(job.device) else None
                job = replace(job, gpu=gpu, threads=threads)
                process = context.Process(
                    target=_local_main,
                    args=(job, target, os.getpid()),
                    name=f"clad-sweep-{slot}",
                    daemon=False,
                )
                process.start()
                print(
                    f"[sweep] started {job.label} (worker {slot}"
                    + (f", GPU {gpu}" if gpu is not None else "")
                    + ")",
                    flush=True,
                )
                running[process.sentinel] = (process, job, slot, time.perf_counter())
            # ``wait`` returns the ready ones of the objects it is given: here sentinels (ints)
            for sentinel in cast(list[int], wait(list(running))):
                process, job, slot, began = running.pop(sentinel)
                process.join()
                free.append(slot)
                on_done(_local_result(job, process.exitcode, time.perf_counter() - began))
    except BaseException:
        for process, job, _, began in running.values():
            process.terminate()
            process.join()
            write_error(job.folder(), job.label, "interrupted: the sweep process was stopped")
            on_done(CellResult(job.label, False, "interrupted", time.perf_counter() - began))
        raise


def _local_result(job: CellJob, exitcode: int | None, seconds: float) -> CellResult:
    """Read how a cell process ended from its exit code and its folder."""
    folder = job.folder()
    if exitcode == BUSY_EXIT:  # nothing was run or written: the cell is another process's
        return CellResult(
            job.label, False, "another process is running this cell now", seconds, elsewhere=True
        )
    state = disk_state(folder)
    if exitcode == 0 and state.state == "finished":
        (folder / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's
        summary = _final_summary(folder)
        return CellResult(job.label, True, final_message(summary), seconds, summary)
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        message = f"worker process killed by {name}{hint}"
        write_error(folder, job.label, message)
        return CellResult(job.label, False, message, seconds)
    if state.state == "failed":
        return CellResult(job.label, False, state.detail, seconds)
    message = f"worker process exited with code {exitcode} and no finished metrics"
    write_error(folder, job.label, message)
    return CellResult(job.label, False, message, seconds)


def _final_summary(folder: Path) -> dict[str, float]:
    record = read_json(folder / "metrics.json")
    return {k: v for k, v in record["summary"].items() if v is not None}
