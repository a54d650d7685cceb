"""Which settings of two run configurations differ in a way that can change a run's numbers."""

from __future__ import annotations

import json
from typing import Any

NOT_COMPARED = (
    "output",
    "wandb",
    "evaluation.overlays_per_task",
    "evaluation.feature_cache_mb",
    "training.num_workers",
    "dataset.root",
    "resolved",
    "seed",
)
"""Config keys that do not change a run's numbers (or that move with the machine), and the
records ``config.json`` carries besides the config: a difference there does not make a run
stale, and ``--resume`` accepts it."""


def config_differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list:
    """Dotted keys whose values differ between two config dumps, ``NOT_COMPARED`` left out (keys
    on one side only are not compared either, so a field added to the schema later does not make
    finished runs look changed)."""
    diffs = []
    for key in sorted(stored.keys() & wanted.keys()):
        name = f"{prefix}{key}"
        if name in NOT_COMPARED:
            continue
        a, b = stored[key], wanted[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return sorted(diffs)
