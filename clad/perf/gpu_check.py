"""``python -m clad.perf gpu-check``: the GPU paths in one prepared script (at most about 8
minutes on one GPU).

1. the GPU-marked tests (``tests/test_gpu.py``: faiss GPU index = torch search, dense coreset on
   CUDA = the CPU rule, one epoch of every trained detector under its precision with finite
   losses, the same seed giving the same numbers on CUDA);
2. the memory-bank race on real bottle with ``--device cuda`` (``python -m clad.perf
   memory-bank``), clad only unless ``--with-anomalib``;
3. a 2-task PatchCore ``cl`` run with the real-protocol file on bottle then screw (or the
   synthetic demo stream when ``../shared/data`` is absent), timed.

Each step prints its wall time; ``--json`` saves them. Without CUDA it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from clad.perf.race import ROOT

DATA = ROOT.parent / "shared" / "data" / "mvtec_ad"


def step(name: str, command: list[str], timeout: int, results: list[dict]) -> None:
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    began = time.perf_counter()
    code: int | str
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=timeout)
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.perf_counter() - began
    print(f"=== {name}: exit {code} in {seconds:.1f} s", flush=True)
    results.append({"step": name, "exit": code, "seconds": seconds})


def gpu_check(args: argparse.Namespace) -> list[dict]:
    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device on this machine; nothing to check (the GPU tests skip "
            "in the CPU suite with this reason)"
        )
        return []
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    python = sys.executable
    results: list[dict] = []
    step(
        "gpu tests",
        [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        240,
        results,
    )
    if DATA.is_dir():
        impls = "clad,anomalib" if args.with_anomalib else "clad"
        step(
            "memory-bank race (cuda)",
            [
                python,
                "-m",
                "clad.perf",
                "memory-bank",
                "--device",
                "cuda",
                "--impls",
                impls,
                "--coreset-ratio",
                "0.1",
                "--data",
                str(DATA),
                "--category",
                "bottle",
            ],
            180,
            results,
        )
        run = [
            python,
            "main.py",
            "--parameters_path",
            "configurations/mvtec/patchcore_cl.json",
            "--seed",
            "0",
            "--overwrite",
            "--output",
            "/tmp/clad-gpu-check",
            "--set",
            f"dataset.root={DATA}",
            "--set",
            "dataset.categories=[bottle,screw]",
            "--set",
            "training.device=cuda",
            "--set",
            "wandb.enabled=false",
        ]
    else:
        run = [
            python,
            "main.py",
            "--parameters_path",
            "configurations/synthetic/demo_patchcore.json",
            "--seed",
            "0",
            "--overwrite",
            "--output",
            "/tmp/clad-gpu-check",
            "--set",
            "training.device=cuda",
            "--set",
            "wandb.enabled=false",
        ]
    step("2-task patchcore cl run (cuda)", run, 180, results)
    print("\n| step | exit | seconds |\n|---|---|---|")
    for row in results:
        print(f"| {row['step']} | {row['exit']} | {row['seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def add_parser(commands) -> None:
    cmd = commands.add_parser("gpu-check", help="the GPU tests, race and a cl run, timed")
    cmd.add_argument("--json", help="write the step timings to this file")
    cmd.add_argument(
        "--with-anomalib",
        action="store_true",
        help="race anomalib too (needs .venv-anomalib with a CUDA torch)",
    )
