"""An example clad plugin: image anomaly scores from the k nearest pooled training embeddings.

Each image is embedded as the global average of a frozen backbone's stride-16 features,
L2-normalised; ``fit`` keeps the embeddings of the images it is given (a new ``fit`` replaces
them: under ``naive`` the detector forgets, under ``replay`` or ``multi_task`` it holds what it
is fed); the score of an image is the mean distance to its ``k`` nearest kept embeddings. It has
no anomaly maps (``pixel`` is None: pixel metrics are reported as not available).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clad.models.base import LOADER_KEYS, Detector, Training, resolve_device, tensor_bytes
from clad.models.components.backbone import FeatureExtractor, stride_layers
from clad.records import Scores


class PooledKnn(Detector):
    """k-nearest-neighbour scores over pooled backbone embeddings (module docstring).

    Args:
        backbone: one of clad's shared backbones.
        weights: ``"imagenet"``, a state-dict file, or ``"none"`` (random init, for tests).
        k: the neighbours averaged (capped by the number of kept embeddings).
        training: batches, device and loader workers (it trains nothing).
    """

    training_keys = LOADER_KEYS
    training_defaults = Training(batch_size=32)

    def __init__(
        self,
        backbone: Literal["resnet18", "wide_resnet50_2", "efficientnet_lite0"] = "resnet18",
        weights: str = "imagenet",
        k: PositiveInt = 3,
        training: Training | None = None,
    ) -> None:
        self.training = training or self.training_defaults
        self.device = resolve_device(self.training.device)
        self.k = k
        layer = stride_layers(backbone, [16])[0]
        self.extractor = FeatureExtractor(backbone, [layer], weights).to(self.device)
        self.bank: Tensor | None = None  # [N, D] kept embeddings

    def embed(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, D] unit embeddings, on the CPU."""
        with torch.no_grad():
            features = self.extractor(images.to(self.device))[0]  # [B, D, h, w]
            return F.normalize(features.mean(dim=(2, 3)), dim=1).float().cpu()

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        loader = DataLoader(train, batch_size=self.training.batch_size, shuffle=False)
        self.bank = torch.cat([self.embed(images) for images, _, _ in loader])

    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        assert self.bank is not None
        distances = torch.cdist(self.embed(x), self.bank)  # [B, N]
        nearest = distances.topk(min(self.k, len(self.bank)), dim=1, largest=False).values
        return Scores(image=nearest.mean(dim=1), pixel=None)

    @property
    def is_fitted(self) -> bool:
        return self.bank is not None

    def state_dict(self) -> dict:
        backbone = self.extractor.state_dict() if self.extractor.weights == "none" else None
        return {"bank": self.bank, "backbone": backbone}

    def load_state_dict(self, state: dict) -> None:
        if state["backbone"] is not None:
            self.extractor.load_state_dict(state["backbone"])
        self.bank = state["bank"]

    def cost_bytes(self) -> dict[str, int]:
        backbone = tensor_bytes(self.extractor.state_dict())
        random = self.extractor.weights == "none"  # saved with the state: counted as trained
        return {
            "trainable": backbone if random else 0,
            "pretrained": 0 if random else backbone,
            "memory": tensor_bytes(self.bank),
        }
