"""Loggers: the console and Weights & Biases (as wandb itself would log in: ``WANDB_MODE``,
``WANDB_API_KEY`` or ``wandb login``'s netrc entry; ``wandb.mode`` in the config wins when set)."""

from __future__ import annotations

import math
import netrc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from clad.tracking.text import fixed


class Logger(Protocol):
    def log_history(self, step: int, task_name: str, entry: dict) -> None:
        """Training task ``step`` ended: its ``history`` entry (per-epoch records with their
        run-wide ``step``, how training ended; ``clad.runner.task_history``)."""

    def log_task(self, step: int, task_name: str, values: dict[str, float]) -> None:
        """Values after training task ``step`` (matrix row cells, summary, costs)."""

    def finish(self, summary: dict[str, float], record: dict, files: list[Path]) -> None:
        """End of run: the final summary, the metrics record and the plot files written."""


def fmt(value: float | None) -> str:
    return fixed(value, 3, missing="  n/a")


def banner(
    run_label: str,
    detector: str,
    strategy: str,
    tasks: Sequence[str],
    device: str,
    folder: Path,
    start: int = 0,
) -> str:
    """The lines a run starts with: what runs, on which device, where it writes."""
    resumed = f" (resuming after task {start - 1}, {tasks[start - 1]})" if start else ""
    return (
        f"[clad] {run_label}: detector {detector}, strategy {strategy}, device {device}\n"
        f"[clad]   {len(tasks)} tasks: {', '.join(tasks)}{resumed}\n"
        f"[clad]   output: {folder}"
    )


class ConsoleLogger:
    """One progress line per task (and one on its training, when it trained epochs), and the
    summary table at the end."""

    def __init__(self, run_label: str) -> None:
        self.run_label = run_label

    def log_history(self, step: int, task_name: str, entry: dict) -> None:
        print(history_line(self.run_label, step, task_name, entry) or "", end="")

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


def history_line(run_label: str, step: int, task_name: str, entry: dict) -> str:
    """One line on how task ``step`` trained (empty, without a newline, when it trained no
    epochs): epochs, early stop and best epoch, last training and best validation loss."""
    epochs = entry.get("epochs", [])
    if not epochs:
        return ""
    parts = [f"{len(epochs)} epoch" + ("s" if len(epochs) != 1 else "")]
    if entry.get("stopped_early"):
        parts.append(f"stopped early at epoch {entry['stopped_epoch']}")
    if entry.get("best_epoch") is not None:
        parts.append(f"best epoch {entry['best_epoch']}")
    train = epochs[-1].get("train_loss")
    if train is not None:
        parts.append(f"last training loss {train:.4g}")
    val = [e["val_loss"] for e in epochs if e.get("val_loss") is not None]
    if val:
        parts.append(f"best validation loss {min(val):.4g}")
    return f"[clad] {run_label} task {step} ({task_name}) trained: {', '.join(parts)}\n"


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


Mode = Literal["online", "offline"]
WANDB_INIT_TIMEOUT_S = 15.0  # at most this long waiting for W&B's service or server at start


def wandb_credentials() -> bool:
    """Whether wandb could log in without asking: ``WANDB_API_KEY``, or a netrc entry (what
    ``wandb login`` writes; ``NETRC`` or ``~/.netrc``) for the W&B host (``WANDB_BASE_URL``,
    default api.wandb.ai). Nothing of the key is read beyond its presence."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(configured: str | None) -> tuple[Mode | None, str | None]:
    """(the mode ``wandb.init`` gets, a line saying why it differs from what was asked, or
    None). Precedence: ``wandb.mode`` when the config sets it; else ``WANDB_MODE``
    (``None``: wandb reads it itself); else online when wandb has credentials
    (``wandb_credentials``), offline otherwise (wandb would ask for a key). Online without
    credentials is offline, with one line saying so."""
    if configured is None and os.environ.get("WANDB_MODE"):
        return None, None
    wanted: Mode = "online" if configured == "online" else "offline"
    if configured is None:
        wanted = "online" if wandb_credentials() else "offline"
    if wanted == "online" and not wandb_credentials():
        return "offline", (
            "[clad] wandb.mode is online but W&B has no credentials (no WANDB_API_KEY, no "
            "`wandb login`): logging offline; sync later with `wandb sync`"
        )
    return wanted, None


def clean(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without None and NaN (W&B would draw them as zeros or fail)."""
    return {
        k: v
        for k, v in values.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    }


class WandbLogger:
    """A Weights & Biases run, logged in as wandb itself would (``wandb_mode``). The key is
    never printed or stored.

    What it logs: per task, under ``step/`` against the ``task`` axis, every matrix cell of the
    row (``step/image_auroc/<task>``), the summary so far and the step's costs; per epoch,
    under ``train/`` against ``train/global_epoch`` (epochs counted over the run; with
    ``train/task``), every training term, the validation loss and the learning rate; at the
    end, the final summary once (the run's summary, not a history), the matrices as
    ``wandb.Table`` (``matrices/<metric>``, ``matrices_categories/<metric>``,
    ``matrices/routing``), the plots under ``plots/`` and the overlays under ``overlays/``.
    Seeds of one configuration share a group: ``wandb.group``, else the run name.

    Best-effort: any failure of wandb (a bad or missing key, no network, a timeout after
    ``WANDB_INIT_TIMEOUT_S``, a crash inside wandb at init, log or finish) becomes one warning
    line, this logger stops, and the run goes on with its local results complete.
    """

    def __init__(self, settings: dict[str, Any], name: str, config: dict, run_dir: Path) -> None:
        """``settings``: the run config's ``wandb`` block; ``name``: the W&B run name;
        ``config``: the resolved run config with its seed, logged as the run's config."""
        self.run = None
        mode, note = wandb_mode(settings.get("mode"))
        if note:
            print(note)
        run_name = config.get("run_name", name)
        try:
            import wandb

            self.wandb = wandb
            self.run = wandb.init(
                project=settings["project"],
                entity=settings["entity"],
                group=settings["group"] or run_name,
                job_type=run_name if settings["group"] else None,
                tags=settings["tags"],
                name=name,
                config=config,
                dir=str(run_dir),
                mode=mode,
                reinit="finish_previous",
                settings=wandb.Settings(quiet=True, init_timeout=WANDB_INIT_TIMEOUT_S),
            )
            self.run.define_metric("task")
            self.run.define_metric("step/*", step_metric="task")
            self.run.define_metric("train/global_epoch")
            self.run.define_metric("train/*", step_metric="train/global_epoch")
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

    def log_history(self, step: int, task_name: str, entry: dict) -> None:
        if self.run is None:
            return
        try:
            for epoch in entry.get("epochs", []):
                terms = {
                    f"train/{key.removeprefix('train_')}": value
                    for key, value in epoch.items()
                    if key not in ("step", "epoch", "part", "stopped_early")
                }
                self.run.log(
                    clean(
                        {
                            "train/global_epoch": epoch["step"],
                            "train/task": step,
                            "train/epoch": epoch["epoch"],
                            **terms,
                        }
                    )
                )
        except Exception as err:  # noqa: BLE001
            self._give_up("log", err)

    def log_task(self, step: int, task_name: str, values: dict[str, float]) -> None:
        if self.run is None:
            return
        try:
            self.run.log({"task": step, **{f"step/{k}": v for k, v in clean(values).items()}})
        except Exception as err:  # noqa: BLE001
            self._give_up("log", err)

    def finish(self, summary: dict[str, float], record: dict, files: list[Path]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(clean(summary))
            logged: dict[str, Any] = self.tables(record)
            for path in files:
                if path.suffix == ".png":
                    section = "overlays" if path.parent.name == "overlays" else "plots"
                    logged[f"{section}/{path.stem}"] = self.wandb.Image(str(path))
            if logged:
                self.run.log(logged)
            self.run.finish()
        except Exception as err:  # noqa: BLE001
            self._give_up("finish", err)

    def tables(self, record: dict) -> dict[str, Any]:
        """The matrices as ``wandb.Table``: a row per training step, a column per task (per
        category for ``matrices_categories/``), None where a cell has no value."""
        names = record["tasks"]
        categories = record.get("categories", names)
        groups = [("matrices", record["matrices"], names)]
        if len(categories) > len(names):
            groups.append(("matrices_categories", record["category_matrices"], categories))
        if record.get("routing") is not None:
            groups.append(("matrices", {"routing": record["routing"]}, categories))
        tables = {}
        for section, matrices, columns in groups:
            for metric, rows in matrices.items():
                data = [
                    [names[t], *(None if _missing(v) else float(v) for v in row)]
                    for t, row in enumerate(rows)
                ]
                tables[f"{section}/{metric}"] = self.wandb.Table(
                    columns=["after task", *columns], data=data
                )
        return tables


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
