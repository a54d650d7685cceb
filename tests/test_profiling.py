"""Phase timers and the cost profile of a run (``python -m clad.perf stream``)."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from clad import profiling
from clad.perf.stream import DETECTOR_PHASES, profile


def test_phases_are_off_unless_profiled():
    with profiling.phase("x"):
        pass
    with profiling.profiled() as totals:
        pass
    assert totals == {}


def test_a_nested_phase_is_subtracted_from_its_parent_but_kept_in_its_inclusive_time():
    with profiling.profiled() as totals:
        with profiling.phase("outer"):
            time.sleep(0.05)
            with profiling.phase("inner"):
                time.sleep(0.1)
        with profiling.phase("inner"):
            time.sleep(0.02)
        counts = profiling.counts()
        inclusive = profiling.inclusive()
    assert counts == {"outer": 1, "inner": 2}
    assert totals["outer"] == pytest.approx(0.05, abs=0.03)
    assert totals["inner"] == pytest.approx(0.12, abs=0.03)
    assert inclusive["outer"] == pytest.approx(0.15, abs=0.03)
    assert inclusive["inner"] == pytest.approx(totals["inner"])


def test_a_phase_inside_itself_counts_once_in_its_inclusive_time():
    with profiling.profiled() as totals:
        with profiling.phase("a"):
            with profiling.phase("a"):
                time.sleep(0.05)
        inclusive = profiling.inclusive()
    assert inclusive["a"] == pytest.approx(totals["a"], abs=0.01)


def test_the_profile_of_a_run_adds_up_to_its_wall_time(tiny_config, tmp_path):
    args = argparse.Namespace(
        parameters_path=tiny_config,
        seed=0,
        set=["training.epochs=1"],
        output=str(tmp_path / "runs"),
        json=str(tmp_path / "profile.json"),
    )
    result = profile(args)
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert saved["wall_seconds"] == pytest.approx(result["wall_seconds"])
    rows = {row["phase"]: row for row in result["rows"]}
    for name in ("data", "setup", "learn", "predict", "epochs", "metrics", "files", "plots"):
        assert rows[name]["seconds"] > 0, name
    assert rows["other"]["seconds"] >= -1e-6
    assert sum(row["seconds"] for row in result["rows"]) == pytest.approx(result["wall_seconds"])
    tasks = len(json.loads(tiny_config.read_text())["dataset"]["categories"])
    assert rows["learn"]["count"] == tasks
    detector = sum(rows[name]["seconds"] for name in DETECTOR_PHASES if name in rows)
    assert result["harness_share"] == pytest.approx(1 - detector / result["wall_seconds"])
    # the learn calls hold the epochs; evaluation holds every predict and the metrics
    assert result["learning_seconds"] >= rows["learn"]["seconds"] + rows["epochs"]["seconds"] - 1e-6
    assert result["evaluation_seconds"] >= rows["predict"]["seconds"] + rows["metrics"]["seconds"]
    # the test sets of tasks not learnt yet are scored after every task but the last
    assert 0 < result["unlearnt_seconds"] < result["evaluation_seconds"]
    assert "unlearnt sets" not in rows  # reported inclusive, its nested phases keep their rows
    assert (tmp_path / "runs" / "tiny" / "seed_0" / "finished.json").exists()
