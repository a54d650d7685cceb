"""Loggers: the console and Weights & Biases (offline unless asked and credentialed)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log_task(self, step: int, task_name: str, values: dict[str, float]) -> None:
        """Values after training task ``step`` (matrix row cells, summary, costs)."""

    def finish(self, summary: dict[str, float], record: dict, files: list[Path]) -> None:
        """End of run: the final summary, the metrics record and the plot files written."""


def fmt(value: float | None) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "  n/a" if missing else f"{value:.3f}"


class ConsoleLogger:
    """One progress line per task, and the summary table at the end."""

    def __init__(self, run_label: str) -> None:
        self.run_label = run_label

    def log_task(self, step: int, task_name: str, values: dict[str, float]) -> None:
        if "final_avg/hmean" in values:  # machine sounds
            scores = (
                f"avg AUC {fmt(values.get('final_avg/auc'))}, "
                f"avg pAUC {fmt(values.get('final_avg/pauc'))}, "
            )
        else:
            scores = (
                f"avg image AUROC {fmt(values.get('final_avg/image_auroc'))}, "
                f"avg pixel AUROC {fmt(values.get('final_avg/pixel_auroc'))}, "
            )
        print(
            f"[clad] {self.run_label} task {step} ({task_name}) done: {scores}"
            f"train {values.get('cost/train_seconds', float('nan')):.1f}s"
        )

    def finish(self, summary: dict[str, float], record: dict, files: list[Path]) -> None:
        print(summary_table(record))


def summary_table(record: dict) -> str:
    """Final-row metrics per task (per category, under its task, when a task holds several),
    then the CL summary, as fixed-width text."""
    columns = [
        "image_auroc",
        "pixel_auroc",
        "pixel_aupro",
        "pixel_f1_val",
        "image_f1_val",
        "auc",
        "pauc",
        "hmean",
    ]  # the first five for images, the last three for audio
    metrics = [m for m in columns if m in record["matrices"]]
    names = record["tasks"]
    last = record["completed_tasks"] - 1
    categories = record.get("categories", names)
    width = max(12, *(len(n) for n in names), *(len(c) + 2 for c in categories)) + 2
    lines = [
        f"\n{record['run_name']} (detector {record['detector']}, strategy {record['strategy']}, "
        f"seed {record['seed']}): after task {last} ({names[last]})",
        "task".ljust(width) + "".join(m.rjust(14) for m in metrics),
    ]
    for k, name in enumerate(names):
        cells = [record["matrices"][m][last][k] for m in metrics]
        lines.append(name.ljust(width) + "".join(fmt(c).rjust(14) for c in cells))
        members = [c for c, step in enumerate(record.get("learned", [])) if step == k]
        if len(members) < 2:
            continue  # one category: the task's row is the category's
        for c in members:
            category = categories[c]
            cells = [record["category_matrices"][m][last][c] for m in metrics]
            label = f"  {category}".ljust(width)
            lines.append(label + "".join(fmt(v).rjust(14) for v in cells))
    summary = record["summary"]
    for prefix in ("final_avg", "forgetting", "bwt"):
        cells = [summary.get(f"{prefix}/{m}") for m in metrics]
        lines.append(prefix.ljust(width) + "".join(fmt(c).rjust(14) for c in cells))
    official = summary.get("official/hmean")
    if official is not None and not math.isnan(official):
        lines.append(
            f"DCASE official score (harmonic mean over machine types, sections and "
            f"domains): {fmt(official)}"
        )
    costs = record["costs"]
    lines.append(
        f"train {costs['total_train_seconds']:.1f}s in all; inference "
        f"{costs['infer_images_per_s'][-1]:.1f} images/s; "
        f"trainable {costs['trainable_mb'][-1]:.2f} MB; pretrained {costs['pretrained_mb'][-1]:.2f}"
        f" MB; memory {costs['memory_mb'][-1]:.2f} MB; "
        f"peak {costs['peak_memory_mb'][-1]:.0f} MB"
    )
    return "\n".join(lines)


WANDB_INIT_TIMEOUT_S = 15.0  # at most this long waiting for W&B's service or server at start


class WandbLogger:
    """Weights & Biases run: online only when the config asks for it and ``WANDB_API_KEY`` is
    set, offline otherwise (sync later with ``wandb sync``). The key is never printed or stored.

    Best-effort: any failure of wandb (a bad or missing key, no network, a timeout after
    ``WANDB_INIT_TIMEOUT_S``, a crash inside wandb at init, log or finish) becomes one warning
    line, this logger stops, and the run goes on with its local results complete.
    """

    def __init__(self, settings: dict[str, Any], name: str, config: dict, run_dir: Path) -> None:
        """``settings``: the run config's ``wandb`` block; ``name``: the W&B run name;
        ``config``: the resolved run config with its seed, logged as the run's config."""
        self.run = None
        mode = settings["mode"]
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            print("[clad] wandb.mode is online but WANDB_API_KEY is not set: logging offline")
            mode = "offline"
        try:
            import wandb

            self.wandb = wandb
            self.run = wandb.init(
                project=settings["project"],
                entity=settings["entity"],
                group=settings["group"],
                tags=settings["tags"],
                name=name,
                config=config,
                dir=str(run_dir),
                mode=mode,
                reinit="finish_previous",
                settings=wandb.Settings(quiet=True, init_timeout=WANDB_INIT_TIMEOUT_S),
            )
        except BaseException as err:  # noqa: BLE001  (wandb raises its own kinds, and exits)
            if isinstance(err, KeyboardInterrupt):
                raise
            self._give_up("init", err)

    def _give_up(self, when: str, err: BaseException) -> None:
        message = " ".join(str(err).split())[:200] or type(err).__name__
        print(
            f"[clad] W&B failed at {when} ({type(err).__name__}: {message}); going on without "
            "it: the local results are complete"
        )
        self.run = None

    def log_task(self, step: int, task_name: str, values: dict[str, float]) -> None:
        if self.run is None:
            return
        clean = {k: v for k, v in values.items() if v is not None and not math.isnan(v)}
        try:
            self.run.log({"task": step, **clean}, step=step)
        except Exception as err:  # noqa: BLE001
            self._give_up("log", err)

    def finish(self, summary: dict[str, float], record: dict, files: list[Path]) -> None:
        if self.run is None:
            return
        try:
            for key, value in summary.items():
                self.run.summary[key] = value
            images = {
                f"plots/{p.stem}": self.wandb.Image(str(p)) for p in files if p.suffix == ".png"
            }
            if images:
                self.run.log(images, step=record["completed_tasks"] - 1)
            self.run.finish()
        except Exception as err:  # noqa: BLE001
            self._give_up("finish", err)


def finish_stopped_wandb(exit_code: int) -> None:
    """Close a W&B run that a signal stopped before its logger's ``finish``.

    Left open, wandb closes it itself at interpreter exit and prints its lines after the
    ``resume with: ...`` line; called before that line is printed, the resume command is the
    last thing on screen. Best-effort and silent on failure, like ``WandbLogger``.
    """
    wandb = sys.modules.get("wandb")  # never imported here: only a run that used it has it
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception:  # noqa: BLE001  (the local results are complete; W&B is best-effort)
        pass


def build_loggers(config: dict, seed: int, run_dir: Path) -> list[Logger]:
    """W&B first (when ``config["wandb"]["enabled"]``), the console last, so the summary table
    ends the output. ``config``: the resolved run config (a dict, as written to config.json)."""
    loggers: list[Logger] = []
    run_name = config["run_name"]
    if config["wandb"]["enabled"]:
        loggers.append(
            WandbLogger(
                config["wandb"], f"{run_name}-seed{seed}", {**config, "seed": seed}, run_dir
            )
        )
    loggers.append(ConsoleLogger(f"{run_name}/seed_{seed}"))
    return loggers
