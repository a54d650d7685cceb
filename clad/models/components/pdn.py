"""EfficientAD's networks (Batzner et al., WACV 2024): the small patch description network
(PDN-small), the autoencoder, and the teacher-student-autoencoder triple with the statistics that
define its maps. Used by ``efficientad`` and its student-teacher part ``st``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clad.models.components.backbone import IMAGENET_MEAN, IMAGENET_STD

MIN_SIDE = 32  # the autoencoder's encoder halves the side five times
MIN_SIDE_UNPADDED = 64  # without padding the PDN's output is (side / 4 - 8) wide


def pdn_small(out_channels: int, padding: bool, width: int = 128) -> nn.Sequential:
    """PDN-small (the reference code's ``get_pdn_small``; same layer indices, so its state dicts
    load): [B, 3, S, S] -> [B, out_channels, S/4, S/4] with padding, [.., S/4 - 8, ..] without.
    Hidden widths ``width, 2 width, 2 width`` (the paper: 128, 256, 256)."""
    pad = 1 if padding else 0
    return nn.Sequential(
        nn.Conv2d(3, width, 4, padding=3 * pad),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, stride=2, padding=pad),
        nn.Conv2d(width, 2 * width, 4, padding=3 * pad),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, stride=2, padding=pad),
        nn.Conv2d(2 * width, 2 * width, 3, padding=pad),
        nn.ReLU(inplace=True),
        nn.Conv2d(2 * width, out_channels, 4),
    )


def pdn_output_side(side: int, padding: bool) -> int:
    """Output side of ``pdn_small`` for an input side."""
    pad = 1 if padding else 0
    side = side + 6 * pad - 3  # 4x4 conv
    side = (side + 2 * pad - 2) // 2 + 1  # pool
    side = side + 6 * pad - 3
    side = (side + 2 * pad - 2) // 2 + 1
    side = side + 2 * pad - 2  # 3x3 conv
    return side - 3  # 4x4 conv, no padding


class Autoencoder(nn.Module):
    """EfficientAD's autoencoder: [B, 3, H, W] -> [B, out_channels, h, w] (``(h, w)``: the
    teacher's output size, given to ``forward``).

    The paper's layers for 256 px inputs. For other sides the encoder's last map (side / 32) is
    resized bilinearly to 8 x 8 before the final 8 x 8 convolution (an identity at 256 px), and
    the decoder's upsampling sizes (3, 8, 15, 32, 63, 127 at 256 px) scale with the side, so the
    weights do not depend on the input size.
    """

    DECODER_SIZES = (3, 8, 15, 32, 63, 127)  # at 256 px

    def __init__(self, out_channels: int) -> None:
        super().__init__()

        def down(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]

        self.encoder = nn.Sequential(
            *down(3, 32), *down(32, 32), *down(32, 64), *down(64, 64), *down(64, 64)
        )
        self.code = nn.Conv2d(64, 64, 8)  # [B, 64, 8, 8] -> [B, 64, 1, 1]
        self.decoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(0.2))
            for _ in self.DECODER_SIZES
        )  # each: side -> side + 1
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, out_size: tuple[int, int]) -> Tensor:
        height, width = x.shape[-2:]
        h = self.encoder(x)  # [B, 64, H/32, W/32]
        if h.shape[-2:] != (8, 8):
            h = F.interpolate(h, size=(8, 8), mode="bilinear")
        h = self.code(h)  # [B, 64, 1, 1]
        for size, layer in zip(self.DECODER_SIZES, self.decoder):
            target = (max(1, round(size * height / 256)), max(1, round(size * width / 256)))
            h = layer(F.interpolate(h, size=target, mode="bilinear"))
        return self.head(F.interpolate(h, size=out_size, mode="bilinear"))


class EfficientADNetwork(nn.Module):
    """Teacher, student and autoencoder, with the statistics that define the maps as buffers
    (so ``state_dict`` carries them): teacher channel mean/std [1, C, 1, 1], the map quantiles
    ``(q_st_a, q_st_b, q_ae_a, q_ae_b)`` (NaN until computed) and whether the teacher is
    trained. With ``autoencoder=False`` (the student-teacher part alone) the student has ``C``
    outputs, ``autoencoder`` is None and the quantiles are ``(q_st_a, q_st_b)``."""

    input_mean: Tensor  # buffers, registered in __init__
    input_std: Tensor
    teacher_mean: Tensor
    teacher_std: Tensor
    quantiles: Tensor
    teacher_ready: Tensor

    def __init__(
        self, out_channels: int, padding: bool, pdn_width: int, autoencoder: bool = True
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.padding = padding
        self.teacher = pdn_small(out_channels, padding, pdn_width).requires_grad_(False)
        student_channels = 2 * out_channels if autoencoder else out_channels
        self.student = pdn_small(student_channels, padding, pdn_width)
        self.autoencoder = Autoencoder(out_channels) if autoencoder else None
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.register_buffer("teacher_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, out_channels, 1, 1))
        self.register_buffer("quantiles", torch.full((4 if autoencoder else 2,), math.nan))
        self.register_buffer("teacher_ready", torch.tensor(False))

    def normalise_input(self, x: Tensor) -> Tensor:
        return (x - self.input_mean) / self.input_std

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> Tensor:
        """Normalised teacher output [B, C, h, w] of images in [0, 1] (no gradients)."""
        self.teacher.eval()
        out = self.teacher(self.normalise_input(x)).float()
        return (out - self.teacher_mean) / self.teacher_std

    def maps(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Raw ``(M_ST, M_AE)`` maps [B, h, w] of images in [0, 1] (``M_AE`` None without an
        autoencoder)."""
        teacher = self.teacher_features(x)
        x = self.normalise_input(x)
        student = self.student(x).float()
        c = self.out_channels
        if self.autoencoder is None:
            return (teacher - student).pow(2).mean(dim=1), None
        ae = self.autoencoder(x, teacher.shape[-2:]).float()
        map_st = (teacher - student[:, :c]).pow(2).mean(dim=1)
        map_ae = (ae - student[:, c:]).pow(2).mean(dim=1)
        return map_st, map_ae
