"""``--copy-back`` without a cluster: a cell folder's changes packed on the worker and applied on
the driver (new and changed files only, removals mirrored, files written whole), the copy-back
task sending the folder after every checkpoint (through Ray Client, which cannot stream, at the
end), and the driver's handling of what a task sends (changes, a result, a failure). A cluster
that loses a node part-way is ``tests/sweeps/test_ray_cluster.py`` (``slow``)."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from clad.sweeps import ray_backend
from clad.sweeps.jobs import CellJob, CellResult, FolderChanges
from clad.sweeps.ray_backend import apply, pack, ray_cell_copied
from clad.tracking.run_folders import disk_state


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: a file's bytes, None for a folder."""
    return {
        p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def members(changes: FolderChanges) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(changes.archive)) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def replace_file(path: Path, data: bytes) -> None:
    """As clad writes: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.x.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_changes_are_sent_once_and_removals_mirrored(tmp_path):
    worker, driver = tmp_path / "worker", tmp_path / "driver"
    (worker / "checkpoints").mkdir(parents=True)
    (worker / "metrics.json").write_text('{"completed_tasks": 1}')
    (worker / "checkpoints" / "task_0.pt").write_bytes(b"\0" * 1000)
    (worker / "log.txt").write_text("task 0\n")
    (worker / ".metrics.json.abc.tmp").write_text("a write in progress")
    sent: dict = {}
    first = pack(worker, sent)
    assert members(first) == ["checkpoints/task_0.pt", "log.txt", "metrics.json"]
    apply(first, driver)
    expected = {k: v for k, v in tree(worker).items() if not k.endswith(".tmp")}
    assert tree(driver) == expected
    # nothing changed: nothing sent; a replaced file, a grown log and a new file: only those
    assert members(pack(worker, sent)) == []
    replace_file(worker / "metrics.json", b'{"completed_tasks": 2}')
    with open(worker / "log.txt", "a") as log:
        log.write("task 1\n")
    (worker / "checkpoints" / "task_1.pt").write_bytes(b"\1" * 1000)
    second = pack(worker, sent)
    assert members(second) == ["checkpoints/task_1.pt", "log.txt", "metrics.json"]
    apply(second, driver)
    assert tree(driver) == {k: v for k, v in tree(worker).items() if not k.endswith(".tmp")}
    # what the run removed goes on the driver too (a file, a folder with its files)
    (worker / "checkpoints" / "task_0.pt").unlink()
    (worker / "plots").mkdir()
    (worker / "plots" / "a.png").write_bytes(b"png")
    apply(pack(worker, sent), driver)
    assert (driver / "plots" / "a.png").read_bytes() == b"png"
    (worker / "plots" / "a.png").unlink()
    (worker / "plots").rmdir()
    (driver / "error.txt").write_text("an earlier attempt's error")  # the worker has none
    apply(pack(worker, sent), driver)
    assert tree(driver) == {k: v for k, v in tree(worker).items() if not k.endswith(".tmp")}
    assert not (driver / "plots").exists() and not (driver / "error.txt").exists()


def test_a_file_replaced_while_packed_is_sent_whole(tmp_path, monkeypatch):
    """Packing reads each file through one handle: a file renamed over while it is packed
    arrives as one whole version (the new one is sent next time), never a mix."""
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "metrics.json").write_bytes(b"old" * 100)
    real_open = open

    def racing_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if Path(path).name == "metrics.json" and not (worker / "swapped").exists():
            (worker / "swapped").write_text("")
            replace_file(worker / "metrics.json", b"new, and longer" * 100)
        return handle

    monkeypatch.setattr("builtins.open", racing_open)
    sent: dict = {}
    first = pack(worker, sent)
    monkeypatch.undo()
    apply(first, tmp_path / "driver")
    assert (tmp_path / "driver" / "metrics.json").read_bytes() == b"old" * 100
    apply(pack(worker, sent), tmp_path / "driver")
    assert (tmp_path / "driver" / "metrics.json").read_bytes() == b"new, and longer" * 100


def job(output_root: Path) -> CellJob:
    return CellJob(
        run_name="cell",
        seed=0,
        config={},
        output_root=str(output_root),
        source="test",
        resume=True,
        overwrite=False,
        device="cpu",
    )


ACKED = threading.Semaphore(0)  # released by the test for every change it received


def checkpointing_cell(job: CellJob) -> CellResult:
    """Stands in for a run of two tasks: a checkpoint (then its checksum) after each, going on
    once the test has received the folder's changes."""
    folder = job.folder()
    assert (folder / "seeded.txt").read_text() == "from the driver"
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    for t in range(2):
        (folder / "metrics.json").write_text(f'{{"tasks": ["a", "b"], "completed_tasks": {t + 1}}}')
        (folder / "checkpoints" / f"task_{t}.pt").write_bytes(bytes([t]) * 100)
        (folder / "checkpoints" / f"task_{t}.pt.sha256").write_text(f"{t}\n")
        assert ACKED.acquire(timeout=30), "the checkpoint's changes were never sent"
    (folder / "finished.json").write_text("{}")
    return CellResult(job.label, True, "fake", 0.6)


def test_copy_back_task_sends_the_folder_after_every_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_backend, "run_cell", checkpointing_cell)
    monkeypatch.setattr(ray_backend, "POLL_S", 0.05)
    driver = job(tmp_path / "driver")
    driver.folder().mkdir(parents=True)
    (driver.folder() / "seeded.txt").write_text("from the driver")
    stream = ray_cell_copied(driver, pack(driver.folder()))
    progress = []
    for item in stream:
        if isinstance(item, FolderChanges):
            apply(item, driver.folder())
            progress.append(disk_state(driver.folder()).detail)
            assert "seeded.txt" not in members(item)  # the driver has it
            ACKED.release()
        else:
            result = item
    assert progress == ["1/2 tasks", "2/2 tasks, its last files not written"]
    assert result.ok and result.files is not None
    apply(result.files, driver.folder())
    assert disk_state(driver.folder()).state == "finished"
    assert (driver.folder() / "seeded.txt").read_text() == "from the driver"


def test_through_ray_client_the_folder_comes_back_with_the_result(tmp_path, monkeypatch):
    """Ray Client cannot stream: the task returns its result with every change at the end."""
    monkeypatch.setattr(ray_backend, "run_cell", checkpointing_cell)
    monkeypatch.setattr(ray_backend, "POLL_S", 0.05)
    driver = job(tmp_path / "driver")
    driver.folder().mkdir(parents=True)
    (driver.folder() / "seeded.txt").write_text("from the driver")
    for _ in range(2):
        ACKED.release()  # nothing is sent before the end: the run need not wait
    result = ray_backend.ray_cell_copied_at_end(driver, pack(driver.folder()))
    assert result.ok and result.files is not None
    assert "seeded.txt" not in members(result.files)
    assert "checkpoints/task_0.pt" in members(result.files)
    apply(result.files, driver.folder())
    assert disk_state(driver.folder()).state == "finished"
    assert (driver.folder() / "seeded.txt").read_text() == "from the driver"


def test_the_driver_applies_changes_and_records_a_lost_task(tmp_path):
    cell = job(tmp_path)
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "metrics.json").write_text("{}")
    changes = pack(tmp_path / "worker")
    fake_ray = SimpleNamespace(get=lambda item: item)
    assert ray_backend._receive(fake_ray, iter([changes]), cell, 0.0, stream=True) is None
    assert (cell.folder() / "metrics.json").read_text() == "{}"
    result = CellResult(cell.label, True, "done", 1.0, files=changes)
    assert ray_backend._receive(fake_ray, iter([result]), cell, 0.0, stream=True) is result
    assert result.files is None

    def lost(item):
        raise RuntimeError("NodeDiedError: the node it was running on is dead")

    failed = ray_backend._receive(SimpleNamespace(get=lost), iter([0]), cell, 0.0, stream=True)
    assert failed is not None and not failed.ok
    assert failed.message.startswith("Ray task failed: RuntimeError: NodeDiedError")
    assert "NodeDiedError" in (cell.folder() / "error.txt").read_text()
    assert (cell.folder() / "metrics.json").read_text() == "{}"  # what it sent is kept
    ended = ray_backend._receive(fake_ray, iter([]), cell, 0.0, stream=True)
    assert ended is not None and "ended without a result" in ended.message


def test_apply_refuses_paths_outside_the_folder(tmp_path):
    name = "../outside.txt"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.FilterError):
        apply(FolderChanges(buffer.getvalue(), [name]), tmp_path / "driver")
    assert not (tmp_path / "outside.txt").exists()
