"""The ``run``, ``sweep``, ``report``, ``predict`` and ``export`` commands: their parsers and
what they do."""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
from pathlib import Path

from clad.errors import ConfigError

RUN_HELP = """Run a continual anomaly-detection benchmark from a JSON configuration.

Examples:
  python main.py --parameters_path configurations/synthetic/demo.json --seed 0
  python main.py --parameters_path configurations/synthetic/unet_ae_replay.json --seed 0 1 2
  python main.py --parameters_path configurations/synthetic/demo.json --seed 0 --resume
  python main.py --parameters_path configurations/synthetic/demo.json --set training.epochs=1 \\
      --set "dataset.categories=[stripes,disc]"
  python main.py report output/demo
  python main.py sweep configurations/sweeps/synthetic_small.json --workers 2
  python main.py report output/synthetic_small

Outputs go to <output>/<run_name>/seed_<n>/ (config.json, metrics.json, metrics.csv, plots/,
overlays/, checkpoints/). CLAD benchmark configuration files are accepted too.
"""


class RunParser(argparse.ArgumentParser):
    """The run command's parser: its help ends with the registered detectors and strategies,
    imported only when the help is printed (a run imports them once its config is read)."""

    def format_help(self) -> str:
        self.epilog = registered_methods()
        return super().format_help()


def registered_methods(width: int = 96) -> str:
    """The names ``detector.name`` and ``strategy.name`` take, from the registry's tables."""
    import textwrap

    import clad.models  # noqa: F401  (fills the detector table)
    import clad.strategies  # noqa: F401  (fills the strategy table)
    from clad.registry import detector_table, strategy_table

    def listed(title: str, names: list[str]) -> str:
        return f"{title}:\n" + textwrap.fill(
            ", ".join(names), width, initial_indent="  ", subsequent_indent="  "
        )

    return (
        listed("Detectors (detector.name)", sorted(detector_table()))
        + "\n"
        + listed("Strategies (strategy.name)", sorted(strategy_table()))
        + '\nor a plugin: "package.module:Class", or an entry point of the group clad.detectors '
        "/ clad.strategies."
    )


def run_parser() -> argparse.ArgumentParser:
    parser = RunParser(
        prog="clad run",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--parameters_path",
        "--config",
        required=True,
        type=Path,
        help="JSON run configuration (clad or CLAD format)",
    )
    parser.add_argument(
        "--seed",
        type=seed_value,
        nargs="+",
        default=[0],
        help="one or more seeds, run one after another (default 0)",
    )
    parser.add_argument(
        "--output", default=None, help="output folder (default: the config's output.dir)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. training.epochs=1 "
        "or dataset.categories=[a,b]; repeatable",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue each seed's run from its last finished task"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again even if the output folder already holds a run",
    )
    return parser


SEED_LIMIT = 2**32
"""Seeds are below this: NumPy's global seed is a 32-bit unsigned integer."""


def seed_value(text: str) -> int:
    """``--seed``'s type: a non-negative integer below ``SEED_LIMIT``, checked before anything
    runs (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text[:40]} is out of range; a seed is an integer from 0 to {SEED_LIMIT - 1}"
        )
    return value


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clad report",
        description="Report one seed's run (output/<run>/seed_<n>), a run's seeds aggregated "
        "(mean and std; output/<run>) or compare the runs of a sweep folder: report.md, "
        "report.html (self-contained, plots embedded), report.tex (LaTeX booktabs table), "
        "report.csv.",
    )
    parser.add_argument(
        "folder",
        type=Path,
        help="a seed's folder (output/demo/seed_0), a run folder (output/demo) or a sweep "
        "folder (output/<sweep>)",
    )
    return parser


SWEEP_HELP = """Run a grid of configurations x seeds from a sweep file, then write the comparison
report. Finished runs are skipped, interrupted ones resumed from their last finished task, failed
ones retried; a failure never stops the others and is written to the run's error.txt.

Examples:
  python main.py sweep configurations/sweeps/synthetic_small.json --workers 2
  python main.py sweep configurations/sweeps/synthetic_small.json --dry-run
  python main.py sweep configurations/sweeps/clad_table.json --backend ray --address auto \\
      --set dataset.root=/data/mvtec_anomaly_detection
"""


def sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clad sweep",
        description=SWEEP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_file", type=Path, help="JSON sweep file")
    parser.add_argument(
        "--output",
        default=None,
        help="output folder; runs go to <output>/<sweep name>/<run_name>/seed_<n>"
        " (default: the sweep file's output, else the base config's)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every run",
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: runs at once (default: one per GPU, else 1)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="ray: cluster address, 'auto' or ray://host:port (default: start a "
        "local Ray instance)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        help="ray: CPUs each run declares (default: the sweep file's, 1)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="ray: GPUs each run declares (default: 1 when the cluster has GPUs)",
    )
    parser.add_argument(
        "--copy-back",
        action="store_true",
        help="ray: workers do not share the output folder; each run writes to "
        "its worker's temporary folder and its files are sent back",
    )
    parser.add_argument(
        "--threads-per-run",
        type=int,
        default=None,
        help="CPU threads of each run, on either backend (default: the sweep "
        "file's resources.cpus, 1); a fixed count keeps results independent "
        "of --workers",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state; run nothing"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start every run again, finished ones included"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not write the comparison report at the end"
    )
    return parser


def cmd_run(argv: list[str]) -> int:
    from clad.config import load_config

    args = run_parser().parse_args(argv)
    config = load_config(args.parameters_path, args.overrides)
    # the run's heavy imports (data readers, metrics, loggers) only once the config is valid
    from clad.api import run
    from clad.tracking.report import write_run_report
    from clad.tracking.run_folders import RunFolder

    for seed in args.seed:
        try:
            run(config, seed, output=args.output, resume=args.resume, overwrite=args.overwrite)
        except Interrupted as stop:
            from clad.tracking.loggers import finish_stopped_wandb

            finish_stopped_wandb(stop.exit_code)  # W&B's closing lines before the resume line
            folder = Path(args.output or config.output.dir) / config.run_name / f"seed_{seed}"
            print(
                f"[clad] {stop.signal_name}: stopped; {RunFolder(folder).saved_text()}; resume "
                f"with: {resume_command(args, seed)}",
                file=sys.stderr,
            )
            return stop.exit_code
    if len(args.seed) > 1:
        folder = Path(args.output or config.output.dir) / config.run_name
        report = write_run_report(folder, plots=config.output.plots)
        print(f"[clad] seeds aggregated in {report} and {report.with_suffix('.html')}")
    return 0


class Interrupted(BaseException):
    """SIGINT or SIGTERM while a run or sweep was going on (a ``BaseException``, so nothing on
    the way up takes it for an error)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def resume_command(args: argparse.Namespace, seed: int) -> str:
    """The exact ``main.py`` line that resumes one seed of this run."""
    parts = [
        "python main.py --parameters_path",
        shlex.quote(str(args.parameters_path)),
        "--seed",
        str(seed),
    ]
    if args.output:
        parts += ["--output", shlex.quote(str(args.output))]
    for item in args.overrides:
        parts += ["--set", shlex.quote(item)]
    return " ".join([*parts, "--resume"])


def cmd_report(argv: list[str]) -> int:
    from clad.tracking.comparison import is_sweep_folder, write_comparison_report
    from clad.tracking.report import write_run_report

    args = report_parser().parse_args(argv)
    if is_sweep_folder(args.folder):
        paths = write_comparison_report(args.folder)
        print(markdown_section(paths["md"].read_text(), "Results"))
        print(f"[clad] wrote {', '.join(str(p) for p in paths.values())}")
        return 0
    path = write_run_report(args.folder)
    print(markdown_section(path.read_text(), "Summary"))
    written = [path.with_suffix(suffix) for suffix in (".md", ".html", ".tex", ".csv")]
    print(f"[clad] wrote {', '.join(str(p) for p in written)}")
    return 0


def markdown_section(text: str, title: str) -> str:
    """The body of a report's ``## <title>`` section (what ``report`` prints; the rest is in
    the files)."""
    body = text.split(f"\n## {title}\n", 1)[-1]
    return body.split("\n## ", 1)[0].strip()


def cmd_sweep(argv: list[str]) -> int:
    from clad.sweeps import expand, format_plan, load_sweep_spec, run_sweep, summary_line

    args = sweep_parser().parse_args(argv)
    spec = load_sweep_spec(args.sweep_file)
    sweep = expand(spec, args.sweep_file, args.overrides, args.output)
    if args.dry_run:
        print(summary_line(sweep, args.overwrite))
        print(format_plan(sweep, args.overwrite))
        return 0
    if all(cell.config is None for cell in sweep.cells):
        first = sweep.cells[0]
        raise ConfigError(
            f"{args.sweep_file}: no run of the sweep has a valid configuration; "
            f"the first ({first.label}): {first.error}"
        )
    try:
        outcome = run_sweep(
            sweep,
            backend=args.backend,
            workers=args.workers,
            address=args.address,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            copy_back=args.copy_back,
            overwrite=args.overwrite,
            threads_per_run=args.threads_per_run,
        )
    except Interrupted as stop:
        print(
            f"[sweep] {stop.signal_name}: stopped; finished runs are kept and the interrupted "
            "ones resume from their last checkpoint when the same sweep command runs again",
            file=sys.stderr,
        )
        return stop.exit_code
    if not args.no_report:
        from clad.tracking.comparison import write_comparison_report

        paths = write_comparison_report(sweep.sweep_dir)
        print(f"[sweep] report: {', '.join(str(path) for path in paths.values())}")
    return 1 if outcome.failures or outcome.not_run else 0


def cmd_protocols(argv: list[str]) -> int:
    """``protocols``: the named protocols (``dataset.protocol``), their steps and sources."""
    from clad.benchmarks.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(
        prog="clad protocols",
        description="List the named continual anomaly-detection protocols "
        "(dataset.protocol); --name NAME prints one with every step.",
    )
    parser.add_argument("--name", default=None, help="print this protocol's steps in full")
    args = parser.parse_args(argv)
    if args.name is not None:
        if args.name not in PROTOCOLS:
            raise ConfigError(f"--name {args.name!r}: unknown; known: {', '.join(PROTOCOLS)}")
        protocol = PROTOCOLS[args.name]
        print(f"{protocol.name} ({protocol.dataset or 'any image dataset'}, {protocol.shape()})")
        print(f"source: {protocol.source}")
        for step, categories in enumerate(protocol.steps):
            print(f"  step {step}: {', '.join(categories)}")
        if protocol.drift is not None:
            print("  one category (dataset.categories), 10 steps of growing " + protocol.drift)
        return 0
    print(f"{'name':<16} {'dataset':<10} {'steps':<28} source")
    for protocol in PROTOCOLS.values():
        steps = protocol.shape()
        print(f"{protocol.name:<16} {protocol.dataset or 'any':<10} {steps:<28} {protocol.source}")
    return 0


PREDICT_HELP = """Score a folder of images with a trained run, as it was after a task (default: the
last): scores.csv (path, image score, label by folder: good = 0, other folders = 1), and for
detectors with maps the maps (.npy) and overlays (.png); summary.json with the image AUROC when
the folders give both labels.

Examples:
  python main.py predict --run output/demo/seed_0 --images data/synthetic_64/nut/test
  python main.py predict --run output/mvtec_patchcore_cl/seed_0 --task 0 \\
      --images data/mvtec_anomaly_detection/bottle/test --output predictions/bottle
"""


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clad predict",
        description=PREDICT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trained_run_arguments(parser)
    parser.add_argument(
        "--images", required=True, type=Path, help="folder of images (read recursively)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the results (default: <run>/predictions/<images folder>_task<T>)",
    )
    parser.add_argument(
        "--overlays",
        type=int,
        default=None,
        metavar="N",
        help="overlays of the first N images only (default: every image; 0: none)",
    )
    parser.add_argument("--no-maps", action="store_true", help="do not write the maps (.npy)")
    return parser


def add_trained_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run``, ``--task``, ``--task-id`` and ``--device``: which trained model, and where."""
    parser.add_argument(
        "--run",
        required=True,
        type=Path,
        help="a run's seed folder (output/<run>/seed_<n>), or its run folder when it has one seed",
    )
    parser.add_argument(
        "--task",
        type=int,
        default=None,
        help="the model as it was after this task (its checkpoint; default: the last)",
    )
    parser.add_argument(
        "--task-id",
        type=int,
        default=None,
        help="the task the images belong to: picks the model of task-aware strategies "
        "(single_model) and the thresholds marked on the overlays",
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu, cuda or cuda:<i> (default: the run's)"
    )


def cmd_predict(argv: list[str]) -> int:
    from clad.predict import load_trained, predict_folder

    args = predict_parser().parse_args(argv)
    trained = load_trained(args.run, args.task, args.device)
    output = args.output or (
        trained.folder / "predictions" / f"{args.images.resolve().name}_task{trained.task}"
    )
    result = predict_folder(
        trained, args.images, output, args.task_id, args.overlays, maps=not args.no_maps
    )
    print(
        f"[clad] {trained.folder}: the model after task {trained.task} "
        f"({trained.tasks[trained.task]}) scored {len(result.samples)} images of {args.images}"
    )
    if math.isfinite(result.auroc):
        print(f"[clad] image AUROC by folder labels (good = 0, others = 1): {result.auroc:.4f}")
    print(
        f"[clad] wrote {result.csv}, {len(result.maps)} maps and {len(result.overlays)} "
        f"overlays in {output}"
    )
    return 0


def export_parser() -> argparse.ArgumentParser:
    from clad.predict import EXPORT_FORMATS, exportable_detectors

    parser = argparse.ArgumentParser(
        prog="clad export",
        description="Export a trained run's detector (as it was after a task) to TorchScript "
        "or ONNX: a module mapping images [B, 3, H, W] in [0, 1] at the run's size to (image "
        "scores [B], anomaly maps [B, H, W]). Detectors whose scoring is one network's "
        f"forward pass export ({', '.join(exportable_detectors())}); memory-bank and routing "
        "methods do not.",
    )
    add_trained_run_arguments(parser)
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the file (default: <run>/export/<detector>_task<T>.pt or .onnx)",
    )
    return parser


def cmd_export(argv: list[str]) -> int:
    from clad.predict import export_run, load_trained

    args = export_parser().parse_args(argv)
    trained = load_trained(args.run, args.task, args.device or "cpu")
    path, difference = export_run(trained, args.format, args.output, args.task_id)
    print(
        f"[clad] exported {trained.config.detector['name']} after task {trained.task} "
        f"({trained.tasks[trained.task]}) to {path} ({args.format}); largest difference from "
        f"predict's image scores on a random batch: {difference:.2g}"
    )
    return 0
