"""AST: asymmetric student-teacher networks.

Rudolph, Wehrbein, Rosenhahn and Wandt, "Asymmetric Student-Teacher Networks for Industrial
Anomaly Detection", WACV 2023 (arXiv:2210.07829); official code: github.com/marco-rudolph/AST.

Inputs, by ``input_mode``, become a feature map ``f`` [B, D, h, w] on a grid of stride ``s``
(h = H / s):

- ``rgb`` [B, 3, H, W]: frozen pretrained backbone features (several layers are resized to the
  finest one's grid and concatenated), D = C_f;
- ``depth`` [B, 2, H, W] (height, foreground): the height map, centred on its foreground mean
  with the background set to that mean (``gain * fg * (height - mean_fg)``), resized to
  [k h, k w] and unshuffled into k x k cells, D = k^2 (k = ``depth_downscale``);
- ``rgb+depth`` [B, 5, H, W]: both, concatenated, D = C_f + k^2.

Teacher: a normalizing flow ``z = T(f | p)`` conditioned on a sinusoidal positional encoding
``p`` [P, h, w]: before each coupling block a fixed channel permutation, then an affine coupling
on both halves (GLOW-style; log-scales soft-clamped as ``clamp * 0.636 * atan(s / clamp)``),
whose subnetworks are conv-ReLU-conv (replicate padding, scaled by a learned scalar that starts
at 0, so the flow starts as the identity). It is trained first, by maximum likelihood with the
per-position log-determinant ``j`` [B, h, w]:

    loss_T = mean_{b,i,j} m(i, j) * (0.5 * sum_c z_c(i, j)^2 - j(i, j))

Student: a conventional conv net on ``[f, p]`` (3x3 conv to ``student_hidden`` channels,
LeakyReLU, ``student_blocks`` residual blocks of conv-BN-LeakyReLU twice, 3x3 conv back to D),
trained next to regress the teacher's ``z`` on the same normal data:

    d(i, j) = mean_c (z_c(i, j) - S(f, p)_c(i, j))^2,       loss_S = mean_{b,i,j} m(i, j) d(i, j)

``m`` [B, h, w] is 1 in ``rgb`` mode; in the depth modes it is the foreground mask dilated by
half a grid cell on each side and area-averaged to the grid (the official code dilates by 8
pixels at 1/4 resolution, which is half of its 32-pixel cell on each side, and downsamples
bilinearly), so only foreground positions count.

Anomaly map: ``m * d`` (squared student-teacher distance per position, as the mean over
channels), upsampled bicubically to the input size, clamped at 0, Gaussian-smoothed
(``smoothing_sigma``); in the depth modes it is then multiplied by the dilated foreground at
input resolution, so the background scores exactly 0. Image score: ``image_score="max"``, the
map's maximum (default), or ``"mean"``, the mean of ``m * d`` over the grid (the official code
reports both: "max over maps" and "mean over maps").

With ``pre_extract`` the network inputs ``f`` (and ``m``) of the training and validation sets
are computed once per ``fit`` and reused by every epoch of both phases (the official code
pre-extracts features to files); results equal those computed on the fly up to floating-point
rounding. Continuing ``fit`` on new data continues both networks from their current weights
(fresh optimizers, teacher phase first).

Where ours differs from the paper and its official code:
- Backbone: the shared backbones (``clad.models.components.backbone``); default
  ``efficientnet_lite0`` (the pretrained network available offline), layers ``blocks.2`` and
  ``blocks.4`` (strides 8 and 16, 40 + 112 channels) on the stride-8 grid. The official code
  uses EfficientNet-B5's block 35 (304 channels, stride 32) at 768 x 768 input, a 24 x 24 grid;
  at our 64-pixel images a stride-32 grid would be 2 x 2.
- Image size: whatever the dataset provides (official: 768 x 768, depth at 192 x 192); the
  depth cells are taken on our grid (``depth_downscale`` 8, as the official 64 channels per
  cell). In ``depth`` mode the grid still follows ``layers``' finest stride.
- Depth input: our datasets give the height above a fitted background plane (0 on the
  background, about [0, 1]; ``clad.benchmarks.mvtec3d``) where the official code uses raw z. As
  there, the background is set to the foreground mean and the result is centred; the official
  scale (metres x 100) corresponds to ``depth_gain`` 5 at the datasets' default ``depth_scale``
  of 0.05 m.
- Map: upsampled bicubically to the input size (official: to 1/4 of it), clamped at 0 and
  Gaussian-smoothed (official: no smoothing); the official code multiplies by the soft mask
  twice (once in the distance, once for the map), ours once, and ours also zeroes the
  background at input resolution. The default image score is this final map's maximum (the
  official "max over maps" takes the upsampled map before any smoothing).
- Training: the shared loop (Adam with the official eps 1e-8 and weight decay 1e-5, lr from the
  training block, validation-loss early stopping on held-out normal images in each phase; the
  official configuration trains each network 72 epochs at lr 2e-4, batch 8, and selects
  nothing). The teacher's epochs are ``teacher_epochs`` (default: the training block's
  ``epochs``). The CPU configurations (``configurations/synthetic/ast_*.json``) use lr 1e-3
  (a few dozen images per task give a few steps per epoch), 30 epochs and a student 128
  channels wide, so that a run takes minutes on a CPU.
- Student width: the official 1024 channels is the default here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from clad.models.base import TrainedDetector, Training
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import LAYERS, FeatureExtractor, check_layers
from clad.models.components.flows import conditional_flow, run_flow
from clad.models.components.ssim import gaussian_smooth
from clad.records import Scores, dataset_length
from clad.registry import register_detector

InputMode = Literal["rgb", "depth", "rgb+depth"]
INPUT_CHANNELS = {"rgb": 3, "depth": 2, "rgb+depth": 5}


def positional_encoding(channels: int, height: int, width: int) -> Tensor:
    """Sinusoidal 2D encoding [channels, h, w]: a quarter of the channels each for sin and cos
    of the column and of the row, at frequencies ``10000^(-2i / (channels / 2))``."""
    if channels % 4 != 0 or channels < 4:
        raise ValueError(f"positional encoding needs a positive multiple of 4, got {channels}")
    quarter = channels // 4
    freqs = torch.exp(-math.log(1e4) * 2 * torch.arange(quarter) / (channels // 2))  # [Q]
    cols = torch.arange(width, dtype=torch.float32)[None] * freqs[:, None]  # [Q, w]
    rows = torch.arange(height, dtype=torch.float32)[None] * freqs[:, None]  # [Q, h]
    return torch.cat(
        [
            cols.sin()[:, None, :].expand(quarter, height, width),
            cols.cos()[:, None, :].expand(quarter, height, width),
            rows.sin()[:, :, None].expand(quarter, height, width),
            rows.cos()[:, :, None].expand(quarter, height, width),
        ]
    )  # [channels, h, w]


class ResidualBlock(nn.Module):
    """``x + act(bn(conv(act(bn(conv(x))))))`` with 3x3 convs and LeakyReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class Student(nn.Module):
    """[B, D + P, h, w] -> [B, D, h, w]: conv, LeakyReLU, residual blocks, conv."""

    def __init__(self, channels_in: int, channels_out: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels_in, hidden, 3, padding=1),
            nn.LeakyReLU(),
            *[ResidualBlock(hidden) for _ in range(blocks)],
            nn.Conv2d(hidden, channels_out, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of [B, 1, H, W] masks by a (2 radius + 1)^2 square."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


class ASTNetwork(nn.Module):
    """Input encoding, the conditional-flow teacher and the conv student (see the module
    docstring). ``encode`` gives the networks' inputs; the teacher and student take them."""

    def __init__(
        self,
        input_mode: InputMode,
        backbone: str,
        layers: tuple[str, ...],
        weights: str,
        kernel_sizes: tuple[int, ...],
        teacher_hidden: int,
        clamp: float,
        pos_enc_dim: int,
        student_hidden: int,
        student_blocks: int,
        depth_downscale: int,
        depth_gain: float,
    ) -> None:
        super().__init__()
        self.input_mode = input_mode
        self.uses_rgb = input_mode in ("rgb", "rgb+depth")
        self.uses_depth = input_mode in ("depth", "rgb+depth")
        self.stride = min(LAYERS[backbone][layer][1] for layer in layers)
        # frozen, always eval; depth-only inputs need no backbone
        self.extractor = FeatureExtractor(backbone, layers, weights) if self.uses_rgb else None
        self.depth_downscale, self.depth_gain = depth_downscale, depth_gain
        self.feature_channels = (
            sum(LAYERS[backbone][layer][0] for layer in layers) if self.uses_rgb else 0
        ) + (depth_downscale**2 if self.uses_depth else 0)
        self.pos_enc_dim = pos_enc_dim
        self.teacher = conditional_flow(
            self.feature_channels, pos_enc_dim, kernel_sizes, teacher_hidden, clamp
        )
        self.student = Student(
            self.feature_channels + pos_enc_dim,
            self.feature_channels,
            student_hidden,
            student_blocks,
        )

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    def foreground(self, x: Tensor) -> Tensor:
        """Dilated foreground at input resolution [B, 1, H, W] (all ones in ``rgb`` mode)."""
        if not self.uses_depth:
            return torch.ones_like(x[:, :1])
        return dilate((x[:, -1:] > 0.5).float(), self.stride // 2)

    @torch.no_grad()
    def encode(self, x: Tensor, reuse: bool = False) -> Tensor:
        """``x`` [B, C_in, H, W] -> ``[f, m]`` [B, D + 1, h, w] (features and foreground weight)."""
        grid = self.grid(*x.shape[-2:])
        parts = []
        if self.uses_rgb:
            assert self.extractor is not None  # built whenever the RGB image is used
            feats = (self.extractor.reused if reuse else self.extractor)(x[:, :3])
            parts += [
                F.interpolate(f.float(), size=grid, mode="bilinear", align_corners=False)
                if f.shape[-2:] != grid
                else f.float()
                for f in feats
            ]  # each [B, C_l, h, w]
        if self.uses_depth:
            height, fg = x[:, -2:-1], (x[:, -1:] > 0.5).float()  # [B, 1, H, W] each
            mean = (height * fg).sum(dim=(2, 3), keepdim=True) / fg.sum(
                dim=(2, 3), keepdim=True
            ).clamp(min=1.0)  # [B, 1, 1, 1]
            centred = self.depth_gain * fg * (height - mean)  # background at the mean
            k = self.depth_downscale
            cells = F.interpolate(
                centred,
                size=(grid[0] * k, grid[1] * k),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )  # [B, 1, k h, k w]
            parts.append(F.pixel_unshuffle(cells, k))  # [B, k^2, h, w]
        weight = F.adaptive_avg_pool2d(self.foreground(x), grid)  # [B, 1, h, w]
        return torch.cat([*parts, weight], dim=1)

    def condition(self, features: Tensor) -> Tensor:
        """Positional encoding for ``features``' grid, batched: [B, P, h, w]."""
        b, _, h, w = features.shape
        return positional_encoding(self.pos_enc_dim, h, w).to(features.device).expand(b, -1, -1, -1)

    def teacher_latent(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(z [B, D, h, w], log|det dz/df| [B, h, w])``, float32."""
        return run_flow(self.teacher, features, self.condition(features))

    def student_output(self, features: Tensor) -> Tensor:
        """The student's estimate of ``z``: [B, D, h, w]."""
        return self.student(torch.cat([features, self.condition(features)], dim=1)).float()


def masked_flow_nll(z: Tensor, log_det: Tensor, weight: Tensor) -> Tensor:
    """``mean_{b,i,j} m * (0.5 * sum_c z^2 - log|det|)``: z [B, D, h, w], the others [B, h, w]."""
    return (weight * (0.5 * z.pow(2).sum(dim=1) - log_det)).mean()


def st_distance(teacher: Tensor, student: Tensor) -> Tensor:
    """Per-position ``mean_c (t - s)^2``: [B, D, h, w] twice -> [B, h, w]."""
    return (teacher - student).pow(2).mean(dim=1)


@register_detector("ast")
class AST(TrainedDetector):
    """Asymmetric student-teacher networks (Rudolph et al., 2023); see the module docstring.

    Args:
        input_mode: ``rgb`` [B, 3, H, W], ``depth`` [B, 2, H, W] (height, foreground) or
            ``rgb+depth`` [B, 5, H, W]; filled from ``dataset.mode`` by the runner.
        backbone: the frozen feature extractor (a name from the shared backbone table).
        layers: backbone layers, resized to the finest one's grid and concatenated; the finest
            stride is the grid's, also for ``depth`` (where no backbone runs).
        weights: ``"imagenet"``, a file path, or ``"none"`` (random init, tests only).
        kernel_sizes: one coupling block per entry, its subnetwork's kernel size.
        teacher_hidden: hidden channels of the coupling subnetworks.
        clamp: soft clamp of the couplings' log-scales.
        pos_enc_dim: channels of the positional encoding (a multiple of 4).
        student_hidden: the student's hidden channels.
        student_blocks: the student's residual blocks.
        depth_downscale: depth cells per grid cell along each side (k; k^2 depth channels).
        depth_gain: factor on the centred height (5: the official metres x 100 at our default
            depth scale of 0.05 m per unit).
        smoothing_sigma: Gaussian sigma (input pixels) of the map smoothing; 0 disables it.
        image_score: ``"max"`` of the final map or ``"mean"`` of the grid-level map.
        pre_extract: compute the network inputs of the training and validation sets once per
            ``fit`` instead of in every epoch.
        weight_decay: Adam weight decay (both networks).
        teacher_epochs: epochs of the teacher phase (None: ``training.epochs``).
        training: ``Training``; by default the official 72 epochs at lr 2e-4, batch 8, early
            stopping after 5 epochs, float32 (flows: log-determinants and exponentials).
    """

    network: ASTNetwork
    training_defaults = Training(epochs=72, batch_size=8, lr=2e-4, patience=5, precision="fp32")

    def __init__(
        self,
        input_mode: InputMode = "rgb",
        backbone: str = "efficientnet_lite0",
        layers: tuple[str, ...] = ("blocks.2", "blocks.4"),
        weights: str = "imagenet",
        kernel_sizes: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (3, 3, 3, 5),
        teacher_hidden: PositiveInt = 64,
        clamp: PositiveFloat = 1.9,
        pos_enc_dim: Annotated[int, Field(ge=4, multiple_of=4)] = 32,
        student_hidden: PositiveInt = 1024,
        student_blocks: NonNegativeInt = 4,
        depth_downscale: PositiveInt = 8,
        depth_gain: PositiveFloat = 5.0,
        smoothing_sigma: NonNegativeFloat = 4.0,
        image_score: Literal["max", "mean"] = "max",
        pre_extract: bool = True,
        weight_decay: NonNegativeFloat = 1e-5,
        teacher_epochs: NonNegativeInt | None = None,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.input_mode = input_mode
        self.network = (
            ASTNetwork(
                input_mode,
                backbone,
                tuple(layers),
                weights,
                tuple(kernel_sizes),
                teacher_hidden,
                clamp,
                pos_enc_dim,
                student_hidden,
                student_blocks,
                depth_downscale,
                depth_gain,
            )
            .to(self.device)
            .eval()
        )
        self.smoothing_sigma = smoothing_sigma
        self.image_score = image_score
        self.pre_extract = pre_extract
        self.weight_decay = weight_decay
        self.teacher_epochs = self.epochs if teacher_epochs is None else teacher_epochs
        self.phase: Literal["teacher", "student"] = "teacher"

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        if arguments["input_mode"] != "depth":
            check_weights(arguments["weights"])
        check_layers(arguments["backbone"], arguments["layers"])

    def _check(self, x: Tensor) -> None:
        expected = INPUT_CHANNELS[self.input_mode]
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(
                f"AST with input_mode {self.input_mode!r} takes [B, {expected}, H, W] inputs, "
                f"got {list(x.shape)}"
            )

    def _encoded(self, data: Dataset) -> TensorDataset:
        """The network inputs ``[f, m]`` of every item of ``data``, in order."""
        parts = []
        # iterating a DataLoader draws a seed from the global RNG: leave the run's random
        # stream (hence the training batches) as it would be without pre-extraction
        with torch.random.fork_rng(devices=[]):
            for x, _, _ in self._loader(data, shuffle=False):
                x = x.to(self.device)
                self._check(x)
                parts.append(self.network.encode(x).cpu())  # batches go to the device
        encoded = torch.cat(parts)  # [N, D + 1, h, w]
        zeros = torch.zeros(len(encoded))
        return TensorDataset(encoded, zeros, zeros)

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        """Teacher phase (``teacher_epochs``), then student phase (``epochs``), each with the
        shared loop; with ``pre_extract`` both run on inputs encoded once."""
        if dataset_length(train) == 0:
            raise ValueError("AST.fit: the training set is empty")
        self.network.to(self.device)
        if self.pre_extract:
            train = self._encoded(train)
            val = self._encoded(val) if val is not None and dataset_length(val) > 0 else None
        phase: Literal["teacher", "student"]
        try:
            for phase, epochs in (("teacher", self.teacher_epochs), ("student", self.epochs)):
                if epochs == 0:
                    continue
                self.phase = phase
                self.train_epochs(train, val, epochs)
        finally:
            self.phase = "teacher"

    def make_optimizer(self) -> torch.optim.Optimizer:
        trained = self.network.teacher if self.phase == "teacher" else self.network.student
        return torch.optim.Adam(
            trained.parameters(), lr=self.lr, eps=1e-8, weight_decay=self.weight_decay
        )

    def _split(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """A training batch (raw inputs, or encoded ones with ``pre_extract``) -> features
        [B, D, h, w] and foreground weight [B, h, w]."""
        if not self.pre_extract:
            self._check(batch)
            batch = self.network.encode(batch)
        return batch[:, :-1], batch[:, -1]

    def loss(self, images: Tensor) -> dict[str, Tensor]:
        """The phase's loss, logged also as ``<phase>_loss``: the teacher's masked flow NLL, or
        the student's masked distance to the teacher's latent."""
        features, weight = self._split(images)
        if self.phase == "teacher":
            z, log_det = self.network.teacher_latent(features)
            value = masked_flow_nll(z, log_det, weight)
        else:
            with torch.no_grad():
                target, _ = self.network.teacher_latent(features)
            value = (weight * st_distance(target, self.network.student_output(features))).mean()
        return {"loss": value, f"{self.phase}_loss": value}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self._check(x)
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        encoded = self.network.encode(x, reuse=True)
        features, weight = encoded[:, :-1], encoded[:, -1]
        target, _ = self.network.teacher_latent(features)
        grid_map = weight * st_distance(target, self.network.student_output(features))  # [B, h, w]
        maps = F.interpolate(
            grid_map[:, None], size=x.shape[-2:], mode="bicubic", align_corners=False
        )[:, 0].clamp(min=0)  # [B, H, W]
        maps = gaussian_smooth(maps, self.smoothing_sigma)
        if self.network.uses_depth:
            maps = maps * self.network.foreground(x)[:, 0]
        if self.image_score == "max":
            image = maps.flatten(1).amax(dim=1)
        else:
            image = grid_map.flatten(1).mean(dim=1)
        return Scores(image=image.cpu(), pixel=maps.cpu())
