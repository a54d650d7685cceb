"""pix2pix inpainting: CLAD's ``pix2pix_inpaint`` detector.

CLAD (projectclad769/clad): ``architecture: "pix2pix"``, ``trainer: "pix2pix_inpaint"``;
``src/trainer/trainer_pix2pix_inpaint.py`` (``Trainer_Pix2Pix_InPaint``,
``evaluate_data_pix2pix_inpaint``), ``src/utilities/utility_pix2pix.py``
(``create_images_masked``, ``forward_k_value``), ``src/inpaint/gen_mask.py`` (``gen_mask``),
``src/inpaint/gms_loss.py`` (``MSGMS_Score``); settings ``configurations/models/pix2pix.json``
(the file CLAD's loader reads for ``architecture: "pix2pix"``; ``pix2pix_inpaint.json`` holds the
same values): 5 epochs, batch size 1, lr 2e-4, no early stopping, ``k_value`` [2, 4, 8, 16]. The
networks, losses and one update are ``clad.models.components.pix2pix`` (a U-Net generator and a
PixelGAN critic, vanilla GAN loss + 100 x L1).

Masks (``gen_mask``): for a cell size k, the image is cut into k x k cells whose random
permutation is split into three runs; mask ``M_p`` (p = 0, 1, 2) hides run p (0 there, 1
elsewhere), so every pixel is hidden by exactly one of the three: sum_p (1 - M_p) = 1.

Training (``train_epoch``): for each image ``x``, one k drawn uniformly from ``k_values``, and for
each of its three masks one pix2pix update with input ``A = x * M_p`` and target ``B = x`` (the
loss L1 covers every pixel, hidden or not):

    L_D = 1/2 [g(D([A, G(A)]), 0) + g(D([A, x]), 1)]
    L_G = g(D([A, G(A)]), 1) + l1_weight * mean |G(A) - x|          (l1_weight: CLAD's 100)

Scoring (``evaluate_data_pix2pix_inpaint``, ``forward_k_value``, ``test_results``): for every k,
the three inpaintings are merged, each pixel taken from the one whose mask hid it,
``x_k = sum_p G(x * M_p) * (1 - M_p)``; the anomaly map is the multi-scale gradient magnitude
similarity distance of ``x`` and ``x_k``, weighted by the inverse number of grid cells, summed
over k, and Gaussian-blurred:

    map = blur_sigma( sum_k MSGMS(x, x_k) / ((H / k) (W / k)) ),  image score = max(map)

with ``MSGMS(x, y) = 1 - (1/4) sum_{s=0..3} up(GMS(pool^s x, pool^s y))`` on ImageNet-normalised
images (``clad.models.components.pix2pix.msgms_map``) and ``sigma`` CLAD's 7 (pixels, at 256 px).

Where ours differs from CLAD's code:
- Input scale: CLAD feeds ImageNet-normalised images (about [-2.1, 2.6]) to a generator that
  ends in tanh ([-1, 1]), so it cannot reproduce the brightest and darkest values, and hidden
  cells are 0 = the ImageNet mean colour. Here the networks see ``2x - 1`` in [-1, 1] (the
  pix2pix repository's own scale): hidden cells are mid-grey, and the L1 term is in these units
  (CLAD's are about 2.2x larger per colour error, with the same weight 100). The score is
  computed as CLAD's, on ImageNet-normalised ``x`` and ``x_k``, so its gradient constant c acts
  on the same scale.
- Normalisation and dropout: per-image normalisation (CLAD's batch norm on batches of one image)
  and no dropout at test time (see the components' docstring).
- Updates per step: CLAD runs the three masks of each image as three batches of one; here a
  batch of B images (each with its own k and masks) gets three updates, one per mask index, on
  B inputs. With ``batch_size`` 1 (CLAD's) the updates are CLAD's.
- Test masks: CLAD draws new random masks (and a new k order) per test image; here every image
  of every ``predict`` call gets the same masks, drawn from ``mask_seed``, so scores are
  deterministic and do not depend on the batch.
- The score map is CLAD's plus a constant (CLAD computes (1 - sum_s GMS_s) / 4 per k, i.e. this
  minus 3/4); CLAD also min-max normalises all maps of a test set together (the same order,
  so the same AUROC; a detector scores each batch on its own here).
- The blur: CLAD squeezes the one-image map to [H, W] and then blurs ``total_score[i]`` for each
  i, i.e. each row on its own (a 1-D horizontal Gaussian; its scaling-model scorer, which keeps
  the batch axis, blurs in 2-D). Here the blur is 2-D, as intended there and in CLAD's other
  reconstruction scorers; at the border scipy's ``reflect`` repeats the edge pixel and kornia's
  used here does not.

Cost: ``depth`` 8, ``ngf`` 64 (``unet_256``, CLAD's) has 54.4M generator parameters (218 MB
float32); the PixelGAN critic at ``ndf`` 64 has 9k. Each training image costs three
generator-and-critic updates per epoch and each test image 3 x len(k_values) = 12 generator
passes. Measured at these sizes on a shared 2-core CPU (256 px, batch 1): 10-20 s per update,
1.4 s per generator pass, so CLAD's settings need a GPU. The small settings in
``configurations/synthetic`` (``ngf`` 16, ``depth`` 6, 64 px) train 30 epochs of 28 images in
about a minute on that CPU.
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
    MASKS_PER_GRID,
    Pix2Pix,
    discriminator_min_side,
    grid_groups,
    imagenet_normalize,
    keep_masks,
    merge_inpaintings,
    msgms_map,
    pix2pix_step,
    smoothed_max,
)
from clad.records import Scores
from clad.registry import register_detector

MSGMS_MIN_SIDE = 24
"""The multi-scale GMS needs 3 pixels at 1/8 of the side."""

KValues = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]


def _size(images: Tensor) -> tuple[int, int]:
    """(H, W) of [..., H, W]."""
    return int(images.shape[-2]), int(images.shape[-1])


@register_detector("pix2pix_inpaint")
class Pix2PixInpaint(TrainedDetector):
    """CLAD's pix2pix inpainting detector; see the module docstring for the masks, losses and
    score, and where this differs from CLAD.

    Args:
        k_values: the grid cell sizes in pixels (CLAD: 2, 4, 8, 16); each divides both sides.
        ngf: the generator's base width (CLAD: 64).
        ndf: the critic's base width (CLAD: 64).
        depth: U-Net levels; sides must be divisible by ``2**depth`` (CLAD's ``unet_256``: 8).
        dropout: dropout 0.5 in the generator's inner 8·ngf levels while training (pix2pix).
        disc_layers: 0 for CLAD's 1x1 PixelGAN critic; n for pix2pix's n-layer PatchGAN (3: its
            70 x 70 default).
        l1_weight: the weight of mean |G(A) - x| in the generator's loss (CLAD: 100).
        adam_betas: Adam's betas for both networks (CLAD: 0.5, 0.999).
        smoothing_sigma: the Gaussian blur of the anomaly map, in pixels (CLAD: 7 at 256 px).
        mask_seed: seed of the test-time masks (the same masks for every image).
        training: ``Training``; by default CLAD's: 5 epochs, batch size 1, lr 2e-4, no early
            stopping, float32.
    """

    supports_regularizer = False  # its updates are adversarial pairs (training_step)
    network: Pix2Pix
    training_defaults = Training(epochs=5, batch_size=1, lr=2e-4, patience=0, precision="fp32")

    def __init__(
        self,
        k_values: KValues = (2, 4, 8, 16),
        ngf: PositiveInt = 64,
        ndf: PositiveInt = 64,
        depth: Annotated[int, Field(ge=2)] = 8,
        dropout: bool = True,
        disc_layers: NonNegativeInt = 0,
        l1_weight: NonNegativeFloat = 100.0,
        adam_betas: tuple[Probability, Probability] = (0.5, 0.999),
        smoothing_sigma: NonNegativeFloat = 7.0,
        mask_seed: int = 0,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = Pix2Pix(3, ngf, ndf, depth, disc_layers, dropout).to(self.device)
        self.k_values = tuple(k_values)
        self.depth = depth
        self.disc_layers = disc_layers
        self.l1_weight = l1_weight
        self.adam_betas = cast(tuple[float, float], tuple(adam_betas))
        self.smoothing_sigma = smoothing_sigma
        self.mask_seed = mask_seed

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        """Sides divisible by ``2**depth`` and at least 24 (MSGMS) or the PatchGAN's minimum;
        every k divides both sides; the blur's radius fits the image."""
        minimum = max(MSGMS_MIN_SIDE, discriminator_min_side(arguments["disc_layers"]))
        check_side(input_size, 2 ** arguments["depth"], minimum)
        height, width = input_size
        for k in arguments["k_values"]:
            if height % k or width % k:
                raise ValueError(
                    f"k_values: a cell size of {k} px does not divide the {height}x{width} "
                    "images; use divisors of both sides"
                )
        check_blur(arguments["smoothing_sigma"], input_size)

    def _check_size(self, x: Tensor) -> None:
        self.check_arguments(
            {
                "depth": self.depth,
                "disc_layers": self.disc_layers,
                "k_values": self.k_values,
                "smoothing_sigma": self.smoothing_sigma,
            },
            _size(x),
        )

    # ------------------------------------------------------------------------- training

    def make_optimizer(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """(generator's Adam, critic's Adam), both at ``lr`` with ``adam_betas``."""
        return self.network.optimizers(self.lr, self.adam_betas)

    def training_masks(
        self, count: int, size: tuple[int, int], generator: torch.Generator
    ) -> Tensor:
        """Each image's three masks [count, 3, H, W] (1 kept, 0 hidden), its k drawn uniformly
        from ``k_values`` (CLAD: ``random.sample(k_value, 1)`` per image)."""
        picks = torch.randint(len(self.k_values), (count,), generator=generator)
        groups = [grid_groups(self.k_values[int(i)], *size, generator) for i in picks]
        return keep_masks(torch.stack(groups))

    def loss(self, images: Tensor) -> Tensor:
        """Model selection: mean |x_k - x| of the merged inpainting (k and masks drawn per image
        from ``noise()``), in the networks' [-1, 1] units."""
        self._check_size(images)
        x = images * 2 - 1
        masks = self.training_masks(len(x), _size(x), self.noise()).to(x.device)
        outputs = torch.stack(
            [self.network(x * masks[:, p : p + 1]).float() for p in range(MASKS_PER_GRID)]
        )  # [3, B, C, H, W]
        merged = merge_inpaintings(outputs, masks.transpose(0, 1).unsqueeze(2))
        return (merged - x).abs().mean()

    def training_step(
        self, images: Tensor, optimizer: tuple[torch.optim.Adam, torch.optim.Adam]
    ) -> dict[str, float]:
        """Three pix2pix updates, one per mask index, on the masked batch; returns their mean
        terms: ``loss`` (L_G), ``gan``, ``l1`` (unweighted) and ``disc`` (L_D)."""
        self._check_size(images)
        x = images * 2 - 1
        masks = self.training_masks(len(x), _size(x), self.noise()).to(x.device)
        sums: dict[str, float] = {}
        for p in range(MASKS_PER_GRID):
            _, terms = pix2pix_step(
                self.network,
                x * masks[:, p : p + 1],
                x,
                optimizer,
                self.l1_weight,
                self.backward_step,
                self.autocast,
            )
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value / MASKS_PER_GRID
        return sums

    # ------------------------------------------------------------------------- scoring

    def inpaint(self, images: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """The merged inpainting x_k [B, 3, H, W] in [0, 1] of ``images`` [B, 3, H, W] in
        [0, 1] for cell size ``k``, with one set of three masks from ``generator`` for all."""
        masks = keep_masks(grid_groups(k, *_size(images), generator)).to(images.device)
        x = images * 2 - 1
        with self.autocast():
            outputs = torch.stack(
                [self.network(x * masks[p]).float() for p in range(MASKS_PER_GRID)]
            )  # [3, B, 3, H, W]
        merged = merge_inpaintings(outputs, masks[:, None, None])
        return (merged + 1) / 2

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        """Anomaly map [B, H, W] = blurred sum over k of MSGMS(x, x_k) / cells_k; image score
        = its maximum (module docstring)."""
        self._check_size(x)
        self.check_fitted()
        self.network.eval()
        images = x.to(self.device).float()
        height, width = images.shape[-2:]
        target = imagenet_normalize(images)
        generator = torch.Generator().manual_seed(self.mask_seed)
        maps = images.new_zeros((len(images), height, width))
        for k in self.k_values:
            merged = self.inpaint(images, k, generator)
            cells = (height // k) * (width // k)
            maps += msgms_map(target, imagenet_normalize(merged)) / cells
        maps, image = smoothed_max(maps, self.smoothing_sigma)
        return Scores(image=image.cpu(), pixel=maps.cpu())
