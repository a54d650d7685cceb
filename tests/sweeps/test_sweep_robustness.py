"""A sweep's folder is one sweep's at a time, a cell another process runs is left to it (never
marked failed), and a damaged file is one cell's state, never the whole sweep's failure."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from clad.cli import main
from clad.sweeps import CellJob, CellResult, expand, load_sweep_spec, run_cell, run_sweep
from clad.sweeps.cell import cell_lock
from clad.tracking.run_folders import ERROR_FILE, RunExistsError, run_lock
from tests.conftest import tiny_dataset


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.fixture()
def sweep_file(tmp_path, synthetic_root) -> Path:
    base = write_json(
        tmp_path / "base.json",
        {
            "run_name": "base",
            "dataset": tiny_dataset(synthetic_root, ["stripes", "disc"]),
            "detector": {"name": "conv_ae"},
            "strategy": {"name": "naive"},
            "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
            "evaluation": {"overlays_per_task": 0},
            "output": {"dir": str(tmp_path / "unused"), "plots": False},
            "wandb": {"enabled": False},
        },
    )
    spec = {
        "name": "grid",
        "base": str(base),
        "axes": {"strategy.name": ["naive", "replay"], "seed": [0]},
        "output": str(tmp_path),
    }
    return write_json(tmp_path / "grid.json", spec)


def finished_cell(job: CellJob) -> CellResult:
    """Stands in for a run: writes what a finished run leaves (config, metrics, last step)."""
    folder = job.folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**job.config, "seed": job.seed}))
    record = {"tasks": ["a", "b"], "completed_tasks": 2, "summary": {"final_avg/image_auroc": 0.5}}
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "finished.json").write_text("{}")
    return CellResult(job.label, True, "fake", 0.0)


def elsewhere_cell(job: CellJob) -> CellResult:
    """Stands in for a cell whose folder another process holds."""
    return CellResult(
        job.label, False, "another process is running this cell now", 0.0, elsewhere=True
    )


def finish_every_cell(sweep_file: Path) -> None:
    """What a sweep that ran to its end leaves (without a worker process per cell)."""
    from clad.sweeps.running import jobs_for

    for job in jobs_for(expand(load_sweep_spec(sweep_file), sweep_file)):
        finished_cell(job)


def quietly(call):
    with contextlib.redirect_stdout(output := io.StringIO()):
        result = call()
    return result, output.getvalue()


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("name", ["config.json", "metrics.json"])
def test_one_damaged_cell_file_is_that_cells_state(sweep_file, tmp_path, capsys, name):
    finish_every_cell(sweep_file)
    damaged = tmp_path / "grid" / "conv_ae_replay" / "seed_0" / name
    damaged.write_text("")

    assert main(["sweep", str(sweep_file), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "conv_ae_naive/seed_0   finished  -> skip" in plan
    assert "conv_ae_replay/seed_0  corrupt   -> not run (repair or remove" in plan
    assert f"{damaged}: not valid JSON" in plan

    outcome, text = quietly(
        lambda: run_sweep(expand(load_sweep_spec(sweep_file), sweep_file), target=finished_cell)
    )
    assert outcome.results == [] and outcome.skipped == 1
    assert [(label, s.state) for label, s in outcome.not_run] == [
        ("conv_ae_replay/seed_0", "corrupt")
    ]
    assert f"conv_ae_replay/seed_0: corrupt: {damaged}: not valid JSON" in text
    assert damaged.read_text() == ""  # left for the user to look at

    from clad.sweeps.running import plan

    to_run, _ = plan(expand(load_sweep_spec(sweep_file), sweep_file), overwrite=True)
    assert [cell.label for cell, _ in to_run] == ["conv_ae_naive/seed_0", "conv_ae_replay/seed_0"]


def test_a_damaged_sweep_or_metrics_file_is_named_by_report(sweep_file, tmp_path, capsys):
    finish_every_cell(sweep_file)
    quietly(lambda: run_sweep(expand(load_sweep_spec(sweep_file), sweep_file)))  # sweep.json
    manifest = tmp_path / "grid" / "sweep.json"
    manifest.write_text("{")
    assert main(["report", str(tmp_path / "grid")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {manifest}: not valid JSON")

    run_folder = tmp_path / "grid" / "conv_ae_naive"
    metrics = run_folder / "seed_0" / "metrics.json"
    metrics.write_text("")
    assert main(["report", str(run_folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {metrics}: not valid JSON")


# ----------------------------------------------------------------------------- two sweeps


def test_a_second_sweep_on_the_same_folder_is_refused_by_name(sweep_file, tmp_path, capsys):
    from clad.sweeps.running import sweep_lock

    sweep_dir = tmp_path / "grid"
    with sweep_lock(sweep_dir):
        with pytest.raises(RunExistsError, match="another sweep is running"):
            run_sweep(expand(load_sweep_spec(sweep_file), sweep_file), target=finished_cell)
        assert main(["sweep", str(sweep_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(sweep_dir) in err[0] and "pid " in err[0]
    assert not any(sweep_dir.glob("*/seed_*")) and not (sweep_dir / "sweep.json").exists()
    finish_every_cell(sweep_file)
    outcome, _ = quietly(lambda: run_sweep(expand(load_sweep_spec(sweep_file), sweep_file)))
    assert outcome.skipped == 2  # the lock went with its holder


def test_a_cell_another_process_runs_is_left_to_it_not_failed(sweep_file, tmp_path):
    """Through a spawned cell process (its exit code says "held elsewhere")."""
    spec = json.loads(sweep_file.read_text())
    spec["axes"]["strategy.name"] = ["naive"]
    write_json(sweep_file, spec)
    outcome, text = quietly(
        lambda: run_sweep(expand(load_sweep_spec(sweep_file), sweep_file), target=elsewhere_cell)
    )
    assert outcome.failures == [] and outcome.results == []
    assert [(label, s.state) for label, s in outcome.not_run] == [
        ("conv_ae_naive/seed_0", "running")
    ]
    assert "exited with code" not in text and "FAILED" not in text
    assert "conv_ae_naive/seed_0: running: another process is running this cell now" in text
    assert not list((tmp_path / "grid").glob(f"*/seed_*/{ERROR_FILE}"))


def job_for(sweep_file: Path) -> CellJob:
    from clad.sweeps.running import jobs_for

    return jobs_for(expand(load_sweep_spec(sweep_file), sweep_file))[0]


@pytest.mark.parametrize("holder", ["a sweep's cell lock", "a main.py run's lock"])
def test_run_cell_leaves_a_locked_cell_alone(sweep_file, holder):
    job = job_for(sweep_file)
    folder = job.folder()
    folder.mkdir(parents=True)
    files_before = sorted(p.name for p in folder.iterdir())
    lock = cell_lock(folder) if holder.startswith("a sweep") else run_lock(folder)
    with lock:
        result = run_cell(job)
    assert result.elsewhere and not result.ok
    assert "pid " in result.message  # the holder, named
    assert not (folder / ERROR_FILE).exists()
    assert sorted(p.name for p in folder.iterdir() if p.name not in (".lock", "log.txt")) == [
        n for n in files_before if n not in (".lock", "log.txt")
    ]


@pytest.mark.parametrize("seed", [-1, 2**64, True])
def test_a_seed_axis_out_of_range_is_refused_at_load(sweep_file, seed):
    from clad.errors import ConfigError

    spec = json.loads(sweep_file.read_text())
    spec["axes"]["seed"] = [0, seed]
    write_json(sweep_file, spec)
    with pytest.raises(ConfigError, match=f"{sweep_file}: axes: .*axis 'seed' takes integers"):
        load_sweep_spec(sweep_file)
