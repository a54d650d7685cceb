"""A run records how every task trained (per epoch: losses, learning rate; the early stop and
the kept epoch) in metrics.json, metrics_history.csv and the API, keeps it across a resume,
opens with a banner, ends with the folder, and writes its report."""

from __future__ import annotations

import csv
import json
import re
from types import SimpleNamespace

import pytest

import clad
from clad.cli import main
from clad.strategies.base import Strategy
from clad.tracking.run_folders import FINISHED
from tests.test_runner import run_dir


def test_each_task_keeps_its_epochs_and_the_report_shows_them(tiny_config, capsys):
    args = ["--parameters_path", str(tiny_config), "--seed", "0"]
    assert main([*args, "--set", "training.patience=1", "--set", "training.epochs=4"]) == 0
    out = run_dir(tiny_config)
    printed = capsys.readouterr().out
    assert "[clad] tiny/seed_0: detector conv_ae, strategy replay, device cpu" in printed
    assert "3 tasks: stripes, disc, nut" in printed and f"output: {out}" in printed
    assert printed.rstrip().splitlines()[-1] == (
        f"[clad] done: results in {out} (report: {out / 'report.html'})"
    )
    assert re.search(r"task 0 \(stripes\) trained: \d epochs?", printed)
    record = json.loads((out / "metrics.json").read_text())
    history = record["history"]
    assert [entry["name"] for entry in history] == ["stripes", "disc", "nut"]
    steps = [epoch["step"] for entry in history for epoch in entry["epochs"]]
    assert steps == list(range(len(steps)))  # one run-wide epoch axis
    for entry in history:
        epochs = entry["epochs"]
        assert 1 <= len(epochs) <= 4 and entry["epochs_trained"] == len(epochs)
        assert [e["epoch"] for e in epochs] == list(range(len(epochs)))
        for epoch in epochs:
            assert epoch["lr"] == pytest.approx(1e-3)
            assert epoch["train_loss"] > 0 and epoch["val_loss"] > 0
        assert epochs[-1]["stopped_early"] == (len(epochs) < 4) == entry["stopped_early"]
        val = [e["val_loss"] for e in epochs]
        assert entry["best_epoch"] == val.index(min(val))
        assert entry["stopped_epoch"] == (len(epochs) - 1 if entry["stopped_early"] else None)
    rows = list(csv.DictReader((out / "metrics_history.csv").open()))
    assert len(rows) == len(steps)
    assert rows[0]["task_name"] == "stripes" and float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert float(rows[0]["train_loss"]) == pytest.approx(history[0]["epochs"][0]["train_loss"])
    result = clad.load_run(out)
    assert result.history == history
    assert list(result.epochs("val_loss")) == [
        e["val_loss"] for entry in history for e in entry["epochs"]
    ]
    page = (out / "report.html").read_text()
    assert "Training curves" in page and page.count("data:image/png;base64,") >= 10
    assert (out / "plots" / "history.png").stat().st_size > 1000
    assert "\\toprule" in (out / "report.tex").read_text()


def test_the_history_survives_a_resume(tiny_config):
    args = ["--parameters_path", str(tiny_config), "--seed", "0"]
    assert main(args) == 0
    out = run_dir(tiny_config)
    expected = json.loads((out / "metrics.json").read_text())["history"]
    (out / FINISHED).unlink()
    for suffix in ("", ".sha256"):
        (out / "checkpoints" / f"task_2.pt{suffix}").unlink()  # as if killed in the last task
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["history"] == expected


def Recorder(history: list[dict]) -> SimpleNamespace:  # noqa: N802  (stands for a class)
    """A detector as ``training_history`` reads it: its ``history``."""
    return SimpleNamespace(history=history)


class Two(Strategy):
    def learn(self, task) -> None:
        return None

    def detectors(self):
        return self.parts


def test_training_history_defaults_to_each_detectors_history():
    strategy = Two(lambda: Recorder([]))
    strategy.parts = [Recorder([{"epoch": 0}]), Recorder([])]
    assert strategy.training_history() == [[{"epoch": 0}], []]
    from clad.runner import Progress, task_history

    progress = Progress(matrices={}, category_matrices={}, costs={})
    strategy.parts[1].history = [{"epoch": 0}, {"epoch": 1, "stopped_early": True, "best_epoch": 0}]
    entry = task_history(1, "b", [1], strategy.training_history(), progress)
    assert entry["epochs"] == [
        {"epoch": 0, "step": 0},
        {"epoch": 1, "stopped_early": True, "best_epoch": 0, "step": 1},
    ]
    assert entry["stopped_epoch"] == 1 and entry["best_epoch"] == 0
