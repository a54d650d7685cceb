"""AEGAN-AD (Jiang et al., "Unsupervised Anomaly Detection and Localization of Machine Audio: A
GAN-based Approach", ICASSP 2023; official code github.com/jianganbai/AEGAN-AD).

The generator is an autoencoder (DCGAN-style encoder to a 1 x 1 latent ``nz``, mirrored decoder,
tanh output) that reconstructs log-mel patches of ``n_mels`` x ``patch_frames``. The
discriminator is a WGAN-GP critic redesigned to help the generator: its trunk mirrors the
encoder, a depthwise ("GDConv") layer turns the last feature map into an embedding f(x), and a
LayerNorm-LeakyReLU-Linear head gives the critic value. Training, per batch of patches x:

    L_D = E[D(G(x))] - E[D(x)] + λ E[(||∇ D(x̂)||_2 - 1)^2],   x̂ = α x + (1 - α) G(x), α ~ U(0, 1)
    L_G = E[||x - G(x)||_2^2] (mean squared error) + μ1 ||E[f(x)] - E[f(G(x))]||^2
                                                   + μ2 ||σ[f(x)] - σ[f(G(x))]||^2

(feature matching on the batch mean and standard deviation of the embedding; the squared norms
are mean squared errors over the embedding's dimensions, as in the official code). Adam with
betas (0.5, 0.999) for both networks, weights initialised N(0, 0.02) for convolutions.

Scores of a clip (all of the paper's variants, chosen by ``score``):

- ``G-<space>-<distance>-<pooling>``: the generator's error per patch, in the input space (``x``:
  patch vs reconstruction) or the latent space (``z``: E(x) vs E(G(x))), as L1 (Σ|a - b|), L2
  (Σ(a - b)^2) or cos (1 - cosine similarity), pooled over the clip's patches by mean, min, max or
  sum. E.g. ``G-z-cos-min``, ``G-x-L2-mean``.
- ``D-LOF`` / ``D-KNN``: the clip's embedding (mean of f over its patches) scored by scikit-learn's
  LocalOutlierFactor (novelty mode, ``lof_neighbors``, cosine metric; score = -score_samples) or
  by the sum of the cosine distances to its ``knn_neighbors`` nearest neighbours, both fitted on
  the embeddings of the normal training clips the detector was last fitted on (replay memory
  included). The official code uses the same settings (LOF k = 4, KNN k = 2, cosine).

Patches: a clip's spectrogram [n_mels, frames] is cut into windows of ``patch_frames`` frames,
every ``patch_hop`` frames (plus one window ending at the last frame). Training, as the official
code (``patches_per_clip=None``, the default): every window of every training clip once per epoch,
shuffled across clips, in batches of ``batch_size`` windows (the official DCASE 2020 setting: hop
1, 186 windows per 10-s clip, batches of 512). ``patches_per_clip=K`` is a cheaper option for
CPUs: batches of ``batch_size`` clips with ``K`` windows at random offsets each, so an epoch sees
about ``K / 186`` of the data. The anomaly map (``Scores.pixel``) is the
squared reconstruction error in the input space, averaged over the windows covering each
time-frequency bin: [B, n_mels, frames].

Model selection, unlike the official code (which keeps the epoch with the best *test* harmonic
mean): early stopping on the generator's reconstruction MSE of the validation clips (normal
training clips held out), all their patches; the best epoch's weights of both networks are kept.

Inputs follow the image contract: x [B, C, n_mels, frames] in [0, 1] (the channels are averaged,
then mapped to [-1, 1] for the tanh generator).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt
from torch import Tensor, autograd, nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from clad.models.base import TrainedDetector, Training, private_generator, tensor_bytes
from clad.profiling import phase, timed
from clad.records import Scores, dataset_length
from clad.registry import register_detector

GENERATOR_SCORES = tuple(
    f"G-{space}-{distance}-{pooling}"
    for space in ("x", "z")
    for distance in ("L1", "L2", "cos")
    for pooling in ("mean", "min", "max", "sum")
)
DISCRIMINATOR_SCORES = ("D-LOF", "D-KNN")
SCORE_NAMES = GENERATOR_SCORES + DISCRIMINATOR_SCORES
# every variant of the paper, e.g. "G-z-cos-min", "D-LOF" (pydantic checks it; a Literal built at
# run time is Any to the type checker)
ScoreName = Literal[SCORE_NAMES]  # type: ignore[valid-type]
PATCH_CHUNK = 512  # patches per forward pass at scoring time
ANALYSIS_CLIPS = 8  # clips per batch when scoring and embedding (all their windows at once)


class Windows(Dataset):
    """Every ``frames``-wide window, every ``hop`` frames (plus one ending at the last frame), of
    every clip of ``clips``: item ``i`` is window ``i % P`` of clip ``i // P`` as
    ``(window [C, n_mels, frames], mask window, label)``."""

    def __init__(self, clips: Dataset, frames: int, hop: int) -> None:
        if dataset_length(clips) == 0:
            raise ValueError("aegan: no clips to cut into windows")
        length = clips[0][0].shape[-1]
        last = length - frames
        if last < 0:
            raise ValueError(f"aegan: clips of {length} frames are shorter than {frames}")
        starts = list(range(0, last + 1, hop))
        if starts[-1] != last:
            starts.append(last)
        self.clips, self.frames, self.starts = clips, frames, starts

    def __len__(self) -> int:
        return dataset_length(self.clips) * len(self.starts)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        clip, window = divmod(index, len(self.starts))
        image, mask, label = self.clips[clip]
        start = self.starts[window]
        return (
            image[..., start : start + self.frames],
            mask[..., start : start + self.frames],
            label,
        )


# ----------------------------------------------------------------------------- networks


def stage_count(height: int, width: int) -> int:
    """Stride-2 stages that bring the smaller patch side to 4: log2(min side) - 2.

    Raises:
        ValueError: unless the smaller side is a power of two >= 8 and the larger a multiple of
            2^stages (so both sides halve exactly down to a (h, w) map with min(h, w) = 4).
    """
    small = min(height, width)
    if small < 8 or small & (small - 1):
        raise ValueError(
            f"AEGAN-AD patches need a smaller side that is a power of two >= 8, got "
            f"{height} x {width} (n_mels x patch_frames)"
        )
    stages = int(math.log2(small)) - 2
    if max(height, width) % 2**stages:
        raise ValueError(
            f"AEGAN-AD patch {height} x {width}: the larger side must be a multiple of {2**stages}"
        )
    return stages


def conv_block(c_in: int, c_out: int, size: tuple[int, int], norm: bool) -> nn.Sequential:
    """4x4 stride-2 conv, LayerNorm over [c_out, h, w] (the official 'ln'), LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
    if norm:
        layers.append(nn.LayerNorm([c_out, *size]))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class Trunk(nn.Module):
    """The shared encoder/critic trunk: [B, 1, H, W] -> [B, ndf 2^(k-1), H / 2^k, W / 2^k]."""

    def __init__(self, height: int, width: int, ndf: int, first_norm: bool = True) -> None:
        super().__init__()
        stages = stage_count(height, width)
        blocks, channels = [], 1
        for stage in range(stages):
            out = ndf * 2**stage
            size = (height // 2 ** (stage + 1), width // 2 ** (stage + 1))
            blocks.append(conv_block(channels, out, size, norm=first_norm or stage > 0))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.channels = channels
        self.final_size = (height // 2**stages, width // 2**stages)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class PatchEncoder(nn.Module):
    """DCGAN encoder: [B, 1, H, W] -> trunk -> a valid conv over the final map -> [B, nz, 1, 1]
    (``first_norm`` False: no LayerNorm after the first convolution)."""

    def __init__(self, height: int, width: int, nz: int, ndf: int, first_norm: bool = True) -> None:
        super().__init__()
        self.trunk = Trunk(height, width, ndf, first_norm)
        self.to_latent = nn.Conv2d(self.trunk.channels, nz, self.trunk.final_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_latent(self.trunk(x))


class PatchDecoder(nn.Module):
    """Mirror of the encoder: [B, nz, 1, 1] -> [B, 1, H, W] in [-1, 1] (ReLU inside, tanh out)."""

    def __init__(self, height: int, width: int, nz: int, ngf: int) -> None:
        super().__init__()
        stages = stage_count(height, width)
        h, w = height // 2**stages, width // 2**stages
        channels = ngf * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, channels, (h, w), 1, 0, bias=False),
            nn.LayerNorm([channels, h, w]),
            nn.ReLU(inplace=True),
        ]
        for _ in range(stages - 1):
            h, w = 2 * h, 2 * w
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.LayerNorm([channels // 2, h, w]),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class Generator(nn.Module):
    """The autoencoder G = decoder(encoder(x)) on [B, 1, H, W] patches."""

    def __init__(
        self, height: int, width: int, nz: int, ndf: int, ngf: int, first_norm: bool = True
    ) -> None:
        super().__init__()
        self.encoder = PatchEncoder(height, width, nz, ndf, first_norm)
        self.decoder = PatchDecoder(height, width, nz, ngf)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def encode(self, x: Tensor) -> Tensor:
        """[B, 1, H, W] -> latent [B, nz]."""
        return self.encoder(x).flatten(1)


class Discriminator(nn.Module):
    """WGAN critic with an embedding: x [B, 1, H, W] -> (critic [B], f(x) [B, C])."""

    def __init__(self, height: int, width: int, ndf: int) -> None:
        super().__init__()
        self.trunk = Trunk(height, width, ndf)
        channels = self.trunk.channels
        self.embed = nn.Sequential(  # GDConv: one depthwise filter over the whole final map
            nn.Conv2d(channels, channels, self.trunk.final_size, groups=channels, bias=False),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.LayerNorm(channels), nn.LeakyReLU(0.2, inplace=True), nn.Linear(channels, 1)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.embed(self.trunk(x))  # [B, C]
        return self.head(feature).squeeze(1), feature


def dcgan_init(module: nn.Module) -> None:
    """Convolution weights ~ N(0, 0.02), as the official code (DCGAN)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)


def gradient_penalty(critic: Discriminator, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP term E[(||∇_x̂ D(x̂)||_2 - 1)^2] at x̂ = α real + (1 - α) fake, α ~ U(0, 1)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    value, _ = critic(mixed)
    (grad,) = autograd.grad(value.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def patch_distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    """Per-patch distance of [P, ...] tensors over all but the first dim: L1, L2 (squared), cos."""
    a, b = a.flatten(1), b.flatten(1)  # [P, D]
    if distance == "L1":
        return (a - b).abs().sum(1)
    if distance == "L2":
        return (a - b).square().sum(1)
    return 1.0 - F.cosine_similarity(a, b, dim=1)


def pool(values: Tensor, pooling: str) -> Tensor:
    """[B, P] -> [B] by mean, min, max or sum over a clip's patches."""
    if pooling == "mean":
        return values.mean(1)
    if pooling == "min":
        return values.amin(1)
    if pooling == "max":
        return values.amax(1)
    return values.sum(1)


# ----------------------------------------------------------------------------- detector


@register_detector("aegan")
class AEGAN(TrainedDetector):
    """AEGAN-AD on log-mel spectrograms: see the module docstring.

    Args:
        n_mels: mel bands of the input spectrograms (the patch height).
        patch_frames: frames per patch (the paper: 128 x 128 patches).
        patch_hop: frames between patches at scoring and validation (the paper: 1).
        patches_per_clip: None (the official sampling: every window of every clip each epoch,
            ``batch_size`` windows per batch), or K random windows per clip in batches of
            ``batch_size`` clips (cheaper; see the module docstring).
        nz: latent size; ndf, ngf: first / last channel widths of the critic-encoder / decoder.
        encoder_first_norm: the LayerNorm after the encoder's first convolution (the official
            DCASE 2022 code drops it for bearing, fan and ToyCar: ``dcase22/net.py``,
            ``Generator``, ``first_norm``; the critic always keeps it).
        feature_match_mu, feature_match_sigma: μ1 and μ2 of L_G.
        gradient_penalty: λ of L_D.
        n_critic: critic updates per generator update.
        score: the scoring variant (``SCORE_NAMES``).
        lof_neighbors, knn_neighbors: k of the LOF and KNN embedding scores (capped by the number
            of training clips).
        maps: whether ``predict`` returns the generator's error map (``Scores.pixel``: the
            overlays; audio has no pixel metrics). With a ``G-`` score it averages the squared
            error of every scored window; with a ``D-`` score, of the windows that tile the clip
            (one every ``patch_frames`` frames and one ending at the last frame), so the map
            costs a few generator passes per clip, not one per window (twice the critic's
            cost). False returns no map (None). The scores are the same either way.
        training: ``Training`` (``batch_size`` counts clips, ``lr`` is both networks'); by
            default 60 epochs at lr 2e-4, batch 16, early stopping after 10 epochs, float32
            (the critic's gradient penalty differentiates twice).
    """

    supports_regularizer = False  # its updates are adversarial pairs (training_step)
    network: nn.ModuleDict  # "generator": Generator, "discriminator": Discriminator
    training_defaults = Training(epochs=60, batch_size=16, lr=2e-4, patience=10, precision="fp32")

    def __init__(
        self,
        n_mels: PositiveInt = 128,
        patch_frames: PositiveInt = 128,
        patch_hop: PositiveInt = 1,
        patches_per_clip: PositiveInt | None = None,
        nz: PositiveInt = 256,
        ndf: PositiveInt = 32,
        ngf: PositiveInt = 32,
        encoder_first_norm: bool = True,
        feature_match_mu: NonNegativeFloat = 0.1,
        feature_match_sigma: NonNegativeFloat = 0.0,
        gradient_penalty: NonNegativeFloat = 10.0,
        n_critic: PositiveInt = 1,
        score: ScoreName = "D-LOF",
        lof_neighbors: PositiveInt = 4,
        knn_neighbors: PositiveInt = 2,
        maps: bool = True,
        training: Training | None = None,
    ) -> None:
        self.n_mels, self.patch_frames, self.patch_hop = n_mels, patch_frames, patch_hop
        self.patches_per_clip = patches_per_clip
        self.feature_match_mu, self.feature_match_sigma = feature_match_mu, feature_match_sigma
        self.gp_weight, self.n_critic = gradient_penalty, n_critic
        self.score = score
        self.lof_neighbors, self.knn_neighbors = lof_neighbors, knn_neighbors
        self.maps = maps
        super().__init__(training)
        self.network = nn.ModuleDict(
            {
                "generator": Generator(n_mels, patch_frames, nz, ndf, ngf, encoder_first_norm),
                "discriminator": Discriminator(n_mels, patch_frames, ndf),
            }
        )
        self.network.apply(dcgan_init)
        self.network.to(self.device)
        self.train_embeddings: Tensor | None = None  # [N, C] float32, CPU
        self._critic_steps = 0
        self._lof: LocalOutlierFactor | None = None
        self._knn: NearestNeighbors | None = None

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        n_mels, patch_frames = arguments["n_mels"], arguments["patch_frames"]
        stage_count(n_mels, patch_frames)
        mels, frames = input_size
        if n_mels != mels:
            raise ValueError(f"n_mels: {n_mels} differs from the dataset's audio.n_mels {mels}")
        if patch_frames > frames:
            raise ValueError(
                f"patch_frames: {patch_frames} is longer than the clips' {frames} frames "
                "(dataset.audio.frames)"
            )

    @property
    def generator(self) -> Generator:
        return cast(Generator, self.network["generator"])  # a ModuleDict's items are Modules

    @property
    def discriminator(self) -> Discriminator:
        return cast(Discriminator, self.network["discriminator"])

    @property
    def is_fitted(self) -> bool:
        return self.train_embeddings is not None

    # ------------------------------------------------------------------------- patches

    def _spectrogram(self, x: Tensor) -> Tensor:
        """[B, C, n_mels, T] in [0, 1] -> [B, n_mels, T] in [-1, 1] on the device."""
        if x.ndim != 4 or x.shape[2] != self.n_mels or x.shape[3] < self.patch_frames:
            raise ValueError(
                f"aegan expects spectrograms [B, C, n_mels={self.n_mels}, frames >= "
                f"{self.patch_frames}], got {tuple(x.shape)}; set detector.n_mels to "
                "dataset.audio.n_mels and patch_frames to at most dataset.audio.frames"
            )
        return x.to(self.device, torch.float32).mean(dim=1) * 2.0 - 1.0

    def _offsets(self, frames: int, hop: int | None = None) -> Tensor:
        """Window starts every ``hop`` (default ``patch_hop``) frames, plus one ending at the
        last frame."""
        last = frames - self.patch_frames
        starts = list(range(0, last + 1, hop or self.patch_hop))
        if starts[-1] != last:
            starts.append(last)
        return torch.tensor(starts, device=self.device)

    def _cut(self, spec: Tensor, offsets: Tensor) -> Tensor:
        """[B, H, T] and offsets [B, P] (or [P]) -> patches [B, P, H, W]."""
        batch, height, _ = spec.shape
        offsets = offsets.expand(batch, -1) if offsets.ndim == 1 else offsets
        count = offsets.shape[1]
        index = offsets[:, :, None] + torch.arange(self.patch_frames, device=spec.device)  # [B,P,W]
        index = index[:, :, None, :].expand(batch, count, height, self.patch_frames)
        source = spec[:, None].expand(batch, count, height, spec.shape[2])  # [B, P, H, T]
        return source.gather(3, index)

    def _random_patches(self, spec: Tensor) -> Tensor:
        """``patches_per_clip`` windows at random offsets per clip: [B * K, 1, H, W]."""
        assert self.patches_per_clip is not None  # only called with patches_per_clip set
        high = spec.shape[2] - self.patch_frames + 1
        offsets = torch.randint(0, high, (spec.shape[0], self.patches_per_clip))
        patches = self._cut(spec, offsets.to(self.device))  # [B, K, H, W]
        return patches.reshape(-1, 1, self.n_mels, self.patch_frames)

    # ------------------------------------------------------------------------- training

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """(generator's Adam, critic's Adam), betas (0.5, 0.999) as the official code."""
        betas = (0.5, 0.999)
        return (
            torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=betas),
        )

    def training_step(self, images: Tensor, optimizer: tuple) -> dict[str, float]:
        """One critic update on a batch of windows (``patches_per_clip`` random ones per clip, or
        the batch itself when it holds windows already), and a generator update every
        ``n_critic`` critic steps (counted over the whole ``fit``)."""
        spec = self._spectrogram(images)  # [B, H, T]
        if self.patches_per_clip is None:
            real = spec[:, None]  # [B, 1, H, W]: the loader gives windows
        else:
            real = self._random_patches(spec)
        record = self._train_step(real, self._critic_steps, optimizer)
        self._critic_steps += 1
        return record

    def _train_step(self, real: Tensor, step: int, optimizers: tuple) -> dict[str, float]:
        """One critic update (and a generator update every ``n_critic`` steps) on [P, 1, H, W]."""
        generator, critic = self.generator, self.discriminator
        opt_g, opt_d = optimizers
        with torch.no_grad():
            fake = generator(real)
        critic_real, _ = critic(real)
        critic_fake, _ = critic(fake)
        penalty = gradient_penalty(critic, real, fake)
        loss_d = critic_fake.mean() - critic_real.mean() + self.gp_weight * penalty
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        record = {"loss_d": loss_d.item()}
        if step % self.n_critic == 0:
            critic.requires_grad_(False)
            fake = generator(real)
            with torch.no_grad():
                _, feature_real = critic(real)
            _, feature_fake = critic(fake)
            reconstruction = F.mse_loss(fake, real)
            matching = self.feature_match_mu * F.mse_loss(
                feature_fake.mean(0), feature_real.mean(0)
            )
            if self.feature_match_sigma > 0:
                matching = matching + self.feature_match_sigma * F.mse_loss(
                    feature_fake.std(0, unbiased=False), feature_real.std(0, unbiased=False)
                )
            loss_g = reconstruction + matching
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            critic.requires_grad_(True)
            record.update(loss_g=loss_g.item(), recon=reconstruction.item())
        return record

    def loss(self, images: Tensor) -> Tensor:
        """Mean squared reconstruction error of every patch (at ``patch_hop``) of the clips
        ``images``: the model-selection loss (training is adversarial, ``training_step``)."""
        spec = self._spectrogram(images)
        patches = self._cut(spec, self._offsets(spec.shape[2]))
        patches = patches.reshape(-1, 1, self.n_mels, self.patch_frames)  # [B * P, 1, H, W]
        total = sum(
            float((self.generator(chunk) - chunk).square().mean()) * len(chunk)
            for chunk in patches.split(PATCH_CHUNK)
        )
        return torch.tensor(total / len(patches))

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        """Adversarial training on ``train`` with the shared loop (continuing from the current
        weights; early stopping on ``val``'s reconstruction MSE), then the embedding bank of
        ``train`` for D-LOF/D-KNN."""
        self._critic_steps = 0
        if self.patches_per_clip is None:
            windows = Windows(train, self.patch_frames, self.patch_hop)
            held_out = (
                None
                if val is None or dataset_length(val) == 0
                else Windows(val, self.patch_frames, self.patch_hop)
            )
            super().fit(windows, held_out)
        else:
            super().fit(train, val)
        self.train_embeddings = self._embeddings(train)
        self._fit_neighbours()

    # ------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def _analyse(self, x: Tensor, names: Sequence[str], with_map: bool) -> dict[str, Tensor]:
        """What the scores ``names`` need, over every window of each clip (every ``patch_hop``
        frames): per-patch generator errors [B, P] (keys ``x-L1`` ... ``z-cos``) for ``G-``
        scores, clip embeddings ``embedding`` [B, C] (mean of f over the windows) for ``D-``
        scores, and the error map ``map`` [B, n_mels, frames] when ``with_map``.

        Only the passes these need run (phase ``features``): the critic for ``D-`` scores; the
        generator, G(x) = decoder(E(x)), for ``G-`` scores or the map, E(x) taken from it; one
        more encoder pass, E(G(x)), for ``G-z`` scores. Windows are gathered per chunk of
        ``PATCH_CHUNK`` from a view of the spectrogram, never all at once.
        """
        self.network.eval()
        spec = self._spectrogram(x)  # [B, H, T]
        batch, height, frames = spec.shape
        offsets = self._offsets(frames)  # [P]
        count = len(offsets)
        spaces = {name.split("-")[1] for name in names if name.startswith("G-")}
        embed = any(name.startswith("D-") for name in names)
        reconstruct = bool(spaces)
        windows = spec.unfold(2, self.patch_frames, 1)  # [B, H, T - W + 1, W], a view
        columns = torch.arange(self.patch_frames, device=spec.device)
        # the map from the windows G runs on anyway; without a G- score, from the windows that
        # tile the clip (every patch_frames frames and one ending at the last frame): the map
        # is for display only, and every window would cost twice the critic's pass
        summed = torch.zeros_like(spec) if with_map else None
        rows = torch.arange(height, device=spec.device)[None, :, None]  # [1, H, 1]

        def chunks(starts: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            """(clip [n], start [n], windows [n, 1, H, W]) per chunk of every clip's windows."""
            for flat in torch.arange(batch * len(starts), device=spec.device).split(PATCH_CHUNK):
                clip, start = flat // len(starts), starts[flat % len(starts)]
                yield clip, start, windows[clip, :, start][:, None]

        def add_errors(clip: Tensor, start: Tensor, recon: Tensor, chunk: Tensor) -> None:
            """Each window's squared error added at its columns of ``summed``."""
            assert summed is not None
            index = (start[:, None] + columns)[:, None, :]  # [n, 1, W]
            error = (recon - chunk).square()[:, 0]  # [n, H, W]
            summed.index_put_((clip[:, None, None], rows, index), error, accumulate=True)

        parts: dict[str, list[Tensor]] = {}
        for clip, start, chunk in chunks(offsets):
            values: dict[str, Tensor] = {}
            with phase("features"):
                if embed:
                    values["feature"] = self.discriminator(chunk)[1]  # [n, C]
                if reconstruct:
                    latent = self.generator.encoder(chunk)  # [n, nz, 1, 1]
                    recon = self.generator.decoder(latent)  # [n, 1, H, W]
                if "z" in spaces:
                    latent_recon = self.generator.encoder(recon)
            for distance in ("L1", "L2", "cos") if spaces else ():
                if "x" in spaces:
                    values[f"x-{distance}"] = patch_distance(recon, chunk, distance)
                if "z" in spaces:
                    values[f"z-{distance}"] = patch_distance(latent_recon, latent, distance)
            if summed is not None and reconstruct:
                add_errors(clip, start, recon, chunk)
            for key, value in values.items():
                parts.setdefault(key, []).append(value)
        out = {k: torch.cat(v).reshape(batch, count, *v[0].shape[1:]) for k, v in parts.items()}
        if "feature" in out:
            out["embedding"] = out.pop("feature").mean(1)  # [B, C]
        if summed is not None and not reconstruct:
            offsets = self._offsets(frames, self.patch_frames)
            for clip, start, chunk in chunks(offsets):
                with phase("features"):
                    recon = self.generator.decoder(self.generator.encoder(chunk))
                add_errors(clip, start, recon, chunk)
        if summed is not None:
            cover = torch.zeros(frames, device=spec.device)
            cover.index_put_(((offsets[:, None] + columns).flatten(),), torch.ones(()), True)
            out["map"] = summed / cover  # [B, H, T]
        return out

    @torch.no_grad()
    def _embeddings(self, data: Dataset) -> Tensor:
        """Clip embeddings [N, C] (CPU float32) of a dataset."""
        loader = DataLoader(data, batch_size=ANALYSIS_CLIPS, generator=private_generator())
        rows = [
            self._analyse(clips, DISCRIMINATOR_SCORES, with_map=False)["embedding"].cpu()
            for clips, _, _ in loader
        ]
        return torch.cat(rows).float()

    def _fit_neighbours(self) -> None:
        """(Re)fit LOF and KNN on ``train_embeddings``: deterministic, so a loaded state scores
        exactly as the saved one."""
        from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

        assert self.train_embeddings is not None  # fitted or loaded
        bank = self.train_embeddings.double().numpy()
        self._knn = NearestNeighbors(
            n_neighbors=min(self.knn_neighbors, len(bank)), metric="cosine"
        ).fit(bank)
        self._lof = None
        if len(bank) >= 2:
            self._lof = LocalOutlierFactor(
                n_neighbors=min(self.lof_neighbors, len(bank) - 1),
                metric="cosine",
                novelty=True,
                contamination=1e-6,
            ).fit(bank)

    @timed("search")
    def _embedding_score(self, embedding: Tensor, method: str) -> Tensor:
        if self.train_embeddings is None:
            raise RuntimeError("aegan: predict called before fit (no training embeddings)")
        queries = embedding.double().cpu().numpy()
        if method == "LOF":
            if self._lof is None:
                raise ValueError("aegan: D-LOF needs at least 2 training clips")
            values = -self._lof.score_samples(queries)
        else:
            assert self._knn is not None  # fitted with ``train_embeddings``
            values = self._knn.kneighbors(queries)[0].sum(axis=1)
        return torch.from_numpy(np.asarray(values, dtype=np.float32))

    def _score_from(self, analysis: dict[str, Tensor], name: str) -> Tensor:
        if name.startswith("D-"):
            return self._embedding_score(analysis["embedding"], name[2:])
        _, space, distance, pooling = name.split("-")
        return pool(analysis[f"{space}-{distance}"], pooling).float().cpu()

    @torch.no_grad()
    def score_variants(self, x: Tensor) -> dict[str, Tensor]:
        """Every scoring variant of ``SCORE_NAMES`` for a batch: name -> [B] (for comparisons)."""
        analysis = self._analyse(x, SCORE_NAMES, with_map=False)
        return {name: self._score_from(analysis, name) for name in SCORE_NAMES}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        """Scores of clips x [B, C, n_mels, frames]: image = the ``score`` variant [B];
        pixel = the squared-error map [B, n_mels, frames] (None when ``maps`` is False)."""
        self._spectrogram(x)  # shape errors first: they say what to set
        self.check_fitted()
        analysis = self._analyse(x, [self.score], with_map=self.maps)
        pixel = analysis["map"].float().cpu() if self.maps else None
        return Scores(image=self._score_from(analysis, self.score), pixel=pixel)

    # ------------------------------------------------------------------------- state

    def memory_bytes(self) -> int:
        """The training clips' embeddings that D-LOF / D-KNN score against."""
        return 0 if self.train_embeddings is None else tensor_bytes(self.train_embeddings)

    def state_dict(self) -> dict:
        return {
            "network": self.network.state_dict(),
            "history": list(self.history),
            "train_embeddings": self.train_embeddings,
        }

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.network.to(self.device)
        self.history = list(state["history"])
        self.train_embeddings = state["train_embeddings"]
        if self.train_embeddings is not None:
            self._fit_neighbours()
