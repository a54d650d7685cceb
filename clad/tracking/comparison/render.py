"""The report's tables as Markdown, self-contained HTML and CSV rows."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clad.tracking import html as pages
from clad.tracking.comparison.published import CLAD_PUBLISHED, clad_text
from clad.tracking.comparison.rows import IMAGE_METRICS, MetricSet, Row, metric_set
from clad.tracking.comparison.statistics import MIN_PAIRED_SEEDS, Pair
from clad.tracking.text import fixed, latex_table, signed
from clad.tracking.text import markdown_table as markdown_rows

# (key, column label, kind): kind picks the number format; the quality columns of machine-sound
# sweeps are ``AUDIO_METRICS.quality`` (``clad.tracking.comparison.rows``)
TABLE_METRICS: tuple[tuple[str, str, str], ...] = (
    *IMAGE_METRICS.quality,
    ("cost/total_train_seconds", "train time", "seconds"),
    ("cost/trainable_mb", "trainable MB", "mb"),
    ("cost/pretrained_mb", "pretrained MB", "mb"),
    ("cost/memory_mb", "memory MB", "mb"),
    ("cost/peak_memory_mb", "peak MB", "mb"),
)
QUALITY_METRICS = TABLE_METRICS[:6]
COST_METRICS = TABLE_METRICS[6:]


def fmt_number(value: float, kind: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if kind == "seconds":
        if value < 600:
            return f"{value:.1f} s"
        return f"{value / 60:.1f} min" if value < 3 * 3600 else f"{value / 3600:.2f} h"
    if kind == "mb":
        return fixed(value, 2) if value < 100 else fixed(value, 0)
    return fixed(value, 3)


def fmt_stat(mean: float, std: float, kind: str) -> str:
    if not math.isfinite(mean):
        return "n/a"
    text = fmt_number(mean, kind)
    if math.isfinite(std):
        unit = ""
        if kind == "seconds":
            text, unit = text.rsplit(" ", 1)[0], " " + text.rsplit(" ", 1)[1]
            scale = {"s": 1, "min": 60, "h": 3600}[unit.strip()]
            return f"{text} ± {std / scale:.1f}{unit}"
        if kind == "mb" and mean >= 100:
            return f"{text} ± {std:.0f}"
        return f"{text} ± {fmt_number(std, kind)}"
    return text


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    best: list[bool]
    bold: str | None = None  # the column whose value is bold in the best rows (Markdown)


def main_table(rows: Sequence[Row]) -> Table:
    """The results: final averages, forgetting, BWT, the gap to joint training and CLAD's
    published numbers, one row per configuration (the costs are ``cost_table``); machine-sound
    sweeps get their own quality columns (``metric_set``)."""
    metrics = metric_set(rows)
    has_axes = any(r.axes for r in rows)
    has_joint = any(math.isfinite(r.gap_to_joint) for r in rows)
    has_clad = any(clad_text(r) for r in rows)
    header = ["detector", "strategy"] + (["axes"] if has_axes else []) + ["seeds"]
    header += [label for _, label, _ in metrics.quality]
    header += ["gap to joint"] if has_joint else []
    header += ["CLAD published (img/pix/PRO/forg.)"] if has_clad else []
    lines = []
    for row in rows:
        cells = [row.detector, row.strategy + (" ★" if row.best else "")]
        cells += [row.axes_text()] if has_axes else []
        cells.append(row.state_text())
        for key, _, kind in metrics.quality:
            mean, std, _ = row.stat(key)
            cells.append(fmt_stat(mean, std, kind) if row.records else "—")
        if has_joint:
            cells.append(fmt_number(row.gap_to_joint, "score") if row.records else "—")
        cells += [clad_text(row)] if has_clad else []
        lines.append(cells)
    return Table(header, lines, [r.best for r in rows], bold=metrics.label)


def cost_table(rows: Sequence[Row]) -> Table:
    """Training time and sizes after the last task, one row per configuration."""
    has_axes = any(r.axes for r in rows)
    header = ["detector", "strategy"] + (["axes"] if has_axes else [])
    header += [label for _, label, _ in COST_METRICS]
    lines = []
    for row in rows:
        cells = [row.detector, row.strategy] + ([row.axes_text()] if has_axes else [])
        for key, _, kind in COST_METRICS:
            mean, std, _ = row.stat(key)
            cells.append(fmt_stat(mean, std, kind) if row.records else "—")
        lines.append(cells)
    return Table(header, lines, [False] * len(rows))


FORGETTING_COLUMNS: tuple[tuple[str, str], ...] = IMAGE_METRICS.forgetting
AUDIO_FORGETTING_NOTE = (
    "Forgetting, as each paper defines it, from the same AUC matrices: Chaudhry et al. 2018, "
    "the drop from the best value since a machine type was learned; pyCLAD's ForgettingMeasure "
    "as released, which also averages the task just learned against its values before it was "
    "learned; the gap to joint training, the same detector's multi_task final average minus "
    "this row's (ReplayCAD's FM). Positive = forgetting for all three; numbers under one name "
    "are not comparable with another's."
)
FORGETTING_NOTE = (
    "Forgetting, as each paper defines it, from the same matrices: Chaudhry et al. 2018, the "
    "drop from the best value since a category was learned (UCAD's and DNE's FM); pyCLAD's "
    "ForgettingMeasure as released, which also averages the task just learned against its "
    "values before it was learned; the gap to joint training, the same detector's multi_task "
    "final average minus this row's (ReplayCAD's FM); CLAD's relative drop of the pixel F1 "
    "(CLAD, CVPRW 2024). Positive = forgetting for all four; numbers under one name are not "
    "comparable with another's."
)


def forgetting_table(rows: Sequence[Row]) -> Table:
    """Every forgetting definition per row (mean ± std over seeds; the joint gap is between
    means), of image AUROC or, for machine sounds, of AUC."""
    columns = metric_set(rows).forgetting
    header = ["detector", "strategy", *(label for _, label in columns)]
    lines = []
    for row in rows:
        cells = [row.detector, row.strategy]
        for key, _ in columns:
            if not row.records:
                cells.append("—")
            elif key.startswith("forgetting_joint_gap/"):
                cells.append(fmt_number(row.joint_gaps.get(key, math.nan), "score"))
            else:
                mean, std, _ = row.stat(key)
                cells.append(fmt_stat(mean, std, "score"))
        lines.append(cells)
    return Table(header, lines, [False] * len(rows))


ROUTING_NOTE = (
    "Routing: methods that keep one part per task (PatchCore and DNE `cl` per_task, UCAD) "
    "choose a part for each test image. Routing accuracy = after the last task, the share of "
    "each learnt task's test images sent to that task's part, averaged over tasks; oracle = "
    "the same final average and forgetting with each image given its own task's part. Routed minus "
    "oracle is what wrong routing costs; the oracle's forgetting is what is left when "
    "routing is perfect (Chaudhry et al.'s average forgetting)."
)


def routing_table(rows: Sequence[Row]) -> Table | None:
    """Routing accuracy and routed against oracle-routed final average and forgetting, for
    the rows whose runs route (``routing/accuracy`` in their summary); None when none does."""
    metrics = metric_set(rows)
    label, primary = metrics.label, metrics.main
    routed = [r for r in rows if r.records and math.isfinite(r.stat("routing/accuracy")[0])]
    if not routed:
        return None
    header = [
        "detector",
        "strategy",
        "routing accuracy",
        f"{label} (routed)",
        f"{label} (oracle)",
        "routed − oracle",
        "forgetting (routed)",
        "forgetting (oracle)",
    ]
    lines = []
    for row in routed:
        accuracy = row.stat("routing/accuracy")
        final = row.stat(f"final_avg/{primary}")
        oracle = row.stat(f"oracle/final_avg/{primary}")
        lines.append(
            [
                row.detector,
                row.strategy,
                fmt_stat(*accuracy[:2], "score"),
                fmt_stat(*final[:2], "score"),
                fmt_stat(*oracle[:2], "score"),
                fmt_number(final[0] - oracle[0], "score"),
                fmt_stat(*row.stat(f"forgetting/{primary}")[:2], "score"),
                fmt_stat(*row.stat(f"oracle/forgetting/{primary}")[:2], "score"),
            ]
        )
    return Table(header, lines, [False] * len(lines))


def markdown_table(table: Table) -> list[str]:
    """The table in markdown, the best rows' ``table.bold`` cell in bold."""
    bold = table.header.index(table.bold) if table.bold in table.header else -1
    shown = [
        [f"**{c}**" if best and i == bold else c for i, c in enumerate(cells)]
        for cells, best in zip(table.rows, table.best)
    ]
    return markdown_rows(table.header, shown, text_columns=2)


def pairs_table(pairs: Sequence[Pair]) -> Table:
    header = ["detector", "A vs B", "metric", "seeds", "mean A − B", "95% bootstrap CI", "clear"]
    rows = []
    for p in pairs:
        ci = "n/a (1 seed)" if not math.isfinite(p.low) else f"[{signed(p.low)}, {signed(p.high)}]"
        name = p.detector + (f" ({p.axes})" if p.axes else "")
        clear = (
            "yes"
            if p.significant
            else ("no" if len(p.seeds) >= MIN_PAIRED_SEEDS else f"n/a (< {MIN_PAIRED_SEEDS} seeds)")
        )
        rows.append(
            [name, f"{p.a} vs {p.b}", p.metric, str(len(p.seeds)), signed(p.mean), ci, clear]
        )
    return Table(header, rows, [False] * len(rows))


def incomplete_lines(rows: Sequence[Row]) -> list[str]:
    """One line per expected run that did not finish: its state and why."""
    lines = []
    for row in rows:
        for seed in row.seeds:
            if seed in row.records:
                continue
            state = row.states.get(seed, "pending")
            detail = row.details.get(seed, "")
            lines.append(
                f"{row.run_name}/seed_{seed}: {state}" + (f" ({detail})" if detail else "")
            )
    return lines


def context_lines(manifest: dict[str, Any], rows: Sequence[Row]) -> list[str]:
    """The sweep file's description (as written there), the ``--set`` overrides it ran with,
    the tasks and how many runs finished."""
    lines = []
    description = manifest.get("spec", {}).get("description")
    if description:
        lines.append(f"The sweep file's description: {description}")
    overrides = manifest.get("overrides") or []
    if overrides:
        lines.append(
            "Run with --set "
            + ", ".join(overrides)
            + " (applied to every run; the settings below are what ran)."
        )
    first = next((r for r in rows if r.records), None)
    if first is not None:
        record = next(iter(first.records.values()))
        lines.append(f"Tasks ({len(record['tasks'])}): {', '.join(record['tasks'])}.")
    seeds = sorted({s for r in rows for s in r.seeds})
    lines.append(
        f"{len(rows)} configurations x seeds {seeds}; "
        f"{sum(len(r.records) for r in rows)} of {sum(len(r.seeds) for r in rows)} "
        "runs finished."
    )
    return lines


SETTING_KEYS: tuple[tuple[str, str], ...] = (
    ("dataset.name", "dataset"),
    ("dataset.categories", "categories"),
    ("dataset.protocol", "protocol"),
    ("dataset.image_size", "image size"),
    ("dataset.crop_size", "crop size"),
    ("dataset.audio.n_mels", "mel bands"),
    ("dataset.audio.frames", "frames per clip"),
    ("resolved.training.epochs", "epochs"),
    ("resolved.training.batch_size", "batch size"),
    ("resolved.training.lr", "learning rate"),
    ("resolved.training.patience", "patience"),
    ("resolved.training.precision", "precision"),
    ("training.device", "device"),
    ("evaluation.threshold_quantile", "threshold quantile"),
)
"""The settings a sweep report lists, from each run's ``config.json`` (what ran)."""
IMAGE_ONLY_SETTINGS = ("dataset.image_size", "dataset.crop_size")


def settings_lines(configs: dict[str, dict]) -> list[str]:
    """One line per setting of ``SETTING_KEYS``: its value when every run that uses it has
    the same, else each value with its runs; runs whose detector does not use a training
    setting are named. ``configs``: run name -> its first seed's ``config.json``."""
    lines = []
    for key, label in SETTING_KEYS:
        values: dict[str, list[str]] = {}
        unused = []
        for run_name, config in configs.items():
            if key in IMAGE_ONLY_SETTINGS and (config.get("dataset") or {}).get("audio"):
                continue  # a machine-sound run has no image size
            node: Any = config
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                if key.startswith("resolved.training.") and "training" in config.get(
                    "resolved", {}
                ):
                    unused.append(run_name)  # what ran, and this key was not part of it
                continue
            text = ", ".join(map(str, node)) if isinstance(node, list) else str(node)
            values.setdefault(text, []).append(run_name)
        if not values:
            continue
        if len(values) == 1:
            text = next(iter(values))
        else:
            text = "; ".join(f"{value} ({', '.join(names)})" for value, names in values.items())
        if unused:
            text += f" (not used by {', '.join(unused)})"
        lines.append(f"{label}: {text}")
    return lines


def latex_text(table: Table, caption: str, label: str) -> str:
    """``table`` as a LaTeX booktabs table (``report.tex``)."""
    text_columns = 3 + ("axes" in table.header)
    return latex_table(table.header, table.rows, caption, label, text_columns)


def plain_markdown(table: Table) -> list[str]:
    """The table in markdown, without the best-row marks (``markdown_table`` has them)."""
    return markdown_rows(table.header, table.rows, text_columns=2)


def csv_rows(rows: Sequence[Row]) -> tuple[list[str], list[list[Any]]]:
    """One row per configuration: identity, seeds, best flag, mean/std/n of every table metric,
    the gap to the joint bound and CLAD's published values where it reports the pair."""
    metrics = metric_set(rows)
    keys = [*metrics.quality, *COST_METRICS]
    header = [
        "run_name",
        "detector",
        "strategy",
        "axes",
        "seeds_finished",
        "seeds_expected",
        "state",
        "best",
    ]
    for key, _, _ in keys:
        header += [f"{key}:mean", f"{key}:std", f"{key}:n"]
    header += [
        f"gap_to_joint/{metrics.main}",
        "clad_image_auroc",
        "clad_pixel_auroc",
        "clad_aupro",
        "clad_forgetting_pct",
    ]
    out = []
    for row in rows:
        line: list[Any] = [
            row.run_name,
            row.detector,
            row.strategy,
            json.dumps(row.axes, sort_keys=True) if row.axes else "",
            len(row.records),
            len(row.seeds),
            row.state_text(),
            int(row.best),
        ]
        for key, _, _ in keys:
            mean, std, n = row.stat(key)
            line += [mean, std, n]
        published = CLAD_PUBLISHED.get((row.detector, row.strategy), {})
        line += [
            row.gap_to_joint,
            published.get("image_auroc"),
            published.get("pixel_auroc"),
            published.get("aupro"),
            published.get("forgetting_pct"),
        ]
        out.append(line)
    return header, out


def _html_table(table: Table, text_columns: int = 2) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    wrapped = {i for i, h in enumerate(table.header) if h in ("axes", "seeds")}
    for cells, best in zip(table.rows, table.best):
        missing = "—" in cells
        cls = ' class="best"' if best else (' class="missing"' if missing else "")
        tds = "".join(
            f'<td class="text{" wrap" if i in wrapped else ""}">{html.escape(c)}</td>'
            if i < text_columns + ("axes" in table.header) or i in wrapped
            else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(
    name: str,
    context: Sequence[str],
    table: Table,
    notes: Sequence[str],
    incomplete: Sequence[str],
    pairs: Table,
    plots: Sequence[Path],
    forgetting: Table | None = None,
    costs: Table | None = None,
    settings: Sequence[str] = (),
    forgetting_note: str = FORGETTING_NOTE,
    routing: Table | None = None,
) -> str:
    """One self-contained page: inline CSS, tables, plots as base64 PNG data URIs."""
    parts = [f"<h1>Sweep {html.escape(name)}</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in context]
    if settings:
        parts.append("<h2>Settings that ran</h2><ul>")
        parts += [f"<li>{html.escape(line)}</li>" for line in settings]
        parts.append("</ul>")
    parts.append("<h2>Results</h2>")
    parts.append(_html_table(table))
    if costs is not None:
        parts.append("<h2>Costs</h2>")
        parts.append(_html_table(costs))
    parts.append(
        '<div class="notes">' + "".join(f"<p>{html.escape(n)}</p>" for n in notes) + "</div>"
    )
    if forgetting is not None:
        parts.append("<h2>Forgetting, as each paper defines it</h2>")
        parts.append(_html_table(forgetting))
        parts.append(f'<p class="notes">{html.escape(forgetting_note)}</p>')
    if routing is not None:
        parts.append("<h2>Routing</h2>")
        parts.append(_html_table(routing))
        parts.append(f'<p class="notes">{html.escape(ROUTING_NOTE)}</p>')
    if incomplete:
        parts.append(
            "<h2>Incomplete runs</h2><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in incomplete)
            + "</ul>"
        )
    if pairs.rows:
        parts.append("<h2>Paired comparisons across seeds</h2>")
        parts.append(_html_table(pairs, text_columns=3))
        parts.append(
            '<p class="notes">Difference of strategy A minus B over the seeds both '
            "finished; 95% percentile bootstrap interval of the mean (10,000 resamples, "
            f"seed 0). clear: the interval excludes 0, judged on {MIN_PAIRED_SEEDS} "
            "seeds or more (with two the interval is only the range of the two "
            "differences).</p>"
        )
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<div class="plot">{pages.image(path)}</div>' for path in plots]
    return pages.page(f"Sweep {name}", parts)


NOTES = [
    "Values: mean ± sample std (ddof 1) over the seeds whose run finished every task; `seeds` "
    "counts finished / expected runs (unfinished ones by state). Image AUROC, pixel AUROC, "
    "AUPRO (FPR ≤ 0.3) and pixel F1 at the threshold set on validation normals are final "
    "averages over tasks after the last task; forgetting is Chaudhry et al.'s average "
    "forgetting and BWT the GEM backward transfer, both of image AUROC.",
    "★ per detector: the highest mean final *test* image AUROC among continual strategies, chosen "
    "on test results: a description of the table, not a model selection (when every run records "
    "a validation-based score, `selection/score`, the mark chooses by that instead). The "
    "reference bounds multi_task (joint), cumulative and single_model (task-aware, with the "
    "oracle task identity) are not ranked. Gap to joint = final image AUROC minus the same "
    "detector's multi_task value. FWT is not given for multi_task (its earlier rows have "
    "already seen every task).",
    "Costs after the last task, each byte counted once: trainable MB = the weights the "
    "detectors fitted (students, flows, adaptors; a drawn channel subset), pretrained MB = their "
    "frozen pretrained backbones, memory MB = every stored datum (memory banks, Gaussians, "
    "centroids, replay images at one byte per value); training time over the whole stream; "
    "peak MB = peak resident (CPU) or CUDA memory.",
]

AUDIO_NOTES = [
    "Values: mean ± sample std (ddof 1) over the seeds whose run finished every task; `seeds` "
    "counts finished / expected runs (unfinished ones by state). Machine types are the tasks; "
    "AUC, pAUC (FPR ≤ 0.1, McClish-standardised as the DCASE evaluators compute it) and hmean "
    "(per machine type, the harmonic mean over its sections of AUC_source, AUC_target and pAUC, "
    "or of AUC and pAUC without domains) are final averages over the machine types after the "
    "last task; official score = DCASE 2021/2022's one harmonic mean over every machine type, "
    "section and domain (n/a without domains); forgetting is Chaudhry et al.'s average "
    "forgetting and BWT the GEM backward transfer, both of AUC (clad.metrics.audio).",
    "★ per detector: the highest mean final *test* AUC among continual strategies, chosen on "
    "test results: a description of the table, not a model selection. The reference bounds "
    "multi_task (joint), cumulative and single_model are not ranked. Gap to joint = final AUC "
    "minus the same detector's multi_task value.",
    NOTES[2],
]


def notes_for(metrics: MetricSet) -> list[str]:
    """The table notes of an image sweep (``NOTES``) or a machine-sound one (``AUDIO_NOTES``)."""
    return list(NOTES if metrics is IMAGE_METRICS else AUDIO_NOTES)


def forgetting_note_for(metrics: MetricSet) -> str:
    """The forgetting table's note: ``FORGETTING_NOTE``, or ``AUDIO_FORGETTING_NOTE``."""
    return FORGETTING_NOTE if metrics is IMAGE_METRICS else AUDIO_FORGETTING_NOTE
