"""STFPM: student-teacher feature pyramid matching.

Wang, Wu, Cui and Wang, "Student-Teacher Feature Pyramid Matching for Anomaly Detection",
BMVC 2021 (arXiv:2103.04257).

A teacher CNN pretrained on ImageNet is frozen; a student of the same architecture, randomly
initialised, learns to reproduce the teacher's features at several depths on normal images. At
layer ``l`` with channel-wise L2-normalised features ``t_l, s_l`` [B, C_l, h_l, w_l]:

    loss_l = 1 / (2 h_l w_l) * sum_ij || t_l(i, j) - s_l(i, j) ||^2,   loss = sum_l loss_l

(averaged over the batch). The same per-position distance ``0.5 || t - s ||^2 = 1 - cos(t, s)``
is the anomaly map of layer ``l``; each is upsampled bilinearly to the input size and the maps
are multiplied (the paper) or summed (``map_fusion="sum"``). The image score is the maximum of
the fused map, as in the paper.

Where ours differs from the paper:
- Backbone: any of the shared backbones (``clad.models.components.backbone``); the paper uses
  ResNet-18 and its ``conv2_x, conv3_x, conv4_x`` stages, which ``backbone="resnet18"`` with the
  default ``layers`` reproduces. The default here is ``efficientnet_lite0`` (the pretrained
  network available offline), stages at strides 4, 8 and 16.
- Image size: whatever the dataset provides (the paper resizes to 256 x 256); the input side
  must be divisible by the backbone's deepest stride.
- Training: the paper's SGD (momentum 0.9, weight decay 1e-4, lr 0.4) inside the shared loop,
  so with validation-loss early stopping on held-out normal images (the paper trains 100 epochs
  at batch 32 and selects nothing). ``lr`` comes from the run's training block: set it to about
  0.4 for SGD (``optimizer="adam"`` works with about 3e-3).
- The student's batch-norm layers use their running statistics at test time (the paper's code
  does the same through ``model.eval()``; stated because it matters after fine-tuning).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clad.models.base import TrainedDetector, Training
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import FeatureExtractor, check_layers, pyramid_layers
from clad.records import Scores
from clad.registry import register_detector


def layer_distances(teacher: list[Tensor], student: list[Tensor]) -> list[Tensor]:
    """Per-layer ``0.5 * || t/|t| - s/|s| ||^2`` = 1 - cos(t, s): lists of [B, C_l, h_l, w_l]
    -> list of [B, h_l, w_l], computed in float32."""
    return [
        0.5 * (F.normalize(t.float(), dim=1) - F.normalize(s.float(), dim=1)).pow(2).sum(dim=1)
        for t, s in zip(teacher, student, strict=True)
    ]


class Student(nn.Module):
    """A trainable, randomly initialised network with the teacher's stages and input
    normalisation; ``forward`` returns the same layers as the teacher, with gradients."""

    mean: Tensor  # buffers [1, 3, 1, 1], the teacher's input normalisation
    std: Tensor

    def __init__(self, backbone: str, layers: tuple[str, ...]) -> None:
        super().__init__()
        template = FeatureExtractor(backbone, layers, "none")
        self.layers = template.layers
        self.stage_names = template.stage_names
        self.stages = template.stages  # the modules move here; ``template`` is dropped
        self.register_buffer("mean", template.mean.clone(), persistent=False)
        self.register_buffer("std", template.std.clone(), persistent=False)
        self.requires_grad_(True)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        found: dict[str, Tensor] = {}
        for stage_name, stage in zip(self.stage_names, self.stages, strict=True):
            x = stage(x)
            if stage_name in self.layers:
                found[stage_name] = x
        return [found[layer] for layer in self.layers]


class StudentTeacher(nn.Module):
    """A frozen pretrained teacher (always in eval mode) and a trainable student."""

    def __init__(self, backbone: str, layers: tuple[str, ...], weights: str) -> None:
        super().__init__()
        self.teacher = FeatureExtractor(backbone, layers, weights)
        self.student = Student(backbone, layers)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``x`` [B, 3, H, W] in [0, 1] -> (teacher features, student features), per layer."""
        return self.teacher(x), self.student(x)


@register_detector("stfpm")
class STFPM(TrainedDetector):
    """Student-teacher feature pyramid matching (Wang et al., 2021); see the module docstring.

    Args:
        backbone: teacher and student architecture (a name from the shared backbone table).
        layers: backbone stages to match (None: the backbone's three default stages at strides
            4, 8 and 16).
        weights: the teacher's weights: ``"imagenet"``, a file path, or ``"none"`` (random
            init, for tests only). The student always starts from random init.
        map_fusion: ``"product"`` of the per-layer maps (the paper) or their ``"sum"``.
        optimizer: ``"sgd"`` (the paper's: momentum 0.9, weight decay 1e-4; lr about 0.4) or
            ``"adam"`` (lr about 3e-3); the learning rate is ``training.lr`` in both cases.
        training: ``Training``; by default 30 epochs at lr 0.4 (SGD), batch 16, early
            stopping after 5 epochs.
    """

    network: StudentTeacher
    training_defaults = Training(epochs=30, batch_size=16, lr=0.4, patience=5)

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: tuple[str, ...] | None = None,
        weights: str = "imagenet",
        map_fusion: Literal["product", "sum"] = "product",
        optimizer: Literal["sgd", "adam"] = "sgd",
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = (
            StudentTeacher(backbone, pyramid_layers(backbone, layers), weights)
            .to(self.device)
            .eval()
        )
        self.map_fusion = map_fusion
        self.optimizer = optimizer

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        check_layers(arguments["backbone"], arguments["layers"])

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = self.network.student.parameters()
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=1e-4)
        return torch.optim.Adam(params, lr=self.lr)

    def loss(self, images: Tensor) -> Tensor:
        with self.autocast():
            teacher, student = self.network(images)
        # sum over layers of 1/(2 h w) sum_ij ||t - s||^2, averaged over the batch (a tensor:
        # there is at least one layer)
        distances = layer_distances(teacher, student)
        return cast(Tensor, sum(d.mean(dim=(1, 2)) for d in distances)).mean()

    def distillation_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """The student's feature maps, one [B, C_l, h_l, w_l] per layer."""
        return tuple(self.network.student(images))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        with self.autocast():
            teacher = self.network.teacher.reused(x)  # frozen: the same for an input seen before
            student = self.network.student(x)
        maps = [
            F.interpolate(d[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
            for d in layer_distances(teacher, student)
        ]  # each [B, 1, H, W]
        stacked = torch.cat(maps, dim=1)  # [B, L, H, W]
        fused = stacked.prod(dim=1) if self.map_fusion == "product" else stacked.sum(dim=1)
        return Scores(image=fused.flatten(1).amax(dim=1).cpu(), pixel=fused.cpu())

    def export_module(self) -> nn.Module:
        """Teacher, student and the fused map of ``predict`` (``STFPMScorer``), float32."""
        self.check_fitted()
        self.network.eval()
        return STFPMScorer(self.network, self.map_fusion).eval()


class STFPMScorer(nn.Module):
    """``STFPM.predict`` as one module: images [B, 3, H, W] -> (image scores [B], fused maps
    [B, H, W]); the teacher's features computed afresh (no feature cache)."""

    def __init__(self, network: StudentTeacher, map_fusion: str) -> None:
        super().__init__()
        self.network = network
        self.map_fusion = map_fusion

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        teacher, student = self.network(x)
        maps = [
            F.interpolate(d[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
            for d in layer_distances(teacher, student)
        ]  # each [B, 1, H, W]
        stacked = torch.cat(maps, dim=1)  # [B, L, H, W]
        fused = stacked.prod(dim=1) if self.map_fusion == "product" else stacked.sum(dim=1)
        return fused.flatten(1).amax(dim=1), fused
