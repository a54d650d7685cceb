"""The documentation's command lines work, and what the README states agrees with the code.

Every ```` ```bash ```` block of README.md and docs/**/*.md that holds ``python main.py ...`` or
``clad ...`` command lines carries a marker in an HTML comment on the line before it (the rendered
page does not show it):

- ``<!-- test: run -->``: each command line is run (``--output`` / ``--out`` go to a temporary
  folder, W&B is off); ``<!-- test: run slow -->``: the same, marked ``slow``;
- ``<!-- test: check -->``: each command line is parsed by its command's parser and its
  configuration (a run's, or every cell of a sweep's) is loaded with its ``--set`` overrides,
  without data or training: a real dataset's root need not exist;
- ``<!-- test: no (reason) -->``: nothing (placeholders, a command that needs a finished run).

A block without a marker fails, so a documented command line is either exercised or says why
not. Identical command lines of several pages run once.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.paths import REPO as ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"^<!--\s*test:\s*(?P<mode>run slow|run|check|no\b.*?)\s*-->$")
COMMANDS = ("run", "sweep", "report", "predict", "export", "generate", "protocols")
README_LIMIT = 250


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    marker: str | None  # "run", "run slow", "check", "no (...)" or None
    commands: tuple[tuple[str, ...], ...]  # each command line's arguments after main.py / clad


def command_lines(body: list[str]) -> list[tuple[str, ...]]:
    """The ``python main.py`` / ``clad`` command lines of a block, continuation lines joined and
    comments dropped, as argument tuples (what follows ``main.py`` or ``clad``)."""
    joined: list[str] = []
    pending = ""
    for line in body:
        text = line.rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        joined.append(pending + text)
        pending = ""
    if pending:
        joined.append(pending)
    found = []
    for text in joined:
        if not text.lstrip().startswith(("python main.py", "clad ")):
            continue
        tokens = shlex.split(text, comments=True)
        if tokens[:2] == ["python", "main.py"]:
            found.append(tuple(tokens[2:]))
        elif tokens[:1] == ["clad"] and "..." not in tokens:
            found.append(tuple(tokens[1:]))
    return found


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```bash"):
            start = i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            previous = next(
                (lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), ""
            )
            match = MARKER.match(previous)
            commands = command_lines(lines[start + 1 : end])
            page = str(path.relative_to(ROOT))
            found.append(Block(page, start + 1, match["mode"] if match else None, tuple(commands)))
            i = end
        i += 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def commands_marked(*modes: str) -> dict[tuple[str, ...], list[str]]:
    """Command line -> the places (page:line) that show it, for blocks marked with ``modes``."""
    found: dict[tuple[str, ...], list[str]] = {}
    for block in ALL_BLOCKS:
        if block.marker in modes:
            for argv in block.commands:
                found.setdefault(argv, []).append(f"{block.page}:{block.line}")
    return found


def params(*modes: str, slow: bool = False) -> list:
    marks = [pytest.mark.slow] if slow else []
    return [
        pytest.param(argv, where, id=" ".join(argv)[:80], marks=marks)
        for argv, where in commands_marked(*modes).items()
    ]


# ---------------------------------------------------------------------------------- the markers


def test_every_documented_command_block_is_marked():
    unmarked = [f"{b.page}:{b.line}" for b in ALL_BLOCKS if b.commands and b.marker is None]
    assert not unmarked, (
        "bash blocks with python main.py / clad command lines need a marker on the line before "
        "them (<!-- test: run -->, <!-- test: run slow -->, <!-- test: check --> or "
        f"<!-- test: no (reason) -->): {', '.join(unmarked)}"
    )
    assert commands_marked("run") and commands_marked("check")


# ------------------------------------------------------------------------------- run and check


def command_of(argv: tuple[str, ...]) -> tuple[str, list[str]]:
    if argv and argv[0] in COMMANDS:
        return argv[0], list(argv[1:])
    return "run", list(argv)


def runnable(argv: tuple[str, ...], tmp_path: Path) -> list[str]:
    """``argv`` with its outputs sent to ``tmp_path`` (a run or sweep folder, generated data)."""
    command, rest = command_of(argv)
    if "-h" in rest or "--help" in rest or command in ("protocols", "report"):
        return list(argv)
    if command == "generate":
        out = rest.index("--out")
        rest[out + 1] = str(tmp_path / Path(rest[out + 1]).name)
        return [command, *rest]
    extra = ["--output", str(tmp_path / "output")]
    if command == "run":
        extra += ["--set", "wandb.enabled=false"]
    return ([command] if argv and argv[0] == command else []) + rest + extra


def run_command(argv: tuple[str, ...], where: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "main.py", *runnable(argv, tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, (
        f"{', '.join(where)}: python main.py {' '.join(argv)} exited {result.returncode}:\n"
        f"{result.stderr[-2000:]}"
    )


@pytest.mark.parametrize(("argv", "where"), params("run"))
def test_documented_command_runs(argv, where, tmp_path):
    run_command(argv, where, tmp_path)


@pytest.mark.parametrize(("argv", "where"), params("run slow", slow=True))
def test_documented_slow_command_runs(argv, where, tmp_path):
    run_command(argv, where, tmp_path)


@pytest.mark.parametrize(("argv", "where"), params("check"))
def test_documented_command_parses_and_its_configuration_loads(argv, where):
    from clad.cli.commands import run_parser, sweep_parser
    from clad.config import load_config

    command, rest = command_of(argv)
    if command == "run":
        args = run_parser().parse_args(rest)
        load_config(args.parameters_path, args.overrides, check_machine=False)
    elif command == "sweep":
        from clad.sweeps.expansion import expand
        from clad.sweeps.spec import load_sweep_spec

        args = sweep_parser().parse_args(rest)
        sweep = expand(load_sweep_spec(args.sweep_file), args.sweep_file, args.overrides)
        invalid = [f"{c.run_name}: {c.error}" for c in sweep.cells if c.error]
        assert not invalid, f"{', '.join(where)}: invalid cells: {invalid[:3]}"
    else:
        pytest.fail(
            f"{', '.join(where)}: `check` applies to run and sweep; use `run` for {command}"
        )


# ------------------------------------------------------------------------------ the README


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_LIMIT, f"README.md has {len(lines)} lines; move detail to docs/"


def readme_table() -> tuple[list[str], dict[str, list[str]]]:
    """The README's detectors x strategies table: its strategy columns, and per detector the
    cells (``✓`` or ``–``) under them."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| detector | paper |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")][2:]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[2:]
    return header, rows


def test_readme_detector_table_agrees_with_the_registry():
    import clad.models  # noqa: F401  (fills the tables)
    import clad.strategies  # noqa: F401
    from clad.errors import ConfigError
    from clad.registry import detector_table, strategy_table

    header, rows = readme_table()
    detectors, strategies = detector_table(), strategy_table()
    missing = sorted(set(detectors) - set(rows))
    assert not missing, f"registered detectors missing from README.md's table: {missing}"
    assert not set(rows) - set(detectors), "README.md's table names unregistered detectors"

    def accepts(strategy: str, detector: str) -> bool:
        try:
            strategies[strategy].check_arguments({}, detectors[detector])
        except (ConfigError, ValueError):
            return False
        return True

    columns = [re.findall(r"`([a-z_]+)`", column) for column in header]
    listed = {name for names in columns for name in names}
    every = [s for s in strategies if s not in listed]
    for detector, cells in rows.items():
        for names, cell in zip(columns, cells, strict=True):
            for strategy in names:
                assert accepts(strategy, detector) == (cell == "✓"), (
                    f"README.md: {detector} x {strategy} is {cell!r}, the configuration check "
                    f"{'accepts' if accepts(strategy, detector) else 'refuses'} it"
                )
        refused = [s for s in every if not accepts(s, detector)]
        assert not refused, f"README.md says every detector takes {refused}; {detector} does not"
    text = (ROOT / "README.md").read_text()
    assert all(f"`{s}`" in text for s in every), "the strategies every detector takes are named"


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")]
    missing = [page for page in pages if page not in nav]
    assert not missing, f"docs pages not in mkdocs.yml's nav: {missing}"


def test_readme_links_point_at_files():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


# ------------------------------------------------------------------------------------ --help


def test_help_lists_the_detectors_and_strategies_and_its_examples_once(capsys):
    import clad.models  # noqa: F401
    import clad.strategies  # noqa: F401
    from clad.cli import main
    from clad.registry import detector_table, strategy_table

    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("Examples:") == 1 and shown.count("Commands: run (default)") == 1
    listed = shown[shown.index("Detectors (detector.name):") :]
    names = set(re.findall(r"[a-z0-9_]+", listed))
    assert set(detector_table()) <= names and set(strategy_table()) <= names
