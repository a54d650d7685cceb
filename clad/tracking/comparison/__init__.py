"""The comparison report of a sweep folder: detector x strategy, mean +/- std across seeds.

``write_comparison_report(output/<sweep>)`` reads every ``<run_name>/seed_<n>/metrics.json``
(and ``sweep.json``, the list of expected runs, so runs that never started are shown, with the
``--set`` overrides the sweep ran with; and each run's ``config.json``, for the settings that
ran) and writes ``report.md``, ``report.html`` (self-contained: plots embedded as base64 PNG),
``report.tex`` (the results as a LaTeX booktabs table), ``report.csv`` (one row per
configuration), ``report_pairs.csv`` (paired strategy comparisons) and ``report_plots/*.png``:
per detector, every strategy's average over the tasks seen on one axis (the joint bound
averages every task at every step: it has seen them all), the forgetting per task and
configuration, forgetting bars, the best cells' heatmaps, cost against quality.

- Table values are the mean and sample std (ddof 1) over the seeds whose run finished every
  task; unfinished seeds are counted in the ``seeds`` column, never averaged in.
- Machine-sound sweeps (runs scored by ``clad.metrics.audio``) rank, tabulate and plot AUC,
  pAUC and harmonic means instead of the image metrics (``rows.metric_set``).
- Best cell per detector: the highest mean final image AUROC among continual strategies; the
  reference bounds ``multi_task``, ``cumulative`` and ``single_model`` are shown, not ranked.
- Gap to the joint upper bound: mean final image AUROC of the row minus that of the same
  detector's ``multi_task`` row (same other axes): ``A - A_joint``, negative = below the bound.
- Paired comparison of strategies A, B of one detector: d_s = m_A(s) - m_B(s) over the seeds s
  both finished; the mean of d and a percentile bootstrap 95% interval (10,000 resamples of the
  seeds, numpy generator seeded with 0). With 2-3 seeds the interval is coarse; with 1 none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clad.tracking.comparison.figures import write_plots
from clad.tracking.comparison.published import CLAD_NOTE, CLAD_PUBLISHED, clad_text
from clad.tracking.comparison.render import (
    ROUTING_NOTE,
    context_lines,
    cost_table,
    csv_rows,
    forgetting_note_for,
    forgetting_table,
    incomplete_lines,
    latex_text,
    main_table,
    markdown_table,
    notes_for,
    pairs_table,
    plain_markdown,
    render_html,
    routing_table,
    settings_lines,
)
from clad.tracking.comparison.rows import Row, is_sweep_folder, load_rows, metric_set
from clad.tracking.comparison.statistics import MIN_PAIRED_SEEDS, paired_bootstrap, strategy_pairs
from clad.tracking.files import atomic_write, read_json, write_csv

__all__ = [
    "CLAD_PUBLISHED",
    "Row",
    "is_sweep_folder",
    "load_rows",
    "paired_bootstrap",
    "strategy_pairs",
    "write_comparison_report",
]


def write_comparison_report(folder: Path) -> dict[str, Path]:
    """Write the sweep's comparison report; return the paths by kind (md, html, tex, csv,
    pairs)."""
    folder = Path(folder)
    manifest, rows = load_rows(folder)
    name = manifest.get("name", folder.name)
    table = main_table(rows)
    costs = cost_table(rows)
    settings = settings_lines(_first_configs(folder, rows))
    pairs = strategy_pairs(rows)
    plots = write_plots(rows, folder / "report_plots")
    incomplete = incomplete_lines(rows)
    context = context_lines(manifest, rows)
    has_clad = any(clad_text(r) for r in rows)
    mvtec = all(
        r.get("dataset", {}).get("name", "mvtec") == "mvtec" for r in _configs(folder, rows)
    )
    metrics = metric_set(rows)
    notes = notes_for(metrics) + (
        [
            CLAD_NOTE
            + ("" if mvtec else " This sweep is not on MVTec AD: the numbers are not comparable.")
        ]
        if has_clad
        else []
    )

    md = [f"# Sweep {name}", ""]
    for line in context:
        md += [line, ""]
    if settings:
        md += ["## Settings that ran", "", *[f"- {line}" for line in settings], ""]
    md += ["## Results", ""]
    md += markdown_table(table)
    md += ["", "## Costs", "", *plain_markdown(costs)]
    md += ["", *[f"- {n}" for n in notes], ""]
    forgetting = forgetting_table(rows)
    md += ["## Forgetting, as each paper defines it", ""]
    md += plain_markdown(forgetting)
    md += ["", forgetting_note_for(metrics), ""]
    routing = routing_table(rows)
    if routing is not None:
        md += ["## Routing", "", *plain_markdown(routing), "", ROUTING_NOTE, ""]
    if incomplete:
        md += ["## Incomplete runs", "", *[f"- {line}" for line in incomplete], ""]
    if pairs:
        md += ["## Paired comparisons across seeds", ""]
        md += plain_markdown(pairs_table(pairs))
        md += [
            "",
            "Difference of strategy A minus B over the seeds both finished; 95% "
            "percentile bootstrap interval of the mean (10,000 resamples, seed 0). `clear`: "
            f"the interval excludes 0, judged on {MIN_PAIRED_SEEDS} seeds or more (with two "
            "the interval is only the range of the two differences).",
            "",
        ]
    if plots:
        md += ["## Plots", ""]
        md += [f"![{p.stem}](report_plots/{p.name})" for p in plots]
        md.append("")
    paths = {
        "md": folder / "report.md",
        "html": folder / "report.html",
        "tex": folder / "report.tex",
        "csv": folder / "report.csv",
        "pairs": folder / "report_pairs.csv",
    }
    atomic_write(paths["md"], lambda h: h.write("\n".join(md).encode()))
    page = render_html(
        name,
        context,
        table,
        notes,
        incomplete,
        pairs_table(pairs),
        plots,
        forgetting,
        costs,
        settings,
        forgetting_note_for(metrics),
        routing,
    )
    atomic_write(paths["html"], lambda h: h.write(page.encode()))
    caption = (
        f"Sweep {name}: final averages after the last task, mean ± std over the seeds that "
        f"finished; forgetting (Chaudhry et al.) and BWT of {metrics.label}."
    )
    tex = latex_text(table, caption, f"tab:{name}")
    atomic_write(paths["tex"], lambda h: h.write(tex.encode()))
    write_csv(paths["csv"], *csv_rows(rows))
    write_csv(
        paths["pairs"],
        ["detector", "axes", "a", "b", "metric", "seeds", "mean_diff", "ci_low", "ci_high"],
        [
            [
                p.detector,
                p.axes,
                p.a,
                p.b,
                p.metric,
                " ".join(map(str, p.seeds)),
                p.mean,
                p.low,
                p.high,
            ]
            for p in pairs
        ],
    )
    return paths


def _first_configs(folder: Path, rows: Sequence[Row]) -> dict[str, dict]:
    """Run name -> the ``config.json`` of its first seed that has one (what ran)."""
    found = {}
    for row in rows:
        for seed in row.seeds:
            path = folder / row.run_name / f"seed_{seed}" / "config.json"
            if path.is_file():
                found[row.run_name] = read_json(path)
                break
    return found


def _configs(folder: Path, rows: Sequence[Row]) -> list[dict]:
    configs = []
    for row in rows:
        for seed in row.records:
            path = folder / row.run_name / f"seed_{seed}" / "config.json"
            if path.is_file():
                configs.append(read_json(path))
    return configs
