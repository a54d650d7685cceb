"""A sweep on a Ray cluster that loses a worker node part-way (``slow``).

A cluster of three Ray nodes on this machine (``ray.cluster_utils.Cluster``, every node bound
to 127.0.0.1): a head with no CPUs, where the driver attaches, and two worker nodes of one CPU
each. ``main.py sweep --backend ray --address <head>`` runs four cells of a gated ``conv_ae``
(``tests/sweeps/gated_detector.py``: a fresh run learns its first task, writes its checkpoint and
holds before the second until the test opens the gate). Once a run on each node holds, one
worker node is removed (its raylet and workers SIGKILLed). The sweep must finish the other
cells on the remaining node, report the lost cell failed (exit status 1, ``error.txt``, the
closing summary) and keep its checkpoint; after a node is added back, the same command must
resume that cell from its checkpoint and touch nothing else: every cell finished exactly once,
the resumed one equal to the same run made alone without interruption. Once with shared storage
(the default: runs write to the output folder directly) and once with ``--copy-back`` (runs
write on the worker; checkpoints are sent to the driver as they are written).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clad.cli import main
from clad.tracking.run_folders import disk_state
from tests.conftest import tiny_dataset
from tests.paths import REPO

pytestmark = pytest.mark.slow

NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024}
LABELS = [f"gated_{s}/seed_{seed}" for s in ("naive", "replay") for seed in (0, 1)]
GATED = "tests.sweeps.gated_detector:GatedConvAE"


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs) and two worker nodes (1 CPU each), all on 127.0.0.1; yields (cluster,
    worker nodes), the list kept current by the test."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dist]'")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={**NODE, "num_cpus": 0, "include_dashboard": False},
    )
    try:
        workers = [cluster.add_node(**NODE, num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        cluster.shutdown()


@pytest.fixture()
def scratch(tmp_path):
    """Removes, after the test, the copy-back scratch folders of its runs in the temporary
    folder (a killed worker cannot remove its own)."""
    yield
    for folder in Path(tempfile.gettempdir()).glob("clad-sweep-*"):
        configs = folder.glob("gated_*/seed_*/config.json")
        with contextlib.suppress(OSError):
            if any(str(tmp_path) in config.read_text() for config in configs):
                shutil.rmtree(folder, ignore_errors=True)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def sweep_file(folder: Path, synthetic_root: Path, gate: Path) -> Path:
    base = {
        "run_name": "base",
        "dataset": tiny_dataset(synthetic_root, ["stripes", "disc"]),
        "detector": {"name": GATED, "gate": str(gate)},
        "strategy": {"name": "naive"},
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 0},
        "output": {"dir": str(folder / "unused"), "plots": False},
        "wandb": {"enabled": False},
    }
    spec = {
        "name": "grid",
        "base": base,
        "run_name": "gated_{strategy.name}",
        "axes": {"strategy.name": ["naive", "replay"], "seed": [0, 1]},
        "overrides": [{"when": {"strategy.name": "replay"}, "set": {"strategy.mem_size": 4}}],
        "output": str(folder),
    }
    return write_json(folder / "grid.json", spec)


def sweep_command(path: Path, address: str, copy_back: bool) -> list[str]:
    return [
        sys.executable,
        "main.py",
        "sweep",
        str(path),
        "--backend",
        "ray",
        "--address",
        address,
        "--threads-per-run",
        "1",
        *(["--copy-back"] if copy_back else []),
    ]


def checkpointed(folder: Path) -> bool:
    """The cell's first task's checkpoint is complete in the driver's folder."""
    return (folder / "checkpoints" / "task_0.pt.sha256").is_file()


def node_processes(node) -> list:
    """The processes a Ray node started beside its own services: its workers and agents (the
    raylet's descendants)."""
    import psutil
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return psutil.Process(raylet).children(recursive=True)


def running_on(node) -> list[str]:
    """The cells whose Ray task runs on ``node`` now, read from its workers' process titles
    (``ray::clad:<label>``, the task's name)."""
    import psutil

    labels = []
    for process in node_processes(node):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "ray::clad:" in title:
            labels.append(title.split("ray::clad:", 1)[1].split()[0])
    return labels


def lose_node(cluster, node) -> None:
    """What a machine failure does to a node: its workers and its raylet die at once.
    ``Cluster.remove_node`` alone kills the node's services, but a worker that is busy outlives
    its raylet and can still finish its task, so the workers are SIGKILLed first."""
    import psutil

    processes = node_processes(node)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=30)
    cluster.remove_node(node, allow_graceful=False)


def snapshot(cell: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of a cell folder: what must not change when it is skipped."""
    return {
        str(p.relative_to(cell)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(cell.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("copy_back", [False, True], ids=["shared", "copy_back"])
def test_a_lost_node_fails_its_cells_and_the_next_sweep_resumes_them(
    cluster, tmp_path, synthetic_root, scratch, copy_back
):
    import torch

    cluster_, workers = cluster
    while len(workers) < 2:  # after a test that failed before its node came back
        workers.append(cluster_.add_node(**NODE, num_cpus=1))
    cluster_.wait_for_nodes()
    gate = tmp_path / "gate"
    path = sweep_file(tmp_path, synthetic_root, gate)
    sweep_dir = tmp_path / "grid"
    command = sweep_command(path, cluster_.address, copy_back)
    # Ray turns a loopback address given to ray.init into this machine's network address,
    # where nothing listens here; with this switch (off: Ray's own single-machine mode) the
    # driver keeps 127.0.0.1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    began = time.perf_counter()
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            # one run on each worker node has checkpointed its first task and holds at the gate
            deadline = time.time() + 300
            while sum(checkpointed(sweep_dir / label) for label in LABELS) < 2:
                assert first.poll() is None, (tmp_path / "first.log").read_text()
                assert time.time() < deadline, "no two runs checkpointed their first task"
                time.sleep(0.2)
            victim = workers[0]
            lost = running_on(victim)
            assert len(lost) == 1 and checkpointed(sweep_dir / lost[0]), lost
            lose_node(cluster_, victim)
            workers.remove(victim)
            gate.touch()
            code = first.wait(timeout=600)
            assert code == 1, (tmp_path / "first.log").read_text()
        finally:
            if first.poll() is None:
                first.kill()
    first_seconds = time.perf_counter() - began
    output = (tmp_path / "first.log").read_text()
    (lost_label,) = lost
    others = [label for label in LABELS if label != lost_label]
    # the lost cell: failed, with its error and its first task's checkpoint kept for the resume
    state = disk_state(sweep_dir / lost_label)
    assert state.state == "failed", state
    assert "Ray task failed" in (sweep_dir / lost_label / "error.txt").read_text()
    assert checkpointed(sweep_dir / lost_label)
    assert f"FAILED {lost_label}" in output and "3 finished, 1 failed" in output
    assert f"{lost_label}: failed: Ray task failed" in output
    assert "(1 failed)" in (sweep_dir / "report.md").read_text()
    # the others finished on the remaining node, each once
    for label in others:
        assert disk_state(sweep_dir / label).state == "finished", label
        assert output.count(f"done {label} ") == 1
    kept = {label: snapshot(sweep_dir / label) for label in others}

    # a node comes back; the same command resumes the lost cell and leaves the others alone
    workers.append(cluster_.add_node(**NODE, num_cpus=1))
    cluster_.wait_for_nodes()
    began = time.perf_counter()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    second_seconds = time.perf_counter() - began
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 failed, 3 finished; 1 to run now" in second.stdout
    assert f"1/1 done {lost_label}" in second.stdout
    assert "ran 1 runs" in second.stdout and "3 already finished" in second.stdout
    log = (sweep_dir / lost_label / "log.txt").read_text()
    assert "resuming after task 0, stripes" in log
    for label in LABELS:
        assert disk_state(sweep_dir / label).state == "finished", label
    for label in others:
        assert snapshot(sweep_dir / label) == kept[label], f"{label} was touched"
    cells = sorted(p.relative_to(sweep_dir).as_posix() for p in sweep_dir.glob("*/seed_*"))
    assert cells == sorted(LABELS)  # no other run folder

    # nothing lost or doubled: the resumed cell equals the same run made alone, uninterrupted
    strategy, seed = lost_label.removeprefix("gated_").split("/seed_")
    block = {"name": strategy, **({"mem_size": 4} if strategy == "replay" else {})}
    reference = tmp_path / "alone"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = write_json(
            tmp_path / "alone.json", json.loads(path.read_text())["base"] | {"run_name": "alone"}
        )
        code = main(
            [
                "--parameters_path",
                str(base),
                "--seed",
                seed,
                "--output",
                str(reference),
                "--set",
                f"strategy={json.dumps(block)}",
            ]
        )
        assert code == 0
    finally:
        torch.set_num_threads(threads)
    resumed = json.loads((sweep_dir / lost_label / "metrics.json").read_text())
    alone = json.loads((reference / "alone" / f"seed_{seed}" / "metrics.json").read_text())
    assert resumed["completed_tasks"] == 2
    assert resumed["matrices"] == alone["matrices"]

    def losses(record: dict) -> list:
        """Each task's training record once: its name and every epoch's losses."""
        return [
            (entry["name"], [(e.get("train_loss"), e.get("val_loss")) for e in entry["epochs"]])
            for entry in record["history"]
        ]

    assert [name for name, _ in losses(resumed)] == ["stripes", "disc"]
    assert losses(resumed) == losses(alone)
    print(f"first sweep {first_seconds:.1f} s, second {second_seconds:.1f} s")
