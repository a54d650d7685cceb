"""What a worker needs to run a cell, and how cells ended: plain, picklable records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clad.tracking.run_folders import CellState


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run one cell; plain data, picklable without importing torch."""

    run_name: str
    seed: int
    config: dict[str, Any]
    output_root: str
    source: str
    resume: bool
    overwrite: bool
    device: str
    gpu: str | None = None
    cwd: str | None = None
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"{self.run_name}/seed_{self.seed}"

    def folder(self) -> Path:
        return Path(self.output_root) / self.run_name / f"seed_{self.seed}"


@dataclass
class FolderChanges:
    """A cell folder's changes on a worker since they were last sent (``--copy-back``): the new
    and changed files as an uncompressed tar, and every entry the folder holds now (relative
    paths), so the driver can drop what the run removed."""

    archive: bytes
    entries: list[str]


@dataclass
class CellResult:
    """How a cell ended: ``ok``, a one-line ``message`` and the final summary when it finished;
    ``elsewhere``: not run, because another process holds the cell (neither done nor failed);
    ``files``: the folder's last changes, when it ran on a worker without shared storage."""

    label: str
    ok: bool
    message: str
    seconds: float
    summary: dict[str, float] = field(default_factory=dict)
    files: FolderChanges | None = None
    elsewhere: bool = False


@dataclass
class SweepOutcome:
    """Counts and failures of one sweep invocation."""

    total: int
    skipped: int
    results: list[CellResult]
    not_run: list[tuple[str, CellState]]

    @property
    def failures(self) -> list[CellResult]:
        return [r for r in self.results if not r.ok and not r.elsewhere]
