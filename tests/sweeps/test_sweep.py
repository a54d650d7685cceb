"""Sweeps on the tiny synthetic set: the sweep file, grid expansion, a 2 detectors x 2 strategies
x 2 seeds grid on the local backend (killed part-way, then finished by running the same command
again; `slow`: about 4 minutes on a busy 2-core machine, from one interpreter start per run) and
on a local Ray cluster, each run equal to the same run made alone with main.py, and failures (an
exception, a killed worker, a bad override) recorded while the rest complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clad.cli import main
from clad.errors import ConfigError
from clad.sweeps import (
    CellJob,
    CellResult,
    disk_state,
    expand,
    load_sweep_spec,
    run_sweep,
)
from tests.conftest import tiny_dataset
from tests.paths import REPO

ROOT = REPO
GRID = [
    (detector, strategy, seed)
    for detector in ("conv_ae", "unet_ae")
    for strategy in ("naive", "replay")
    for seed in (0, 1)
]
THREADS = 1  # CPU threads per run, in the sweeps and in the one-by-one reference alike


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, synthetic_root) -> Path:
    """Tiny run config: 2 synthetic tasks of 32 px, 1 epoch, no plots, no W&B."""
    folder = tmp_path_factory.mktemp("sweep_base")
    return write_json(
        folder / "base.json",
        {
            "run_name": "base",
            "dataset": tiny_dataset(synthetic_root, ["stripes", "disc"]),
            "detector": {"name": "conv_ae"},
            "strategy": {"name": "naive"},
            "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
            "evaluation": {"overlays_per_task": 0},
            "output": {"dir": str(folder / "unused"), "plots": False},
            "wandb": {"enabled": False},
        },
    )


def grid_spec(base: Path, name: str = "grid", **extra) -> dict:
    return {
        "name": name,
        "base": str(base),
        "axes": {
            "detector.name": ["conv_ae", "unet_ae"],
            "strategy.name": ["naive", "replay"],
            "seed": [0, 1],
        },
        "overrides": [{"when": {"strategy.name": "replay"}, "set": {"strategy.mem_size": 4}}],
        **extra,
    }


def matrices(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())["matrices"]


def assert_same_metrics(folder: Path, reference: Path) -> None:
    """Every matrix identical. Both sides run torch on one CPU thread: the thread count changes
    the order of float sums, and with it pixel metrics in the 7th decimal."""
    assert matrices(folder) == matrices(reference), f"{folder} differs from {reference}"


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory, base_config) -> Path:
    """The grid's cells run one at a time through main.py's code path (clad.cli.main)."""
    import torch

    out = tmp_path_factory.mktemp("one_by_one")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    for detector, strategy, seed in GRID:
        block = {"name": strategy, **({"mem_size": 4} if strategy == "replay" else {})}
        assert (
            main(
                [
                    "--parameters_path",
                    str(base_config),
                    "--seed",
                    str(seed),
                    "--output",
                    str(out),
                    "--set",
                    f"run_name={detector}_{strategy}",
                    "--set",
                    f"detector.name={detector}",
                    "--set",
                    f"strategy={json.dumps(block)}",
                ]
            )
            == 0
        )
    torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------- sweep file


def test_sweep_file_errors_name_the_file_and_field(tmp_path, base_config):
    path = write_json(tmp_path / "bad.json", {**grid_spec(base_config), "worker": 3})
    with pytest.raises(ConfigError, match=r"bad.json: worker: unknown key"):
        load_sweep_spec(path)
    path = write_json(
        tmp_path / "bad2.json", {**grid_spec(base_config), "overrides": [{"when": {}, "sett": {}}]}
    )
    with pytest.raises(ConfigError, match=r"overrides\.0\.sett: unknown key"):
        load_sweep_spec(path)
    path = write_json(tmp_path / "bad3.json", {**grid_spec(base_config), "axes": {"seed": [0, 0]}})
    with pytest.raises(ConfigError, match="axis 'seed' repeats a value"):
        load_sweep_spec(path)
    path = write_json(tmp_path / "bad4.json", {**grid_spec(base_config), "base": "nowhere.json"})
    with pytest.raises(ConfigError, match="bad4.json: base: .*nowhere.json.* not found"):
        expand(load_sweep_spec(path), path)
    assert main(["sweep", str(tmp_path / "bad.json")]) == 2


def test_expansion_names_runs_applies_overrides_and_exclusions(tmp_path, base_config):
    spec = grid_spec(
        base_config,
        axes={
            "detector.name": ["conv_ae", "unet_ae"],
            "strategy.name": ["naive", "replay"],
            "training.epochs": [1, 2],
            "seed": [0, 3],
        },
    )
    spec["overrides"].append(
        {"when": {"detector.name": "unet_ae", "seed": 3}, "set": {"training.batch_size": 4}}
    )
    spec["exclude"] = [{"detector.name": "unet_ae", "strategy.name": "naive"}]
    path = write_json(tmp_path / "sweep.json", spec)
    sweep = expand(load_sweep_spec(path), path, ["training.lr=0.01"], str(tmp_path / "out"))
    assert len(sweep.cells) == 3 * 2 * 2
    by_label = {c.label: c for c in sweep.cells}
    cell = by_label["unet_ae_replay_epochs2/seed_3"]
    config = cell.config
    assert config["detector"] == {"name": "unet_ae"} and config["strategy"] == {
        "name": "replay",
        "mem_size": 4,
    }
    assert config["training"]["epochs"] == 2 and config["training"]["batch_size"] == 4
    assert config["training"]["lr"] == 0.01  # --set applies to every cell
    assert config["wandb"]["group"] == "grid"
    assert config["output"]["dir"] == str(tmp_path / "out" / "grid")
    assert by_label["conv_ae_naive_epochs1/seed_0"].config["training"]["batch_size"] == 8
    assert "unet_ae_naive_epochs1/seed_0" not in by_label
    assert cell.folder(sweep.sweep_dir) == tmp_path / "out" / "grid" / "unet_ae_replay_epochs2" / (
        "seed_3"
    )
    # a template names runs; two cells with one name are refused
    spec["run_name"] = "{detector.name}-{strategy.name}"
    path = write_json(tmp_path / "clash.json", spec)
    with pytest.raises(ConfigError, match="both get run name 'conv_ae-naive'"):
        expand(load_sweep_spec(path), path)


def test_shipped_sweep_files_validate():
    for path in sorted((ROOT / "configurations" / "sweeps").glob("*.json")):
        spec = load_sweep_spec(path)
        sweep = expand(spec, path)
        assert sweep.cells, path
    small = expand(
        load_sweep_spec(ROOT / "configurations/sweeps/synthetic_small.json"),
        ROOT / "configurations/sweeps/synthetic_small.json",
    )
    assert all(c.config is not None for c in small.cells)
    table = expand(
        load_sweep_spec(ROOT / "configurations/sweeps/clad_table.json"),
        ROOT / "configurations/sweeps/clad_table.json",
    )
    assert len(table.cells) == (7 * 4 + 2) * 3
    assert {c.detector for c in table.cells if c.strategy == "cl"} == {"patchcore", "padim"}


# ----------------------------------------------------------------------------- local backend


def _states(sweep_dir: Path) -> dict[str, str]:
    """finished, resumable (a checkpoint with its checksum exists) or other, per cell."""
    states = {}
    for detector, strategy, seed in GRID:
        folder = sweep_dir / f"{detector}_{strategy}" / f"seed_{seed}"
        state = disk_state(folder).state
        if state != "finished" and (folder / "checkpoints" / "task_0.pt.sha256").exists():
            state = "resumable"
        states[f"{detector}_{strategy}/seed_{seed}"] = state
    return states


def test_small_local_sweep_equals_runs_made_one_by_one(tmp_path, base_config, one_by_one):
    """The default-suite local check (the full 2 x 2 x 2 grid, killed and resumed, is `slow`):
    two runs at once in spawned workers, each equal to the same run made alone."""
    spec = grid_spec(base_config, name="small", output=str(tmp_path))
    spec["axes"] = {"detector.name": ["conv_ae"], "strategy.name": ["naive", "replay"], "seed": [1]}
    path = write_json(tmp_path / "small.json", spec)
    with contextlib.redirect_stdout(output := io.StringIO()):
        assert main(["sweep", str(path), "--workers", "2"]) == 0
    assert "2 worker process(es) of 1 CPU thread(s)" in output.getvalue()
    for label in ("conv_ae_naive/seed_1", "conv_ae_replay/seed_1"):
        assert_same_metrics(tmp_path / "small" / label, one_by_one / label)
        assert (tmp_path / "small" / label / "log.txt").exists()
    assert "| conv_ae | naive" in (tmp_path / "small" / "report.md").read_text()
    with contextlib.redirect_stdout(output := io.StringIO()):  # finished runs are skipped
        assert main(["sweep", str(path), "--workers", "2", "--no-report"]) == 0
    assert "ran 0 runs" in output.getvalue() and "2 already finished" in output.getvalue()


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory, base_config):
    """``main.py sweep`` with 2 workers, SIGKILLed (with its workers) once 2 runs finished (and,
    when it could be caught, one had checkpointed its first task); then the same command again,
    in this process."""
    folder = tmp_path_factory.mktemp("sweep")
    sweep_file = write_json(folder / "grid.json", grid_spec(base_config, output=str(folder)))
    sweep_dir = folder / "grid"
    command = [
        sys.executable,
        "main.py",
        "sweep",
        str(sweep_file),
        "--workers",
        "2",
        "--threads-per-run",
        str(THREADS),
        "--no-report",
    ]
    log = open(folder / "first.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 900
    states = {}
    while time.time() < deadline and process.poll() is None:
        states = _states(sweep_dir) if sweep_dir.exists() else {}
        finished = sum(s == "finished" for s in states.values())
        resumable = sum(s == "resumable" for s in states.values())
        if finished >= 2 and (resumable or finished >= 4):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    time.sleep(0.5)  # let the kernel reap the workers
    before = _states(sweep_dir)
    snapshot = {
        label: (
            (sweep_dir / label / "metrics.json").read_bytes(),
            (sweep_dir / label / "log.txt").read_bytes(),
        )
        for label, state in before.items()
        if state == "finished"
    }
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["sweep", str(sweep_file), "--workers", "2", "--threads-per-run", str(THREADS)])
    return {
        "dir": sweep_dir,
        "file": sweep_file,
        "before": before,
        "snapshot": snapshot,
        "code": code,
        "output": output.getvalue(),
    }


@pytest.mark.slow
def test_killed_sweep_finishes_only_what_is_missing(killed_sweep):
    before, output = killed_sweep["before"], killed_sweep["output"]
    finished_before = [label for label, state in before.items() if state == "finished"]
    assert 2 <= len(finished_before) < len(GRID), f"the kill did not land mid-sweep: {before}"
    assert killed_sweep["code"] == 0, output
    assert set(_states(killed_sweep["dir"]).values()) == {"finished"}
    for label, (metrics, log) in killed_sweep["snapshot"].items():
        assert (killed_sweep["dir"] / label / "metrics.json").read_bytes() == metrics
        assert (killed_sweep["dir"] / label / "log.txt").read_bytes() == log, f"{label} re-ran"
    missing = len(GRID) - len(finished_before)
    assert f"ran {missing} runs" in output and f"{len(finished_before)} already finished" in output
    for label, state in before.items():
        log = (killed_sweep["dir"] / label / "log.txt").read_text()
        if state == "resumable":
            assert "resuming" in log, f"{label} was part-way but did not resume"
        if state != "finished":
            assert f"done {label}" in output


@pytest.mark.slow
def test_sweep_cells_equal_the_same_runs_made_one_by_one(killed_sweep, one_by_one):
    for detector, strategy, seed in GRID:
        label = f"{detector}_{strategy}/seed_{seed}"
        ours = killed_sweep["dir"] / label
        assert_same_metrics(ours, one_by_one / label)
        config = json.loads((ours / "config.json").read_text())
        assert config["wandb"]["group"] == "grid" and config["seed"] == seed


@pytest.mark.slow
def test_sweep_report_and_single_run_tools(killed_sweep):
    sweep_dir = killed_sweep["dir"]
    for name in ("report.md", "report.html", "report.csv", "report_pairs.csv", "sweep.json"):
        assert (sweep_dir / name).stat().st_size > 100, name
    import csv

    import numpy as np

    rows = {r["run_name"]: r for r in csv.DictReader((sweep_dir / "report.csv").open())}
    assert set(rows) == {f"{d}_{s}" for d, s, _ in GRID[::2]}
    for run_name, row in rows.items():
        values = [
            json.loads((sweep_dir / run_name / f"seed_{s}" / "metrics.json").read_text())[
                "summary"
            ]["final_avg/image_auroc"]
            for s in (0, 1)
        ]
        assert float(row["final_avg/image_auroc:mean"]) == pytest.approx(np.mean(values))
        assert float(row["final_avg/image_auroc:std"]) == pytest.approx(np.std(values, ddof=1))
        assert row["seeds_finished"] == "2" and row["seeds_expected"] == "2"
    # every cell is an ordinary run folder: the single-run report works on it
    assert main(["report", str(sweep_dir / "conv_ae_naive")]) == 0
    assert "| final_avg/image_auroc |" in (sweep_dir / "conv_ae_naive" / "report.md").read_text()
    # and a dry run now lists every cell as finished
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(["sweep", str(killed_sweep["file"]), "--dry-run"]) == 0
    assert "8 finished; 0 to run now" in output.getvalue()
    assert output.getvalue().count("finished  -> skip") == 8
    # a finished run made with another config is left alone and named; keys that do not change
    # the numbers (plots, W&B, the output folder) do not count
    with contextlib.redirect_stdout(output := io.StringIO()):
        assert (
            main(
                [
                    "sweep",
                    str(killed_sweep["file"]),
                    "--dry-run",
                    "--set",
                    "training.epochs=2",
                    "--set",
                    "output.plots=true",
                ]
            )
            == 0
        )
    assert "8 changed; 0 to run now" in output.getvalue()
    assert "training.epochs: 1 -> 2" in output.getvalue() and "plots" not in output.getvalue()


# ----------------------------------------------------------------------------- failures


def fake_cell(job: CellJob) -> CellResult:
    """Stands in for a run in a spawned worker: the replay cell kills its own process (as the
    out-of-memory killer would) until ``allow`` exists; the others write finished metrics."""
    folder = job.folder()
    folder.mkdir(parents=True, exist_ok=True)
    if job.config["strategy"]["name"] == "replay" and not (folder.parent / "allow").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    record = {"tasks": ["a", "b"], "completed_tasks": 2, "summary": {"final_avg/image_auroc": 0.5}}
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "finished.json").write_text("{}")
    return CellResult(job.label, True, "fake", 0.0)


def test_killed_worker_and_bad_override_are_recorded_and_retried(tmp_path, base_config):
    spec = grid_spec(base_config, output=str(tmp_path))
    spec["axes"] = {"strategy.name": ["naive", "replay", "cumulative"], "seed": [0]}
    spec["overrides"].append(
        {"when": {"strategy.name": "cumulative"}, "set": {"training.epochs": 0}}
    )
    path = write_json(tmp_path / "grid.json", spec)
    sweep = expand(load_sweep_spec(path), path)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        outcome = run_sweep(sweep, workers=2, target=fake_cell)
    text = output.getvalue()
    assert [r.label for r in outcome.results if r.ok] == ["conv_ae_naive/seed_0"]
    [killed] = outcome.failures
    assert killed.label == "conv_ae_replay/seed_0" and "SIGKILL" in killed.message
    error = (tmp_path / "grid" / "conv_ae_replay" / "seed_0" / "error.txt").read_text()
    assert "killed by SIGKILL" in error
    invalid = (tmp_path / "grid" / "conv_ae_cumulative" / "seed_0" / "error.txt").read_text()
    assert "training.epochs" in invalid and "greater than 0" in invalid
    assert "runs that need attention" in text
    assert "conv_ae_replay/seed_0: failed: worker process killed by SIGKILL" in text
    assert "conv_ae_cumulative/seed_0: invalid: training.epochs" in text

    with contextlib.redirect_stdout(output := io.StringIO()):
        assert main(["sweep", str(path), "--dry-run"]) == 0
    plan = output.getvalue()
    assert "conv_ae_naive/seed_0       finished  -> skip" in plan
    assert "conv_ae_replay/seed_0      failed    -> retry  worker process killed by SIGKILL" in plan
    assert "conv_ae_cumulative/seed_0  invalid   -> not run  training.epochs" in plan

    (tmp_path / "grid" / "conv_ae_replay" / "allow").touch()
    with contextlib.redirect_stdout(io.StringIO()):
        again = run_sweep(expand(load_sweep_spec(path), path), workers=2, target=fake_cell)
    assert [(r.label, r.ok) for r in again.results] == [("conv_ae_replay/seed_0", True)]
    assert again.skipped == 1 and [label for label, _ in again.not_run] == [
        "conv_ae_cumulative/seed_0"
    ]
    assert not (tmp_path / "grid" / "conv_ae_replay" / "seed_0" / "error.txt").exists()


def test_run_cell_records_an_exception_beside_the_run(tmp_path, base_config):
    """The worker body, in this process: a config that the driver accepts but that fails where
    it runs (its dataset root is not on that machine)."""
    from clad.config import load_config
    from clad.sweeps import run_cell

    config = load_config(
        base_config,
        ["dataset.name=mvtec", f"dataset.root={tmp_path / 'no_such_folder'}"],
        check_machine=False,
    )
    job = CellJob(
        "broken",
        0,
        config.model_dump(),
        str(tmp_path),
        "test",
        resume=True,
        overwrite=False,
        device="cpu",
        threads=THREADS,
    )
    result = run_cell(job)
    assert not result.ok and "no_such_folder" in result.message
    error = (tmp_path / "broken" / "seed_0" / "error.txt").read_text()
    assert "Traceback" in error and "no_such_folder" in error
    assert "resume=True" in (tmp_path / "broken" / "seed_0" / "log.txt").read_text()
    assert disk_state(tmp_path / "broken" / "seed_0").state == "failed"


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_complete(tmp_path, base_config, capsys):
    """Real runs in spawned workers: a bad override that only fails at run time (a dataset
    folder that does not exist) next to a good run."""
    spec = grid_spec(base_config, output=str(tmp_path))
    spec["axes"] = {"strategy.name": ["naive", "cumulative"], "seed": [0]}
    spec["overrides"].append(
        {
            "when": {"strategy.name": "cumulative"},
            "set": {"dataset.name": "mvtec", "dataset.root": str(tmp_path / "no_such_folder")},
        }
    )
    path = write_json(tmp_path / "grid.json", spec)
    assert main(["sweep", str(path), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    good = tmp_path / "grid" / "conv_ae_naive" / "seed_0"
    assert disk_state(good).state == "finished"
    bad = tmp_path / "grid" / "conv_ae_cumulative" / "seed_0"
    error = (bad / "error.txt").read_text()
    assert "Traceback" in error and "no_such_folder" in error
    assert "conv_ae_cumulative/seed_0: failed:" in out and "no_such_folder" in out
    assert "1/1" in (tmp_path / "grid" / "report.md").read_text()  # the good row
    assert "0/1 (1 failed)" in (tmp_path / "grid" / "report.md").read_text()


# ----------------------------------------------------------------------------- Ray


def test_ray_sweep_equals_one_by_one(tmp_path, base_config, one_by_one):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dist]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = write_json(tmp_path / "grid.json", grid_spec(base_config, output=str(tmp_path)))
        assert (
            main(["sweep", str(path), "--backend", "ray", "--threads-per-run", str(THREADS)]) == 0
        )
        for detector, strategy, seed in GRID:
            label = f"{detector}_{strategy}/seed_{seed}"
            assert_same_metrics(tmp_path / "grid" / label, one_by_one / label)
        assert (tmp_path / "grid" / "report.html").exists()
        # workers without a shared disk: each run is written on the worker and sent back
        spec = grid_spec(base_config, name="copied", output=str(tmp_path))
        spec["axes"] = {
            "detector.name": ["conv_ae"],
            "strategy.name": ["naive", "replay"],
            "seed": [1],
        }
        path = write_json(tmp_path / "copied.json", spec)
        assert (
            main(
                [
                    "sweep",
                    str(path),
                    "--backend",
                    "ray",
                    "--copy-back",
                    "--threads-per-run",
                    str(THREADS),
                ]
            )
            == 0
        )
        for label in ("conv_ae_naive/seed_1", "conv_ae_replay/seed_1"):
            copied = tmp_path / "copied" / label
            assert_same_metrics(copied, one_by_one / label)
            assert (copied / "log.txt").exists() and (copied / "checkpoints").is_dir()
    finally:
        ray.shutdown()
