"""clad: a continual-learning benchmark harness for anomaly detection.

The library face (``clad.api``), importable from here::

    import clad
    result = clad.run("configurations/synthetic/demo.json", seed=0)
    result = clad.load_run("output/demo/seed_0")
    outcome = clad.sweep("configurations/sweeps/synthetic_small.json")

``clad.testing`` holds the contract checks for a detector or strategy written outside clad.
The API is imported on first use, so ``import clad`` itself stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["RunResult", "SweepResult", "load_run", "run", "sweep"]

if TYPE_CHECKING:
    from clad.api import RunResult, SweepResult, load_run, run, sweep


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clad import api

        return getattr(api, name)
    raise AttributeError(f"module 'clad' has no attribute {name!r}")
