"""Small stand-ins for strategy tests: a detector that records what ``fit`` received."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from clad.models.base import Detector
from clad.records import Scores, Task


class RecordingDetector(Detector):
    """Remembers the (task, index) pairs of every ``fit`` call; scores by a stored offset."""

    name = "recording"
    created = 0

    def __init__(self) -> None:
        RecordingDetector.created += 1
        self.fits: list[list[tuple[int, int]]] = []
        self.offset = 0.0

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        seen = []
        for i in range(len(train)):
            image, _, _ = train[i]
            seen.append((int(image[0, 0, 0]), int(image[1, 0, 0])))  # (task id, index) pixels
        self.fits.append(seen)
        self.offset += 1.0

    @property
    def is_fitted(self) -> bool:
        return bool(self.fits)

    def cost_bytes(self) -> dict[str, int]:
        return {"trainable": 0, "pretrained": 0, "memory": 0}  # no tensors

    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        return Scores(image=x.mean(dim=(1, 2, 3)) + self.offset, pixel=x.mean(dim=1))

    def state_dict(self) -> dict:
        return {"fits": self.fits, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.fits = state["fits"]
        self.offset = state["offset"]


def fake_tasks(sizes: list[int]) -> list[Task]:
    """Tasks whose images encode (task id, index) in channel 0 and 1 of pixel (0, 0)."""
    tasks = []
    for t, n in enumerate(sizes):

        def make(count: int, tid: int = t) -> Dataset:
            images = torch.zeros(count, 3, 4, 4)
            images[:, 0] = tid
            images[:, 1] = torch.arange(count, dtype=torch.float)[:, None, None]
            return TensorDataset(images, torch.zeros(count, 1, 4, 4), torch.zeros(count).long())

        tasks.append(Task(task_id=t, name=f"t{t}", train=make(n), val=make(2), test=make(3)))
    return tasks
