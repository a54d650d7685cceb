"""Command line: ``run`` (the default), ``sweep``, ``report``, ``predict``, ``export``,
``generate`` and ``protocols``. See ``python main.py --help``."""

from __future__ import annotations

import signal
import sys

from clad.cli import generate
from clad.cli.commands import (
    Interrupted,
    cmd_export,
    cmd_predict,
    cmd_protocols,
    cmd_report,
    cmd_run,
    cmd_sweep,
    run_parser,
)
from clad.errors import ConfigError, DatasetError, OutputError, TrainingError

COMMANDS = {
    "run": cmd_run,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "predict": cmd_predict,
    "export": cmd_export,
    "generate": generate.cmd_generate,
    "protocols": cmd_protocols,
}


USER_ERRORS = (ConfigError, DatasetError, FileNotFoundError, TrainingError, OutputError)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user mistake is one ``error: ...`` line per problem on stderr (exit
    2), an interrupt one line saying what is saved and how to resume (exit 130 / 143)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    elif argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        run_parser().print_help()
        print(
            "\nCommands: run (default), sweep, report, predict, export, generate, protocols. "
            "`clad <command> --help` for each."
        )
        return 0
    else:
        command = "run"
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _raise_interrupted)
    try:
        return COMMANDS[command](argv)
    except Interrupted as stop:  # before a run started, or in report/generate
        print(f"[clad] {stop.signal_name}: stopped", file=sys.stderr)
        return stop.exit_code
    except Exception as err:  # a user mistake: one clear line, no traceback
        from clad.tracking.files import CheckpointError
        from clad.tracking.run_folders import RunExistsError

        if isinstance(err, (*USER_ERRORS, RunExistsError, CheckpointError, ValueError)):
            for line in str(err).strip().splitlines() or [type(err).__name__]:
                print(f"error: {line}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            return 2
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
