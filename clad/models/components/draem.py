"""DRAEM's parts, shared by DRAEM (``clad.models.draem``) and RDNA (``clad.models.rdna``): the
reconstructive and discriminative sub-networks, the anomaly synthesis, the focal and SSIM
losses, the image score and the learning-rate schedule.

Zavrtanik, Kristan and Skocaj, "DRAEM - A discriminatively trained reconstruction embedding for
surface anomaly detection", ICCV 2021; code: github.com/VitjanZ/DRAEM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clad.models.components.anomaly_sources import TextureSource, augment_texture
from clad.models.components.perlin import perlin_mask

SIDE_MULTIPLE = 32  # the discriminative sub-network pools 5 times


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + batch norm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Bilinear x2 upsampling, then 3x3 conv + batch norm + ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def two_convs(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """3x3 conv c_in -> c_mid, then c_mid -> c_out, each with batch norm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 3, padding=1),
        nn.BatchNorm2d(c_mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ReconstructiveSubNetwork(nn.Module):
    """Encoder (widths w, 2w, 4w, 8w, 8w; 4 max-pools) and decoder without skips; linear output
    [B, 3, H, W] (the paper's ``ReconstructiveSubNetwork``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            conv_block(3, w),
            nn.MaxPool2d(2),
            conv_block(w, 2 * w),
            nn.MaxPool2d(2),
            conv_block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            conv_block(4 * w, 8 * w),
            nn.MaxPool2d(2),
            conv_block(8 * w, 8 * w),
        )
        self.decoder = nn.Sequential(
            up_block(8 * w, 8 * w),
            two_convs(8 * w, 8 * w, 4 * w),
            up_block(4 * w, 4 * w),
            two_convs(4 * w, 4 * w, 2 * w),
            up_block(2 * w, 2 * w),
            two_convs(2 * w, 2 * w, w),
            up_block(w, w),
            two_convs(w, w, w),
            nn.Conv2d(w, 3, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class DiscriminativeSubNetwork(nn.Module):
    """U-Net (widths w, 2w, 4w, 8w, 8w, 8w; 5 max-pools; skips at every scale): [B, 6, H, W] ->
    2-class logits [B, 2, H, W] (the paper's ``DiscriminativeSubNetwork``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        widths = (w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w)
        self.encoder = nn.ModuleList(
            [conv_block(6, widths[0])]
            + [conv_block(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])]
        )
        # decoder stage k: upsample from the deeper width, fuse with encoder level 4 - k
        up_widths = (8 * w, 4 * w, 2 * w, w, w)
        self.ups = nn.ModuleList()
        self.fuse = nn.ModuleList()
        deeper = widths[-1]
        for k, c_out in enumerate(up_widths):
            skip = widths[4 - k]
            self.ups.append(up_block(deeper, c_out))
            self.fuse.append(two_convs(c_out + skip, c_out, c_out))
            deeper = c_out
        self.head = nn.Conv2d(w, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)  # strides 1, 2, 4, 8, 16, 32
        for k, (up, fuse) in enumerate(zip(self.ups, self.fuse)):
            x = fuse(torch.cat([up(x), skips[4 - k]], dim=1))
        return self.head(x)


def draem_init(module: nn.Module) -> None:
    """DRAEM's ``weights_init`` (``train_DRAEM.py``), for ``module.apply``: convolution weights
    ~ N(0, 0.02) (biases keep PyTorch's default), batch-norm weights ~ N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DraemNetwork(nn.Module):
    """The two sub-networks; ``forward(x)`` returns (reconstruction, segmentation logits)."""

    def __init__(self, recon_width: int, disc_width: int) -> None:
        super().__init__()
        self.reconstructive = ReconstructiveSubNetwork(recon_width)
        self.discriminative = DiscriminativeSubNetwork(disc_width)
        self.apply(draem_init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        reconstruction = self.reconstructive(x)
        logits = self.discriminative(torch.cat([reconstruction, x], dim=1))  # [B, 6, H, W] in
        return reconstruction, logits


def synthesize_anomalies(
    images: Tensor,
    source: TextureSource,
    generator: torch.Generator,
    anomaly_probability: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """DRAEM's simulated anomalies on normal images [B, 3, H, W] (square).

    Returns ``(augmented [B, 3, H, W], masks [B, 1, H, W] in {0, 1})``, on ``images``' device.
    Each image gets an anomaly with probability ``anomaly_probability``: an augmented texture
    pasted through a Perlin mask with opacity ``1 - beta``, ``beta ~ U(0, 0.8)``. Every random
    draw comes from ``generator`` (CPU).
    """
    batch, _, height, width = images.shape
    if height != width:
        raise ValueError(f"DRAEM's anomaly synthesis needs square images, got {height}x{width}")
    textures = torch.zeros(batch, 3, height, width)
    masks = torch.zeros(batch, 1, height, width)
    betas = torch.zeros(batch, 1, 1, 1)
    for i in range(batch):
        if float(torch.rand((), generator=generator)) >= anomaly_probability:
            continue
        masks[i, 0] = perlin_mask((height, width), generator)
        textures[i] = augment_texture(source.sample(height, generator), generator)
        betas[i] = 0.8 * float(torch.rand((), generator=generator))
    textures, masks, betas = (t.to(images.device) for t in (textures, masks, betas))
    augmented = (1 - masks) * images + masks * ((1 - betas) * textures + betas * images)
    return augmented, masks


def window_max(maps: Tensor, window: int) -> Tensor:
    """Image scores [B]: the maximum of the maps [B, H, W] mean-filtered over a
    ``window`` x ``window`` square (DRAEM's image score)."""
    pooled = F.avg_pool2d(maps[:, None], window, stride=1, padding=window // 2)  # [B, 1, H, W]
    return pooled.flatten(1).amax(dim=1)


def step_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, milestones: tuple[float, ...]
) -> torch.optim.lr_scheduler.LRScheduler:
    """DRAEM's schedule: the learning rate x0.2 at each fraction ``milestones`` of ``epochs``."""
    steps = sorted({max(1, round(f * epochs)) for f in milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=0.2)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean of ``-(1 - p_t)^gamma log p_t`` over pixels: logits [B, 2, H, W], target [B, 1, H, W]
    in {0, 1}."""
    log_p = F.log_softmax(logits.float(), dim=1)  # [B, 2, H, W]
    log_pt = log_p.gather(1, target.long())  # [B, 1, H, W]
    return (-(1 - log_pt.exp()).pow(gamma) * log_pt).mean()


def ssim_loss(x: Tensor, y: Tensor, window: int = 11) -> Tensor:
    """``1 - mean SSIM`` of two batches [B, C, H, W] (Gaussian window, as DRAEM's code)."""
    import kornia

    return 1.0 - kornia.metrics.ssim(x, y, window_size=window).mean()
