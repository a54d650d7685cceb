"""The cost profile of one run: where its wall time goes (``python -m clad.perf stream``).

Runs a configuration exactly as ``main.py`` does (``Run.execute``) with the phases of
``clad.profiling`` on, and prints each phase's own seconds (nested phases subtracted, so the
rows add up to the wall time), its share of the wall time and its count:

- ``data``: reading and decoding the datasets (once per run; generating the synthetic set);
- ``setup``: building the strategy and the detector (loading pretrained weights);
- ``learn`` / ``predict``: the strategy's ``learn`` and ``predict`` beyond what is listed under
  them: ``features`` (frozen backbone passes), ``coreset``, ``gaussians`` (PaDiM's statistics),
  ``epochs`` (gradient training), ``search`` (nearest-neighbour search);
- ``metrics``, ``files`` (config.json, metrics.json, metrics.csv), ``checkpoints`` (and reading
  them back on resume), ``plots`` (and overlays), ``loggers`` (console and W&B, their start
  included);
- ``other``: the wall time no phase above covers (thresholds bookkeeping, strategy set-up,
  loading test batches, ...).

The evaluation line also gives the seconds spent scoring the test sets of tasks not learnt yet
(the upper triangle of the T x T matrices, their feature passes and searches included).

The harness's own share is the wall time outside the detectors' fit and predict: everything
but ``learn``, ``predict`` and the phases under them, reported with and without ``data``.

    python -m clad.perf stream --parameters_path configurations/synthetic/demo.json --seed 0
        [--set key=value ...] [--output DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from clad import profiling
from clad.config import RunConfig, load_config
from clad.runner import Run

DETECTOR_PHASES = ("learn", "predict", "features", "coreset", "gaussians", "epochs", "search")
ORDER = ("data", "setup", *DETECTOR_PHASES, "metrics", "files", "checkpoints", "plots", "loggers")


def profile(args: argparse.Namespace) -> dict:
    config = load_config(args.parameters_path, args.set)
    result = profile_run(config, args.seed, args.output)
    result.update({"config": str(args.parameters_path), "overrides": list(args.set)})
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def profile_run(config: RunConfig, seed: int, output: str | None = None) -> dict:
    """Run ``config`` with ``seed`` as ``main.py`` does (into ``output``, a temporary folder
    when None) with the phases on; the profile: ``rows`` (phase, own seconds, share, count),
    ``wall_seconds``, ``learning_seconds``, ``evaluation_seconds`` and the harness shares."""
    output = output or tempfile.mkdtemp(prefix="clad-stream-")
    began = time.perf_counter()
    with profiling.profiled() as totals:
        record = Run(config, seed, output, overwrite=True).execute()
        wall = time.perf_counter() - began
        counts = profiling.counts()
        inclusive = profiling.inclusive()
    rows = [
        {
            "phase": name,
            "seconds": totals[name],
            "share": totals[name] / wall,
            "count": counts.get(name, 0),
        }
        for name in ORDER
        if name in totals
    ]
    covered = sum(totals[name] for name in ORDER if name in totals)
    rows.append(
        {"phase": "other", "seconds": wall - covered, "share": (wall - covered) / wall, "count": 0}
    )
    detector = sum(totals.get(name, 0.0) for name in DETECTOR_PHASES)
    harness = wall - detector
    summary = record.get("summary", {}) if isinstance(record, dict) else {}
    return {
        "config": config.run_name,
        "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float))},
        "wall_seconds": wall,
        "rows": rows,
        "harness_share": harness / wall,
        "harness_share_without_data": (harness - totals.get("data", 0.0)) / wall,
        # scoring the test sets (their feature passes and searches included) and their metrics
        "evaluation_seconds": inclusive.get("predict", 0.0) + totals.get("metrics", 0.0),
        # the strategies' learn calls (training feature passes, coresets, epochs included)
        "learning_seconds": inclusive.get("learn", 0.0),
        # of the evaluation: scoring the test sets of tasks not learnt yet (upper triangle)
        "unlearnt_seconds": inclusive.get(profiling.UNLEARNT, 0.0),
    }


def table(result: dict) -> str:
    lines = [
        f"cost profile of {result['config']} ({result['wall_seconds']:.1f} s wall)",
        "| phase | seconds | share | count |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['phase']} | {row['seconds']:.2f} | {100 * row['share']:.1f} % | "
            f"{row['count']} |"
        )
    lines.append(
        f"learning (strategy learn calls, nested phases included): "
        f"{result['learning_seconds']:.1f} s; evaluation (test scoring with its feature passes "
        f"and searches, plus metrics): {result['evaluation_seconds']:.1f} s, of which scoring "
        f"the test sets of tasks not learnt yet (the matrices' upper triangle): "
        f"{result.get('unlearnt_seconds', 0.0):.1f} s"
    )
    lines.append(
        f"harness share (outside the detectors' fit and predict): "
        f"{100 * result['harness_share']:.1f} % (without data decoding: "
        f"{100 * result['harness_share_without_data']:.1f} %)"
    )
    return "\n".join(lines)


def add_parser(commands) -> None:
    cmd = commands.add_parser("stream", help="the cost profile of one run")
    cmd.add_argument("--parameters_path", "--config", required=True, type=Path)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cmd.add_argument("--output", default=None, help="run folder root (default: a temporary one)")
    cmd.add_argument("--json", help="write the profile to this file")
