"""Precision of forward passes: float16 autocast for trained networks (with a gradient scaler)
and bfloat16 autocast for frozen feature extractors; both are no-ops on CPU, where everything
runs in float32."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``enabled``; a no-op on CPU (CPU training stays float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def autocast_bf16(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (no loss scaling needed), nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
