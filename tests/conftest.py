"""Shared fixtures: a tiny seeded synthetic dataset written with the generator clad ships."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# One torch thread for the whole suite: on a 2-core machine that is busy with anything else,
# torch's default of 2 OpenMP threads made training tests 10-100x slower (fork/join waits);
# single-threaded they take the same time loaded or not. Set before any test builds a model.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_CATEGORIES = ["stripes", "disc", "nut"]


def tiny_dataset(root, categories=TINY_CATEGORIES, **changes) -> dict:
    """The ``dataset`` block of a run on the tiny synthetic set (``synthetic_root``): 32 px,
    12 training images and 4 good + 2 per defect test images per category."""
    return {
        "name": "synthetic",
        "root": str(root),
        "categories": list(categories),
        "image_size": 32,
        "synthetic": {"image_size": 32, "n_train": 12, "n_test_good": 4, "n_test_per_defect": 2},
        **changes,
    }


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def clad_cache_dir(tmp_path_factory) -> Path:
    """clad's user cache (audio features without a ``cache_dir``) in a temporary folder, for
    this process and the runs it starts: the suite never writes to ``~/.cache``."""
    folder = tmp_path_factory.mktemp("clad_cache")
    os.environ["CLAD_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from clad.benchmarks.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(
        root,
        seed=0,
        categories=TINY_CATEGORIES,
        image_size=32,
        n_train=12,
        n_test_good=4,
        n_test_per_defect=2,
    )
    return root


@pytest.fixture()
def tiny_config(tmp_path, synthetic_root) -> Path:
    """A fast run config on the tiny synthetic set (conv AE, replay, 2 epochs, no W&B)."""
    config = {
        "run_name": "tiny",
        "dataset": tiny_dataset(synthetic_root),
        "detector": {"name": "conv_ae"},
        "strategy": {"name": "replay", "mem_size": 6},
        "training": {"epochs": 2, "batch_size": 8, "device": "cpu"},
        "evaluation": {"overlays_per_task": 1},
        "output": {"dir": str(tmp_path / "out")},
        "wandb": {"enabled": False},
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path
