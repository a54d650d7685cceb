"""Seeding and RNG state capture, so a seed fixes every sampling step and resumes are exact."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def set_deterministic(enabled: bool) -> None:
    """torch's deterministic algorithms (``torch.use_deterministic_algorithms``), with cuBLAS's
    workspace setting they need on CUDA (set before CUDA starts). An operation that has no
    deterministic kernel warns instead of failing (``warn_only``), so a run never stops for it;
    on CUDA that includes the backward pass of bilinear upsampling."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def rng_state() -> dict:
    """Every RNG's state as tensors, ints, floats, strings and tuples only, so a checkpoint
    holding it loads with ``torch.load(weights_only=True)``."""
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # the global RandomState is MT19937: a legacy tuple
    kind, keys, pos, has_gauss, cached = legacy
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
