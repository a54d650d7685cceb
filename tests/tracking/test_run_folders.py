"""Run folders: ``--overwrite`` never loses the only finished copy of a run (a killed attempt
is not a backup), a restore says what it brings back, damaged files are a cell state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clad.cli import main
from clad.tracking import files
from clad.tracking.run_folders import FAILED, FINISHED, REPLACED, RunFolder, disk_state

ROOT = Path(__file__).resolve().parents[2]

# main.py, with every task's log line taking ten minutes: a run that stays killable mid-stream
SLOW_RUN = """
import sys, time
from clad.tracking import loggers
loggers.ConsoleLogger.log_task = lambda self, *args: time.sleep(600)
from clad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_dir(config_path: Path, seed: int = 0) -> Path:
    config = json.loads(config_path.read_text())
    return Path(config["output"]["dir"]) / config["run_name"] / f"seed_{seed}"


def cli(config: Path, *extra: str) -> int:
    return main(["--parameters_path", str(config), "--seed", "0", *extra])


def kill_once_set_aside(config: Path) -> None:
    """``--overwrite`` in a process of its own, SIGKILLed once the old run is in ``.replaced``
    and the new attempt has written its first files."""
    out = run_dir(config)
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, "--parameters_path", str(config), "--seed", "0"]
        + ["--overwrite"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not ((out / REPLACED).is_dir() and (out / "metrics.json").is_file()):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert (out / REPLACED / "metrics.json").is_file()  # the finished run, set aside
    assert not (out / FINISHED).exists()  # the killed attempt's partial files


def test_two_overwrites_never_lose_the_finished_run(tiny_config, capsys):
    """The issue's sequence: a finished run; ``--overwrite`` killed with SIGKILL once
    ``seed_0/.replaced`` exists; ``--overwrite`` refused at load (nothing moves); ``--overwrite``
    that fails while running (the finished run comes back, and says so)."""
    assert cli(tiny_config) == 0
    out = run_dir(tiny_config)
    finished_metrics = (out / "metrics.json").read_text()
    kill_once_set_aside(tiny_config)
    capsys.readouterr()

    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert cli(tiny_config, "--overwrite", "--set", "training.lr=1e999") == 2
    assert "training.lr" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before

    assert cli(tiny_config, "--overwrite", "--set", "training.lr=1e9") == 2
    printed = capsys.readouterr()
    assert "the training loss became non-finite" in printed.err
    assert (out / "metrics.json").is_file(), sorted(p.name for p in out.iterdir())
    assert (out / "metrics.json").read_text() == finished_metrics
    assert (out / FINISHED).is_file() and disk_state(out).state == "finished"
    assert not (out / REPLACED).exists()
    assert "killed --overwrite attempt" in printed.out  # the partial files: said where they go
    assert "the previous run in" in printed.out and "is restored (finished" in printed.out


def test_a_killed_attempt_then_a_finished_overwrite_ends_clean(tiny_config, capsys):
    assert cli(tiny_config) == 0
    out = run_dir(tiny_config)
    kill_once_set_aside(tiny_config)
    assert cli(tiny_config, "--overwrite", "--set", "dataset.categories=[stripes]") == 0
    assert json.loads((out / "metrics.json").read_text())["tasks"] == ["stripes"]
    assert not (out / REPLACED).exists() and disk_state(out).state == "finished"


# ----------------------------------------------------------------------------- RunFolder alone


def finished_run(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files.write_json(folder / "config.json", {"tag": tag})
    files.write_json(folder / "metrics.json", {"completed_tasks": 1, "tasks": ["a"], "tag": tag})
    files.write_json(folder / FINISHED, {"completed_tasks": 1})


def partial_run(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files.write_json(folder / "config.json", {"tag": tag})
    files.write_json(folder / "metrics.json", {"completed_tasks": 1, "tasks": ["a", "b"]})


def tag_of(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())["tag"]


def test_set_aside_keeps_the_older_backup_while_the_folder_holds_a_killed_attempt(tmp_path, capsys):
    folder = RunFolder(tmp_path / "seed_0")
    finished_run(folder.path / REPLACED, "finished")  # the backup a killed --overwrite left
    partial_run(folder.path, "killed")
    aside = folder.set_aside()
    assert aside == folder.path / REPLACED and tag_of(aside) == "finished"
    assert tag_of(folder.path / FAILED) == "killed" and not (folder.path / "config.json").exists()
    assert "killed --overwrite attempt" in capsys.readouterr().out
    partial_run(folder.path, "new, failing")
    folder.restore(aside)
    printed = capsys.readouterr().out
    assert "is restored (finished" in printed and tag_of(folder.path) == "finished"
    assert tag_of(folder.path / FAILED) == "new, failing"


def test_set_aside_of_a_newer_finished_run_drops_only_the_older_backup(tmp_path, capsys):
    """A killed ``--overwrite`` resumed to the end: the folder's run is finished and newer, so
    the older backup is not the only finished copy any more."""
    folder = RunFolder(tmp_path / "seed_0")
    finished_run(folder.path / REPLACED, "older")
    finished_run(folder.path, "newer")
    aside = folder.set_aside()
    assert aside is not None and tag_of(aside) == "newer"
    assert "older" not in json.dumps([p.name for p in folder.path.rglob("*")])
    assert not (folder.path / FAILED).exists()
    assert "the older set-aside run" in capsys.readouterr().out


def test_a_backup_is_found_even_when_the_killed_attempt_wrote_nothing(tmp_path):
    folder = RunFolder(tmp_path / "seed_0")
    finished_run(folder.path / REPLACED, "finished")
    (folder.path / "log.txt").write_text("a sweep's log stays")
    aside = folder.set_aside()
    assert aside == folder.path / REPLACED
    folder.restore(aside)
    assert tag_of(folder.path) == "finished" and (folder.path / "log.txt").is_file()


def test_restoring_an_unfinished_run_does_not_call_it_finished(tmp_path, capsys):
    folder = RunFolder(tmp_path / "seed_0")
    partial_run(folder.path, "partial")
    aside = folder.set_aside()
    assert aside is not None
    partial_run(folder.path, "new, failing")
    folder.restore(aside)
    printed = capsys.readouterr().out
    assert "is restored" not in printed and "it was not finished: partial" in printed
    assert tag_of(folder.path) == "partial"


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("name", ["metrics.json", "config.json"])
def test_a_damaged_file_is_the_cell_state_corrupt_naming_it(tmp_path, name):
    folder = tmp_path / "seed_0"
    finished_run(folder, "x")
    (folder / name).write_text("")
    state = disk_state(folder)
    assert state.state == "corrupt" and f"{folder / name}: not valid JSON" in state.detail


# ----------------------------------------------------------------------------- checkpoints


def test_resuming_a_checkpoint_that_lacks_an_entry_is_one_line_naming_both(tiny_config, capsys):
    """A well-formed checkpoint with a correct checksum, its strategy state without the
    detector (``KeyError: 'detector'`` before)."""
    assert cli(tiny_config, "--set", "dataset.categories=[stripes,disc]") == 0
    out = run_dir(tiny_config)
    last = out / "checkpoints" / "task_1.pt"
    saved = files.load_checkpoint(last)
    del saved["strategy"]["detector"]
    files.save_checkpoint(last, saved)
    (out / FINISHED).unlink()
    capsys.readouterr()
    assert cli(tiny_config, "--set", "dataset.categories=[stripes,disc]", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {last}: no 'strategy.detector' entry")
