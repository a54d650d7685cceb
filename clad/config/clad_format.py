"""Translation of the CLAD benchmark's configuration files into a clad run config.

A CLAD run file names ``architecture`` and ``sample_strategy``; per-model settings live in
``models/<architecture>.json`` beside it (and common ones in ``common_param.json``, if present).
The run file wins over the model file, which wins over the common file, as in CLAD. Keys with a
meaning here are translated; the rest are returned as ignored so the caller can say so.

A CLAD file runs CLAD's method where clad's defaults differ from it (docs/clad-fidelity.md):

- ``replay`` and ``latent_replay`` with a trained detector: ``mixing: "batch"`` (CLAD's
  ``Memory.create_batch_data``: B memory images with every batch of B).
- ``latent_replay``: ``regenerate: true`` (CLAD's ``memory_update_main`` passes the kept
  generated images through the model after every task).
- ``cl`` with PatchCore: ``variant: "per_task"`` (CLAD's per-task banks, routed by the mean
  nearest-neighbour distance); with PaDiM: ``variant: "average"`` (CLAD's running average of
  the tasks' means and inverse covariances).
- ``vae``: ``loss_weighting: "clad"`` (CLAD's ELBO weighting; a notice says it collapses the
  posterior).
- ``architecture: "pix2pix"`` runs the model its ``trainer`` names (CLAD's ``create_trainer``):
  ``pix2pix_inpaint`` -> detector ``pix2pix_inpaint``, ``pix2pix_scaling_model`` -> detector
  ``pix2pix_scaling``; ``k_value`` -> ``k_values``, ``lambda_L1`` -> ``l1_weight``.
- ``compressed_replay`` and ``compressed_degenerative_replay`` (CLAD's 32 x 32 memory restored by
  a pix2pix super-resolution model) -> ``compressed_replay_sr`` (with ``degenerative: true`` for
  the second), mixed into every batch as ``replay``. clad's own ``downscaled_replay`` (bilinear
  downscaling, optional JPEG) is not CLAD's method, and no CLAD name maps to it.
- ``num_epochs: 0`` is left out (CLAD's scaling-model file: no training, its training and test
  images read from the ``memorized/`` and ``evaluate_data/`` folders an earlier run saved,
  ``manage_dataset``): a clad run trains the detector for its default epochs on the task's
  images, and the key is reported as ignored, with those folder keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import clad.models  # noqa: F401  (fills the detector table)
from clad.benchmarks.catalog import CLAD_TASK_ORDER, MVTEC3D_CATEGORIES
from clad.config.files import read_json
from clad.errors import ConfigError
from clad.models.base import TrainedDetector
from clad.registry import detector_table, parameter_names

ARCHITECTURES = {"cae": "conv_ae", "unet": "unet_ae"}
# CLAD's ``architecture: "pix2pix"`` runs the model its ``trainer`` names (``create_trainer``).
PIX2PIX_TRAINERS = {
    "pix2pix_inpaint": "pix2pix_inpaint",
    "pix2pix_scaling_model": "pix2pix_scaling",
}
STRATEGIES = {
    "naive": "naive",
    "replay": "replay",
    "multi_task": "multi_task",
    "joint": "multi_task",
    "single_model": "single_model",
    "cl": "cl",
    "cumulative": "cumulative",
    "latent_replay": "latent_replay",
    "generative_replay": "generative_replay",
    "compressed_replay": "compressed_replay_sr",
    "compressed_degenerative_replay": "compressed_replay_sr",
}
REPLAYS = ("replay", "latent_replay", "generative_replay", "compressed_replay_sr")  # mem_size
# CLAD mixes memory into every batch (``Memory.create_batch_data``; trained detectors only)
BATCH_MIXED = ("replay", "latent_replay", "compressed_replay_sr")
CL_VARIANTS = {"patchcore": "per_task", "padim": "average"}  # CLAD's ``cl`` per architecture
# CLAD key -> detector parameter name (used only when the detector takes that parameter).
DETECTOR_KEYS = {
    "f_coreset": "coreset_ratio",
    "backbone_name": "backbone",
    "anomaly_source_path": "anomaly_source_path",
    "imagenet_train_path": "imagenet_train_path",
    "latent_dim": "latent_dim",
    "beta": "beta",
    "k_value": "k_values",
    "lambda_L1": "l1_weight",
}


def _beside(path: Path, name: str) -> Path | None:
    """``name`` in the run file's folder or the one above it (CLAD keeps run files in
    per-model subfolders, ``configurations/vae/...``, and ``models/`` at the top), or None."""
    for folder in (path.parent, path.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _merge(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    common = _beside(path, "common_param.json")
    if common is not None:
        merged.update(read_json(common))
    arch = raw.get("architecture")
    if arch is not None:
        model_file = _beside(path, f"models/{arch}.json")
        if model_file is not None:
            merged.update(read_json(model_file))
    merged.update(raw)
    return merged


def translate(raw: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """Return ``(clad run config dict, sorted list of ignored CLAD keys)``."""
    clad = _merge(path, raw)
    used: set[str] = set()

    def take(key: str) -> Any:
        used.add(key)
        return clad[key]

    if "architecture" not in clad:
        raise ConfigError(f"{path}: CLAD format needs 'architecture'")
    arch = str(take("architecture")).lower()
    name = ARCHITECTURES.get(arch, arch)
    if arch == "pix2pix":
        trainer = str(take("trainer")).lower() if "trainer" in clad else ""
        if trainer not in PIX2PIX_TRAINERS:
            raise ConfigError(
                f"{path}: architecture 'pix2pix' with trainer {trainer!r} is not available; "
                f"known trainers: {', '.join(PIX2PIX_TRAINERS)}"
            )
        name = PIX2PIX_TRAINERS[trainer]
    if name not in detector_table():
        known = ", ".join(sorted(detector_table()))
        raise ConfigError(f"{path}: architecture {arch!r} is not available; known: {known}")
    strategy_raw = str(take("sample_strategy")).lower() if "sample_strategy" in clad else "naive"
    if strategy_raw not in STRATEGIES:
        raise ConfigError(
            f"{path}: sample_strategy {strategy_raw!r} unknown; known: {', '.join(STRATEGIES)}"
        )
    strategy: dict[str, Any] = {"name": STRATEGIES[strategy_raw]}
    if strategy["name"] in REPLAYS and "mem_size" in clad:
        strategy["mem_size"] = int(take("mem_size"))
    if strategy["name"] == "cl" and "mem_size_cl" in clad:
        strategy["mem_size_cl"] = int(take("mem_size_cl"))
    if strategy["name"] == "cl" and name in CL_VARIANTS:
        strategy["variant"] = CL_VARIANTS[name]
    if strategy["name"] in BATCH_MIXED and issubclass(detector_table()[name], TrainedDetector):
        strategy["mixing"] = "batch"
    if strategy["name"] == "latent_replay":
        strategy["regenerate"] = True
    if strategy_raw == "compressed_degenerative_replay":
        strategy["degenerative"] = True
    used.add("cl")  # CLAD's per-model switch for the cl mode; sample_strategy decides here

    dataset: dict[str, Any] = {"name": "mvtec"}
    names = CLAD_TASK_ORDER
    if "use_3D_dataset" in clad and take("use_3D_dataset"):
        dataset["name"], names = "mvtec3d", MVTEC3D_CATEGORIES
        if "mode" in clad:
            dataset["mode"] = str(take("mode"))
    if "data_path" in clad:
        dataset["root"] = str(take("data_path"))
    order = [int(i) for i in take("task_order")] if "task_order" in clad else list(range(10))
    if "num_tasks" in clad:
        order = order[: int(take("num_tasks"))]
    bad = [i for i in order if not 0 <= i < len(names)]
    if bad:
        raise ConfigError(f"{path}: task_order indices {bad} outside 0..{len(names) - 1}")
    dataset["categories"] = [names[i] for i in order]
    if "img_size" in clad:
        dataset["image_size"] = int(take("img_size"))
    if "crp_size" in clad and int(clad["crp_size"]) < dataset.get("image_size", 10**9):
        dataset["crop_size"] = int(take("crp_size"))
    else:
        used.add("crp_size")

    # training keys the detector uses (memory-bank detectors: batch_size only); the rest is
    # reported as ignored
    uses = getattr(detector_table()[name], "training_keys", ())
    training: dict[str, Any] = {}
    for src, dst in (("num_epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr")):
        if src in clad and dst in uses and not (dst == "epochs" and clad[src] == 0):
            training[dst] = take(src)
    if "patience" in clad and "patience" in uses:
        training["patience"] = int(take("patience"))
    if "early_stopping" in clad and "patience" in uses and not take("early_stopping"):
        training["patience"] = 0
    # device_name / device_id are not translated: the device is chosen with training.device
    # ("auto": CUDA when present), so a CLAD file also runs on a machine without cuda:0.

    accepted = set(parameter_names(detector_table()[name]))
    detector: dict[str, Any] = {"name": name}
    for src, dst in DETECTOR_KEYS.items():
        if src in clad and dst in accepted and clad[src] not in ("", None):
            detector[dst] = take(src)

    if "adam_betas" in accepted and "b1" in clad and "b2" in clad:
        detector["adam_betas"] = [float(take("b1")), float(take("b2"))]
    if name == "vae":
        detector["loss_weighting"] = "clad"  # CLAD's ``create_elbo_function``

    config = {
        "run_name": f"{name}_{strategy['name']}",
        "dataset": dataset,
        "detector": detector,
        "strategy": strategy,
        "training": training,
    }
    if "output_dir" in clad:
        config["output"] = {"dir": str(take("output_dir"))}
    ignored = sorted(set(clad) - used)
    return config, ignored
