"""A detector for the cluster test (``tests/sweeps/test_ray_cluster.py``), named in a config by
its import path ``tests.sweeps.gated_detector:GatedConvAE``: ``conv_ae`` whose second and later
``fit`` of one instance waits until the file ``gate`` exists. A fresh run learns its first task,
writes its checkpoint and then holds before the second task until the test opens the gate, so
the test can stop a node while runs are certainly part-way; a resumed run (a fresh instance
that starts at a later task) does not wait. The wait does not touch the numbers: a gated run
equals ``conv_ae`` with the same settings."""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import Dataset

from clad.models.autoencoder import ConvAE
from clad.models.base import Training

GATE_TIMEOUT_S = 900.0  # a gate never opened (a broken test) ends the run with an error


class GatedConvAE(ConvAE):
    def __init__(self, gate: str = "", training: Training | None = None) -> None:
        super().__init__(training=training)
        self.gate = gate
        self.fits = 0

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        self.fits += 1
        if self.gate and self.fits > 1:
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while not Path(self.gate).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gate {self.gate} was never opened")
                time.sleep(0.2)
        super().fit(train, val)
