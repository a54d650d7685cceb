"""Small stand-ins for strategy tests: a detector that records what ``fit`` received."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from clad.models.base import Detector, TrainedDetector, Training
from clad.records import Scores, Task
from clad.strategies.base import DetectorFactory, Strategy


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


def unit_tasks(sizes: list[int], side: int = 8) -> list[Task]:
    """Tasks of constant images in [0, 1]: channel 0 is ``task id / 255``, channel 1 is
    ``index / 255``, channel 2 is 0.5; so resizing keeps them and uint8 storage is exact."""
    tasks = []
    for t, n in enumerate(sizes):

        def make(count: int, tid: int = t) -> Dataset:
            images = torch.full((count, 3, side, side), 0.5)
            images[:, 0] = tid / 255
            images[:, 1] = torch.arange(count, dtype=torch.float)[:, None, None] / 255
            return TensorDataset(
                images, torch.zeros(count, 1, side, side), torch.zeros(count).long()
            )

        tasks.append(Task(task_id=t, name=f"t{t}", train=make(n), val=make(2), test=make(3)))
    return tasks


def unit_pairs(train: Dataset) -> list[tuple[int, int]]:
    """The (task id, index) pairs that ``unit_tasks`` images encode (mean of channels 0, 1)."""
    pairs = []
    for i in range(len(train)):
        image = train[i][0]
        pairs.append((round(float(image[0].mean()) * 255), round(float(image[1].mean()) * 255)))
    return pairs


class RecordingLatent(RecordingDetector):
    """A recording detector with an exact encoder and decoder: a code is the image's mean
    colour [3]; decoding paints it over ``side`` x ``side`` pixels."""

    name = "recording_latent"

    def __init__(self, side: int = 8) -> None:
        super().__init__()
        self.side = side
        self.decoded = 0

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        self.fits.append(unit_pairs(train))
        self.offset += 1.0

    def encode(self, images: Tensor) -> Tensor:
        return images.mean(dim=(2, 3))  # [N, 3]

    def decode(self, codes: Tensor) -> Tensor:
        self.decoded += len(codes)
        return codes[:, :, None, None].expand(-1, -1, self.side, self.side).clone()

    def sample_codes(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, 3, generator=generator)


class RecordingTrained(TrainedDetector):
    """A real trained detector, a 1x1 convolution fitted to reproduce its input, that records
    the (task id, index) pairs of every ``fit`` (``unit_tasks`` images)."""

    name = "recording_trained"

    def __init__(self, epochs: int = 2) -> None:
        super().__init__(Training(epochs=epochs, batch_size=4, lr=0.05, patience=0, device="cpu"))
        self.network = nn.Conv2d(3, 3, 1)
        self.fits: list[list[tuple[int, int]]] = []

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        self.fits.append(unit_pairs(train))
        super().fit(train, val)

    def loss(self, images: Tensor) -> Tensor:
        return (self.network(images) - images.flip(1)).pow(2).mean()

    def distillation_outputs(self, images: Tensor) -> Tensor:
        return self.network(images)

    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        with torch.no_grad():
            maps = (self.network(x) - x.flip(1)).pow(2).mean(dim=1)
        return Scores(image=maps.flatten(1).mean(dim=1), pixel=maps)


def counts(seen: list[tuple[int, int]]) -> Counter:
    """How many of the (task id, index) pairs a detector saw come from each task."""
    return Counter(t for t, _ in seen)


def param_bytes(detector: TrainedDetector) -> int:
    """Bytes of a trained detector's network parameters."""
    return sum(p.numel() * p.element_size() for p in detector.network.parameters())


class RoutedModels(Strategy):
    """A task-agnostic strategy with one detector per task: each test image goes to the part
    whose score for it is lowest (as per-task banks route), for tests of routing accuracy and
    oracle routing. Named in configurations as ``tests.fakes:RoutedModels``."""

    def __init__(self, make_detector: DetectorFactory) -> None:
        super().__init__(make_detector)
        self.parts: list[Detector] = []

    def learn(self, task: Task) -> None:
        detector = self.make_detector()
        detector.fit(task.train, task.val)
        self.parts.append(detector)
        self.detector = detector

    def predict_routed(self, x: Tensor, task_id: int | None) -> tuple[Scores, Tensor | None]:
        if not self.parts:
            raise RuntimeError("routed: predict called before any learn")
        scores = [part.predict(x) for part in self.parts]
        routes = torch.stack([s.image for s in scores]).argmin(dim=0)  # [B]
        rows = torch.arange(len(x))
        image = torch.stack([s.image for s in scores])[routes, rows]
        pixel = None
        if scores[0].pixel is not None:
            pixel = torch.stack([s.pixel for s in scores])[routes, rows]  # type: ignore[misc]
        return Scores(image=image, pixel=pixel), routes

    def predict(self, x: Tensor, task_id: int | None) -> Scores:
        return self.predict_routed(x, task_id)[0]

    def predict_part(self, x: Tensor, task_id: int) -> Scores | None:
        return self.parts[task_id].predict(x)

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        self.parts = []
        for saved in state["parts"]:
            part = self.make_detector()
            part.load_state_dict(saved)
            self.parts.append(part)
        self.detector = self.parts[-1] if self.parts else None
