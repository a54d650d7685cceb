"""RDNA: reconstruction discriminant networks with adversarial learning.

Liu, Li, Cheng and Luo, "Anomaly Detection in Industrial Images via Reconstruction Discriminant
Networks with Adversarial Learning". What the authors state: RDNA has a reconstruction module and
a discriminant module, each a network plus a discriminator; through adversarial training the
reconstruction module generates images close to the normal data distribution and the
discriminant module produces accurate anomaly segmentation maps; DTD is the anomaly source; on
MVTec AD it reaches image AUROC 98.5, pixel AUROC 97.6 and pixel AP 72.8. Their code is
DRAEM-derived (DRAEM's data script and arguments; Adam, lr 1e-4, batch size 4; checkpoints named
``DRAEM_test_0.0001_800_bs4``, i.e. 800 epochs). The rest below is this implementation's reading:
DRAEM (``clad.models.draem``) with two discriminators.

Per batch of normal images ``I`` [B, 3, H, W], DRAEM's synthesis
(``clad.models.components.draem.synthesize_anomalies``) gives anomalous images ``I_a`` and masks
``M`` [B, 1, H, W] (half of the images are left unchanged, with empty masks). Then
``R = R(I_a)`` (DRAEM's reconstructive sub-network) and ``P = softmax(S([R, I_a]))_1``
[B, 1, H, W] (DRAEM's discriminative U-Net, the segmentation network). The discriminators are
PatchGAN critics (pix2pix: one logit per overlapping patch): ``D_r`` reads images,
``D_s`` reads masks paired with the image they belong to, ``[I_a, mask]`` (4 channels).
Each step updates the discriminators, then the two networks:

    L_D = 1/2 [g(D_r(I), 1) + g(D_r(R), 0)] + 1/2 [g(D_s([I_a, M]), 1) + g(D_s([I_a, P]), 0)]
    L_G = ||I - R||^2 + (1 - SSIM(I, R)) + Focal(S, M)
          + lambda_r g(D_r(R), 1) + lambda_s g(D_s([I_a, P]), 1)

with ``g`` the squared error of the logits to the label (``gan_loss="lsgan"``, least-squares GAN)
or binary cross-entropy on logits (``"bce"``, the non-saturating GAN loss); ``R`` and ``P`` are
detached in ``L_D``. At test time the anomaly map is ``P`` (optionally Gaussian-smoothed with
``smoothing_sigma``) and the image score is the maximum of that map mean-filtered with a
``score_window`` square, as DRAEM's.

Choices where the paper is silent (its full text was not at hand, so these fill what the summary
above leaves open; the main ones are constructor parameters):
- Discriminators: PatchGAN (Isola et al., CVPR 2017): a 4x4 stride-2 conv + LeakyReLU(0.2),
  ``disc_layers - 1`` more stride-2 convs doubling the width (capped at 8x), a stride-1 conv, each
  with batch norm + LeakyReLU(0.2), and a stride-1 conv to one logit map. Base widths
  ``recon_disc_width`` and ``seg_disc_width`` (pix2pix: 64; default 16 here for CPU).
- ``D_r`` is unconditional: real = the clean normal images ``I``, fake = reconstructions ``R`` of
  all images (anomalous and not), so reconstructions are pushed towards normal images; pairing
  with the input is left to the pixel losses.
- ``D_s`` is conditional (``seg_disc_with_image=True``): real = ``[I_a, M]``, fake =
  ``[I_a, P]``, as in adversarial segmentation (Luc et al., 2016), so a mask is judged as a
  segmentation *of that image*; unpaired (mask only) with ``seg_disc_with_image=False``. Soft
  predictions against binary masks let ``D_s`` reward confident, well-shaped maps.
- GAN loss and adversarial weights: least squares, ``lambda_r = recon_adv_weight = 0.01`` and
  ``lambda_s = seg_adv_weight = 0.01``. On the synthetic set (64 px, small widths) the
  discriminators win quickly (their losses fall towards 0), and larger weights destabilise the
  networks: with cross-entropy at 0.1, ``stripes`` image AUROC after 40 epochs was 0.65 (0.99 at
  0.01). On ``nut`` (40 epochs, 3 seeds) the mean image / pixel AUROC was 0.85 / 0.93 without
  adversarial terms, 0.74 / 0.75 with cross-entropy at 0.01 and 0.84 / 0.96 with least squares
  at 0.01. Small CPU measurements with large seed-to-seed spread, not a tuning on MVTec AD.
- Optimizers: Adam (lr ``lr``, betas (0.9, 0.999)) for the two networks as DRAEM; Adam
  (lr ``disc_lr``, default ``lr``; betas (0.5, 0.999), the GAN convention) for both
  discriminators. DRAEM's step schedule (x0.2 at ``milestones`` of the epochs) applies to the
  networks; the discriminators' learning rate stays constant.
- Model selection: early stopping watches the supervised loss ``L_rec + L_seg`` on the
  validation images (normal images held out from training) with a fixed, seeded set of synthetic
  anomalies (``val_seed``); adversarial terms oscillate by design and are not used. The weights of
  all four networks of the best epoch are kept.
- Image score: DRAEM's (max of the mean-filtered map); ``smoothing_sigma`` (default 0, none) adds
  a Gaussian blur of the map before it.

Shared with our DRAEM (see its docstring for how it differs from DRAEM's paper): the networks'
layer structure and widths (``recon_width``, ``seg_width``; DRAEM's, presumably RDNA's, are 128
and 64; the defaults, 32 and 16, are for CPU), the anomaly sources (DTD under
``anomaly_source_path``, otherwise the built-in procedural textures, which are logged and not
comparable with DTD results), the synthesis, the focal and SSIM losses, and the requirement that
image sides be multiples of 32. Under continual learning each ``fit`` continues from the current
weights of all four networks with fresh optimizers and restarts the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt
from torch import Tensor, nn

from clad.models.base import TrainedDetector, Training
from clad.models.components.anomaly_sources import texture_source
from clad.models.components.arguments import (
    Fraction,
    OddWindow,
    Probability,
    check_folder,
    check_side,
)
from clad.models.components.draem import (
    SIDE_MULTIPLE,
    DiscriminativeSubNetwork,
    ReconstructiveSubNetwork,
    draem_init,
    focal_loss,
    ssim_loss,
    step_schedule,
    synthesize_anomalies,
    window_max,
)
from clad.models.components.ssim import gaussian_smooth
from clad.records import Scores
from clad.registry import register_detector

GanLoss = Literal["bce", "lsgan"]


def min_side(disc_layers: int) -> int:
    """The smallest input side: a multiple of DRAEM's 32 that the discriminators' stride-2
    layers leave at least 4 pixels of."""
    return max(SIDE_MULTIPLE, 2 ** (disc_layers + 2))


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: [B, C, H, W] -> logits [B, 1, H', W'], one per overlapping patch.

    ``layers`` stride-2 4x4 convs (widths w, 2w, 4w, ... capped at 8w), a stride-1 4x4 conv, then a
    stride-1 4x4 conv to one channel; batch norm after every conv but the first and the last,
    LeakyReLU(0.2) after every conv but the last. H' = H / 2^layers - 2 (needs H >= 2^(layers+2)).
    """

    def __init__(self, in_channels: int, width: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for level in range(1, layers + 1):
            out = width * min(2**level, 8)
            stride = 2 if level < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class RdnaNetwork(nn.Module):
    """The reconstruction and segmentation networks (DRAEM's sub-networks) and their
    discriminators; ``forward(x)`` returns (reconstruction [B, 3, H, W], logits [B, 2, H, W])."""

    def __init__(
        self,
        recon_width: int,
        seg_width: int,
        recon_disc_width: int,
        seg_disc_width: int,
        disc_layers: int,
        seg_disc_with_image: bool,
    ) -> None:
        super().__init__()
        self.reconstruction = ReconstructiveSubNetwork(recon_width)
        self.segmentation = DiscriminativeSubNetwork(seg_width)
        self.reconstruction.apply(draem_init)  # DRAEM's initialisation (RDNA's code is DRAEM's)
        self.segmentation.apply(draem_init)
        self.reconstruction_discriminator = PatchDiscriminator(3, recon_disc_width, disc_layers)
        self.segmentation_discriminator = PatchDiscriminator(
            4 if seg_disc_with_image else 1, seg_disc_width, disc_layers
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        reconstruction = self.reconstruction(x)
        logits = self.segmentation(torch.cat([reconstruction, x], dim=1))  # [B, 6, H, W] in
        return reconstruction, logits

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.reconstruction.parameters(), *self.segmentation.parameters()]

    def discriminators(self) -> tuple[PatchDiscriminator, PatchDiscriminator]:
        return self.reconstruction_discriminator, self.segmentation_discriminator


def gan_loss(logits: Tensor, real: bool, kind: GanLoss) -> Tensor:
    """Mean GAN loss of critic logits against the label 1 (``real``) or 0: binary cross-entropy
    on logits (``"bce"``) or squared error (``"lsgan"``)."""
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(logits, target)


@register_detector("rdna")
class RDNA(TrainedDetector):
    """RDNA (Liu et al.): DRAEM's networks trained with a reconstruction and a segmentation
    discriminator; see the module docstring for the losses and the choices made.

    Args:
        recon_width: base width of the reconstruction network (paper/DRAEM: 128).
        seg_width: base width of the segmentation network (paper/DRAEM: 64).
        recon_disc_width, seg_disc_width: base widths of the two PatchGAN discriminators
            (pix2pix: 64).
        disc_layers: stride-2 layers of each discriminator (pix2pix: 3, 70 x 70 patches).
        recon_adv_weight: lambda_r, weight of the reconstruction's adversarial term.
        seg_adv_weight: lambda_s, weight of the segmentation's adversarial term.
        seg_disc_with_image: the segmentation discriminator reads [image, mask] (True) or the
            mask alone.
        gan_loss: ``"bce"`` (non-saturating) or ``"lsgan"`` (least squares).
        disc_lr: Adam learning rate of the discriminators; None: ``lr``.
        anomaly_source_path: a folder of texture images (DTD's ``images/``), searched
            recursively; None: the built-in procedural textures.
        anomaly_probability: fraction of training images that get a synthetic anomaly (0.5).
        score_window: side of the mean filter before the image score's max (DRAEM: 21 at 256 px).
        smoothing_sigma: Gaussian sigma (pixels) applied to the anomaly map; 0 disables it.
        val_seed: seed of the fixed synthetic anomalies on the validation images.
        milestones: fractions of ``epochs`` at which the networks' learning rate is x0.2.
        training: ``Training``; by default DRAEM's: 20 epochs of Adam at lr 1e-4, batch 8,
            early stopping after 5 epochs.
    """

    supports_regularizer = False  # its updates are adversarial pairs (training_step)
    network: RdnaNetwork
    training_defaults = Training(epochs=20, batch_size=8, lr=1e-4, patience=5)

    def __init__(
        self,
        recon_width: PositiveInt = 32,
        seg_width: PositiveInt = 16,
        recon_disc_width: PositiveInt = 16,
        seg_disc_width: PositiveInt = 16,
        disc_layers: PositiveInt = 3,
        recon_adv_weight: NonNegativeFloat = 0.01,
        seg_adv_weight: NonNegativeFloat = 0.01,
        seg_disc_with_image: bool = True,
        gan_loss: GanLoss = "lsgan",
        disc_lr: NonNegativeFloat | None = None,
        anomaly_source_path: str | None = None,
        anomaly_probability: Probability = 0.5,
        score_window: OddWindow = 21,
        smoothing_sigma: NonNegativeFloat = 0.0,
        val_seed: int = 0,
        milestones: tuple[Fraction, ...] = (0.8, 0.9),
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = RdnaNetwork(
            recon_width,
            seg_width,
            recon_disc_width,
            seg_disc_width,
            disc_layers,
            seg_disc_with_image,
        ).to(self.device)
        self.source = texture_source(anomaly_source_path or None)
        self.recon_adv_weight = recon_adv_weight
        self.seg_adv_weight = seg_adv_weight
        self.seg_disc_with_image = seg_disc_with_image
        self.gan_loss = gan_loss
        self.disc_lr = self.lr if disc_lr is None else disc_lr
        self.anomaly_probability = anomaly_probability
        self.score_window = score_window
        self.smoothing_sigma = smoothing_sigma
        self.val_seed = val_seed
        self.milestones = milestones
        self.min_side = min_side(disc_layers)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_folder(arguments["anomaly_source_path"], "anomaly_source_path")
        check_side(input_size, SIDE_MULTIPLE, min_side(arguments["disc_layers"]))

    def _check_size(self, x: Tensor) -> None:
        height, width = x.shape[-2:]
        if height % SIDE_MULTIPLE or width % SIDE_MULTIPLE or min(height, width) < self.min_side:
            raise ValueError(
                f"rdna needs image sides divisible by {SIDE_MULTIPLE} and at least "
                f"{self.min_side}, got {(height, width)}; set dataset.image_size (or crop_size) "
                "accordingly"
            )

    # ------------------------------------------------------------------------- training

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """(networks' Adam, discriminators' Adam)."""
        discriminators = [p for d in self.network.discriminators() for p in d.parameters()]
        return (
            torch.optim.Adam(self.network.generator_parameters(), lr=self.lr),
            torch.optim.Adam(discriminators, lr=self.disc_lr, betas=(0.5, 0.999)),
        )

    def make_scheduler(
        self, optimizer: tuple[torch.optim.Optimizer, torch.optim.Optimizer]
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """DRAEM's step schedule on the networks' optimizer."""
        return step_schedule(optimizer[0], self.epochs, self.milestones)

    def _mask_pair(self, images: Tensor, masks: Tensor) -> Tensor:
        """The segmentation discriminator's input: [B, 4, H, W] (image, mask) or [B, 1, H, W]."""
        return torch.cat([images, masks], dim=1) if self.seg_disc_with_image else masks

    def _supervised_terms(
        self, images: Tensor, augmented: Tensor, masks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(reconstruction [B, 3, H, W], logits [B, 2, H, W], L_rec, L_seg) on ``augmented``."""
        reconstruction, logits = self.network(augmented)
        reconstruction = reconstruction.float()
        rec = F.mse_loss(reconstruction, images) + ssim_loss(reconstruction, images)
        return reconstruction, logits, rec, focal_loss(logits, masks)

    def _supervised_loss(self, images: Tensor, generator: torch.Generator) -> Tensor:
        self._check_size(images)
        augmented, masks = synthesize_anomalies(
            images, self.source, generator, self.anomaly_probability
        )
        _, _, rec, seg = self._supervised_terms(images, augmented, masks)
        return rec + seg

    def loss(self, images: Tensor) -> Tensor:
        """The supervised part ``L_rec + L_seg`` on synthetic anomalies from ``noise()``: the
        model-selection loss (the adversarial updates live in ``training_step``)."""
        return self._supervised_loss(images, self.noise())

    def training_step(
        self, images: Tensor, optimizer: tuple[torch.optim.Optimizer, torch.optim.Optimizer]
    ) -> dict[str, float]:
        """One discriminator update, then one update of the two networks; returns every term:
        ``loss`` (L_G), ``rec``, ``seg``, ``adv_rec``, ``adv_seg`` (the networks' adversarial
        terms, unweighted), ``disc_rec``, ``disc_seg`` (the discriminators' losses)."""
        self._check_size(images)
        network_opt, disc_opt = optimizer
        recon_disc, seg_disc = self.network.discriminators()
        augmented, masks = synthesize_anomalies(
            images, self.source, self.noise(), self.anomaly_probability
        )
        with self.autocast():
            reconstruction, logits, rec, seg = self._supervised_terms(images, augmented, masks)
        probability = logits.float().softmax(dim=1)[:, 1:]  # [B, 1, H, W]

        with self.autocast():
            disc_rec = 0.5 * (
                gan_loss(recon_disc(images), True, self.gan_loss)
                + gan_loss(recon_disc(reconstruction.detach()), False, self.gan_loss)
            )
            disc_seg = 0.5 * (
                gan_loss(seg_disc(self._mask_pair(augmented, masks)), True, self.gan_loss)
                + gan_loss(
                    seg_disc(self._mask_pair(augmented, probability.detach())),
                    False,
                    self.gan_loss,
                )
            )
        self.backward_step(disc_rec + disc_seg, disc_opt)

        for critic in (recon_disc, seg_disc):
            critic.requires_grad_(False)
        with self.autocast():
            adv_rec = gan_loss(recon_disc(reconstruction), True, self.gan_loss)
            adv_seg = gan_loss(
                seg_disc(self._mask_pair(augmented, probability)), True, self.gan_loss
            )
        loss = rec + seg + self.recon_adv_weight * adv_rec + self.seg_adv_weight * adv_seg
        self.backward_step(loss, network_opt)
        for critic in (recon_disc, seg_disc):
            critic.requires_grad_(True)
        return {
            "loss": loss.item(),
            "rec": rec.item(),
            "seg": seg.item(),
            "adv_rec": adv_rec.item(),
            "adv_seg": adv_seg.item(),
            "disc_rec": disc_rec.item(),
            "disc_seg": disc_seg.item(),
        }

    # ------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        """Anomaly map = the segmentation network's anomaly probability [B, H, W] (smoothed with
        ``smoothing_sigma``); image score = max of the map mean-filtered over ``score_window``."""
        self._check_size(x)
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        with self.autocast():
            _, logits = self.network(x)
        maps = gaussian_smooth(logits.float().softmax(dim=1)[:, 1], self.smoothing_sigma)
        return Scores(image=window_max(maps, self.score_window).cpu(), pixel=maps.cpu())
