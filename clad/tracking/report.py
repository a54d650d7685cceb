"""The report of a run: one seed's folder (``output/<run>/seed_<n>``) or a run folder of seeds
(``output/<run>``, aggregated: mean and sample std over the seeds).

``write_run_report(folder)`` writes, beside the results:

- ``report.md``: the settings, the summary (final average, every forgetting, BWT, FWT per
  metric), each task's values after the last task, the training and the costs per task, every
  value of the summary, and the plots as links;
- ``report.html``: the same as one self-contained page (plots embedded): the matrices as
  heatmaps, per-task curves, the training curves, the costs, ROC and score histograms and the
  overlays;
- ``report.tex``: the summary as a LaTeX (booktabs) table;
- ``report.csv``: every summary value and cost, with mean, std and the number of seeds.

A seed's plots are those of the run (``plots/``, ``overlays/``; the ones a record alone gives
are redrawn when missing); a run folder's are drawn from the seeds' mean matrices in
``report_plots/``, with the first seed's overlays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clad.tracking import html
from clad.tracking.files import atomic_write, read_json, write_csv
from clad.tracking.text import fixed, latex_table, markdown_table


def load_seed_records(run_dir: Path) -> list[dict]:
    paths = sorted(run_dir.glob("seed_*/metrics.json"))
    if not paths:
        raise FileNotFoundError(
            f"{run_dir}: no metrics.json and no seed_<n>/metrics.json found; pass a run folder "
            "such as output/<run_name> or one of its seeds, output/<run_name>/seed_0"
        )
    return [read_json(p) for p in paths]


def record_values(record: dict) -> dict[str, float]:
    """One seed's summary values plus its costs: ``cost/total_train_seconds``,
    ``cost/infer_images_per_s`` (mean over tasks), ``cost/trainable_mb``,
    ``cost/pretrained_mb`` and ``cost/memory_mb`` (after the last task; see
    ``clad.runner.COST_KEYS``) and their sum ``cost/total_mb``, ``cost/peak_memory_mb`` (max).
    Missing values (records written before a cost existed) are NaN."""
    rows = dict(record["summary"])
    costs = record["costs"]
    rows["cost/total_train_seconds"] = costs["total_train_seconds"]
    rows["cost/infer_images_per_s"] = float(np.mean(costs["infer_images_per_s"]))
    for kind in ("trainable", "pretrained", "memory"):
        values = costs.get(f"{kind}_mb")
        rows[f"cost/{kind}_mb"] = values[-1] if values else math.nan
    rows["cost/total_mb"] = sum(rows[f"cost/{k}_mb"] for k in ("trainable", "pretrained", "memory"))
    rows["cost/peak_memory_mb"] = max(costs["peak_memory_mb"])
    return {k: math.nan if v is None else float(v) for k, v in rows.items()}


def aggregate(records: list[dict]) -> dict[str, dict[str, float]]:
    """Summary key -> {mean, std (ddof 1; NaN for one seed), n} over seeds; costs included."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record_values(record).items():
            values.setdefault(key, []).append(value)
    out = {}
    for key, vals in values.items():
        arr = np.array(vals, dtype=float)
        finite = arr[np.isfinite(arr)]
        out[key] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size),
        }
    return out


METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "AUPRO",
    "pixel_f1_val": "pixel F1 (val. thr.)",
    "image_f1_val": "image F1 (val. thr.)",
    "auc": "AUC",
    "pauc": "pAUC",
    "hmean": "hmean",
}
MEASURES = (
    ("final_avg", "final average"),
    ("forgetting", "forgetting (Chaudhry)"),
    ("forgetting_pyclad", "forgetting (pyCLAD)"),
    ("rel_forgetting", "relative forgetting (CLAD)"),
    ("bwt", "BWT"),
    ("fwt", "FWT"),
    ("oracle/final_avg", "final average, oracle routing"),
    ("oracle/forgetting", "forgetting, oracle routing"),
)
"""The summary's rows: key prefix and label (``clad.metrics.continual.summarize``)."""


def stat_text(mean: float, std: float, digits: int = 3) -> str:
    """``mean ± std`` (``mean`` alone for one seed; ``n/a`` when undefined)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(std):
        return fixed(mean, digits)
    return f"{fixed(mean, digits)} ± {fixed(std, digits)}"


def summary_grid(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The summary as measures (rows) x metrics (columns), mean ± std over ``records``; rows
    and columns without any value left out."""
    table = aggregate(list(records))
    metrics = [m for m in METRIC_LABELS if m in records[0]["matrices"]]
    rows = []
    for prefix, label in MEASURES:
        cells = [table.get(f"{prefix}/{m}", {"mean": math.nan, "std": math.nan}) for m in metrics]
        rows.append((label, cells))
    keep_columns = [
        j for j in range(len(metrics)) if any(math.isfinite(cells[j]["mean"]) for _, cells in rows)
    ]
    header = ["", *(METRIC_LABELS[metrics[j]] for j in keep_columns)]
    lines = []
    for label, cells in rows:
        if any(math.isfinite(cells[j]["mean"]) for j in keep_columns):
            lines.append(
                [label, *(stat_text(cells[j]["mean"], cells[j]["std"]) for j in keep_columns)]
            )
    return header, lines


def final_rows(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Each task's values after the last task (and, for tasks of several categories, each
    category's under it), mean ± std over ``records``."""
    first = records[0]
    metrics = [m for m in METRIC_LABELS if m in first["matrices"]]
    names, categories = first["tasks"], first.get("categories", first["tasks"])
    learned = first.get("learned", list(range(len(names))))

    def cells(kind: str, column: int) -> list[str]:
        out = []
        for metric in metrics:
            values = np.array(
                [_float(r[kind][metric][r["completed_tasks"] - 1][column]) for r in records]
            )
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else math.nan
            std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            out.append(stat_text(mean, std))
        return out

    header = ["task", *(METRIC_LABELS[m] for m in metrics)]
    rows = []
    for k, name in enumerate(names):
        rows.append([name, *cells("matrices", k)])
        members = [c for c, step in enumerate(learned) if step == k]
        if len(members) > 1:
            rows += [[f"  {categories[c]}", *cells("category_matrices", c)] for c in members]
    return header, rows


def history_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    """Per task: epochs trained, the early stop, the best epoch, the last training loss and the
    best validation loss."""
    header = [
        "task",
        "epochs",
        "stopped early at",
        "best epoch",
        "last train loss",
        "best val loss",
    ]
    rows = []
    for entry in record.get("history", []):
        epochs = entry.get("epochs", [])
        val = [e["val_loss"] for e in epochs if e.get("val_loss") is not None]
        last = epochs[-1].get("train_loss") if epochs else None
        rows.append(
            [
                entry["name"],
                str(len(epochs)),
                "—" if entry.get("stopped_epoch") is None else f"epoch {entry['stopped_epoch']}",
                "—" if entry.get("best_epoch") is None else str(entry["best_epoch"]),
                "—" if last is None else f"{last:.4g}",
                f"{min(val):.4g}" if val else "—",
            ]
        )
    return header, rows


def cost_rows(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Per task: training seconds, inference images/s and the MB kept after it, mean ± std."""
    keys = (
        ("train_seconds", "train s", 1),
        ("infer_images_per_s", "images/s", 1),
        ("trainable_mb", "trainable MB", 2),
        ("pretrained_mb", "pretrained MB", 2),
        ("memory_mb", "memory MB", 2),
        ("peak_memory_mb", "peak MB", 0),
    )
    names = records[0]["tasks"]
    done = min(len(r["costs"]["train_seconds"]) for r in records)
    rows = []
    for k in range(done):
        row = [names[k]]
        for key, _, digits in keys:
            values = np.array([_float((r["costs"].get(key) or [None] * done)[k]) for r in records])
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else math.nan
            std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            row.append(stat_text(mean, std, digits))
        rows.append(row)
    return ["task", *(label for _, label, _ in keys)], rows


def settings_lines(config: dict, seeds: Sequence[int]) -> list[str]:
    """What ran, from ``config.json``: dataset, categories, image size, training settings
    (the detector's resolved ones), threshold quantile and seeds."""
    if not config:
        return [f"seeds: {', '.join(map(str, seeds))}"]
    dataset = config.get("dataset", {})
    resolved = config.get("resolved", {})
    training = resolved.get("training") or config.get("training", {})
    size = f"{dataset.get('image_size')} px"
    if dataset.get("crop_size"):
        size += f", centre crop {dataset['crop_size']} px"
    lines = [
        f"dataset: {dataset.get('name')} ({dataset.get('root')})"
        + (f", protocol {dataset['protocol']}" if dataset.get("protocol") else ""),
        f"images: {size}",
        "training: "
        + (", ".join(f"{k} {v}" for k, v in training.items() if v is not None) or "none"),
        f"detector: {_block_text(resolved.get('detector') or config.get('detector', {}))}",
        f"strategy: {_block_text(resolved.get('strategy') or config.get('strategy', {}))}",
        "threshold: quantile "
        f"{config.get('evaluation', {}).get('threshold_quantile')} of validation normals",
        f"seeds: {', '.join(map(str, seeds))}",
    ]
    return lines


def _block_text(block: dict) -> str:
    name = block.get("name", "?")
    rest = ", ".join(f"{k}={v}" for k, v in block.items() if k != "name")
    return f"{name} ({rest})" if rest else str(name)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def mean_matrix(records: Sequence[dict], kind: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """([T, C] mean, [T, C] std with ddof 1, NaN for one seed) of a matrix over ``records``."""
    stack = np.array(
        [np.array(r[kind][metric], dtype=float) for r in records], dtype=float
    )  # [S, T, C]
    with warnings.catch_warnings():  # an all-NaN cell is NaN, said once in the plot
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        std = np.nanstd(stack, axis=0, ddof=1) if len(records) > 1 else mean * np.nan
    return mean, std


def aggregate_plots(records: Sequence[dict], folder: Path) -> list[Path]:
    """The plots of a run folder of seeds, in ``folder``: mean matrices (± std), mean curves
    with a std band, every seed's training curves and the mean costs."""
    from clad.tracking import plots

    first = records[0]
    names = first["tasks"]
    written = []
    learned = plots.learned_steps(first)
    for metric in first["matrices"]:
        mean, std = mean_matrix(records, "matrices", metric)
        if np.isnan(mean).all():
            continue
        title = f"{metric}, mean ± std over {len(records)} seeds"
        path = folder / f"matrix_{metric}.png"
        written.append(plots.matrix_heatmap(mean, names, title, path, learned=learned, std=std))
        if metric in plots.CURVE_METRICS:
            path = folder / f"curves_{metric}.png"
            written.append(plots.task_curves(mean, names, title, path, learned=learned, std=std))
    categories = first.get("categories", names)
    if len(categories) > len(names):
        learned_c = plots.learned_steps(first, "category")
        for metric in first["category_matrices"]:
            mean, std = mean_matrix(records, "category_matrices", metric)
            if np.isnan(mean).all():
                continue
            title = f"{metric} per category, mean ± std over {len(records)} seeds"
            path = folder / f"matrix_categories_{metric}.png"
            written.append(
                plots.matrix_heatmap(mean, names, title, path, categories, learned_c, std=std)
            )
    histories = [r.get("history", []) for r in records]
    if any(plots.has_history(h) for h in histories):
        labels = [f"seed {r['seed']}" for r in records]
        written.append(plots.history_curves(histories, folder / "history.png", labels))
    done = min(len(r["costs"]["train_seconds"]) for r in records)
    mean_costs: dict[str, Any] = {}
    std_costs: dict[str, Any] = {}
    for key in COST_KEYS:
        stack = np.array(
            [[_float(v) for v in (r["costs"].get(key) or [None] * done)[:done]] for r in records]
        )  # [S, T]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_costs[key] = np.nanmean(stack, axis=0).tolist()
            spread = np.nanstd(stack, axis=0, ddof=1) if len(records) > 1 else np.zeros(done)
        std_costs[key] = spread.tolist()
    written.append(plots.cost_bars(mean_costs, names, folder / "costs.png", std_costs))
    return written


COST_KEYS = (
    "train_seconds",
    "infer_images_per_s",
    "trainable_mb",
    "pretrained_mb",
    "memory_mb",
    "peak_memory_mb",
)  # the per-task costs of a record (``clad.runner.COST_KEYS``)

MATRIX_CAPTION = (
    "Rows: after training task t; columns: the evaluated task. Hatched: evaluated before the "
    "task was learnt; grey n/a: no value."
)
CURVES_CAPTION = (
    "Solid: after the task is learnt; dotted: before (evaluated on a task not trained on yet)."
)
ROUTING_CAPTION = (
    "Share of each category's test images that the method sent to its own task's part; the "
    "oracle matrices score each category with that part."
)
PLOT_ORDER = (
    ("Task matrices", "matrix_*.png", "half", MATRIX_CAPTION),
    ("Category matrices", "matrix_categories_*.png", "half", "A column per category."),
    ("Routing", "routing.png", "half", ROUTING_CAPTION),
    ("Oracle routing", "matrix_oracle_*.png", "half", ""),
    ("Per-task curves", "curves_*.png", "half", CURVES_CAPTION),
    ("Training curves", "history.png", "full", ""),
    ("Costs", "costs.png", "full", ""),
    ("Scores after the last task", "roc_final.png", "third", ""),
    ("", "scores_final.png", "full", ""),
    ("", "sections_final.png", "full", ""),
)
"""(section title, file pattern, width on the page, caption) of a report's plots, in order;
an untitled entry continues the section before it."""


def plot_sections(folder: Path) -> list[tuple[str, list[Path], str, str]]:
    """(title, files, size, caption) of each section of plots found in ``folder``."""
    sections = []
    taken: set[Path] = set()
    for title, pattern, size, caption in PLOT_ORDER:
        found = [p for p in sorted(folder.glob(pattern)) if p not in taken]
        if pattern == "matrix_*.png":
            found = [
                p for p in found if not p.name.startswith(("matrix_categories_", "matrix_oracle_"))
            ]
        found.sort(key=_plot_rank)
        taken.update(found)
        if found:
            sections.append((title, found, size, caption))
    return sections


def _plot_rank(path: Path) -> tuple[int, int, str]:
    """Plots of the headline metrics first (``METRIC_LABELS``' order), categories' after."""
    metric = path.stem.split("_", 1)[-1].removeprefix("categories_").removeprefix("oracle_")
    order = list(METRIC_LABELS)
    rank = order.index(metric) if metric in order else len(order)
    return ("_categories_" in path.name, rank, path.name)


def write_run_report(folder: Path, plots: bool = True) -> Path:
    """Write ``report.md``, ``report.html``, ``report.tex`` and ``report.csv`` in ``folder`` (a
    seed's folder, or a run folder whose seeds are aggregated); return the Markdown path.
    ``plots=False`` (``output.plots`` off): tables only."""
    folder = Path(folder)
    single = (folder / "metrics.json").is_file()
    records = [read_json(folder / "metrics.json")] if single else load_seed_records(folder)
    seed_dirs = [folder] if single else [folder / f"seed_{r['seed']}" for r in records]
    config_path = seed_dirs[0] / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    first = records[0]
    seeds = [r["seed"] for r in records]
    plot_folder = folder / ("plots" if single else "report_plots")
    sections: list[tuple[str, list[Path], str, str]] = []
    overlay_files: list[Path] = []
    if plots:
        if single and not (plot_folder / "costs.png").is_file():
            from clad.tracking.plots import record_plots

            record_plots(first, plot_folder)  # a run written before these plots existed
        elif not single:
            aggregate_plots(records, plot_folder)
        sections = plot_sections(plot_folder)
        if not single:  # the first seed's own plots of its scores
            scored = [
                (t, f, s, c + f" (seed {seeds[0]})" if c else f"seed {seeds[0]}")
                for t, f, s, c in plot_sections(seed_dirs[0] / "plots")
                if t in ("Scores after the last task", "")
            ]
            sections += scored
        overlay_files = sorted((seed_dirs[0] / "overlays").glob("*.png"))

    title = first["run_name"] + ("" if single else f" ({len(records)} seeds)")
    incomplete = [r["seed"] for r in records if r["completed_tasks"] < len(r["tasks"])]
    intro = [
        f"Detector `{first['detector']}`, strategy `{first['strategy']}`; "
        f"{len(first['tasks'])} tasks: {', '.join(first['tasks'])}; seeds {seeds}"
        + ("" if single else " (values: mean ± sample std over the seeds)")
        + ".",
    ]
    if incomplete:
        intro.append(f"**Incomplete seeds** (not every task finished): {incomplete}")
    settings = settings_lines(config, seeds)
    grid_header, grid_rows = summary_grid(records)
    final_header, final_table = final_rows(records)
    cost_header, cost_table = cost_rows(records)
    history_header, history_table = history_rows(first)
    table = aggregate(records)
    all_header = ["metric", "value"] if single else ["metric", "mean", "std", "seeds"]
    all_rows = [
        [key, fixed(row["mean"], 4)]
        if single
        else [key, fixed(row["mean"], 4), fixed(row["std"], 4, missing=""), str(row["n"])]
        for key, row in table.items()
    ]
    trained = any(entry.get("epochs") for entry in first.get("history", []))
    history_title = "Training" + ("" if single else f" (seed {seeds[0]})")

    md = [f"# {title}", "", *intro, "", "## Settings", "", *[f"- {line}" for line in settings]]
    md += ["", "## Summary", "", *markdown_table(grid_header, grid_rows)]
    md += ["", "## After the last task", "", *markdown_table(final_header, final_table)]
    if trained:
        md += ["", f"## {history_title}", "", *markdown_table(history_header, history_table)]
    md += ["", "## Costs per task", "", *markdown_table(cost_header, cost_table)]
    md += ["", "## Every value", "", *markdown_table(all_header, all_rows)]
    for section_title, paths, _, caption in sections:
        if section_title:
            md += ["", f"## {section_title}", ""] + ([caption, ""] if caption else [])
        md += [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in paths]
    if overlay_files:
        md += ["", "## Overlays", ""]
        md += [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in overlay_files]
    md.append("")
    md_path = folder / "report.md"
    atomic_write(md_path, lambda h: h.write("\n".join(md).encode()))

    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<p>{html.escape(line.replace('`', ''))}</p>" for line in intro]
    body.append("<h2>Settings</h2><ul>")
    body += [f"<li>{html.escape(line)}</li>" for line in settings]
    body.append("</ul><h2>Summary</h2>")
    body.append(html.table(grid_header, grid_rows))
    body.append("<h2>After the last task</h2>" + html.table(final_header, final_table))
    if trained:
        body.append(f"<h2>{html.escape(history_title)}</h2>")
        body.append(html.table(history_header, history_table))
    body.append("<h2>Costs per task</h2>" + html.table(cost_header, cost_table))
    for section_title, paths, size, caption in sections:
        if section_title:
            body.append(f"<h2>{html.escape(section_title)}</h2>")
            if caption:
                body.append(f'<p class="caption">{html.escape(caption)}</p>')
        body.append(html.figures(paths, size))
    if overlay_files:
        where = "" if single else f" (seed {seeds[0]})"
        body.append(f"<h2>Overlays{html.escape(where)}</h2>")
        body.append(
            '<p class="caption">Anomalous test images after the last task: the file and its '
            "defect type, the ground truth (red), the anomaly map with its colour bar; the "
            "pixel threshold set on validation normals is the white contour and the line on "
            "the colour bar.</p>"
        )
        body.append(html.figures(overlay_files, "half", [p.stem for p in overlay_files]))
    body.append("<h2>Every value</h2>" + html.table(all_header, all_rows))
    atomic_write(
        folder / "report.html", lambda h: h.write(html.page(f"clad: {title}", body).encode())
    )

    caption = (
        f"{first['run_name']}: detector {first['detector']}, strategy {first['strategy']}, "
        f"{len(first['tasks'])} tasks"
        + ("" if single else f"; mean ± std over {len(records)} seeds")
        + ". Final average after the last task; forgetting and BWT of the same matrices."
    )
    tex = latex_table(grid_header, grid_rows, caption, f"tab:{first['run_name']}")
    atomic_write(folder / "report.tex", lambda h: h.write(tex.encode()))
    write_csv(
        folder / "report.csv",
        ["metric", "mean", "std", "seeds"],
        [[k, v["mean"], v["std"], v["n"]] for k, v in table.items()],
    )
    return md_path
