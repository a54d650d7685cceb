"""DRAEM: a discriminatively trained reconstruction embedding for surface anomaly detection.

Zavrtanik, Kristan and Skocaj, "DRAEM - A discriminatively trained reconstruction embedding for
surface anomaly detection", ICCV 2021 (arXiv:2108.07610); code: github.com/VitjanZ/DRAEM.

Training uses normal images only, turned into anomalous ones on the fly: a Perlin-noise mask
``M`` (noise with ``2^a x 2^b`` cells, rotated, thresholded at 0.5;
``clad.models.components.perlin``) is filled with an augmented anomaly-source texture ``A``
(DTD under ``anomaly_source_path``):

    I_a = (1 - M) * I + (1 - beta) * M * A + beta * M * I,     beta ~ U(0, 0.8)

and half of the images are left unchanged (empty mask). Two sub-networks are trained jointly:

- the reconstructive one, an encoder-decoder without skips (4 max-pools), maps ``I_a`` back to
  ``I``: ``L_rec = ||I - R(I_a)||^2 + (1 - SSIM(I, R(I_a)))`` (11 x 11 window);
- the discriminative one, a U-Net (5 max-pools, skips), reads ``[R(I_a), I_a]`` (6 channels) and
  segments ``M``: ``L_seg`` = focal loss (gamma = 2) on its 2-class softmax.

Loss ``L_rec + L_seg``; Adam; the learning rate drops x0.2 at 80 % and 90 % of the epochs. At
test time the anomaly map is the softmax's anomaly channel and the image score the maximum of
that map mean-filtered with a ``score_window`` square (21 in the paper).

Where ours differs from the paper:
- Width: the sub-networks' base widths are ``recon_width`` and ``disc_width``; the paper's are
  128 and 64 (69.0M and 28.4M parameters). The defaults here, 32 and 16 (4.3M and 1.8M), are
  16x smaller so that DRAEM trains on a CPU; set ``recon_width=128, disc_width=64`` for the paper's
  networks. The layer structure is the paper's at any width.
- Anomaly sources: DTD when ``anomaly_source_path`` is given (as in the paper and CLAD),
  otherwise built-in procedural textures (logged; not comparable with DTD results). The texture
  augmentation (3 of 9 imgaug operations in the paper's code) is reimplemented in torch/kornia
  without the saturation change that accompanies imgaug's hue shift
  (``clad.benchmarks.anomaly_sources.augment_texture``).
- The paper's code rotates 30 % of the normal training images by up to 90 degrees before the
  anomaly is pasted; we do not (rotation is not a valid augmentation for aligned objects).
- Image size: whatever the dataset provides (the paper uses 256 x 256); sides must be divisible
  by 32.
- Epochs and model selection: the paper trains 700 epochs with batch size 8 and no validation;
  here the shared loop's epochs apply, and early stopping watches the same loss on the
  validation images with a fixed, seeded set of synthetic anomalies (``val_seed``), so the number
  is comparable across epochs. Under continual learning each ``fit`` restarts the schedule.
- Focal loss: the standard form ``-(1 - p_t)^2 log p_t`` (the paper's code adds label
  smoothing of 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clad.benchmarks.anomaly_sources import TextureSource, augment_texture, texture_source
from clad.models.base import TrainedDetector, seeded_generator
from clad.models.components.perlin import perlin_mask
from clad.registry import register_detector
from clad.types import Scores

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
            conv_block(3, w), nn.MaxPool2d(2),
            conv_block(w, 2 * w), nn.MaxPool2d(2),
            conv_block(2 * w, 4 * w), nn.MaxPool2d(2),
            conv_block(4 * w, 8 * w), nn.MaxPool2d(2),
            conv_block(8 * w, 8 * w),
        )
        self.decoder = nn.Sequential(
            up_block(8 * w, 8 * w), two_convs(8 * w, 8 * w, 4 * w),
            up_block(4 * w, 4 * w), two_convs(4 * w, 4 * w, 2 * w),
            up_block(2 * w, 2 * w), two_convs(2 * w, 2 * w, w),
            up_block(w, w), two_convs(w, w, w),
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


class DraemNetwork(nn.Module):
    """The two sub-networks; ``forward(x)`` returns (reconstruction, segmentation logits)."""

    def __init__(self, recon_width: int, disc_width: int) -> None:
        super().__init__()
        self.reconstructive = ReconstructiveSubNetwork(recon_width)
        self.discriminative = DiscriminativeSubNetwork(disc_width)

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


def check_score_window(window: int, owner: str) -> None:
    """The image score's mean filter needs a positive odd side."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"{owner}: score_window must be a positive odd number, got {window}")


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


@register_detector("draem")
class DRAEM(TrainedDetector):
    """DRAEM (Zavrtanik et al., ICCV 2021); see the module docstring for the method and how ours
    differs.

    Args:
        recon_width: base width of the reconstructive sub-network (paper: 128).
        disc_width: base width of the discriminative sub-network (paper: 64).
        anomaly_source_path: a folder of texture images (DTD's ``images/``), searched
            recursively; None: the built-in procedural textures.
        anomaly_probability: fraction of training images that get a synthetic anomaly (0.5).
        score_window: side of the mean filter before the image score's max (paper: 21 at 256 px).
        val_seed: seed of the fixed synthetic anomalies on the validation images.
        milestones: fractions of ``epochs`` at which the learning rate is multiplied by 0.2.
        mixed_precision: float16 autocast with gradient scaling on CUDA (ignored on CPU).
    """

    def __init__(
        self,
        recon_width: int = 32,
        disc_width: int = 16,
        anomaly_source_path: str | None = None,
        anomaly_probability: float = 0.5,
        score_window: int = 21,
        val_seed: int = 0,
        milestones: tuple[float, ...] = (0.8, 0.9),
        epochs: int = 20,
        batch_size: int = 8,
        lr: float = 1e-4,
        patience: int = 5,
        device: str = "auto",
        num_workers: int = 0,
        mixed_precision: bool = True,
    ) -> None:
        super().__init__(epochs, batch_size, lr, patience, device, num_workers, mixed_precision)
        check_score_window(score_window, "draem")
        if not 0.0 <= anomaly_probability <= 1.0:
            raise ValueError(f"anomaly_probability must be in [0, 1], got {anomaly_probability}")
        self.network = DraemNetwork(recon_width, disc_width).to(self.device)
        self.source = texture_source(anomaly_source_path or None)
        self.anomaly_probability = anomaly_probability
        self.score_window = score_window
        self.val_seed = val_seed
        self.milestones = milestones
        self._val_generator = torch.Generator().manual_seed(val_seed)

    @staticmethod
    def _check_size(x: Tensor) -> None:
        if x.shape[-1] % SIDE_MULTIPLE or x.shape[-2] % SIDE_MULTIPLE:
            raise ValueError(
                f"DRAEM needs image sides divisible by {SIDE_MULTIPLE}, got {tuple(x.shape[-2:])}; "
                "set dataset.image_size (or crop_size) to a multiple of 32"
            )

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        return step_schedule(optimizer, self.epochs, self.milestones)

    def _loss(self, images: Tensor, generator: torch.Generator) -> Tensor:
        self._check_size(images)
        augmented, masks = synthesize_anomalies(
            images, self.source, generator, self.anomaly_probability
        )
        reconstruction, logits = self.network(augmented)
        reconstruction = reconstruction.float()
        return (
            F.mse_loss(reconstruction, images)
            + ssim_loss(reconstruction, images)
            + focal_loss(logits, masks)
        )

    def training_loss(self, images: Tensor) -> Tensor:
        return self._loss(images, seeded_generator())

    def start_validation(self) -> None:
        self._val_generator = torch.Generator().manual_seed(self.val_seed)

    def validation_loss(self, images: Tensor) -> Tensor:
        return self._loss(images, self._val_generator)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self._check_size(x)
        self.network.eval()
        x = x.to(self.device)
        with self.autocast():
            _, logits = self.network(x)
        maps = logits.float().softmax(dim=1)[:, 1]  # [B, H, W]
        return Scores(image=window_max(maps, self.score_window).cpu(), pixel=maps.cpu())
