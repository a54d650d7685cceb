"""The one continual-learning loop: learn a task, evaluate every task, record, checkpoint.

Outputs go to ``<output.dir>/<run_name>/seed_<n>/``: ``config.json``, ``metrics.json`` (rewritten
after every task, so finished rows survive a crash), ``metrics.csv``, ``metrics_categories.csv``,
``metrics_history.csv`` (per-epoch training records), ``checkpoints/task_<t>.pt``, ``plots/``,
``overlays/`` and the run's report (``report.md``, ``report.html``, ``report.tex``).
``resume=True`` restarts after the last checkpointed task with the strategy, the matrices and
every RNG restored, so the metrics equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clad.benchmarks.stream import build_tasks
from clad.config import RunConfig
from clad.config.compare import config_differences
from clad.errors import TrainingError
from clad.metrics import (
    TASK_METRICS,
    audio_metric_names,
    evaluate_audio_scores,
    evaluate_scores,
    validation_threshold,
)
from clad.metrics.audio import OFFICIAL_SCORE, official_score
from clad.metrics.continual import summarize
from clad.models.base import private_generator, resolve_device
from clad.models.components.backbone import FEATURE_CACHE
from clad.profiling import UNLEARNT, phase
from clad.progress import progress as progress_of
from clad.records import ScoredSet, Task
from clad.seeding import rng_state, seed_everything, set_deterministic, set_rng_state
from clad.strategies.base import Strategy
from clad.tracking import files
from clad.tracking.loggers import Logger, banner, build_loggers
from clad.tracking.run_folders import FINISHED, RunExistsError, RunFolder, run_lock

COST_KEYS = (
    "train_seconds",
    "infer_images_per_s",
    "trainable_mb",
    "pretrained_mb",
    "memory_mb",
    "peak_memory_mb",
)
"""Costs per task. ``trainable_mb``, ``pretrained_mb``, ``memory_mb``: the strategy's
``cost_bytes`` (``clad.models.base.COST_KINDS``): every detector's weights it fitted, its frozen
pretrained weights, and every stored datum (banks, replay images, per-task memories), each byte
once."""


@torch.no_grad()
def score_dataset(
    strategy: Strategy,
    data: Dataset,
    task_id: int | None,
    batch_size: int,
    with_masks: bool,
    time_curves: bool = False,
    oracle_part: int | None = None,
) -> ScoredSet:
    """Score ``data`` in order. ``time_curves`` (audio) keeps each map [H, W] as its mean over H,
    [1, W]: a score per frame, where whole spectrogram maps of DCASE-size test sets would not fit
    in memory. ``oracle_part``: score with that task's part (``Strategy.predict_part``) instead
    of the method's own routing."""
    labels, images, masks, maps, routes = [], [], [], [], []
    seconds = 0.0
    # a generator of its own: scoring never moves the run's global RNG (private_generator)
    loader = DataLoader(data, batch_size=batch_size, generator=private_generator())
    for x, mask, label in loader:
        start = time.perf_counter()
        with phase("predict"):
            if oracle_part is None:
                scores, routed = strategy.predict_routed(x, task_id)
            else:
                part_scores = strategy.predict_part(x, oracle_part)
                assert part_scores is not None  # asked only of strategies with parts
                scores, routed = part_scores, None
        seconds += time.perf_counter() - start
        if routed is not None:
            routes.append(routed.cpu().numpy())
        labels.append(label.numpy())
        images.append(scores.image.float().numpy())
        masks.append(mask[:, 0].numpy() > 0.5)
        if scores.pixel is not None:
            pixel = scores.pixel.float()
            maps.append((pixel.mean(dim=1, keepdim=True) if time_curves else pixel).numpy())
    has_maps = len(maps) == len(images)
    return ScoredSet(
        labels=np.concatenate(labels).astype(int),
        image=np.concatenate(images),
        masks=np.concatenate(masks) if with_masks else None,
        maps=np.concatenate(maps) if has_maps else None,
        seconds=seconds,
        routes=np.concatenate(routes).astype(int) if routes else None,
    )


def peak_memory_mb(device_type: str) -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss), or CUDA's peak."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_text(device: str) -> str:
    """``training.device`` as it resolves on this machine, with the GPU's name."""
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return str(resolved)
    return f"{resolved} ({torch.cuda.get_device_name(resolved)})"


def _audio_groups(task: Task) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """A machine-sound task's ``test_sections`` and ``test_domains`` (every audio task has
    them)."""
    assert task.test_sections is not None and task.test_domains is not None
    return task.test_sections, task.test_domains


def categories_of(tasks: Sequence[Task]) -> list[Task]:
    """Every category of the stream as a task of its own (``Task.parts``), in stream order:
    the columns of the category matrices."""
    return [part for task in tasks for part in task.parts()]


def learned_steps(tasks: Sequence[Task]) -> np.ndarray:
    """[C] the step at which each category of ``categories_of(tasks)`` is learned."""
    return np.array([k for k, task in enumerate(tasks) for _ in task.parts()], dtype=int)


def task_means(category_row: np.ndarray, tasks: Sequence[Task]) -> np.ndarray:
    """[T] a task's cell as the mean of its categories' cells (NaN ones left out; NaN when all
    are) from one row [C] of a category matrix."""
    steps = learned_steps(tasks)
    means = np.full(len(tasks), np.nan)
    for k in range(len(tasks)):
        cells = category_row[steps == k]
        kept = cells[~np.isnan(cells)]
        if kept.size:
            means[k] = kept.mean()
    return means


@dataclass
class Progress:
    """What a run has produced so far: the T x T task matrices and the T x C category matrices
    (a task's cell is the mean of its categories'; the two are equal when every task holds one
    category), costs and thresholds per task, and the first task still to learn."""

    matrices: dict[str, np.ndarray]
    category_matrices: dict[str, np.ndarray]
    costs: dict[str, list[float]]
    # methods that route each image to a per-task part: [T, C] share of a category's test
    # images sent to its own task's part, and the matrices scored with oracle routing
    routing: np.ndarray | None = None
    oracle_matrices: dict[str, np.ndarray] = field(default_factory=dict)
    oracle_category_matrices: dict[str, np.ndarray] = field(default_factory=dict)
    # kind ("image", "pixel") -> one row of per-task thresholds per step
    thresholds: dict[str, list[list[float]]] = field(
        default_factory=lambda: {"image": [], "pixel": []}
    )
    # one entry per learnt task: its epochs' training records (``task_history``)
    history: list[dict] = field(default_factory=list)
    sees_future_tasks: bool = False
    start: int = 0


class Run:
    """One configuration with one seed, from the first task (or a checkpoint) to the end."""

    def __init__(
        self,
        config: RunConfig,
        seed: int,
        output_dir: str | None = None,
        resume: bool = False,
        overwrite: bool = False,
        loggers: list[Logger] | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self.dir = Path(output_dir or config.output.dir) / config.run_name / f"seed_{seed}"
        self.folder = RunFolder(self.dir)
        self.resume = resume
        self.overwrite = overwrite
        self._loggers = loggers
        self._writer = files.CheckpointWriter()  # a fresh one per stream (``_stream``)

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    def saved_text(self) -> str:
        """What this run has kept on disk so far, for the line printed when it is stopped."""
        return self.folder.saved_text()

    def _check_folder(self) -> None:
        """Refuse a folder that holds a run unless resumed or overwritten; with ``resume``,
        refuse settings that change results against the saved ``config.json``."""
        self.folder.check(self.resume, self.overwrite)
        stored = self.folder.saved_config() if self.resume else None
        if stored is not None:
            wanted = json.loads(json.dumps(files.jsonable(self.config.model_dump())))
            diffs = config_differences(stored, wanted)
            if diffs:
                raise RunExistsError(
                    f"{self.dir / 'config.json'}: --resume with settings that change the "
                    f"results: {'; '.join(diffs)}; resume with the saved settings, or pass "
                    "--overwrite to start again"
                )

    def execute(self) -> dict:
        """Run (or resume) the stream; return the final metrics record. One process per run
        folder (a lock beside it); nothing is read or deleted before the lock is held, and
        nothing old is moved before the config, the data and the output folder are checked."""
        self.folder.check_writable()
        FEATURE_CACHE.configure(self.config.evaluation.feature_cache_mb)
        with run_lock(self.dir):
            self._check_folder()
            wall_start = time.perf_counter()
            seed_everything(self.seed)
            set_deterministic(self.config.training.deterministic)
            with phase("data"):
                tasks = build_tasks(self.config.dataset, self.seed)
            with phase("setup"):
                strategy = self.config.components.build_strategy(tasks)
            self.folder.clean_temporary_files()
            aside = self.folder.set_aside() if self.overwrite and not self.resume else None
            try:
                record = self._stream(strategy, tasks, wall_start)
            except BaseException:
                if aside is not None:
                    self.folder.restore(aside)
                raise
            if aside is not None:
                shutil.rmtree(aside)  # the new run finished: the old one is not needed
            return record

    def _stream(self, strategy: Strategy, tasks: Sequence[Task], wall_start: float) -> dict:
        with phase("checkpoints"):
            progress = self._resume(strategy, tasks)
        settings = {**self.config.model_dump(), "resolved": self.config.components.record()}
        with phase("files"):
            files.write_json(self.dir / "config.json", {**settings, "seed": self.seed})
        with phase("loggers"):
            loggers = (
                self._loggers
                if self._loggers is not None
                else build_loggers(settings, self.seed, self.dir)
            )
        print(
            banner(
                f"{self.config.run_name}/seed_{self.seed}",
                self.config.detector["name"],
                self.config.strategy["name"],
                [task.name for task in tasks],
                device_text(self.config.training.device),
                self.dir,
                progress.start,
            ),
            flush=True,
        )
        last_row: list[ScoredSet] | None = None
        self._writer = files.CheckpointWriter()
        try:
            for t in range(progress.start, len(tasks)):
                last_row = self._learn_and_evaluate(
                    strategy, tasks, t, progress, wall_start, loggers
                )
                if self.config.output.checkpoints:
                    self._checkpoint(strategy, tasks, t, progress)
            record = self._finish(strategy, tasks, progress, last_row, wall_start, loggers)
        except BaseException:
            self._writer.close(raise_errors=False)  # what was submitted is still written
            raise
        self._writer.close()
        return record

    def _resume(self, strategy: Strategy, tasks: Sequence[Task]) -> Progress:
        """Fresh matrices, or (with ``resume``) the state after the last checkpointed task: the
        strategy, the matrices, costs, thresholds and every RNG."""
        names = [t.name for t in tasks]
        n, c = len(tasks), len(categories_of(tasks))
        metrics = self._metric_names(tasks)
        progress = Progress(
            matrices={m: np.full((n, n), np.nan) for m in metrics},
            category_matrices={m: np.full((n, c), np.nan) for m in metrics},
            costs={k: [] for k in COST_KEYS},
            sees_future_tasks=strategy.sees_future_tasks,
        )
        found = self.folder.last_good_checkpoint() if self.resume else None
        if found is None:
            return progress
        saved, path = found
        if saved["tasks"] != names:
            raise RuntimeError(
                f"{path}: checkpoint was made for tasks {saved['tasks']}, "
                f"the config now gives {names}"
            )
        strategy.load_state_dict(saved["strategy"])
        progress.matrices = {m: np.array(v, dtype=float) for m, v in saved["matrices"].items()}
        progress.category_matrices = {
            m: np.array(v, dtype=float) for m, v in saved["category_matrices"].items()
        }
        if saved.get("routing") is not None:
            progress.routing = np.array(saved["routing"], dtype=float)
        for kind in ("oracle_matrices", "oracle_category_matrices"):
            arrays = {m: np.array(v, dtype=float) for m, v in saved.get(kind, {}).items()}
            setattr(progress, kind, arrays)
        progress.costs, progress.thresholds = saved["costs"], saved["thresholds"]
        # checkpoints written before the history was kept hold none: those tasks read empty
        history = [dict(entry) for entry in saved.get("history", [])]
        progress.history = history + [
            {"task": k, "name": names[k], "epochs": []}
            for k in range(len(history), saved["task"] + 1)
        ]
        set_rng_state(saved["rng"])
        progress.start = saved["task"] + 1
        print(
            f"[clad] resuming {self.dir} after task {progress.start}/{n} "
            f"({names[progress.start - 1]})"
        )
        return progress

    def _learn_and_evaluate(
        self,
        strategy: Strategy,
        tasks: Sequence[Task],
        t: int,
        progress: Progress,
        wall_start: float,
        loggers: list[Logger],
    ) -> list[ScoredSet]:
        """Learn task ``t``, fix the thresholds, score every task's test set into row ``t`` of
        the matrices, record the costs, write ``metrics.json`` and log the step."""
        device_type = resolve_device(self.config.training.device).type
        costs, thresholds = progress.costs, progress.thresholds
        if device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        before = [len(part) for part in strategy.training_history()]
        with phase("learn"):
            strategy.learn(tasks[t])
        costs["train_seconds"].append(time.perf_counter() - began)
        entry = task_history(t, tasks[t].name, before, strategy.training_history(), progress)
        progress.history.append(entry)
        with phase("loggers"):
            for logger in loggers:
                logger.log_history(t, tasks[t].name, entry)
        image_thr, pixel_thr = self._thresholds(strategy, tasks, t, thresholds)
        thresholds["image"].append(image_thr)
        thresholds["pixel"].append(pixel_thr)
        row = self._evaluate_row(strategy, tasks, t, progress, image_thr, pixel_thr, costs)
        for kind, value in strategy.cost_bytes().items():
            costs[f"{kind}_mb"].append(value / 2**20)
        costs["peak_memory_mb"].append(peak_memory_mb(device_type))
        summary = self._summary(strategy, progress, tasks, t)
        record = self._record(tasks, progress, summary, t + 1, wall_start)
        with phase("files"):
            files.write_json(self.metrics_path, record)
        values = self._step_values(progress, summary, costs, t, tasks)
        with phase("loggers"):
            for logger in loggers:
                logger.log_task(t, tasks[t].name, values)
        return row

    def _checkpoint(
        self, strategy: Strategy, tasks: Sequence[Task], t: int, progress: Progress
    ) -> None:
        """``checkpoints/task_<t>.pt``: everything ``_resume`` needs to continue after task t."""
        with phase("checkpoints"):
            self._save_checkpoint(strategy, tasks, t, progress)

    def _save_checkpoint(
        self, strategy: Strategy, tasks: Sequence[Task], t: int, progress: Progress
    ) -> None:
        """Hand the checkpoint to the background writer (``files.CheckpointWriter``: a copy
        now, the file and its checksum while the next task runs)."""
        self._writer.submit(
            self.dir / "checkpoints" / f"task_{t}.pt",
            {
                "task": t,
                "tasks": [task.name for task in tasks],
                "strategy": strategy.state_dict(),
                "matrices": {m: v.tolist() for m, v in progress.matrices.items()},
                "category_matrices": {m: v.tolist() for m, v in progress.category_matrices.items()},
                **routing_record(progress),
                "costs": progress.costs,
                "thresholds": progress.thresholds,
                "history": progress.history,
                "rng": rng_state(),
            },
        )

    def _finish(
        self,
        strategy: Strategy,
        tasks: Sequence[Task],
        progress: Progress,
        last_row: list[ScoredSet] | None,
        wall_start: float,
        loggers: list[Logger],
    ) -> dict:
        """The final record, ``metrics.csv``, the plots and the loggers' end of run."""
        if last_row is None:  # resumed a finished run: score the final row again for the plots
            last_row = [self._score(strategy, part) for part in categories_of(tasks)]
        summary = self._summary(strategy, progress, tasks, len(tasks) - 1)
        record = self._record(tasks, progress, summary, len(tasks), wall_start)
        with phase("files"):
            files.write_json(self.metrics_path, record)
            write_metrics_csv(self.dir / "metrics.csv", record)
            write_category_csv(self.dir / "metrics_categories.csv", record)
            write_history_csv(self.dir / "metrics_history.csv", record)
        produced: list[Path] = []
        if self.config.output.plots:
            with phase("plots"):
                produced = self._plots(record, last_row, tasks)
        with phase("files"):
            from clad.tracking.report import write_run_report

            report = write_run_report(self.dir, plots=self.config.output.plots)
        with phase("loggers"):
            for logger in loggers:
                logger.finish(summary, record, produced)
        with phase("checkpoints"):
            self._writer.wait()  # finished only once every checkpoint is on disk
        files.write_json(
            self.dir / FINISHED,
            {"completed_tasks": len(tasks), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")},
        )
        print(f"[clad] done: results in {self.dir} (report: {report.with_suffix('.html')})")
        return record

    def _summary(
        self, strategy: Strategy, progress: Progress, tasks: Sequence[Task], t: int
    ) -> dict[str, float]:
        """The CL summary after task ``t`` (over the category matrices:
        ``clad.metrics.continual.summarize``); for machine sounds with domains also DCASE's
        official score (``clad.metrics.audio.official_score``)."""
        summary = summarize(
            progress.matrices,
            upto=t,
            transfer=not strategy.sees_future_tasks,
            category_matrices=progress.category_matrices,
            learned=learned_steps(tasks),
        )
        if self.config.dataset.modality == "audio":
            summary[OFFICIAL_SCORE] = official_score(progress.matrices, t)
        if progress.routing is not None:
            seen = progress.routing[t, learned_steps(tasks) <= t]
            kept = seen[~np.isnan(seen)]
            summary["routing/accuracy"] = float(kept.mean()) if kept.size else math.nan
        if progress.oracle_matrices:
            oracle = summarize(
                progress.oracle_matrices,
                upto=t,
                transfer=False,
                category_matrices=progress.oracle_category_matrices,
                learned=learned_steps(tasks),
            )
            summary.update({f"oracle/{k}": v for k, v in oracle.items()})
        return summary

    def _plots(self, record: dict, last_row: list[ScoredSet], tasks: Sequence[Task]) -> list[Path]:
        overlays = self.config.evaluation.overlays_per_task
        if self.config.dataset.modality == "audio":
            from clad.tracking.audio_plots import write_audio_run_plots

            audio = self.config.dataset.audio
            assert audio is not None  # filled for every audio dataset by DatasetConfig
            return write_audio_run_plots(
                self.dir, record, last_row, tasks, overlays, audio.hop_length / audio.sample_rate
            )
        from clad.tracking.plots import write_run_plots

        return write_run_plots(self.dir, record, last_row, categories_of(tasks), overlays)

    def _score(
        self,
        strategy: Strategy,
        task: Task,
        data: Dataset | None = None,
        oracle_part: int | None = None,
    ) -> ScoredSet:
        """Scores of ``task``'s test set (or ``data``; with ``oracle_part``, by that task's part
        of a routing method); non-finite scores stop the run with the settings to look at,
        instead of failing later inside a metric."""
        task_id = task.task_id if strategy.task_aware else None
        scored = self._score_data(strategy, task, data, task_id, oracle_part)
        if not np.isfinite(scored.image).all():
            lr = self.config.training.lr
            raise TrainingError(
                f"{self.config.detector['name']}: non-finite anomaly scores on the "
                f"{'validation' if data is not None else 'test'} images of task {task.name!r}: "
                f"the model diverged (training.lr {lr if lr is not None else 'default'}); lower "
                "training.lr, or check the data and the detector's settings"
            )
        return scored

    def _score_data(
        self,
        strategy: Strategy,
        task: Task,
        data: Dataset | None,
        task_id: int | None,
        oracle_part: int | None = None,
    ) -> ScoredSet:
        return score_dataset(
            strategy,
            task.test if data is None else data,
            task_id,
            self.config.evaluation.batch_size,
            with_masks=task.has_masks,
            time_curves=self.config.dataset.modality == "audio",
            oracle_part=oracle_part,
        )

    def _metric_names(self, tasks: Sequence[Task]) -> tuple[str, ...]:
        """The matrices of a run: ``TASK_METRICS`` for images; for machine sounds DCASE's, per
        machine type and per section (``clad.metrics.audio``)."""
        if self.config.dataset.modality == "image":
            return TASK_METRICS
        sections = [s for task in tasks for s in _audio_groups(task)[0]]
        with_domains = any(d is not None for task in tasks for d in _audio_groups(task)[1])
        return audio_metric_names(sections, with_domains)

    def _task_values(
        self, task: Task, scored: ScoredSet, image_thr: float, pixel_thr: float
    ) -> dict[str, float]:
        """One cell of every matrix for one test set."""
        if self.config.dataset.modality == "audio":
            return evaluate_audio_scores(scored.labels, scored.image, *_audio_groups(task))
        return evaluate_scores(
            scored.labels,
            scored.image,
            scored.masks,
            scored.maps,
            image_threshold=image_thr,
            pixel_threshold=None if np.isnan(pixel_thr) else pixel_thr,
            aupro_fpr_limit=self.config.evaluation.aupro_fpr_limit,
        )

    def _thresholds(
        self, strategy: Strategy, tasks: Sequence[Task], t: int, previous: dict[str, list]
    ) -> tuple[list[float], list[float]]:
        """Row ``t``'s image and pixel thresholds, one per task: quantile
        ``evaluation.threshold_quantile`` of the current model's scores on a task's validation
        normals, for the tasks whose validation images the strategy holds after task t
        (``Strategy.calibration_tasks``); an earlier task the strategy no longer holds keeps the
        threshold it had, and a task not learnt yet takes task t's. Never test data."""
        q = self.config.evaluation.threshold_quantile
        image = list(previous["image"][-1]) if previous["image"] else [math.nan] * len(tasks)
        pixel = list(previous["pixel"][-1]) if previous["pixel"] else [math.nan] * len(tasks)
        for k in strategy.calibration_tasks(t, len(tasks)):
            scored = self._score(strategy, tasks[k], tasks[k].val)
            image[k] = validation_threshold(scored.image, q)
            pixel[k] = math.nan if scored.maps is None else validation_threshold(scored.maps, q)
        for k in range(t + 1, len(tasks)):
            if k not in strategy.calibration_tasks(t, len(tasks)):
                image[k], pixel[k] = image[t], pixel[t]
        return image, pixel

    def _evaluate_row(
        self,
        strategy: Strategy,
        tasks: Sequence[Task],
        t: int,
        progress: Progress,
        image_thr: list[float],
        pixel_thr: list[float],
        costs: dict[str, list[float]],
    ) -> list[ScoredSet]:
        """Row ``t``: every category's test set scored into the category matrices (with its
        task's thresholds), and each task's cell the mean of its categories'. Returns the scored
        sets, one per category."""
        row = []
        images, seconds = 0, 0.0
        parts = categories_of(tasks)
        steps = learned_steps(tasks)
        for c, part in enumerate(progress_of(parts, desc=f"evaluate after task {t}")):
            k = int(steps[c])
            # the matrix's upper triangle, timed apart (``clad.perf stream``)
            with phase(UNLEARNT) if k > t else contextlib.nullcontext():
                scored = self._score(strategy, part)
            with phase("metrics"):
                values = self._task_values(part, scored, image_thr[k], pixel_thr[k])
            for metric, value in values.items():
                progress.category_matrices[metric][t, c] = value
            images += len(scored.labels)
            seconds += scored.seconds
            row.append(scored)
            if scored.routes is not None and k <= t:
                thresholds = (image_thr[k], pixel_thr[k])
                self._record_routing(strategy, part, scored, t, c, k, progress, thresholds)
        for metric, matrix in progress.category_matrices.items():
            progress.matrices[metric][t] = task_means(matrix[t], tasks)
        for metric, matrix in progress.oracle_category_matrices.items():
            progress.oracle_matrices[metric][t] = task_means(matrix[t], tasks)
        costs["infer_images_per_s"].append(images / max(seconds, 1e-9))
        return row

    def _record_routing(
        self,
        strategy: Strategy,
        part: Task,
        scored: ScoredSet,
        t: int,
        c: int,
        k: int,
        progress: Progress,
        thresholds: tuple[float, float],
    ) -> None:
        """For a method that routes each image to a per-task part: the share of category c's
        test images (learnt at task k) sent to task k's part, and, with
        ``evaluation.oracle_routing``, the category scored by task k's part (the oracle
        matrices: what the parts themselves lose, routing aside)."""
        steps, n_categories = (
            progress.matrices[next(iter(progress.matrices))].shape[0],
            len(next(iter(progress.category_matrices.values()))[0]),
        )
        if progress.routing is None:
            progress.routing = np.full((steps, n_categories), np.nan)
        assert scored.routes is not None
        progress.routing[t, c] = float(np.mean(scored.routes == k))
        if not self.config.evaluation.oracle_routing:
            return
        if not progress.oracle_matrices:
            for metric in progress.matrices:
                progress.oracle_matrices[metric] = np.full((steps, steps), np.nan)
                progress.oracle_category_matrices[metric] = np.full((steps, n_categories), np.nan)
        oracle = self._score(strategy, part, oracle_part=k)
        with phase("metrics"):
            values = self._task_values(part, oracle, *thresholds)
        for metric, value in values.items():
            progress.oracle_category_matrices[metric][t, c] = value

    def _step_values(
        self,
        progress: Progress,
        summary: dict[str, float],
        costs: dict[str, list[float]],
        t: int,
        tasks: Sequence[Task],
    ) -> dict[str, float]:
        """What is logged after step ``t``: every task's cell (and every category's, for tasks
        of several), the summary and the step's costs."""
        names = [task.name for task in tasks]
        values = {
            f"{m}/{names[k]}": float(progress.matrices[m][t, k])
            for m in progress.matrices
            for k in range(len(names))
        }
        if any(len(task.categories) > 1 for task in tasks):
            categories = [part.name for part in categories_of(tasks)]
            for m, matrix in progress.category_matrices.items():
                values.update({f"{m}/{c}": float(matrix[t, i]) for i, c in enumerate(categories)})
        values.update(summary)
        values.update({f"cost/{k}": v[-1] for k, v in costs.items()})
        return values

    def _record(
        self,
        tasks: Sequence[Task],
        progress: Progress,
        summary: dict,
        completed: int,
        wall_start: float,
    ) -> dict:
        """``metrics.json``: the task matrices (``tasks`` x ``tasks``), the category matrices
        (``tasks`` x ``categories``; ``learned``: each category's task), the summary, costs and
        thresholds."""
        matrices, costs, thresholds = progress.matrices, progress.costs, progress.thresholds
        return {
            "run_name": self.config.run_name,
            "seed": self.seed,
            "detector": self.config.detector["name"],
            "strategy": self.config.strategy["name"],
            "tasks": [task.name for task in tasks],
            "task_categories": [[part.name for part in task.parts()] for task in tasks],
            "categories": [part.name for part in categories_of(tasks)],
            "learned": learned_steps(tasks).tolist(),
            "completed_tasks": completed,
            "sees_future_tasks": progress.sees_future_tasks,
            "matrices": {m: v.tolist() for m, v in matrices.items()},
            "category_matrices": {m: v.tolist() for m, v in progress.category_matrices.items()},
            **routing_record(progress),
            "summary": summary,
            "costs": {
                **costs,
                "total_train_seconds": float(sum(costs["train_seconds"])),
                "wall_seconds_this_session": time.perf_counter() - wall_start,
            },
            "thresholds": thresholds,
            "history": progress.history,
        }


def task_history(
    t: int,
    name: str,
    before: Sequence[int],
    after: Sequence[Sequence[dict]],
    progress: Progress,
) -> dict:
    """Task ``t``'s entry of ``metrics.json``'s ``history``: the records its learning added to
    ``Strategy.training_history`` (``before``: each part's length before), each with ``step``,
    its epoch counted over the whole run (and ``part``, the trained part, when several
    trained), and how training ended: ``epochs_trained``, ``stopped_early`` and
    ``stopped_epoch`` (the epoch at which patience ended it, else None), ``best_epoch`` (the
    epoch whose weights were kept, when validated; of the last training call)."""
    new = [
        (part, records[before[part] if part < len(before) else 0 :])
        for part, records in enumerate(after)
    ]
    new = [(part, records) for part, records in new if records]
    step = sum(len(entry["epochs"]) for entry in progress.history)
    epochs = []
    for part, records in new:
        for record in records:
            epochs.append({**record, "step": step, **({"part": part} if len(new) > 1 else {})})
            step += 1
    ends = [e for e in epochs if "stopped_early" in e]
    stopped = [e for e in ends if e["stopped_early"]]
    return {
        "task": t,
        "name": name,
        "epochs": epochs,
        "epochs_trained": len(epochs),
        "stopped_early": bool(stopped),
        "stopped_epoch": stopped[-1]["epoch"] if stopped else None,
        "best_epoch": ends[-1].get("best_epoch") if ends else None,
    }


HISTORY_COLUMNS = ("task", "task_name", "part", "step", "epoch", "lr", "train_loss", "val_loss")


def write_history_csv(path: Path, record: dict) -> None:
    """One row per trained epoch: the task, the trained part, the run-wide ``step``, the epoch
    within its training call, the learning rate, every ``train_<term>`` and ``val_loss``, and
    on a call's last epoch ``best_epoch`` and ``stopped_early`` (empty where not given)."""
    epochs = [(entry, epoch) for entry in record.get("history", []) for epoch in entry["epochs"]]
    extra = sorted(
        {key for _, epoch in epochs for key in epoch}
        - set(HISTORY_COLUMNS)
        - {"best_epoch", "stopped_early"}
    )
    header = [*HISTORY_COLUMNS, *extra, "best_epoch", "stopped_early"]
    rows = []
    for entry, epoch in epochs:
        values = {**epoch, "task": entry["task"], "task_name": entry["name"]}
        rows.append(["" if values.get(key) is None else values[key] for key in header])
    files.write_csv(path, header, rows)


def write_metrics_csv(path: Path, record: dict) -> None:
    """Long form: one row per matrix cell (metric, after_task, eval_task, value) and one per
    summary value (after_task and eval_task empty)."""
    names = record["tasks"]
    rows = []
    for metric, matrix in record["matrices"].items():
        for t, row in enumerate(matrix):
            for k, value in enumerate(row):
                rows.append([metric, t, names[t], k, names[k], value])
    for key, value in record["summary"].items():
        rows.append([key, "", "", "", "", value])
    files.write_csv(
        path,
        ["metric", "after_task", "after_task_name", "eval_task", "eval_task_name", "value"],
        rows,
    )


def routing_record(progress: Progress) -> dict:
    """What a routing method adds to ``metrics.json`` and checkpoints: ``routing`` ([T, C] share
    of each category's test images sent to its own task's part) and the oracle-routed
    matrices; empty for other methods."""
    if progress.routing is None:
        return {}
    return {
        "routing": progress.routing.tolist(),
        "oracle_matrices": {m: v.tolist() for m, v in progress.oracle_matrices.items()},
        "oracle_category_matrices": {
            m: v.tolist() for m, v in progress.oracle_category_matrices.items()
        },
    }


def write_category_csv(path: Path, record: dict) -> None:
    """Long form of the category matrices: one row per cell (metric, after_task, category,
    the task it belongs to, value)."""
    names, categories, learned = record["tasks"], record["categories"], record["learned"]
    rows = []
    for metric, matrix in record["category_matrices"].items():
        for t, row in enumerate(matrix):
            for c, value in enumerate(row):
                rows.append([metric, t, names[t], categories[c], names[learned[c]], value])
    files.write_csv(
        path,
        ["metric", "after_task", "after_task_name", "category", "category_task", "value"],
        rows,
    )
