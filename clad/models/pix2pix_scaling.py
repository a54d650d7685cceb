"""pix2pix super-resolution: CLAD's ``pix2pix_scaling_model`` as an anomaly detector.

CLAD (projectclad769/clad): ``architecture: "pix2pix"``, ``trainer: "pix2pix_scaling_model"``,
built in ``src/strategy_ad.py`` (``create_trainer``) as ``Trainer_Pix2Pix`` with
``produce_input_scaling_model`` (``src/trainer/trainer_pix2pix.py``,
``src/utilities/utility_pix2pix.py``: ``produce_scaled_A_from_B``); scored by
``reconstruct_epoch_with_evaluation_ad`` (``src/utilities/utility_ad.py``) on the outputs of
``produce_reconstructed_output_given_model_and_batch`` (``src/utilities/utility_models.py``);
settings ``configurations/models/pix2pix.json`` (the file CLAD's loader reads for
``architecture: "pix2pix"``): 5 epochs, batch size 1, lr 2e-4, no early stopping,
``lambda_L1`` 100; run file ``configurations/pix2pix_scaling_model/``
``test_pix2pix_scaling_model.json``. The networks, losses and one update are
``clad.models.components.pix2pix`` (a U-Net generator and a PixelGAN critic, vanilla GAN loss +
100 x L1). In CLAD this network is also the restorer of its compressed replay (strategy
``compressed_replay_sr`` here, which trains its own).

Training (``Trainer_Pix2Pix.train_epoch``): for each image ``x`` [C, H, W], the input is ``x``
downscaled to ``s x s`` (CLAD's 32 x 32) and resized back, ``A = up(down(x))``, the target
``B = x``; one pix2pix update on the pair:

    L_D = 1/2 [g(D([A, G(A)]), 0) + g(D([A, x]), 1)]
    L_G = g(D([A, G(A)]), 1) + l1_weight * mean |G(A) - x|          (l1_weight: CLAD's 100)

Scoring (``reconstruct_epoch_with_evaluation_ad``, ``test_results``): the restoration
``x' = G(up(down(x)))``; the anomaly map is the multi-scale gradient magnitude similarity
distance of ``x`` and ``x'``, Gaussian-blurred, and the image score its maximum:

    map = blur_sigma(MSGMS(x, x')),  image score = max(map)

with MSGMS on ImageNet-normalised images (``clad.models.components.pix2pix.msgms_map``) and
``sigma`` CLAD's 7 (pixels, at 256 px; scipy's ``gaussian_filter`` on each [H, W] map, a 2-D
blur). A normal image is restored well from its small copy; detail the small copy loses
(scratches, small holes, thin cracks) comes back as the normal texture the network learnt, and
the map marks it.

Where ours differs from CLAD's code:
- Input scale: as ``pix2pix_inpaint``: the networks see ``2x - 1`` in [-1, 1] where CLAD feeds
  ImageNet-normalised images to a tanh generator; the score is computed as CLAD's, on
  ImageNet-normalised ``x`` and ``x'``.
- Resizing: CLAD resizes with PIL's Lanczos filter both ways on uint8 images (the upscaled input
  is uint8 again); here ``downscale`` (bicubic with antialiasing, rounded to uint8) and
  ``upscale`` (bicubic, kept as floats), the operations ``compressed_replay_sr`` stores and
  restores with.
- Normalisation and dropout: per-image normalisation (CLAD's batch norm on batches of one image)
  and no dropout at test time (see the components' docstring), so scores are deterministic.
- Updates per step: CLAD updates once per image (with ``replay``, once per image of the mixed
  batch of 2B); here once per batch. With ``batch_size`` 1 and no batch mixing (CLAD's
  settings but for replay) the updates are CLAD's.
- The score map is CLAD's plus a constant (CLAD's MSGMS is this minus 3/4) and CLAD min-max
  normalises all maps of a test set together: the same order, so the same AUROC.
- CLAD's one run file sets ``num_epochs`` 0 and reads its training and test images from the
  ``memorized/`` and ``evaluate_data/`` folders an earlier run saved (``manage_dataset`` in
  ``src/utilities/utility_main.py``); a clad run trains the detector on the task's images
  (``clad.config.clad_format`` leaves ``num_epochs`` 0 and those folders out).

Cost: ``depth`` 8, ``ngf`` 64 (``unet_256``, CLAD's) has 54.4M generator parameters (218 MB
float32), as ``pix2pix_inpaint``; one update per training image per epoch and one generator pass
per test image (``pix2pix_inpaint``: three and twelve).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, cast

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor

from clad.models.base import TrainedDetector, Training
from clad.models.components.arguments import Probability, check_blur, check_side
from clad.models.components.pix2pix import (
    Pix2Pix,
    discriminator_min_side,
    downscale,
    imagenet_normalize,
    msgms_map,
    pix2pix_step,
    smoothed_max,
    upscale,
)
from clad.records import Scores
from clad.registry import register_detector

MSGMS_MIN_SIDE = 24
"""The multi-scale GMS needs 3 pixels at 1/8 of the side."""


def _size(images: Tensor) -> tuple[int, int]:
    """(H, W) of [..., H, W]."""
    return int(images.shape[-2]), int(images.shape[-1])


@register_detector("pix2pix_scaling")
class Pix2PixScaling(TrainedDetector):
    """CLAD's pix2pix super-resolution model as a detector; see the module docstring for the
    pairs, losses and score, and where this differs from CLAD.

    Args:
        downscaled_side: the side of the square small copy the network restores from (CLAD:
            32, at 256 px); smaller than the images' sides.
        ngf: the generator's base width (CLAD: 64).
        ndf: the critic's base width (CLAD: 64).
        depth: U-Net levels; sides must be divisible by ``2**depth`` (CLAD's ``unet_256``: 8).
        dropout: dropout 0.5 in the generator's inner 8·ngf levels while training (pix2pix).
        disc_layers: 0 for CLAD's 1x1 PixelGAN critic; n for pix2pix's n-layer PatchGAN.
        l1_weight: the weight of mean |G(A) - x| in the generator's loss (CLAD: 100).
        adam_betas: Adam's betas for both networks (CLAD: 0.5, 0.999).
        smoothing_sigma: the Gaussian blur of the anomaly map, in pixels (CLAD: 7 at 256 px).
        training: ``Training``; by default CLAD's: 5 epochs, batch size 1, lr 2e-4, no early
            stopping, float32.
    """

    supports_regularizer = False  # its updates are adversarial pairs (training_step)
    network: Pix2Pix
    training_defaults = Training(epochs=5, batch_size=1, lr=2e-4, patience=0, precision="fp32")

    def __init__(
        self,
        downscaled_side: PositiveInt = 32,
        ngf: PositiveInt = 64,
        ndf: PositiveInt = 64,
        depth: Annotated[int, Field(ge=2)] = 8,
        dropout: bool = True,
        disc_layers: NonNegativeInt = 0,
        l1_weight: NonNegativeFloat = 100.0,
        adam_betas: tuple[Probability, Probability] = (0.5, 0.999),
        smoothing_sigma: NonNegativeFloat = 7.0,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = Pix2Pix(3, ngf, ndf, depth, disc_layers, dropout).to(self.device)
        self.downscaled_side = downscaled_side
        self.depth = depth
        self.disc_layers = disc_layers
        self.l1_weight = l1_weight
        self.adam_betas = cast(tuple[float, float], tuple(adam_betas))
        self.smoothing_sigma = smoothing_sigma

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        """Sides divisible by ``2**depth`` and at least 24 (MSGMS) or the PatchGAN's minimum;
        ``downscaled_side`` below both sides; the blur's radius fits the image."""
        minimum = max(MSGMS_MIN_SIDE, discriminator_min_side(arguments["disc_layers"]))
        check_side(input_size, 2 ** arguments["depth"], minimum)
        height, width = input_size
        side = arguments["downscaled_side"]
        if side >= min(height, width):
            raise ValueError(
                f"downscaled_side: {side} px does not downscale the {height}x{width} images "
                "(the network would learn the identity); use a side below both "
                f"(CLAD: 32 at 256 px, i.e. {max(1, min(height, width) // 8)} here)"
            )
        check_blur(arguments["smoothing_sigma"], input_size)

    def _check_size(self, x: Tensor) -> None:
        self.check_arguments(
            {
                "depth": self.depth,
                "disc_layers": self.disc_layers,
                "downscaled_side": self.downscaled_side,
                "smoothing_sigma": self.smoothing_sigma,
            },
            _size(x),
        )

    def scaled_input(self, images: Tensor) -> Tensor:
        """``up(down(x))`` [B, C, H, W] in [0, 1] of ``images`` [B, C, H, W] in [0, 1]: the
        uint8 ``downscaled_side`` square copy resized back (CLAD's ``produce_scaled_A_from_B``)."""
        return upscale(downscale(images, self.downscaled_side), _size(images))

    # ------------------------------------------------------------------------- training

    def make_optimizer(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """(generator's Adam, critic's Adam), both at ``lr`` with ``adam_betas``."""
        return self.network.optimizers(self.lr, self.adam_betas)

    def loss(self, images: Tensor) -> Tensor:
        """Model selection: mean |G(up(down(x))) - x| in the networks' [-1, 1] units."""
        self._check_size(images)
        x = images * 2 - 1
        restored = self.network(self.scaled_input(images) * 2 - 1).float()
        return (restored - x).abs().mean()

    def training_step(
        self, images: Tensor, optimizer: tuple[torch.optim.Adam, torch.optim.Adam]
    ) -> dict[str, float]:
        """One pix2pix update on the batch's pairs (up(down(x)), x); returns ``loss`` (L_G),
        ``gan``, ``l1`` (unweighted) and ``disc`` (L_D)."""
        self._check_size(images)
        _, terms = pix2pix_step(
            self.network,
            self.scaled_input(images) * 2 - 1,
            images * 2 - 1,
            optimizer,
            self.l1_weight,
            self.backward_step,
            self.autocast,
        )
        return terms

    # ------------------------------------------------------------------------- scoring

    def restore(self, images: Tensor) -> Tensor:
        """x' = G(up(down(x))) [B, 3, H, W] in [0, 1] of ``images`` [B, 3, H, W] in [0, 1]."""
        with self.autocast():
            outputs = self.network(self.scaled_input(images) * 2 - 1).float()
        return (outputs + 1) / 2

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        """Anomaly map [B, H, W] = blurred MSGMS(x, x'); image score = its maximum (module
        docstring)."""
        self._check_size(x)
        self.check_fitted()
        self.network.eval()
        images = x.to(self.device).float()
        restored = self.restore(images)
        maps = msgms_map(imagenet_normalize(images), imagenet_normalize(restored))
        maps, image = smoothed_max(maps, self.smoothing_sigma)
        return Scores(image=image.cpu(), pixel=maps.cpu())
