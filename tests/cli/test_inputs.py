"""Command-line inputs refused by name before anything runs (``--seed``, megabyte values), and
the resume line as the last thing printed when a run is stopped."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from clad.cli import main
from clad.cli.commands import Interrupted


def cli(config: Path, *extra: str) -> int:
    return main(["--parameters_path", str(config), *extra])


@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        ("-1", "-1 is out of range"),
        ("18446744073709551616", "18446744073709551616 is out of range"),
        ("4294967296", "4294967296 is out of range"),
        ("1.5", "'1.5' is not an integer"),
    ],
)
def test_a_bad_seed_is_refused_naming_the_option(tiny_config, capsys, seed, expected):
    with pytest.raises(SystemExit) as stopped:
        cli(tiny_config, "--seed", seed)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("clad run: error: argument --seed: ") and expected in err[-1]
    assert not (tiny_config.parent / "out").exists()


def test_the_largest_seed_runs(tiny_config):
    assert cli(tiny_config, "--seed", "4294967295", "--set", "dataset.categories=[stripes]") == 0


@pytest.mark.parametrize("key", ["run_name", "training.epochs"])
def test_a_megabyte_value_is_not_echoed_whole(tiny_config, capsys, key):
    assert cli(tiny_config, "--seed", "0", "--set", f"{key}={'a' * 5_000_000}") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err) < 1000 and "5000" in err


# ----------------------------------------------------------------------------- stopped runs


class RecordingWandb:
    """A wandb module that, like wandb, prints its closing lines when its run is finished."""

    class Settings:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

    def __init__(self) -> None:
        self.run = None
        self.finished_with: int | None = None

    def init(self, **kwargs):
        self.run = self
        return self

    def log(self, *args, **kwargs) -> None:
        pass

    @property
    def summary(self) -> dict:
        return {}

    def finish(self, exit_code: int | None = None) -> None:
        print("wandb: Synced 5 W&B file(s), 0 media file(s)", file=sys.stderr)
        self.finished_with, self.run = exit_code, None


def test_after_sigterm_the_resume_line_is_printed_last(tiny_config, capsys, monkeypatch):
    from clad.tracking import loggers

    fake = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def stop(self, step, task_name, values):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(loggers.ConsoleLogger, "log_task", stop)
    assert cli(tiny_config, "--seed", "0", "--set", "wandb.enabled=true") == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert fake.finished_with == 143  # closed now, not by wandb at interpreter exit
    assert err[-1].startswith("[clad] SIGTERM: stopped;") and err[-1].endswith("--resume")
    assert any(line.startswith("wandb: Synced") for line in err[:-1])
    config = json.loads(tiny_config.read_text())
    assert (Path(config["output"]["dir"]) / "tiny" / "seed_0" / "metrics.json").is_file()
