"""Command line: ``run`` (the default), ``sweep``, ``report`` and ``generate``. See
``python main.py --help``."""

from __future__ import annotations

import sys

from clad.cli import generate
from clad.cli.commands import RUN_HELP, cmd_report, cmd_run, cmd_sweep, run_parser
from clad.errors import ConfigError

COMMANDS = {
    "run": cmd_run,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "generate": generate.cmd_generate,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    elif argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(
            RUN_HELP + "\nCommands: run (default), sweep, report, generate. `clad <command> "
            "--help` for each."
        )
        run_parser().print_help()
        return 0
    else:
        command = "run"
    try:
        return COMMANDS[command](argv)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # data errors and the like: a clear message, no traceback noise
        from clad.runner import RunExistsError

        if isinstance(err, (RunExistsError, ValueError)):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
