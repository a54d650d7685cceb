"""How fast a mistaken configuration is refused: ``python -m clad.perf config-check``.

Each case runs ``main.py`` in a fresh process on ``configurations/mvtec/patchcore_cl.json``
(over a stand-in MVTec AD root of empty category folders, so nothing can be decoded) with one
mistake, and is timed beside ``python -c "import torch"`` (the floor of any clad command). A
mistake is refused at load when the command exits 2 with one ``error:`` line, before any data
is read; the target is at most 1.5 s over importing torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configurations/mvtec/patchcore_cl.json"
MARGIN_S = 1.5  # the target: refused within import torch + this


def cases(root: Path) -> list[tuple[str, list[str]]]:
    """(label, main.py arguments) for each mistake, over the stand-in root."""
    base = ["--parameters_path", CONFIG, "--set", f"dataset.root={root}"]
    two = ["--set", "dataset.categories=[bottle,screw]"]
    cuda = "cuda:99" if torch.cuda.is_available() else "cuda"
    return [
        ("training key the detector does not use", [*base, *two, "--set", "training.lr=0.01"]),
        ("value out of range", [*base, *two, "--set", "detector.coreset_ratio=1.5"]),
        ("misspelt category", [*base, "--set", "dataset.categories=[bottle,srew]"]),
        ("root is a category folder", [*base, *two, "--set", f"dataset.root={root / 'bottle'}"]),
        ("device this machine lacks", [*base, *two, "--set", f"training.device={cuda}"]),
        ("strategy the detector cannot take", [*base, *two, "--set", 'strategy={"name": "ewc"}']),
        ("configuration file not found", ["--parameters_path", "configurations/nope.json"]),
    ]


def timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, exit code and the first stderr line of ``command`` run from the repo."""
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - began
    first = next((line for line in result.stderr.splitlines() if line.strip()), "")
    return seconds, result.returncode, first


def config_check(args: argparse.Namespace) -> int:
    torch_s = statistics.median(
        timed([sys.executable, "-c", "import torch"])[0] for _ in range(args.repeats)
    )
    print(f"python -c 'import torch': {torch_s:.2f} s (median of {args.repeats}); target: exit 2")
    print(f"within {torch_s + MARGIN_S:.2f} s ({MARGIN_S} s over it)\n")
    print("| mistake | exit | s | over import torch | within target | message |")
    print("|---|---|---|---|---|---|")
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "mvtec"
        for category in ("bottle", "screw"):
            for part in ("train/good", "test/good"):
                (root / category / part).mkdir(parents=True)
        for label, arguments in cases(root):
            seconds = statistics.median(
                timed([sys.executable, "main.py", *arguments])[0] for _ in range(args.repeats)
            )
            _, code, message = timed([sys.executable, "main.py", *arguments])
            ok = code == 2 and seconds <= torch_s + MARGIN_S
            failures += not ok
            shown = message.replace("|", "/").replace(str(root), "<root>")
            print(
                f"| {label} | {code} | {seconds:.2f} | {seconds - torch_s:+.2f} | "
                f"{'yes' if ok else 'NO'} | {shown[:140]} |"
            )
    return 1 if failures else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("config-check", help="how fast mistaken configurations are refused")
    cmd.add_argument("--repeats", type=int, default=3, help="runs per case (median)")
