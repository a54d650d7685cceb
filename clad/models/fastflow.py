"""FastFlow: 2D normalizing flows on pretrained features.

Yu, Zheng, Yang, Wu, Chen, Kong and Luo, "FastFlow: Unsupervised Anomaly Detection and
Localization via 2D Normalizing Flows", arXiv:2111.07677 (2021).

A frozen pretrained CNN gives feature maps at several scales; each is normalised and mapped by
its own 2D flow (a stack of affine couplings whose subnetworks are convolutions, alternating
3x3 and 1x1 kernels) to ``z`` with a standard-normal prior. Training minimises the negative
log-likelihood of normal features, summed over scales and averaged over the batch:

    loss = sum_s mean_b [ 0.5 * sum_{c,i,j} z_s^2 - log|det dz_s/dx_s| ]

At test time each scale's per-position likelihood ``exp(-0.5 * mean_c z_s(i, j)^2)`` is
upsampled bilinearly to the input size and averaged over scales; the map is its negation (the
paper scores with likelihoods, not their logarithm; this form is anomalib's), and the image
score is the map's maximum. ``anomaly_map="nll"`` averages the per-position
-log-likelihood ``0.5 * mean_c z^2`` over scales instead (measured on the synthetic set at 64 px,
30 epochs: pixel AUROC 0.91 / 0.89 / 0.83 on stripes / disc / nut, against 0.98 / 0.92 / 0.82
for the paper's form, whose bounded per-scale values keep one scale from dominating).

Where ours differs from the paper:
- Backbone: the shared backbones (``clad.models.components.backbone``); default
  ``efficientnet_lite0`` (the pretrained network available offline) at strides 4, 8 and 16. The
  paper's ResNet-18 setting (three stages, 8 flow steps, hidden ratio 1.0, alternating 3x3/1x1
  subnets) is ``backbone="resnet18"`` with the defaults here.
- Feature normalisation: a LayerNorm over [C, h, w] without learned affine parameters, so the
  model does not depend on the image size (the paper's ResNet setting learns a per-position
  affine at a fixed 256 x 256 input); each coupling's ActNorm-like global affine still learns
  per-channel scales and offsets.
- Image size: whatever the dataset provides (the paper uses 256 x 256).
- Training: the shared loop (Adam, ``lr``, validation-loss early stopping) with weight decay
  ``weight_decay`` (the paper: Adam, lr 1e-3, weight decay 1e-5, 500 epochs, batch 32).
- Scoring: the image score is the map's maximum, as in anomalib (the paper does not define
  one). The per-position likelihood leaves out the log-determinant, as anomalib does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from clad.models.base import TrainedDetector, Training
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import FeatureExtractor, check_layers, pyramid_layers
from clad.models.components.flows import flow_2d, gaussian_nll, position_nll, run_flow
from clad.records import Scores
from clad.registry import register_detector


class FastFlowNetwork(nn.Module):
    """Frozen feature extractor plus one 2D flow per feature scale."""

    def __init__(
        self,
        backbone: str,
        layers: tuple[str, ...],
        weights: str,
        flow_steps: int,
        hidden_ratio: float,
        conv3x3_only: bool,
        clamp: float,
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, weights)  # frozen, always eval
        kernels = (3,) if conv3x3_only else (3, 1)
        self.flows = nn.ModuleList(
            [flow_2d(c, flow_steps, kernels, hidden_ratio, clamp) for c in self.extractor.channels]
        )

    def features(self, x: Tensor, reuse: bool = False) -> list[Tensor]:
        """``x`` [B, 3, H, W] -> per scale LayerNorm-ed features [B, C_s, h_s, w_s], float32;
        ``reuse``: the frozen extractor's outputs for inputs seen before (at test time)."""
        feats = self.extractor.reused(x) if reuse else self.extractor(x)
        return [F.layer_norm(f.float(), f.shape[1:]) for f in feats]

    def forward(self, x: Tensor, reuse: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Per scale ``z`` [B, C_s, h_s, w_s] and ``log|det|`` [B]."""
        features = self.features(x, reuse)
        outputs = [run_flow(flow, f) for flow, f in zip(self.flows, features, strict=True)]
        return [z for z, _ in outputs], [j for _, j in outputs]


@register_detector("fastflow")
class FastFlow(TrainedDetector):
    """2D normalizing flows on pretrained features (Yu et al., 2021); see the module docstring.

    Args:
        backbone: the frozen feature extractor (a name from the shared backbone table).
        layers: backbone stages to model (None: the backbone's default three stages).
        weights: ``"imagenet"``, a file path, or ``"none"`` (random init, tests only).
        flow_steps: coupling steps per scale (the paper: 8 for ResNet-18, 20 for WRN-50).
        hidden_ratio: subnetwork width relative to its input channels (the paper: 1.0 for
            ResNet-18, 0.16 for WRN-50).
        conv3x3_only: every subnet 3x3 instead of alternating 3x3 and 1x1.
        clamp: soft clamp on the couplings' log-scales (``clamp * tanh``); 2.0 as in anomalib
            (the paper does not give one).
        anomaly_map: ``"probability"`` (the paper's negated average likelihood) or ``"nll"``
            (per-position -log-likelihood averaged over scales).
        weight_decay: Adam weight decay on the flows.
        training: ``Training``; by default 20 epochs of Adam at lr 1e-3, batch 16, early
            stopping after 5 epochs, float32 (flows: log-determinants and exponentials).
    """

    network: FastFlowNetwork
    training_defaults = Training(epochs=20, batch_size=16, lr=1e-3, patience=5, precision="fp32")

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: tuple[str, ...] | None = None,
        weights: str = "imagenet",
        flow_steps: PositiveInt = 8,
        hidden_ratio: PositiveFloat = 1.0,
        conv3x3_only: bool = False,
        clamp: PositiveFloat = 2.0,
        anomaly_map: Literal["probability", "nll"] = "probability",
        weight_decay: NonNegativeFloat = 1e-5,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = (
            FastFlowNetwork(
                backbone,
                pyramid_layers(backbone, layers),
                weights,
                flow_steps,
                hidden_ratio,
                conv3x3_only,
                clamp,
            )
            .to(self.device)
            .eval()
        )
        self.anomaly_map = anomaly_map
        self.weight_decay = weight_decay

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        check_layers(arguments["backbone"], arguments["layers"])

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.network.flows.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )

    def loss(self, images: Tensor) -> Tensor:
        zs, log_dets = self.network(images)
        # a tensor: the flows have at least one level
        return cast(
            Tensor, sum(gaussian_nll(z, j).mean() for z, j in zip(zs, log_dets, strict=True))
        )

    def distillation_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """The flows' outputs ``z``, one [B, C_l, h_l, w_l] per layer."""
        zs, _ = self.network(images)
        return tuple(zs)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        zs, _ = self.network(x, reuse=True)
        maps = []
        for z in zs:
            nll = position_nll(z)  # [B, h, w]
            value = nll if self.anomaly_map == "nll" else -torch.exp(-nll)
            maps.append(
                F.interpolate(
                    value[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
            )  # [B, H, W]
        fused = torch.stack(maps).mean(dim=0)  # [B, H, W]
        return Scores(image=fused.flatten(1).amax(dim=1).cpu(), pixel=fused.cpu())

    def export_module(self) -> nn.Module:
        """The extractor, the flows and the fused map of ``predict`` (``FastFlowScorer``)."""
        self.check_fitted()
        self.network.eval()
        return FastFlowScorer(self.network, self.anomaly_map).eval()


class FastFlowScorer(nn.Module):
    """``FastFlow.predict`` as one module: images [B, 3, H, W] -> (image scores [B], fused maps
    [B, H, W]); the extractor's features computed afresh (no feature cache)."""

    def __init__(self, network: FastFlowNetwork, anomaly_map: str) -> None:
        super().__init__()
        self.network = network
        self.anomaly_map = anomaly_map

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zs, _ = self.network(x)
        maps = []
        for z in zs:
            nll = position_nll(z)  # [B, h, w]
            value = nll if self.anomaly_map == "nll" else -torch.exp(-nll)
            maps.append(
                F.interpolate(
                    value[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
            )  # [B, H, W]
        fused = torch.stack(maps).mean(dim=0)  # [B, H, W]
        return fused.flatten(1).amax(dim=1), fused
