"""Running a sweep: the plan (what to start, resume, retry or leave alone), the manifest, the
chosen backend, and the closing summary."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from clad.errors import ConfigError
from clad.sweeps.expansion import Cell, Sweep, describe
from clad.sweeps.jobs import CellJob, CellResult, SweepOutcome
from clad.sweeps.local import run_local
from clad.sweeps.ray_backend import run_ray
from clad.sweeps.state import cell_state
from clad.tracking.files import atomic_write, write_json
from clad.tracking.run_folders import ERROR_FILE, MANIFEST, CellState, pid_lock

SWEEP_LOCK = ".sweep.lock"  # in the sweep folder: one sweep process at a time


def sweep_lock(sweep_dir: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``<sweep_dir>/.sweep.lock`` for as long as a sweep runs there, so a
    second sweep on the same folder is refused before it writes anything (the kernel releases
    it when the holder dies)."""
    return pid_lock(
        sweep_dir / SWEEP_LOCK,
        lambda holder: (
            f"{sweep_dir}: another sweep is running in this folder ({holder}); wait for it to "
            "end (sweep --dry-run shows its progress), or give this sweep another --output"
        ),
    )


def plan(sweep: Sweep, overwrite: bool = False) -> tuple[list[tuple[Cell, CellState]], list]:
    """(cells to run with their state, cells left alone with their state). A corrupt cell is
    left alone unless ``overwrite``: its damaged file is the user's to look at."""
    to_run, left = [], []
    for cell in sweep.cells:
        state = cell_state(cell, sweep.sweep_dir)
        if state.state == "invalid":
            left.append((cell, state))
        elif overwrite and cell.config is not None:
            to_run.append((cell, state))
        elif state.state in ("finished", "changed", "corrupt"):
            left.append((cell, state))
        else:
            to_run.append((cell, state))
    return to_run, left


def format_plan(sweep: Sweep, overwrite: bool = False) -> str:
    """One line per cell with its state and what the sweep will do with it."""
    action = {
        "finished": "skip",
        "partial": "resume",
        "failed": "retry",
        "pending": "start",
        "changed": "skip (config changed; --overwrite to rerun)",
        "invalid": "not run",
        "corrupt": "not run (repair or remove the file, or --overwrite)",
    }
    lines = []
    width = max(len(c.label) for c in sweep.cells) + 2
    for cell in sweep.cells:
        state = cell_state(cell, sweep.sweep_dir)
        todo = (
            "rerun (--overwrite)" if overwrite and cell.config is not None else action[state.state]
        )
        if state.restart and not overwrite:
            todo = "start again"
        detail = f"  {state.detail}" if state.detail else ""
        lines.append(f"  {cell.label.ljust(width)}{state.state:<9} -> {todo}{detail}")
    return "\n".join(lines)


def summary_line(sweep: Sweep, overwrite: bool = False) -> str:
    counts: dict[str, int] = {}
    for cell in sweep.cells:
        state = cell_state(cell, sweep.sweep_dir).state
        counts[state] = counts.get(state, 0) + 1
    to_run, _ = plan(sweep, overwrite)
    shape = " x ".join(f"{len(v)} {k}" for k, v in sweep.spec.axes.items())
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return (
        f"[sweep] {sweep.spec.name}: {len(sweep.cells)} runs ({shape}"
        f"{', some excluded' if sweep.spec.exclude else ''}): {parts}; "
        f"{len(to_run)} to run now"
    )


def jobs_for(sweep: Sweep, overwrite: bool = False) -> list[CellJob]:
    to_run, _ = plan(sweep, overwrite)
    jobs = []
    for cell, state in to_run:
        assert cell.config is not None
        fresh = (overwrite or state.restart) and state.state != "pending"
        jobs.append(
            CellJob(
                run_name=cell.run_name,
                seed=cell.seed,
                config=cell.config,
                output_root=str(sweep.sweep_dir.resolve()),
                source=f"{sweep.source} cell {cell.label}",
                # a pending cell has no checkpoint, so resume starts it at task 0; with --overwrite
                # a cell that holds results starts again
                resume=not fresh,
                overwrite=fresh,
                device=str(cell.config["training"]["device"]),
                cwd=str(Path.cwd()),
            )
        )
    return jobs


def write_manifest(sweep: Sweep) -> None:
    """``<sweep>/sweep.json``: the sweep file, the ``--set`` overrides applied to every cell
    and every expected cell, so the report can show what ran and cells that never started."""
    write_json(
        sweep.sweep_dir / MANIFEST,
        {
            "name": sweep.spec.name,
            "source": sweep.source,
            "spec": sweep.spec.model_dump(),
            "overrides": list(sweep.overrides),
            "cells": [
                {
                    "run_name": c.run_name,
                    "seed": c.seed,
                    "detector": c.detector,
                    "strategy": c.strategy,
                    "axes": c.axes,
                    "error": c.error,
                }
                for c in sweep.cells
            ],
        },
    )


def record_invalid(sweep: Sweep) -> None:
    """Write ``error.txt`` for every cell whose config does not validate."""
    for cell in sweep.cells:
        if cell.config is None:
            text = (
                f"# {cell.label}: the configuration does not validate\n"
                f"{sweep.source} cell {describe(cell.axes)}:\n{cell.error}\n"
            )
            atomic_write(cell.folder(sweep.sweep_dir) / ERROR_FILE, _text_writer(text))


def _text_writer(text: str) -> Callable[[IO[bytes]], object]:
    """What ``atomic_write`` calls to write ``text`` (UTF-8)."""
    return lambda handle: handle.write(text.encode())


def run_sweep(
    sweep: Sweep,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    copy_back: bool = False,
    overwrite: bool = False,
    threads_per_run: int | None = None,
    target: Callable | None = None,
) -> SweepOutcome:
    """Run every cell that is not finished; failures are recorded, never raised. One sweep
    process per sweep folder (``sweep_lock``): a second one raises ``RunBusyError`` before it
    writes anything; a cell another process holds is left to it (``running``, not failed).

    ``threads_per_run``: CPU threads of each run (torch and OpenMP), default ``cpus_per_run``
    or the sweep file's ``resources.cpus`` (1), on either backend and whatever the number of
    workers: the thread count changes the order of float sums, so a fixed one keeps a run's
    numbers independent of how the sweep was spread (and runs sharing a CPU do not
    oversubscribe it, which on a busy 2-core machine made runs up to 10x slower).
    """
    with sweep_lock(sweep.sweep_dir):
        print(summary_line(sweep, overwrite))
        write_manifest(sweep)
        record_invalid(sweep)
        to_run, left = plan(sweep, overwrite)
        jobs = jobs_for(sweep, overwrite)
        results: list[CellResult] = []
        elsewhere: list[CellResult] = []
        started = time.perf_counter()

        def on_done(result: CellResult) -> None:
            if result.elsewhere:
                elsewhere.append(result)
                print(f"[sweep] left {result.label} to its process: {result.message}", flush=True)
                return
            results.append(result)
            status = "done" if result.ok else "FAILED"
            print(
                f"[sweep] {len(results)}/{len(jobs)} {status} {result.label} in "
                f"{result.seconds:.1f} s: {result.message}",
                flush=True,
            )

        cpus = cpus_per_run if cpus_per_run is not None else sweep.spec.resources.cpus
        threads = threads_per_run or max(1, int(cpus))
        if jobs:
            if backend == "local":
                run_local(jobs, workers, on_done, threads=threads, target=target)
            elif backend == "ray":
                run_ray(
                    jobs,
                    on_done,
                    address=address,
                    cpus=cpus,
                    gpus=gpus_per_run if gpus_per_run is not None else sweep.spec.resources.gpus,
                    copy_back=copy_back,
                    threads=threads,
                )
            else:
                raise ConfigError(f"--backend: unknown backend {backend!r}; known: local, ray")
        outcome = SweepOutcome(
            total=len(sweep.cells),
            skipped=sum(1 for _, s in left if s.state == "finished"),
            results=results,
            not_run=[(c.label, s) for c, s in left if s.state != "finished"]
            + [(r.label, CellState("running", r.message)) for r in elsewhere],
        )
        print(closing_summary(sweep, outcome, time.perf_counter() - started))
        return outcome


def closing_summary(sweep: Sweep, outcome: SweepOutcome, seconds: float) -> str:
    ran = len(outcome.results)
    lines = [
        f"[sweep] {sweep.spec.name}: ran {ran} runs in {seconds:.1f} s "
        f"({ran - len(outcome.failures)} finished, {len(outcome.failures)} failed), "
        f"{outcome.skipped} already finished, {len(outcome.not_run)} not run"
    ]
    problems = [(r.label, "failed", r.message) for r in outcome.failures]
    problems += [(label, s.state, s.detail) for label, s in outcome.not_run]
    if problems:
        lines.append("[sweep] runs that need attention (details in each folder's error.txt):")
        for label, state, message in problems:
            lines.append(f"  {label}: {state}: {message}")
    return "\n".join(lines)
