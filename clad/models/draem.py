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
  augmentation (3 of the 10 imgaug operations of the paper's code) is reimplemented in
  torch/kornia (``clad.models.components.anomaly_sources.augment_texture``; brightness acts on
  RGB rather than imgaug's luminance channel). Perlin masks are rotated with zero-filled corners
  and the networks start from the paper's code's initialisation (``draem_init``), as there.
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

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor

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
    DraemNetwork,
    focal_loss,
    ssim_loss,
    step_schedule,
    synthesize_anomalies,
    window_max,
)
from clad.records import Scores
from clad.registry import register_detector


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
        training: ``Training``; by default 20 epochs of Adam at lr 1e-4, batch 8, early
            stopping after 5 epochs.
    """

    training_defaults = Training(epochs=20, batch_size=8, lr=1e-4, patience=5)

    def __init__(
        self,
        recon_width: PositiveInt = 32,
        disc_width: PositiveInt = 16,
        anomaly_source_path: str | None = None,
        anomaly_probability: Probability = 0.5,
        score_window: OddWindow = 21,
        val_seed: int = 0,
        milestones: tuple[Fraction, ...] = (0.8, 0.9),
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = DraemNetwork(recon_width, disc_width).to(self.device)
        self.source = texture_source(anomaly_source_path or None)
        self.anomaly_probability = anomaly_probability
        self.score_window = score_window
        self.val_seed = val_seed
        self.milestones = milestones

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_folder(arguments["anomaly_source_path"], "anomaly_source_path")
        check_side(input_size, SIDE_MULTIPLE)

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

    def loss(self, images: Tensor) -> Tensor:
        """``L_rec + L_seg`` on synthetic anomalies drawn from ``noise()`` (fresh ones in
        training, the fixed ``val_seed`` set in validation)."""
        return self._loss(images, self.noise())

    def distillation_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """The reconstruction [B, 3, H, W] and segmentation logits [B, 2, H, W] of ``images``
        (no synthetic anomalies drawn)."""
        self._check_size(images)
        return tuple(self.network(images))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self._check_size(x)
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        with self.autocast():
            _, logits = self.network(x)
        maps = logits.float().softmax(dim=1)[:, 1]  # [B, H, W]
        return Scores(image=window_max(maps, self.score_window).cpu(), pixel=maps.cpu())
