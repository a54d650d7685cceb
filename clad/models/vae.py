"""The convolutional variational autoencoder of the CLAD benchmark.

Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (the model and its ELBO);
the network and training are CLAD's: Pezze et al., "Continual learning approaches for anomaly
detection" (arXiv:2212.11192), code github.com/dallepezze/clad (``src/models/vae.py``,
``src/trainer/trainer_vae.py``, ``configurations/models/vae.json``).

Network, for an image side ``S = 4 * 2^n``: an encoder of ``n`` stride-2 4 x 4 convolutions
with LeakyReLU(0.2), widths ``w_i = min(16 * 2^i, 128)``, batch norm on all but the first and
the last; the ``[w_{n-1}, 4, 4]`` map flattened and mapped by two linear layers to the
posterior's ``mu`` and ``logvar`` (``latent_dim`` each); a decoder of a linear layer back to
``[w_{n-1}, 4, 4]`` with LeakyReLU, ``n - 1`` mirrored stride-2 4 x 4 transposed convolutions
(LeakyReLU, batch norm on all but the first) and a final transposed convolution to 3 channels.
At 256 px (``n = 6``, widths 16, 32, 64, 128, 128, 128) these are CLAD's layers exactly.

Training minimises the negative ELBO, with ``z = mu + eps * exp(logvar / 2)``,
``eps ~ N(0, I)``, weighted as ``loss_weighting`` says:

``per_image`` (default; the ELBO of Kingma and Welling per image, averaged over the batch):

    recon = sum_{b, c, h, w} (x_hat(z) - x)^2 / B
    kl    = 0.5 * sum_{b, d} (exp(logvar) - logvar - 1 + mu^2) / B
    loss  = recon + beta * kl

``clad`` (CLAD's ``create_elbo_function`` in ``src/loss_functions.py``, divided by the batch in
``Trainer_VAE.train_epoch``): the squared error averaged over all B * 3 * H * W values, the KL
summed, and the whole divided by B again:

    recon = mean_{b, c, h, w} (x_hat(z) - x)^2 / B
    kl    = 0.5 * sum_{b, d} (exp(logvar) - logvar - 1 + mu^2) / B
    loss  = recon + beta * kl

so the KL term weighs 3 * H * W times more against the reconstruction than in the ELBO
(196,608 times at 256 px), and the posterior collapses onto the prior: the decoder learns a
mean image. Measured (the quality test's setting: synthetic disc / nut at 64 px, 28 training
and 4 validation images, batch 8, lr 1e-3, seed 0, one CPU thread; final training KL, image
AUROC, pixel AUROC):

    epochs  weighting   disc: KL / image / pixel    nut: KL / image / pixel
    60      per_image   16.9 / 0.869 / 0.988        8.67 / 0.862 / 0.983
    60      clad        0.004 / 0.500 / 0.755       0.002 / 0.713 / 0.863
    15      per_image   16.0 / 0.662 / 0.957        35.1 / 0.669 / 0.951
    15      clad        0.010 / 0.588 / 0.756       0.007 / 0.744 / 0.849

(issue 26's own run at 15 epochs: per_image KL 21.5 / 12.7, image 0.575 / 0.931, pixel
0.932 / 0.992; clad KL 0.01, image 0.500 / 0.713, pixel 0.766 / 0.853). Only CLAD's own files
use ``clad`` (``clad.config.clad_format``); a notice says so when such a VAE is built.

Adam (betas 0.5, 0.999). CLAD's defaults: ``latent_dim = 256``, ``beta = 1``, lr 1e-3,
50 epochs, batch size 32.

Scoring: the reconstruction from the posterior mean, ``x_hat(mu)`` (no sampling, so scores are
deterministic), compared with the input by the autoencoders' shared maps
(``clad.models.autoencoder.ReconstructionDetector``: L1 or 1 - SSIM per pixel, Gaussian-smoothed;
image score the map's mean or the mean of its top 1 %).

The replay strategies read the model through ``encode`` (posterior mean), ``decode`` and
``sample_codes`` (the standard normal prior): ``latent_replay`` stores codes,
``generative_replay`` decodes prior samples.

Where ours differs from CLAD:
- Loss weighting: ``per_image`` by default (above); ``clad`` is CLAD's.
- Inputs and outputs: CLAD feeds images normalised with ImageNet's mean and std
  (``src/datasets.py``) and ends the decoder in tanh, so its reconstructions cannot reach part
  of the inputs' range; here images stay in [0, 1] and the decoder ends in a sigmoid. The squared
  error is therefore on another scale (ImageNet normalisation multiplies it by about 1 / 0.226^2
  = 20), a much smaller factor than the loss weighting's.
- Size: CLAD's layers are fixed for 256 px; here the number of stages follows ``image_size``
  (which must be ``4 * 2^n`` with ``n >= 1``, and equal the images' side).
- Scoring: CLAD scores reconstruction models by the multi-scale gradient magnitude similarity
  map smoothed with sigma 7 (``src/utilities/utility_ad.py``); here the shared L1 / SSIM maps.
- Schedule: CLAD's model config names a plateau LR scheduler and early stopping, which its VAE
  run configs turn off; here the learning rate is constant and the shared loop's early stopping
  on the validation ELBO (same noise every epoch) applies with ``patience``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from pydantic import NonNegativeFloat, PositiveInt
from torch import Tensor, nn

from clad.models.autoencoder import ReconstructionDetector
from clad.models.base import Training
from clad.models.components.arguments import Probability
from clad.registry import register_detector

BASE_SIDE = 4  # side of the encoder's last map
MAX_WIDTH = 128
LossWeighting = Literal["per_image", "clad"]

log = logging.getLogger(__name__)
_clad_weighting_noticed = False  # the ``clad`` weighting's notice is logged once per process


def notice_clad_weighting() -> None:
    """Log, once per process, that CLAD's loss weighting collapses the posterior."""
    global _clad_weighting_noticed
    if not _clad_weighting_noticed:
        _clad_weighting_noticed = True
        log.warning(
            "vae: loss_weighting 'clad' (CLAD's loss: the squared error averaged over every "
            "pixel, the KL summed, both divided by the batch) weighs the KL term 3 * H * W "
            "times more than the ELBO does; the posterior collapses (KL 0.002-0.01 measured on "
            "the synthetic set, against 9-35 with 'per_image') and pixel AUROC falls from "
            "0.98 to 0.76-0.86 there (see clad.models.vae)"
        )


def stage_widths(image_size: int) -> list[int]:
    """Encoder widths for a square side ``image_size = 4 * 2^n``: ``min(16 * 2^i, 128)`` for
    ``i < n`` (256 px: 16, 32, 64, 128, 128, 128)."""
    if image_size < 2 * BASE_SIDE or image_size & (image_size - 1):
        raise ValueError(
            f"vae: image_size must be 4 * 2^n with n >= 1 (8, 16, 32, 64, 128, 256, ...), got "
            f"{image_size}"
        )
    stages = image_size.bit_length() - 3  # log2(image_size / 4)
    return [min(16 * 2**i, MAX_WIDTH) for i in range(stages)]


def conv_block(c_in: int, c_out: int, batch_norm: bool, transpose: bool) -> nn.Sequential:
    """Stride-2 4 x 4 (transposed) convolution, optional batch norm, LeakyReLU(0.2): halves
    (doubles) H and W."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = [conv(c_in, c_out, 4, stride=2, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class VariationalAutoencoder(nn.Module):
    """CLAD's convolutional VAE for square images of side ``image_size`` (see the module
    docstring); ``forward`` is the reconstruction from the posterior mean."""

    def __init__(self, image_size: int, latent_dim: int) -> None:
        super().__init__()
        widths = stage_widths(image_size)
        last = len(widths) - 1
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.top_width = widths[-1]
        self.encoder = nn.Sequential(
            *(
                conv_block(c_in, c_out, batch_norm=0 < i < last, transpose=False)
                for i, (c_in, c_out) in enumerate(zip([3, *widths[:-1]], widths))
            )
        )
        flat = widths[-1] * BASE_SIDE * BASE_SIDE
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)
        self.expand = nn.Sequential(nn.Linear(latent_dim, flat), nn.LeakyReLU(0.2, inplace=True))
        reversed_widths = widths[::-1]
        self.decoder = nn.Sequential(
            *(
                conv_block(c_in, c_out, batch_norm=i > 0, transpose=True)
                for i, (c_in, c_out) in enumerate(zip(reversed_widths, reversed_widths[1:]))
            ),
            nn.ConvTranspose2d(widths[0], 3, 4, stride=2, padding=1),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mu, logvar)``, each [B, latent_dim], of images [B, 3, S, S]."""
        h = self.encoder(x).flatten(1)  # [B, w * 4 * 4]
        return self.mu(h), self.logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """Images [B, 3, S, S] in [0, 1] of codes [B, latent_dim]."""
        h = self.expand(z).view(-1, self.top_width, BASE_SIDE, BASE_SIDE)  # [B, w, 4, 4]
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over all elements:
    ``0.5 * sum(exp(logvar) - logvar - 1 + mu^2)``."""
    return 0.5 * (logvar.exp() - logvar - 1 + mu.pow(2)).sum()


@register_detector("vae")
class VAE(ReconstructionDetector):
    """CLAD's convolutional variational autoencoder; see the module docstring for the method and
    how ours differs.

    Args:
        input_size: the images' side ``S = 4 * 2^n``, which sets the number of stages (CLAD:
            256); the runner fills it from the dataset (its ``crop_size``, else ``image_size``).
        latent_dim: size of the code (CLAD: 256).
        beta: weight of the KL term (CLAD: 1).
        loss_weighting: ``"per_image"`` (the ELBO per image) or ``"clad"`` (CLAD's weighting,
            which collapses the posterior; module docstring, with the measured ablation).
        adam_betas: Adam's ``(beta1, beta2)`` (CLAD: 0.5, 0.999).
        anomaly_map: ``"l1"`` or ``"ssim"`` (1 - SSIM) between the image and its reconstruction.
        image_score: the map's ``"mean"`` or the mean of its ``"top1"`` % pixels.
        smoothing_sigma: Gaussian smoothing of the map, in pixels (0: none). The three scoring
            defaults are ``conv_ae``'s (CLAD's own map is not implemented; module docstring).
        training: ``Training``; by default 50 epochs at lr 1e-3, batch 32, early stopping
            after 5 epochs. The loss terms are summed in float32 whatever the precision.
    """

    network: VariationalAutoencoder
    training_defaults = Training(epochs=50, batch_size=32, lr=1e-3, patience=5)

    def __init__(
        self,
        input_size: int = 256,
        latent_dim: PositiveInt = 256,
        beta: NonNegativeFloat = 1.0,
        loss_weighting: LossWeighting = "per_image",
        adam_betas: tuple[Probability, Probability] = (0.5, 0.999),
        anomaly_map: Literal["l1", "ssim"] = "l1",
        image_score: Literal["mean", "top1"] = "top1",
        smoothing_sigma: NonNegativeFloat = 4.0,
        training: Training | None = None,
    ) -> None:
        super().__init__(
            VariationalAutoencoder(input_size, latent_dim),
            anomaly_map,
            image_score,
            smoothing_sigma,
            training,
        )
        self.beta = beta
        self.loss_weighting: LossWeighting = loss_weighting
        if loss_weighting == "clad":
            notice_clad_weighting()
        # two values, as the signature says (tuple() only turns a list given in Python into one)
        self.adam_betas = cast(tuple[float, float], tuple(adam_betas))
        self.image_size = input_size

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        stage_widths(arguments["input_size"])

    @property
    def latent_dim(self) -> int:
        """Size of the codes of ``encode``, ``decode`` and ``sample_codes``."""
        return self.network.latent_dim

    def _check_size(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"vae: the network is built for {self.image_size} x {self.image_size} px images, "
                f"got {tuple(x.shape[-2:])} (input_size {self.image_size}; in a run it is the "
                "dataset's image_size, or crop_size when it crops)"
            )

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.lr, betas=self.adam_betas)

    def loss(self, images: Tensor) -> dict[str, Tensor]:
        """The negative ELBO (``loss``) and its terms ``recon`` and ``kl``, weighted as
        ``loss_weighting`` says (module docstring), with ``eps`` drawn from ``noise()``."""
        self._check_size(images)
        mu, logvar = self.network.encode(images)
        mu, logvar = mu.float(), logvar.float()
        eps = torch.randn(mu.shape, generator=self.noise()).to(mu.device)
        recon = self.network.decode(mu + eps * torch.exp(0.5 * logvar)).float()
        batch = len(images)
        squared = (recon - images.float()).pow(2)  # [B, 3, S, S]
        error = squared.sum() if self.loss_weighting == "per_image" else squared.mean()
        terms = {
            "recon": error / batch,
            "kl": kl_divergence(mu, logvar) / batch,
        }
        terms["loss"] = terms["recon"] + self.beta * terms["kl"]
        return terms

    def distillation_outputs(self, images: Tensor) -> Tensor:
        """The reconstruction from the posterior mean [B, 3, S, S] (with gradients)."""
        return self.network(images)

    # ------------------------------------------------------------------ the latent interface

    def _batches(self, x: Tensor) -> list[Tensor]:
        return list(x.split(self.batch_size)) if len(x) else [x]

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Posterior means [N, latent_dim] (CPU, float32) of images [N, 3, S, S] in [0, 1]
        (eval mode, in batches of ``batch_size``)."""
        self._check_size(images)
        self.network.eval()
        codes = [
            self.network.encode(batch.to(self.device))[0].float().cpu()
            for batch in self._batches(images)
        ]
        return torch.cat(codes)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Images [N, 3, S, S] in [0, 1] (CPU, float32) of codes [N, latent_dim] (eval mode, in
        batches of ``batch_size``)."""
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim:
            raise ValueError(f"vae: codes must be [N, {self.latent_dim}], got {tuple(codes.shape)}")
        self.network.eval()
        images = [
            self.network.decode(batch.to(self.device, torch.float32)).float().cpu()
            for batch in self._batches(codes)
        ]
        return torch.cat(images)

    def sample_codes(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` codes [n, latent_dim] from the prior ``N(0, I)``, drawn with ``generator`` (a
        CPU generator; CPU tensor)."""
        return torch.randn(n, self.latent_dim, generator=generator)
