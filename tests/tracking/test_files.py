"""Run files: every JSON read names its file, every write failure is one ``OutputError`` naming
the file (torch's and PIL's included), a checkpoint missing an entry is refused by name."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clad.errors import OutputError
from clad.tracking import files

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- reading JSON


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not valid JSON"),
        (b'{"a": 1', "not valid JSON"),
        (b'{"lr": 1, "lr": 2}', "key 'lr' appears twice"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"name": "\xff\xfe"}', "not UTF-8"),
    ],
)
def test_a_bad_json_file_is_one_error_naming_it(tmp_path, content, expected):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(OutputError) as caught:
        files.read_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message and len(message) < 400


def test_read_json_reads_what_write_json_wrote(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": [1, 2.5, None], "y": {"z": "w"}})
    assert files.read_json(tmp_path / "a.json") == {"x": [1, 2.5, None], "y": {"z": "w"}}


def test_a_missing_or_unreadable_json_file_is_named(tmp_path):
    with pytest.raises(OutputError, match=f"{tmp_path / 'nope.json'}: cannot read"):
        files.read_json(tmp_path / "nope.json")
    with pytest.raises(OutputError, match=f"{tmp_path}: cannot read"):
        files.read_json(tmp_path)


def test_no_module_parses_json_on_its_own():
    """One reader for every JSON file clad reads (``clad.tracking.files.read_json``, or
    ``clad.config.files.read_json`` on top of it), so every error names its file; text that is
    not a file (a command-line value, a worker's output line) is the only exception."""
    allowed = {
        "clad/tracking/files.py",  # the reader itself
        "clad/config/loading.py",  # --set values
        "clad/perf/race.py",  # a worker's last output line
        "clad/perf/parity_worker.py",  # --settings
        "clad/perf/train.py",  # --params
        "clad/benchmarks/generated.py",  # its own marker: one that does not parse is not its
        "clad/benchmarks/decode_cache.py",  # a header inside a binary entry: damaged = recompute
    }
    offenders = []
    for path in sorted((ROOT / "clad").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if relative not in allowed and ("json.load(" in text or "json.loads(" in text):
            lines = [
                line.strip()
                for line in text.splitlines()
                if ("json.load(" in line or "json.loads(" in line) and "json.dumps(" not in line
            ]
            if lines:
                offenders.append(f"{relative}: {lines}")
    assert not offenders


# ----------------------------------------------------------------------------- write failures

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def test_torch_failing_to_write_a_checkpoint_is_an_output_error(tmp_path, monkeypatch):
    def full_disk(obj, handle):
        handle.write(b"PK")
        raise RuntimeError(TORCH_FULL_DISK)

    monkeypatch.setattr(files.torch, "save", full_disk)
    path = tmp_path / "checkpoints" / "task_0.pt"
    with pytest.raises(OutputError) as caught:
        files.save_checkpoint(path, {"x": torch.ones(3)})
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write") and "disk" in message
    assert "\n" not in message
    assert not path.exists() and list(path.parent.iterdir()) == []  # no temporary file left


def test_other_runtime_errors_are_not_taken_for_write_failures(tmp_path):
    def broken(handle):
        raise RuntimeError("a bug, not a full disk")

    with pytest.raises(RuntimeError, match="a bug"):
        files.atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["pil", "matplotlib"])
def test_an_image_or_plot_that_cannot_be_written_is_an_output_error(tmp_path, monkeypatch, writer):
    real_write = files.os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: FullDisk(real_write(fd, mode)))
    path = tmp_path / "plots" / "image.png"
    with pytest.raises(OutputError, match=f"{path}: cannot write \\(No space left on device\\)"):
        if writer == "pil":
            image = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
            files.atomic_write(path, lambda h: image.save(h, format="PNG"))
        else:
            import matplotlib.pyplot as plt

            from clad.tracking.plots import save

            fig, _ = plt.subplots()
            save(fig, path)
    assert list(path.parent.iterdir()) == []


FULL_DISK_SCRIPT = """
import subprocess, sys
from pathlib import Path
import torch
from clad.tracking import files
target = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(target)], check=True)
try:
    files.save_checkpoint(target / "checkpoints" / "task_0.pt", {"x": torch.ones(100_000)})
except files.OutputError as err:
    print("OutputError:", err)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_really_full_disk_is_an_output_error(tmp_path):
    """A 128 KiB tmpfs in a private mount namespace (``unshare -rm``; skipped where user
    namespaces are not allowed)."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    target = tmp_path / "small"
    target.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", FULL_DISK_SCRIPT, str(target)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip()
    assert line.startswith(f"OutputError: {target}/checkpoints/task_0.pt: cannot write"), line


# ----------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_missing_an_entry_names_the_file_and_the_entry(tmp_path):
    path = tmp_path / "task_0.pt"
    files.save_checkpoint(path, {"task": 0, "strategy": {"memory": [1, 2]}})
    saved = files.load_checkpoint(path)
    assert saved["task"] == 0 and saved["strategy"]["memory"] == [1, 2]
    with pytest.raises(files.CheckpointError) as caught:
        saved["strategy"]["detector"]
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "'strategy.detector'" in message
    with pytest.raises(files.CheckpointError, match="'rng'"):
        saved["rng"]
    assert saved.get("rng") is None and "rng" not in saved  # asking is not an error


def test_a_resumed_state_saves_again_as_plain_data(tmp_path):
    """A strategy may keep parts of the state it resumed from; the next checkpoint still loads
    as tensors and plain data."""
    first, second = tmp_path / "task_0.pt", tmp_path / "task_1.pt"
    files.save_checkpoint(first, {"strategy": {"memory": [{"x": torch.ones(2)}], "k": (1, 2)}})
    kept = files.load_checkpoint(first)["strategy"]
    files.save_checkpoint(second, {"strategy": kept})
    again = files.load_checkpoint(second)["strategy"]
    assert torch.equal(again["memory"][0]["x"], torch.ones(2)) and again["k"] == (1, 2)
    raw = torch.load(second, weights_only=True)
    assert type(raw["strategy"]) is dict and type(raw["strategy"]["memory"][0]) is dict


def test_a_checkpoint_checksum_is_the_sha256_of_the_file_written(tmp_path):
    """The digest taken from the bytes as torch writes them is the file's own (no CRC-32 in the
    zip: the SHA-256 guards the file), and the file loads back."""
    import hashlib

    import torch

    from clad.tracking.files import checksum_path, load_checkpoint, save_checkpoint

    state = {"bank": torch.randn(3000, 17), "task": 2, "nested": {"a": [1.5, torch.arange(4)]}}
    path = tmp_path / "task_2.pt"
    save_checkpoint(path, state)
    digest, size = checksum_path(path).read_text().split()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert int(size) == path.stat().st_size
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["bank"], state["bank"]) and loaded["task"] == 2
    assert torch.equal(loaded["nested"]["a"][1], torch.arange(4))


def test_the_checkpoint_writer_saves_a_copy_in_the_background(tmp_path):
    """What the run changes after handing a checkpoint over (its tensors, its lists) is not in
    the file; ``wait`` returns once every file and checksum is written."""
    import torch

    from clad.tracking.files import CheckpointWriter, checksum_path, load_checkpoint

    writer = CheckpointWriter()
    state = {"sums": torch.zeros(1000, 50), "costs": [1.0]}
    for t in range(3):
        writer.submit(tmp_path / f"task_{t}.pt", state)
        state["sums"] += 1  # in place, as a streaming statistic would
        state["costs"].append(float(t + 2))
    writer.close()
    for t in range(3):
        saved = load_checkpoint(tmp_path / f"task_{t}.pt")
        assert checksum_path(tmp_path / f"task_{t}.pt").is_file()
        assert torch.equal(saved["sums"], torch.full((1000, 50), float(t)))
        assert saved["costs"] == [1.0, *[float(k + 2) for k in range(t)]]


def test_a_failed_background_write_is_raised_naming_the_file(tmp_path):
    import pytest

    from clad.errors import OutputError
    from clad.tracking.files import CheckpointWriter

    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the folder should be")
    writer = CheckpointWriter()
    writer.submit(blocker / "task_0.pt", {"a": 1})
    with pytest.raises(OutputError, match="task_0.pt"):
        writer.wait()
    writer.submit(blocker / "task_1.pt", {"a": 1})
    writer.close(raise_errors=False)  # a run already failing keeps its own error
