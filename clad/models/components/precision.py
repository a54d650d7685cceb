"""Numeric precision of a detector's forward passes: one policy for every trained detector.

``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``. On CUDA, ``bf16`` and ``fp16`` run the
forward passes (frozen backbones included) under ``torch.autocast`` in that type; ``fp16``
scales the gradients, with one ``GradScaler`` per optimiser so that every optimiser step has its
own ``update`` (bf16 needs no scaling: its exponent range is float32's). On the CPU everything is
float32 whatever the setting. Each detector names the precision it needs
(the ``precision`` of its ``training_defaults``; flows and the WGAN-GP critic need float32),
and ``training.precision`` overrides it.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast in ``precision`` on CUDA; a no-op for ``fp32`` and on the CPU."""
    if device.type == "cuda" and precision in DTYPES:
        return torch.autocast(device_type="cuda", dtype=DTYPES[precision])
    return contextlib.nullcontext()


class Scalers:
    """One ``GradScaler`` per optimiser (enabled for ``fp16`` on CUDA only)."""

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.enabled = device.type == "cuda" and precision == "fp16"
        self.scalers: dict[int, torch.amp.GradScaler] = {}

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Back-propagate ``loss`` (scaled) and step ``optimizer`` with its own scaler."""
        scaler = self.scalers.get(id(optimizer))
        if scaler is None:
            scaler = self.scalers[id(optimizer)] = torch.amp.GradScaler(
                "cuda", enabled=self.enabled
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
