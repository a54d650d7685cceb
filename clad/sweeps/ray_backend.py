"""The Ray backend: one Ray task per cell (Ray imported lazily), on shared storage or with each
cell's files sent back to the driver (``--copy-back``).

With ``--copy-back`` a cell runs in a temporary folder on its worker, seeded with the driver's
copy of the cell (a partial run resumes from its checkpoints; on ``--overwrite`` the old run is
set aside and restored on failure exactly as on shared storage). Its task is a Ray streaming
generator: whenever the run completes a checkpoint (``checkpoints/task_<t>.pt.sha256``, written
after the checkpoint) it yields the folder's changes since the last ones sent, and the driver
applies them at once, so a worker or node lost part-way leaves the driver holding the run up to
its last checkpoint, which the next sweep resumes. The last changes come with the result.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from clad.errors import ConfigError
from clad.sweeps.cell import run_cell, write_error
from clad.sweeps.jobs import CellJob, CellResult, FolderChanges
from clad.sweeps.local import OnDone, uses_cuda
from clad.tracking.files import atomic_write

POLL_S = 0.5  # how often a copy-back task looks for a new checkpoint to send

FileKey = tuple[int, int, int] | None  # (inode, size, mtime) of a file; None for a folder


def _temporary(name: str) -> bool:
    """A temporary file of a write in progress (``.<name>.<random>.tmp``, ``atomic_write``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _entries(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of everything under ``folder`` but temporary files, folders
    before what they hold; an entry removed while it is listed is simply not listed."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _temporary(d))
        for name in dirs + sorted(n for n in names if not _temporary(n)):
            path = Path(root, name)
            yield path.relative_to(folder).as_posix(), path


def _key(stat: os.stat_result) -> FileKey:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def held(folder: Path) -> dict[str, FileKey]:
    """What ``pack`` records as sent for everything ``folder`` holds now (for a folder just
    seeded from the driver's copy, which the driver need not be sent back)."""
    keys: dict[str, FileKey] = {}
    for rel, path in _entries(folder):
        with contextlib.suppress(FileNotFoundError):
            keys[rel] = None if path.is_dir() else _key(path.stat())
    return keys


def pack(folder: Path, sent: dict[str, FileKey] | None = None) -> FolderChanges:
    """The entries of ``folder`` that are not in ``sent`` as they are now (all of them when
    ``sent`` is None), as an uncompressed tar (checkpoints barely compress), with the list of
    every entry; ``sent`` is updated. A file is read through one open handle, its size taken
    from that handle: files replaced by an atomic rename while they are packed are sent whole
    (the old version now, the new one next time), a log that grows is sent up to its size when
    opened."""
    sent = {} if sent is None else sent
    buffer = io.BytesIO()
    entries = []
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel, path in _entries(folder):
            try:
                if path.is_dir():
                    if rel not in sent:
                        tar.addfile(tar.gettarinfo(path, arcname=rel))
                        sent[rel] = None
                else:
                    with open(path, "rb") as handle:
                        key = _key(os.fstat(handle.fileno()))
                        if sent.get(rel) != key:
                            tar.addfile(tar.gettarinfo(arcname=rel, fileobj=handle), handle)
                            sent[rel] = key
            except FileNotFoundError:  # removed since it was listed
                continue
            entries.append(rel)
    for gone in set(sent) - set(entries):
        del sent[gone]
    return FolderChanges(buffer.getvalue(), entries)


def apply(changes: FolderChanges, folder: Path) -> None:
    """Make ``folder`` hold what the worker's copy held when ``changes`` were packed: each
    changed file written atomically (a driver stopped part-way leaves whole files), then every
    entry the worker no longer has removed."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(changes.archive), mode="r") as tar:
        for member in tar:
            member = tarfile.data_filter(member, str(folder))  # no absolute or outside paths
            target = folder / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                atomic_write(target, partial(shutil.copyfileobj, source))
    keep = set(changes.entries)
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names + dirs:
            path = Path(root, name)
            if path.relative_to(folder).as_posix() in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)


def _enter_cwd(job: CellJob) -> None:
    if job.cwd and Path(job.cwd).is_dir():
        os.chdir(job.cwd)  # relative dataset roots mean what they meant to the driver


def ray_cell(job: CellJob) -> CellResult:
    """Body of a Ray task on shared storage: run into ``job.output_root`` directly."""
    _enter_cwd(job)
    return run_cell(job)


def _checksums(folder: Path) -> list[tuple[str, int]]:
    """(name, mtime) of the completed checkpoints (their checksum files) in ``folder``."""
    found = []
    for path in sorted((folder / "checkpoints").glob("*.sha256")):
        try:
            found.append((path.name, path.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return found


def ray_cell_copied(
    job: CellJob, seed: FolderChanges | None, stream: bool = True
) -> Iterator[FolderChanges | CellResult]:
    """Body of a Ray streaming task with ``--copy-back``: run into a temporary folder on the
    worker, seeded with ``seed`` (the driver's copy of the cell); yield the folder's changes
    after every checkpoint (unless not ``stream``), then the result with the last changes."""
    _enter_cwd(job)
    with tempfile.TemporaryDirectory(prefix="clad-sweep-") as scratch:
        local = replace(job, output_root=scratch)
        folder = local.folder()
        if seed is not None:
            apply(seed, folder)
        sent = held(folder)  # the driver has these
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clad-cell") as pool:
            running = pool.submit(run_cell, local)
            seen = _checksums(folder)
            while True:
                try:
                    result = running.result(timeout=POLL_S)
                    break
                except TimeoutError:
                    pass
                if stream and (now := _checksums(folder)) != seen:
                    seen = now
                    yield pack(folder, sent)
        result.files = pack(folder, sent)
        yield result


def ray_cell_copied_at_end(job: CellJob, seed: FolderChanges | None) -> CellResult:
    """Body of a ``--copy-back`` Ray task through Ray Client (``ray://``), which cannot stream
    a task's results: the result alone, with all of the folder's changes."""
    (result,) = ray_cell_copied(job, seed, stream=False)
    assert isinstance(result, CellResult)
    return result


def _ray_runtime_env() -> dict:
    """Put this clad source tree on the workers' path when clad is not an installed package (a
    checkout run in place); harmless on nodes where the path does not exist."""
    root = Path(__file__).resolve().parents[2]  # the folder that holds the clad package
    if "site-packages" in root.parts:
        return {}
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def run_ray(
    jobs: Sequence[CellJob],
    on_done: OnDone,
    address: str | None = None,
    cpus: float = 1.0,
    gpus: float | None = None,
    copy_back: bool = False,
    threads: int = 1,
) -> None:
    """One Ray task per cell with ``num_cpus=cpus`` and ``num_gpus=gpus`` (None: 1 when the
    cluster has GPUs and the run uses ``auto``/``cuda``), and ``threads`` CPU threads.
    ``address`` None joins the cluster of ``$RAY_ADDRESS`` when it is set (``ray job
    submit``), else starts a local Ray instance (never another cluster found on the machine),
    unless one is already initialised in this process; ``auto`` or ``ray://host:port`` joins a
    cluster. Tasks are not retried by Ray: a
    failure is recorded and the next sweep invocation retries it (resuming from its
    checkpoints)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend ray needs Ray: pip install -e '.[dist]' (or pip install ray)"
        ) from None
    started_here = False
    if not ray.is_initialized():
        if address is None:
            address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, runtime_env=_ray_runtime_env(), log_to_driver=False)
        started_here = True
    try:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        print(
            f"[sweep] Ray backend: cluster {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
            f"{cluster_gpus:.0f} GPUs; {'copy-back' if copy_back else 'shared'} storage",
            flush=True,
        )
        # Ray Client (ray://) cannot stream a task's results: copy-back runs then send their
        # files when they end, and a run lost part-way starts again
        stream = copy_back and _can_stream(ray)
        if copy_back and not stream:
            print(
                "[sweep] Ray Client: each run's files come back when it ends (a run lost "
                "part-way starts again); run the sweep on a cluster node to receive every "
                "checkpoint as it is written",
                flush=True,
            )
        shared = ray.remote(ray_cell)
        copied = ray.remote(ray_cell_copied if stream else ray_cell_copied_at_end)
        running: dict[Any, tuple[CellJob, float]] = {}  # task (or its stream) -> job, start
        for job in jobs:
            job = replace(job, threads=threads)
            run_gpus = (
                gpus
                if gpus is not None
                else (1.0 if cluster_gpus and uses_cuda(job.device) else 0.0)
            )
            options = {
                "num_cpus": cpus,
                "num_gpus": run_gpus,
                "max_retries": 0,
                "name": f"clad:{job.label}",
            }
            task: Any
            if copy_back:
                folder = job.folder()
                seed = pack(folder) if folder.is_dir() else None
                if stream:
                    options["num_returns"] = "streaming"
                task = copied.options(**options).remote(job, seed)
            else:
                task = shared.options(**options).remote(job)
            running[task] = (job, time.perf_counter())
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for task in ready:
                job, began = running[task]
                result = _receive(ray, task, job, began, stream)
                if result is not None:
                    del running[task]
                    on_done(result)
    finally:
        if started_here:
            ray.shutdown()


def _can_stream(ray: Any) -> bool:
    """Whether tasks can stream results to this driver: not through Ray Client (``ray://``)."""
    return not ray.util.client.ray.is_connected()


def _receive(ray: Any, task: Any, job: CellJob, began: float, stream: bool) -> CellResult | None:
    """Take what a ready task has for the driver: its result (its last changes applied), or,
    from a copy-back stream, changes to apply (None: the run goes on). A task that failed (its
    worker or node died, out of memory, ...) is a failed result and an ``error.txt`` beside
    whatever the cell's folder holds."""
    try:
        item = ray.get(next(task) if stream else task)
    except Exception as err:  # noqa: BLE001  (worker died, node lost, out of memory, ...)
        if isinstance(err, StopIteration):
            message = "Ray task failed: its stream ended without a result"
        else:
            message = f"Ray task failed: {type(err).__name__}: {err}"
        write_error(job.folder(), job.label, message)
        return CellResult(
            job.label, False, message.splitlines()[0][:300], time.perf_counter() - began
        )
    if isinstance(item, FolderChanges):
        apply(item, job.folder())
        return None
    if item.files is not None:
        apply(item.files, job.folder())
        item.files = None
    return item
