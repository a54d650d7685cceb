"""A trained run put to use: score a folder of new images with the model as it was after a
task, and export a detector to TorchScript or ONNX.

``load_trained(run folder, task)`` rebuilds the run's strategy from its ``config.json`` and
loads ``checkpoints/task_<t>.pt`` (default: the last); ``predict_folder`` reads every image of
a folder (recursively) as the run read its own (the same ``image_size`` and ``crop_size``) and
scores it through the same path the runner evaluates with (``clad.runner.score_dataset``), so
the test images of a run's category score exactly as in its metrics. An image's label is its
folder's name when the folder's layout says it: ``good`` is normal (0), any other folder
anomalous (1); images directly in the given folder have none.

Which detectors export: a detector's ``export_module()`` gives the module mapping images to
``(image scores, maps)``, None where its scoring is not one network's forward pass
(``clad.models.base.Detector.export_module``).
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from clad.config import RunConfig, validate_config
from clad.errors import ConfigError, OutputError
from clad.imageio import IMAGE_EXTENSIONS
from clad.records import Sample, ScoredSet
from clad.strategies.base import Strategy
from clad.tracking import files

NORMAL_FOLDER = "good"  # the MVTec-style name of the normal images' folder


class PredictError(OutputError):
    """A run that cannot score images or export (no checkpoint, nothing learnt, an audio or
    depth run, a detector that does not export): one line naming the folder."""


@dataclass
class TrainedRun:
    """A run's strategy as it was after ``task``, and what the run recorded."""

    folder: Path
    config: RunConfig
    strategy: Strategy
    task: int
    tasks: list[str]
    record: dict[str, Any]

    @property
    def image_side(self) -> int:
        """The side of the images the detector was trained on (``crop_size`` or ``image_size``)."""
        dataset = self.config.dataset
        return int(dataset.crop_size or dataset.image_size)

    def thresholds(self, task_id: int) -> tuple[float, float]:
        """(image, pixel) thresholds of task ``task_id`` after ``task``, NaN when not
        recorded (quantiles of validation normals' scores: ``clad.runner``)."""
        rows = self.record.get("thresholds", {})
        values = []
        for kind in ("image", "pixel"):
            kept = rows.get(kind, [])
            value = kept[self.task][task_id] if self.task < len(kept) else None
            values.append(math.nan if value is None else float(value))
        return values[0], values[1]


def seed_folder(folder: Path) -> Path:
    """A run's seed folder: ``folder`` itself, or its only ``seed_<n>``."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    seeds = sorted(p for p in folder.glob("seed_*") if (p / "config.json").is_file())
    if len(seeds) == 1:
        return seeds[0]
    if seeds:
        raise PredictError(
            f"{folder}: holds {len(seeds)} seeds ({', '.join(p.name for p in seeds)}); pass "
            "one of them, e.g. --run " + str(seeds[0])
        )
    raise PredictError(f"{folder}: not a run folder (no config.json, no seed_<n>/config.json)")


def checkpoint_tasks(folder: Path) -> list[int]:
    """The tasks after which ``folder`` kept a checkpoint (with its checksum), in order."""
    found = []
    for path in (folder / "checkpoints").glob("task_*.pt"):
        index = path.stem.removeprefix("task_")
        if index.isdigit() and files.checksum_path(path).is_file():
            found.append(int(index))
    return sorted(found)


def load_trained(folder: Path, task: int | None = None, device: str | None = None) -> TrainedRun:
    """The run in ``folder`` (a seed's folder, or a run folder of one seed) as it was after
    ``task`` (default: the last checkpointed task), on ``device`` (default: the run's
    ``training.device``).

    Raises:
        PredictError: no checkpoint kept, no checkpoint of ``task``, a checkpoint without a
            fitted detector, or a state that does not fit the configuration.
    """
    folder = seed_folder(folder)
    saved_config = files.read_json(folder / "config.json")
    data = {k: v for k, v in saved_config.items() if k not in ("resolved", "seed")}
    if device is not None:
        data.setdefault("training", {})["device"] = device
    try:
        config = validate_config(data, str(folder / "config.json"), check_machine=False)
    except ConfigError as err:
        raise PredictError(str(err).splitlines()[0]) from None
    available = checkpoint_tasks(folder)
    if not available:
        raise PredictError(
            f"{folder}: the run kept no checkpoints (output.checkpoints was false, or it "
            "stopped before its first task ended); predict and export need one: run it again "
            "with output.checkpoints true"
        )
    chosen = available[-1] if task is None else task
    if chosen not in available:
        raise PredictError(
            f"{folder}: no checkpoint after task {chosen}; kept: "
            f"{', '.join(str(t) for t in available)}"
        )
    path = folder / "checkpoints" / f"task_{chosen}.pt"
    saved = files.load_checkpoint(path)
    strategy = config.components.build_strategy([])  # tasks' data is only read to learn
    try:
        strategy.load_state_dict(saved["strategy"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PredictError(f"{path}: the saved state does not load ({first[:300]})") from None
    detectors = strategy.detectors()
    if not detectors or not all(d.is_fitted for d in detectors):
        raise PredictError(
            f"{path}: holds no fitted detector (strategy {config.strategy['name']}, detector "
            f"{config.detector['name']}): nothing to score with"
        )
    record_path = folder / "metrics.json"
    record = files.read_json(record_path) if record_path.is_file() else {}
    return TrainedRun(folder, config, strategy, chosen, list(saved["tasks"]), record)


def image_samples(root: Path) -> list[Sample]:
    """Every image under ``root`` (recursively, hidden files and folders skipped), sorted by
    path, labelled by its folder (``good``: 0, another folder: 1, ``root`` itself: -1,
    unknown) with the folder as its defect."""
    root = Path(root)
    if not root.is_dir():
        raise PredictError(f"--images {root}: not a folder")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise PredictError(
            f"--images {root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it "
            "or below"
        )
    samples = []
    for path in paths:
        folder = path.parent.relative_to(root)
        if folder == Path("."):
            label, defect = -1, ""
        else:
            defect = path.parent.name
            label = 0 if defect == NORMAL_FOLDER else 1
        samples.append(
            Sample(path=path, label=label, defect=defect, category=root.name, has_masks=False)
        )
    return samples


@dataclass
class Prediction:
    """What ``predict_folder`` scored and wrote."""

    samples: list[Sample]
    scored: ScoredSet
    csv: Path
    maps: list[Path]
    overlays: list[Path]
    auroc: float  # by the folders' labels; NaN unless both kinds are there


def predict_folder(
    trained: TrainedRun,
    images: Path,
    output: Path,
    task_id: int | None = None,
    overlays: int | None = None,
    maps: bool = True,
) -> Prediction:
    """Score every image under ``images`` and write to ``output``: ``scores.csv`` (path
    relative to ``images``, image score, label, folder), and for a detector with maps
    ``maps/<path>.npy`` ([H, W] float32 at the run's input size, with ``maps``) and
    ``overlays/<path>.png`` (the first ``overlays``; None: all), marked with the pixel
    threshold of task ``task_id`` when given. ``task_id`` is required for a task-aware
    strategy (the model it picks); ``summary.json`` holds the counts and the AUROC."""
    from clad.benchmarks.mvtec import ImageDataset
    from clad.metrics import image_auroc
    from clad.runner import score_dataset

    config, strategy = trained.config, trained.strategy
    if config.dataset.modality != "image" or config.dataset.use_3D_dataset:
        raise PredictError(
            f"{trained.folder}: predict reads RGB image folders; this run's data is "
            f"{'depth images' if config.dataset.use_3D_dataset else 'machine sounds'}"
        )
    if strategy.task_aware and task_id is None:
        names = ", ".join(f"{k} {n}" for k, n in enumerate(trained.tasks[: trained.task + 1]))
        raise PredictError(
            f"{trained.folder}: strategy {config.strategy['name']} picks a model by the task's "
            f"identity; pass --task-id K, the task the images belong to ({names})"
        )
    if task_id is not None and not 0 <= task_id < len(trained.tasks):
        raise PredictError(f"--task-id {task_id}: the run has tasks 0 to {len(trained.tasks) - 1}")
    samples = image_samples(images)
    data = ImageDataset(
        samples, config.dataset.image_size, config.dataset.crop_size, split=Path(images).name
    )
    scored = score_dataset(
        strategy,
        data,
        task_id if strategy.task_aware else None,
        config.evaluation.batch_size,
        with_masks=False,
    )
    relative = [s.path.relative_to(images) for s in samples]
    rows = [
        [str(rel), float(score), "" if s.label < 0 else s.label, s.defect]
        for rel, score, s in zip(relative, scored.image, samples)
    ]
    output = Path(output)
    csv_path = output / "scores.csv"
    files.write_csv(csv_path, ["path", "score", "label", "folder"], rows)
    labels = np.array([s.label for s in samples])
    known = labels >= 0
    auroc = image_auroc(labels[known], scored.image[known]) if known.any() else math.nan
    written_maps, written_overlays = [], []
    if scored.maps is not None:
        image_thr, pixel_thr = (
            trained.thresholds(task_id) if task_id is not None else (math.nan, math.nan)
        )
        written_maps = _write_maps(scored.maps, relative, output / "maps") if maps else []
        count = len(samples) if overlays is None else overlays
        written_overlays = _write_overlays(
            data, scored, samples, relative, output / "overlays", count, pixel_thr, image_thr
        )
    files.write_json(
        output / "summary.json",
        {
            "run": str(trained.folder),
            "checkpoint_task": trained.task,
            "checkpoint_task_name": trained.tasks[trained.task],
            "task_id": task_id,
            "images": str(images),
            "count": len(samples),
            "labelled": int(known.sum()),
            "image_auroc": auroc,
            "maps": len(written_maps),
            "overlays": len(written_overlays),
        },
    )
    return Prediction(samples, scored, csv_path, written_maps, written_overlays, auroc)


def _write_maps(maps: np.ndarray, relative: Sequence[Path], folder: Path) -> list[Path]:
    written = []
    for anomaly_map, rel in zip(maps, relative):
        path = folder / rel.with_suffix(".npy")
        files.atomic_write(path, _npy_writer(np.asarray(anomaly_map, dtype=np.float32)))
        written.append(path)
    return written


def _npy_writer(array: np.ndarray) -> Callable[[IO[bytes]], None]:
    """What ``atomic_write`` calls to write ``array`` as ``.npy``."""
    return lambda handle: np.save(handle, array)


def _write_overlays(
    data: Any,
    scored: ScoredSet,
    samples: Sequence[Sample],
    relative: Sequence[Path],
    folder: Path,
    count: int,
    pixel_threshold: float,
    image_threshold: float,
) -> list[Path]:
    from clad.tracking.plots import displayable, map_range, overlay

    assert scored.maps is not None  # called for detectors with maps
    value_range = map_range(scored.maps)
    written = []
    for i in range(min(count, len(samples))):
        image, _, _ = data[i]
        sample = samples[i]
        kind = {0: "normal", 1: "anomalous"}.get(sample.label, "unlabelled")
        title = f"{relative[i].as_posix()} ({kind}" + (
            f", folder {sample.defect})" if sample.defect else ")"
        )
        written.append(
            overlay(
                displayable(image),
                None,
                scored.maps[i],
                float(scored.image[i]),
                title,
                folder / relative[i].with_suffix(".png"),
                value_range,
                pixel_threshold,
                image_threshold,
            )
        )
    return written


EXPORT_FORMATS = ("torchscript", "onnx")


def exported_detector(trained: TrainedRun, task_id: int | None = None) -> tuple[Any, nn.Module]:
    """(the detector, its ``export_module()``) of a trained run: its one detector, or, for a
    strategy that keeps several (``single_model``), the one of ``task_id``.

    Raises:
        PredictError: several detectors and no ``task_id``, or a detector that does not
            export, naming the ones that do.
    """
    detectors = trained.strategy.detectors()
    if len(detectors) > 1 and task_id is None:
        raise PredictError(
            f"{trained.folder}: strategy {trained.config.strategy['name']} keeps "
            f"{len(detectors)} detectors; export one with --task-id K (0 to "
            f"{len(detectors) - 1})"
        )
    detector = detectors[0 if task_id is None else task_id]
    module = detector.export_module()
    if module is None:
        raise PredictError(
            f"{trained.folder}: detector {trained.config.detector['name']} does not export "
            f"(its scoring is not one network's forward pass); exportable: "
            f"{', '.join(exportable_detectors())}"
        )
    return detector, module


def exportable_detectors() -> list[str]:
    """Registered detectors whose class overrides ``export_module`` (built-ins)."""
    import clad.models  # noqa: F401  (fills the detector table)
    from clad.models.base import Detector
    from clad.registry import detector_table

    return sorted(
        name
        for name, cls in detector_table().items()
        if getattr(cls, "export_module", None) is not Detector.export_module
    )


def export_run(
    trained: TrainedRun,
    fmt: str,
    output: Path | None = None,
    task_id: int | None = None,
) -> tuple[Path, float]:
    """Export the run's detector (``exported_detector``) as ``fmt`` (``torchscript``: a
    traced module, ``torch.jit.load``-able; ``onnx``: opset 17, a dynamic batch axis, inputs
    ``images``, outputs ``image_score`` and ``anomaly_map``) for images of the run's size, on
    the CPU in float32. Returns the file and the largest absolute difference between the
    exported module's image scores and ``predict``'s on a random batch.

    Raises:
        PredictError: ``fmt`` unknown, the detector does not export, or ONNX without the
            ``onnx`` package.
    """
    if fmt not in EXPORT_FORMATS:
        raise PredictError(f"--format {fmt!r}: one of {', '.join(EXPORT_FORMATS)}")
    detector, module = exported_detector(trained, task_id)
    module = module.cpu().float().eval()
    side = trained.image_side
    example = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    name = trained.config.detector["name"]
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    path = (
        Path(output)
        if output
        else (trained.folder / "export" / f"{name}_task{trained.task}{suffix}")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            # sizes become constants (the run's image size); torch 2.14 warns that TorchScript
            # is deprecated, and its files still load with torch.jit.load
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(module, example, check_trace=False)
                files.atomic_write(path, lambda h: torch.jit.save(traced, h))
                exported = torch.jit.load(str(path))(example)[0]
        else:
            exported = _onnx_export(module, example, path)
        expected = detector.predict(example.to(getattr(detector, "device", "cpu"))).image
    difference = float((exported.float().cpu() - expected.float().cpu()).abs().max())
    return path, difference


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path) -> torch.Tensor:
    """Export to ONNX and return the image scores of ``example`` as onnxruntime computes them
    (or as the module does, when onnxruntime is not installed)."""
    try:
        importlib.import_module("onnx")  # torch's exporter needs it; optional for clad
    except ImportError:
        raise PredictError(
            "--format onnx needs the onnx package (pip install onnx); torchscript needs "
            "nothing more"
        ) from None
    partial = path.with_name(f".{path.name}.tmp")  # renamed once whole, as atomic_write does
    batch = {0: "batch"}
    try:
        torch.onnx.export(
            module,
            (example,),
            str(partial),
            input_names=["images"],
            output_names=["image_score", "anomaly_map"],
            dynamic_axes={"images": batch, "image_score": batch, "anomaly_map": batch},
            opset_version=17,
            dynamo=False,
        )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    try:
        onnxruntime = importlib.import_module("onnxruntime")
    except ImportError:
        return module(example)[0]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["image_score"], {"images": example.numpy()})[0])
