"""Reconstruction baselines: a convolutional autoencoder and a U-Net-style multi-scale
autoencoder, trained with L1 loss on normal images.

The anomaly map is the per-pixel reconstruction error, either L1 (mean over channels) or
1 - SSIM (11x11 window), Gaussian-smoothed (``smoothing_sigma``); the image score is the map's
mean or the mean of its top 1 % pixels. These are weak baselines, kept as such: the reference
results for this family are about 0.54 image AUROC on MVTec AD (0.96 on hazelnut for the U-Net).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveInt
from torch import Tensor, nn

from clad.models.base import TrainedDetector, Training
from clad.models.components.arguments import check_side
from clad.models.components.ssim import gaussian_smooth, ssim_distance_map, top_fraction_mean
from clad.records import Scores
from clad.registry import register_detector

WIDTHS = (32, 64, 128, 256)  # channels at strides 2, 4, 8, 16


def down(c_in: int, c_out: int) -> nn.Sequential:
    """Stride-2 4x4 conv, batch norm, LeakyReLU: halves H and W."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def up(c_in: int, c_out: int) -> nn.Sequential:
    """Stride-2 4x4 transposed conv, batch norm, ReLU: doubles H and W."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def bottleneck(channels: int, latent_channels: int) -> nn.Sequential:
    """3x3 convs squeezing to ``latent_channels`` at stride 16 and back: the information limit."""
    return nn.Sequential(
        nn.Conv2d(channels, latent_channels, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(latent_channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class ConvAutoencoder(nn.Module):
    """Four stride-2 conv stages to a [latent, H/16, W/16] bottleneck and back (~1.7M params)."""

    def __init__(self, latent_channels: int = 72) -> None:
        super().__init__()
        c1, c2, c3, c4 = WIDTHS
        self.encoder = nn.Sequential(down(3, c1), down(c1, c2), down(c2, c3), down(c3, c4))
        self.bottleneck = bottleneck(c4, latent_channels)
        self.decoder = nn.Sequential(
            up(c4, c3), up(c3, c2), up(c2, c1), nn.ConvTranspose2d(c1, 3, 4, stride=2, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.bottleneck(self.encoder(x))))


class UNetAutoencoder(nn.Module):
    """U-Net-style autoencoder: the decoder fuses the encoder's deepest ``skip_levels`` scales.

    At a fused scale the decoder concatenates the encoder's feature map and mixes it back to
    the decoder's width with a 1x1 conv. Skips from the fine scales (strides 2 and 4) would let
    the network copy its input, defects included, so by default only the stride-16 and stride-8
    features cross over (~1.9M params with the defaults).
    """

    def __init__(self, latent_channels: int = 72, skip_levels: int = 2) -> None:
        super().__init__()
        if not 0 <= skip_levels <= 3:
            raise ValueError(f"skip_levels must be in 0..3, got {skip_levels}")
        c1, c2, c3, c4 = WIDTHS
        self.skip_levels = skip_levels
        self.downs = nn.ModuleList([down(3, c1), down(c1, c2), down(c2, c3), down(c3, c4)])
        self.bottleneck = bottleneck(c4, latent_channels)
        widths = (c4, c3, c2)  # decoder input width at strides 16, 8, 4
        self.fuse = nn.ModuleList([nn.Conv2d(2 * c, c, 1) for c in widths[:skip_levels]])
        self.ups = nn.ModuleList([up(c4, c3), up(c3, c2), up(c2, c1)])
        self.head = nn.ConvTranspose2d(c1, 3, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = []
        h = x
        for layer in self.downs:
            h = layer(h)
            feats.append(h)  # strides 2, 4, 8, 16
        h = self.bottleneck(h)
        for stage, layer in enumerate(self.ups):
            if stage < self.skip_levels:
                h = self.fuse[stage](torch.cat([h, feats[3 - stage]], dim=1))  # [B, C, h, w]
            h = layer(h)
        return torch.sigmoid(self.head(h))


class ReconstructionDetector(TrainedDetector):
    """Shared scoring of the autoencoders: L1 or 1-SSIM maps, smoothed; mean or top-1% score.
    Training: 20 epochs of Adam at lr 1e-3, batch 16, early stopping after 5 epochs."""

    training_defaults = Training(epochs=20, batch_size=16, lr=1e-3, patience=5)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_side(input_size, 16)  # four stride-2 stages

    def __init__(
        self,
        network: nn.Module,
        anomaly_map: Literal["l1", "ssim"],
        image_score: Literal["mean", "top1"],
        smoothing_sigma: float,
        training: Training | None,
    ) -> None:
        super().__init__(training)
        self.network = network.to(self.device)
        self.anomaly_map = anomaly_map
        self.image_score = image_score
        self.smoothing_sigma = smoothing_sigma

    def _check_size(self, x: Tensor) -> None:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(
                f"autoencoders need image sides divisible by 16, got {tuple(x.shape[-2:])}; "
                "set dataset.image_size (or crop_size) to a multiple of 16"
            )

    def loss(self, images: Tensor) -> Tensor | Mapping[str, Tensor]:
        self._check_size(images)
        return (self.network(images) - images).abs().mean()

    def distillation_outputs(self, images: Tensor) -> Tensor:
        """The reconstruction [B, 3, H, W]."""
        return self.network(images)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self._check_size(x)
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        recon = self.network(x)
        if self.anomaly_map == "l1":
            maps = (recon - x).abs().mean(dim=1)  # [B, H, W]
        else:
            maps = ssim_distance_map(recon, x)
        maps = gaussian_smooth(maps, self.smoothing_sigma)
        if self.image_score == "mean":
            image = maps.flatten(1).mean(dim=1)
        else:
            image = top_fraction_mean(maps, 0.01)
        return Scores(image=image.cpu(), pixel=maps.cpu())

    def export_module(self) -> nn.Module:
        """The network and the map and score of ``predict`` (``ReconstructionScorer``)."""
        self.check_fitted()
        self.network.eval()
        return ReconstructionScorer(
            self.network, self.anomaly_map, self.image_score, self.smoothing_sigma
        ).eval()


class ReconstructionScorer(nn.Module):
    """``ReconstructionDetector.predict`` as one module: images [B, 3, H, W] -> (image scores
    [B], smoothed maps [B, H, W])."""

    def __init__(
        self, network: nn.Module, anomaly_map: str, image_score: str, smoothing_sigma: float
    ) -> None:
        super().__init__()
        self.network = network
        self.anomaly_map, self.image_score = anomaly_map, image_score
        self.smoothing_sigma = smoothing_sigma

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        recon = self.network(x)
        if self.anomaly_map == "l1":
            maps = (recon - x).abs().mean(dim=1)  # [B, H, W]
        else:
            maps = ssim_distance_map(recon, x)
        maps = gaussian_smooth(maps, self.smoothing_sigma)
        flat = maps.flatten(1)  # [B, H*W]
        if self.image_score == "mean":
            return flat.mean(dim=1), maps
        # top_fraction_mean's k, as a constant of the traced graph (the export's image size)
        k = max(1, int(round(0.01 * int(flat.shape[1]))))
        return flat.topk(k, dim=1).values.mean(dim=1), maps


@register_detector("conv_ae")
class ConvAE(ReconstructionDetector):
    """Convolutional autoencoder baseline (~1.7M parameters)."""

    def __init__(
        self,
        latent_channels: PositiveInt = 72,
        anomaly_map: Literal["l1", "ssim"] = "l1",
        image_score: Literal["mean", "top1"] = "top1",
        smoothing_sigma: NonNegativeFloat = 4.0,
        training: Training | None = None,
    ) -> None:
        super().__init__(
            ConvAutoencoder(latent_channels), anomaly_map, image_score, smoothing_sigma, training
        )


@register_detector("unet_ae")
class UNetAE(ReconstructionDetector):
    """U-Net-style multi-scale autoencoder with skip connections (~1.9M parameters)."""

    def __init__(
        self,
        latent_channels: PositiveInt = 72,
        skip_levels: Annotated[int, Field(ge=0, le=3)] = 2,
        anomaly_map: Literal["l1", "ssim"] = "l1",
        image_score: Literal["mean", "top1"] = "top1",
        smoothing_sigma: NonNegativeFloat = 4.0,
        training: Training | None = None,
    ) -> None:
        super().__init__(
            UNetAutoencoder(latent_channels, skip_levels),
            anomaly_map,
            image_score,
            smoothing_sigma,
            training,
        )
