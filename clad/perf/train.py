"""Training throughput of registered detectors: images per second through ``fit``.

One call times ``fit`` on ``n_images`` in-memory images (uniform noise; the content does not
change the cost of a fixed number of epochs) for ``epochs`` epochs with early stopping off and
no validation set, after one untimed warm-up epoch on a separate detector. Everything ``fit``
does is counted, including per-fit set-up such as CFA's memory initialisation; data loading from
disk is not (the images are already tensors).

    images/s = epochs * n_images / (wall-clock seconds of fit)

Command line (prints a Markdown table)::

    python -m clad.perf train --detectors stfpm fastflow cfa --image-size 64 --device cpu
    python -m clad.perf train --detectors ast --input-mode rgb+depth   # 5-channel inputs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import TensorDataset

from clad.benchmarks.mvtec3d import MODE_CHANNELS
from clad.config import build_detector
from clad.models.base import resolve_device
from clad.registry import detector_table, parameter_names


def _build(name: str, settings: dict[str, Any]) -> Any:
    """The detector with ``settings``, leaving out the arguments and training keys it does not
    take (one set of settings serves every detector)."""
    cls = detector_table()[name]
    takes = set(parameter_names(cls)) | set(cls.training_keys)
    return build_detector(name, {k: v for k, v in settings.items() if k in takes})


def _synchronize(device: str) -> None:
    if resolve_device(device).type == "cuda":
        torch.cuda.synchronize()


def training_throughput(
    name: str,
    params: dict[str, Any] | None = None,
    image_size: int = 64,
    n_images: int = 64,
    epochs: int = 3,
    batch_size: int = 16,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``fit`` of detector ``name``; returns the settings, seconds and images/s.

    ``params`` are detector constructor arguments (e.g. ``{"weights": "none"}``); the training
    keys (``epochs``, ``batch_size``, ``patience``, ``device``) are set here.
    """
    generator = torch.Generator().manual_seed(seed)
    takes_mode = "input_mode" in parameter_names(detector_table()[name])
    mode = (params or {}).get("input_mode", "rgb") if takes_mode else "rgb"
    channels = MODE_CHANNELS[mode]
    images = torch.rand(n_images, channels, image_size, image_size, generator=generator)
    if mode != "rgb":
        images[:, -1] = 1.0  # the foreground channel of depth inputs: all object
    data = TensorDataset(
        images, torch.zeros(n_images, 1, image_size, image_size), torch.zeros(n_images).long()
    )
    settings = {
        **(params or {}),
        "batch_size": batch_size,
        "patience": 0,
        "device": device,
    }
    torch.manual_seed(seed)
    _build(name, {**settings, "epochs": 1}).fit(data)  # warm-up: allocator, kernels, caches
    torch.manual_seed(seed)
    detector = _build(name, {**settings, "epochs": epochs})
    _synchronize(device)
    start = time.perf_counter()
    detector.fit(data)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "detector": name if mode == "rgb" else f"{name} ({mode})",
        "device": str(resolve_device(device)),
        "image_size": image_size,
        "n_images": n_images,
        "epochs": epochs,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "images_per_s": epochs * n_images / seconds,
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| detector | device | image size | batch | threads | epochs x images | s | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['device']} | {r['image_size']} | {r['batch_size']} | "
            f"{r['threads']} | {r['epochs']} x {r['n_images']} | {r['seconds']:.1f} | "
            f"{r['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clad.perf train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--detectors", nargs="+", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--weights", default=None, help="backbone weights for every detector")
    parser.add_argument(
        "--params",
        default="{}",
        help='per-detector constructor arguments as JSON, e.g. \'{"draem": {"recon_width": 16}}\'',
    )
    parser.add_argument(
        "--input-mode",
        default=None,
        choices=sorted(MODE_CHANNELS),
        help="inputs of detectors that take an input_mode (rgb, depth, rgb+depth)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    params = {} if args.weights is None else {"weights": args.weights}
    if args.input_mode is not None:
        params["input_mode"] = args.input_mode
    per_detector = json.loads(args.params)
    rows = [
        training_throughput(
            name,
            {**params, **per_detector.get(name, {})},
            args.image_size,
            args.n_images,
            args.epochs,
            args.batch_size,
            args.device,
        )
        for name in args.detectors
    ]
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
