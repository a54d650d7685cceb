"""The Ray backend: one Ray task per cell (Ray imported lazily), on shared storage or with each
cell's files sent back to the driver."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from clad.errors import ConfigError
from clad.sweeps.cell import run_cell, write_error
from clad.sweeps.jobs import CellJob, CellResult
from clad.sweeps.local import OnDone, uses_cuda
from clad.tracking.run_folders import ERROR_FILE


def pack(folder: Path) -> bytes:
    """A folder's files as an uncompressed tar (checkpoints barely compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def unpack(archive: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(folder, filter="data")


def ray_cell(job: CellJob, archive: bytes | None, copy_back: bool) -> CellResult:
    """Body of a Ray task. Shared storage: run into ``job.output_root`` directly. Copy-back: run
    into a temporary folder on the worker (seeded with ``archive``, the cell's partial folder,
    to resume) and return the cell's files with the result."""
    if job.cwd and Path(job.cwd).is_dir():
        os.chdir(job.cwd)  # relative dataset roots mean what they meant to the driver
    if not copy_back:
        return run_cell(job)
    with tempfile.TemporaryDirectory(prefix="clad-sweep-") as scratch:
        local = replace(job, output_root=scratch)
        if archive is not None:
            unpack(archive, local.folder())
        result = run_cell(local)
        result.archive = pack(local.folder())
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
    ``address`` None starts a local Ray instance unless one is already initialised in this
    process; ``auto`` or ``ray://host:port`` joins a cluster. Tasks are not retried by Ray: a
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
        ray.init(address=address, runtime_env=_ray_runtime_env(), log_to_driver=False)
        started_here = True
    try:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        print(
            f"[sweep] Ray backend: cluster {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
            f"{cluster_gpus:.0f} GPUs; {'copy-back' if copy_back else 'shared'} storage",
            flush=True,
        )
        task = ray.remote(ray_cell)
        refs = {}
        for job in jobs:
            job = replace(job, threads=threads)
            run_gpus = (
                gpus
                if gpus is not None
                else (1.0 if cluster_gpus and uses_cuda(job.device) else 0.0)
            )
            folder = job.folder()
            archive = pack(folder) if copy_back and folder.is_dir() and job.resume else None
            ref = task.options(
                num_cpus=cpus, num_gpus=run_gpus, max_retries=0, name=f"clad:{job.label}"
            ).remote(job, archive, copy_back)
            refs[ref] = (job, time.perf_counter())
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                job, began = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # noqa: BLE001  (worker died, out of memory, ...)
                    message = f"Ray task failed: {type(err).__name__}: {err}"
                    write_error(job.folder(), job.label, message)
                    result = CellResult(
                        job.label, False, message.splitlines()[0][:300], time.perf_counter() - began
                    )
                if result.archive is not None:
                    (job.folder() / ERROR_FILE).unlink(missing_ok=True)
                    unpack(result.archive, job.folder())
                    result.archive = None
                on_done(result)
    finally:
        if started_here:
            ray.shutdown()
