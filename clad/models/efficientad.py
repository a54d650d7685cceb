"""EfficientAD: student-teacher and autoencoder anomaly detection at millisecond latencies.

Batzner, Heckler and Koenig, "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024 (arXiv:2303.14535); reference code:
github.com/nelson1425/EfficientAD (which the paper's authors endorse).

Three networks read the ImageNet-normalised image ``I``:
- a teacher ``T``, the small patch description network (PDN-small: four convolutions, two
  average pools, 33 x 33 receptive field, ``C = 384`` output channels), frozen;
- a student ``S`` with the same architecture and ``2C`` output channels: the first ``C`` imitate
  the teacher, the last ``C`` imitate the autoencoder;
- an autoencoder ``A`` (strided-conv encoder to a 64-d code, upsample + conv decoder with
  dropout) that predicts the teacher's output from the whole image.

With ``T`` normalised per channel by its mean and std over the training images:

    D = (T(I) - S_1(I))^2,   d_hard = quantile(D, 0.999),   L_hard = mean(D[D >= d_hard])
    L_ST = L_hard + mean(S_1(P)^2)              (P: an ImageNet image; the penalty)
    L_AE = mean((T(I') - A(I'))^2),   L_STAE = mean((A(I') - S_2(I'))^2)
    loss = L_ST + L_AE + L_STAE

where ``I'`` is ``I`` with one of brightness, contrast or saturation jittered by up to 20 %.
Adam (weight decay 1e-5); the learning rate drops x0.1 at 95 % of training.

Anomaly maps: ``M_ST = mean_c (T - S_1)^2`` and ``M_AE = mean_c (A - S_2)^2``, each mapped with
quantiles of its values on validation images, ``M <- 0.1 (M - q_a) / (q_b - q_a)`` with
``q_a = q(0.9)`` and ``q_b = q(0.995)``; the map is ``0.5 M_ST + 0.5 M_AE``, resized to the
input, and the image score is its maximum.

Where ours differs from the paper:
- Teacher: the paper distills the PDN from WideResNet-101 features (layers 2 and 3, PatchCore's
  aggregation to 384 channels) on ImageNet for 60 000 steps. Here the teacher is either loaded
  from ``teacher_weights`` (a state dict of this PDN, e.g. converted from the reference code's
  ``teacher_small.pth``) or distilled on the fly at the first ``fit`` for ``distill_steps`` steps
  from the configured ``backbone`` (efficientnet-lite0 by default, the pretrained network
  available offline): the image is upsampled x2 (as the paper feeds 512 px to the extractor for
  a 256 px teacher), each layer of ``distill_layers`` is averaged over 3 x 3 neighbourhoods,
  resampled to the teacher's output grid, channel-pooled to ``C`` per layer and the layers to
  ``C`` together (PatchCore's aggregation, as the reference pretraining), normalised per channel,
  and regressed with MSE (Adam, lr ``distill_lr``, weight decay 1e-5). The distillation images
  are the ImageNet images of ``imagenet_train_path`` when given, otherwise the first ``fit``'s
  training images (so the teacher is then specific to the first task). Both choices are logged.
  With efficientnet-lite0 the two default layers have 40 + 112 channels, fewer than ``C = 384``:
  channel pooling then repeats channels, so the 384 targets carry 152 channels' information.
- Penalty: on whenever ``imagenet_train_path`` holds images (default ``tiny-imagenet-200``, the
  repository's folder; Tiny ImageNet as in CLAD: 64 px images, resized to twice the input size
  and centre-cropped as the reference code does, grayscale with probability 0.3 as in the
  paper); otherwise ``L_ST = L_hard`` and a log line says the penalty is off.
- Padding: ``padding=True`` (the default here) pads the PDN's convolutions (the reference code's
  option), so small inputs (32-128 px) keep a usable map (stride 4, side ``S / 4``); the paper's
  setting is ``padding=False`` (a 56 x 56 map for 256 px inputs, zero-padded by 4 before resizing).
- The autoencoder's layers are the paper's at 256 px; for other sides the encoder's last map
  (side / 32) is resized to 8 x 8 before its final 8 x 8 convolution, and the decoder's upsampling
  sizes (3, 8, 15, 32, 63, 127) scale with side / 256, so one set of weights fits every size.
- Schedule: the paper trains 70 000 iterations with batch size 1; here the shared loop's epochs
  and batch size apply (one penalty image per training image), the learning rate drops at 95 % of
  the epochs, and early stopping watches ``L_hard + L_AE + L_STAE`` on the validation images
  (no augmentation, no penalty).
- Teacher statistics are recomputed on the training data of every ``fit`` (under continual
  learning: the current task, plus the replay memory when there is one), and the map quantiles
  on its validation data (the training data when there is none).
- PDN-medium is not implemented. ``pdn_width`` and ``out_channels`` shrink PDN-small (the
  paper's sizes are the defaults, about 1.4 GMAC per 64 px image for the teacher); the synthetic
  configs and quality test use ``pdn_width=32, out_channels=64`` so that a CPU trains them.

The student-teacher part alone (no autoencoder, a student with ``C`` outputs, the map ``M_ST``)
is the ``st`` detector (``clad.models.st``): a subclass with ``with_autoencoder = False``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clad.models.base import TrainedDetector, Training, seeded_generator
from clad.models.components.anomaly_sources import PenaltyImages, find_images
from clad.models.components.arguments import check_folder, check_side, check_weights
from clad.models.components.backbone import (
    MID_STRIDES,
    FeatureExtractor,
    check_layers,
    pyramid_layers,
)
from clad.models.components.pdn import (
    MIN_SIDE,
    MIN_SIDE_UNPADDED,
    EfficientADNetwork,
    pdn_output_side,
)
from clad.records import Scores, dataset_length
from clad.registry import register_detector

log = logging.getLogger(__name__)

HARD_QUANTILE = 0.999
MAP_QUANTILES = (0.9, 0.995)
PENALTY_GRAYSCALE = 0.3
DISTILL_STAT_BATCHES = 10  # batches used to estimate the distillation targets' mean and std


def quantile(x: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of all of ``x``'s values (linear interpolation, as ``torch.quantile``,
    without its 16M-element limit)."""
    flat = x.detach().flatten().float()
    position = q * (flat.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    low_value = flat.kthvalue(low + 1).values
    if high == low:
        return low_value
    high_value = flat.kthvalue(high + 1).values
    return low_value + (position - low) * (high_value - low_value)


def jitter_colours(images: Tensor, generator: torch.Generator) -> Tensor:
    """EfficientAD's autoencoder augmentation: per image one of brightness, contrast or
    saturation, scaled by a factor uniform in [0.8, 1.2]: [B, 3, H, W] -> same."""
    import torchvision.transforms.functional as TF  # torchvision loads torch._dynamo: lazily

    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    choices = torch.randint(0, 3, (len(images),), generator=generator).tolist()
    factors = (0.8 + 0.4 * torch.rand(len(images), generator=generator)).tolist()
    return torch.stack(
        [adjust[c](image, f) for image, c, f in zip(images, choices, factors)]
    ).clamp(0, 1)


def cycle(loader: DataLoader) -> Iterator:
    """Batches of ``loader`` forever (a new shuffle each pass)."""
    while True:
        yield from loader


def _images_only(batch: Tensor | Sequence) -> Tensor:
    """Images from a batch of ``PenaltyImages`` (a tensor) or of a task dataset (a tuple)."""
    return batch if isinstance(batch, Tensor) else batch[0]


DEFAULT_IMAGENET = "tiny-imagenet-200"  # the top-level folder of the repository (README there)


def in_default_folder(folder: Path) -> bool:
    """Whether ``folder`` is the repository's ``tiny-imagenet-200`` or a folder inside it."""
    return not folder.is_absolute() and folder.parts[:1] == (DEFAULT_IMAGENET,)


def penalty_images(path: str | None) -> PenaltyImages | None:
    """The penalty images of ``path`` (resized in ``fit``), or None with a log line that the
    penalty is off: when ``path`` is None, or when it is the default folder or a folder inside
    it (CLAD's files name ``tiny-imagenet-200/train``) and that holds no images. Any other path
    must hold images (``DatasetError`` otherwise)."""
    if path is None:
        log.warning("EfficientAD: imagenet_train_path is null; the ImageNet penalty is off")
        return None
    folder = Path(path)
    if in_default_folder(folder) and not (folder.is_dir() and find_images(folder)):
        log.warning(
            "EfficientAD: the default penalty folder %s holds no images (see its README); the "
            "ImageNet penalty is off",
            path,
        )
        return None
    return PenaltyImages(path, 256, PENALTY_GRAYSCALE)


@register_detector("efficientad")
class EfficientAD(TrainedDetector):
    """EfficientAD-S (Batzner et al., WACV 2024); see the module docstring for the method and
    how ours differs.

    Args:
        out_channels: teacher output channels ``C`` (paper: 384).
        pdn_width: the PDNs' first hidden width (paper: 128; then 256, 256). Smaller values
            (with a smaller ``out_channels``) make CPU training feasible; see the module doc.
        padding: pad the PDN's convolutions (the paper does not; see the module docstring).
        teacher_weights: a state-dict file of the PDN teacher (keys ``0.weight`` ... ``8.bias``,
            as the reference code's ``get_pdn_small``; its ``teacher_small.pth`` is a pickled
            module: save its ``.state_dict()``); None: distill the teacher on the fly.
        backbone: the pretrained network distilled into the teacher.
        weights: its weights: ``"imagenet"``, a file path, or ``"none"`` (tests only).
        distill_layers: the backbone layers distilled (None: the backbone's two PatchCore
            layers, strides 8 and 16, like the paper's WideResNet layers 2 and 3).
        distill_steps: distillation steps (batches of ``batch_size``); the paper: 60 000.
        distill_lr: Adam learning rate of the distillation.
        imagenet_train_path: an ImageNet-style image folder (Tiny ImageNet) for the penalty
            loss and for distillation. The default, ``tiny-imagenet-200`` (the repository's
            folder), turns the penalty on whenever it holds images; None: no penalty, distill on
            the training images.
        weight_decay: Adam weight decay (paper: 1e-5).
        border: with ``padding=False``, the value of the map's 4-cell border ring that the PDN
            does not see: ``"zero"`` (the reference code: 0 after normalising, about the 90th
            percentile of normal values) or ``"lowest"`` (anomalib 2.7.0: raw maps padded with 0
            before normalising, below every normal value).
        training: ``Training``; by default 20 epochs of Adam at lr 1e-4, batch 8, early
            stopping after 5 epochs.
    """

    with_autoencoder: ClassVar[bool] = True  # False: the student-teacher part alone (``st``)
    network: EfficientADNetwork
    training_defaults = Training(epochs=20, batch_size=8, lr=1e-4, patience=5)

    def __init__(
        self,
        out_channels: PositiveInt = 384,
        pdn_width: PositiveInt = 128,
        padding: bool = True,
        teacher_weights: str | None = None,
        backbone: str = "efficientnet_lite0",
        weights: str = "imagenet",
        distill_layers: tuple[str, ...] | None = None,
        distill_steps: NonNegativeInt = 1000,
        distill_lr: PositiveFloat = 1e-3,
        imagenet_train_path: str | None = DEFAULT_IMAGENET,
        weight_decay: NonNegativeFloat = 1e-5,
        border: Literal["zero", "lowest"] = "zero",
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = EfficientADNetwork(
            out_channels, padding, pdn_width, self.with_autoencoder
        ).to(self.device)
        self.backbone = backbone
        self.weights = weights
        self.distill_layers = pyramid_layers(backbone, distill_layers, MID_STRIDES)
        self.distill_steps = distill_steps
        self.distill_lr = distill_lr
        self.border = border
        self.weight_decay = weight_decay
        self.penalty = penalty_images(imagenet_train_path)
        self._penalty_batches: Iterator[Tensor] | None = None
        self.teacher_weights = teacher_weights
        if teacher_weights is not None:
            state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
            self.network.teacher.load_state_dict(state)
            self.network.teacher_ready.fill_(True)
            log.info("EfficientAD: teacher loaded from %s", teacher_weights)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        teacher = arguments["teacher_weights"]
        if teacher is not None and not Path(teacher).is_file():
            raise ValueError(f"teacher_weights: {teacher} is not a file")
        if arguments["teacher_weights"] is None:
            check_weights(arguments["weights"])
            check_layers(arguments["backbone"], arguments["distill_layers"])
        penalty = arguments["imagenet_train_path"]
        if penalty is not None and not in_default_folder(Path(penalty)):
            check_folder(penalty, "imagenet_train_path")
        smallest = MIN_SIDE if arguments["padding"] else MIN_SIDE_UNPADDED
        check_side(input_size, 1, smallest)

    @property
    def is_fitted(self) -> bool:
        return bool(torch.isfinite(self.network.quantiles).all())

    def _check_size(self, x: Tensor) -> None:
        height, width = x.shape[-2:]
        smallest = MIN_SIDE if self.network.padding else MIN_SIDE_UNPADDED
        if min(height, width) < smallest:
            raise ValueError(
                f"EfficientAD needs image sides of at least {smallest} px "
                f"(padding={self.network.padding}), got {(height, width)}"
            )

    # ------------------------------------------------------------------ teacher

    def distill_teacher(self, train: Dataset) -> None:
        """Train the PDN teacher to regress the backbone's aggregated features (see the module
        docstring) for ``distill_steps`` steps."""
        side = tuple(train[0][0].shape[-2:])
        images = self.penalty.resized(side) if self.penalty is not None else train
        where = (
            f"ImageNet images under {self.penalty.root}"
            if self.penalty
            else ("the first task's training images (no imagenet_train_path)")
        )
        log.warning(
            "EfficientAD: no teacher_weights given; distilling the PDN teacher from %s (%s "
            "weights, layers %s) for %d steps on %s",
            self.backbone,
            self.weights,
            ", ".join(self.distill_layers),
            self.distill_steps,
            where,
        )
        extractor = FeatureExtractor(self.backbone, self.distill_layers, self.weights)
        extractor.to(self.device)
        teacher = self.network.teacher.requires_grad_(True).train()
        c = self.network.out_channels

        @torch.no_grad()
        def targets(x: Tensor) -> Tensor:
            b = len(x)
            h, w = (pdn_output_side(side, self.network.padding) for side in x.shape[-2:])
            big = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            with self.autocast():
                layers = extractor(big)  # each [B, C_l, h_l, w_l]
            pooled = []
            for feats in layers:
                feats = F.avg_pool2d(feats.float(), 3, stride=1, padding=1)
                feats = F.interpolate(feats, size=(h, w), mode="bilinear")  # [B, C_l, h, w]
                flat = feats.permute(0, 2, 3, 1).reshape(-1, 1, feats.shape[1])  # [B*h*w, 1, C_l]
                pooled.append(F.adaptive_avg_pool1d(flat, c))  # [B*h*w, 1, C]
            joint = F.adaptive_avg_pool1d(torch.cat(pooled, dim=2), c)  # [B*h*w, 1, C]
            return joint.reshape(b, h, w, c).permute(0, 3, 1, 2)  # [B, C, h, w]

        loader = DataLoader(
            images,
            batch_size=self.batch_size,
            shuffle=True,
            generator=seeded_generator(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )
        batches = cycle(loader)
        stats = torch.cat(
            [
                targets(_images_only(next(batches)).to(self.device))
                for _ in range(min(DISTILL_STAT_BATCHES, self.distill_steps))
            ]
        )  # [N, C, h, w]
        mean = stats.mean(dim=(0, 2, 3), keepdim=True)
        std = stats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        optimizer = torch.optim.Adam(teacher.parameters(), lr=self.distill_lr, weight_decay=1e-5)
        for step in range(self.distill_steps):
            x = _images_only(next(batches)).to(self.device, non_blocking=True)
            target = (targets(x) - mean) / std
            with self.autocast():
                out = teacher(self.network.normalise_input(x))
            loss = F.mse_loss(out.float(), target)
            self.backward_step(loss, optimizer)
            if step == 0 or (step + 1) % max(1, self.distill_steps // 5) == 0:
                log.info(
                    "EfficientAD distillation step %d/%d: mse %.4f",
                    step + 1,
                    self.distill_steps,
                    loss.item(),
                )
        teacher.requires_grad_(False).eval()
        self.network.teacher_ready.fill_(True)

    @torch.no_grad()
    def teacher_statistics(self, train: Dataset) -> None:
        """Per-channel mean and std of the raw teacher output over ``train``."""
        net = self.network
        net.teacher_mean.zero_()
        net.teacher_std.fill_(1.0)
        total: Tensor | float = 0.0
        total_sq: Tensor | float = 0.0
        count = 0
        for images, _, _ in self._loader(train, shuffle=False):
            out = net.teacher_features(images.to(self.device))  # raw: mean 0, std 1 set above
            total = total + out.sum(dim=(0, 2, 3))
            total_sq = total_sq + out.pow(2).sum(dim=(0, 2, 3))
            count += out.shape[0] * out.shape[2] * out.shape[3]
        # tensors: training sets are never empty (``fit`` refuses them)
        assert isinstance(total, Tensor) and isinstance(total_sq, Tensor)
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
        net.teacher_mean.copy_(mean.view_as(net.teacher_mean))
        net.teacher_std.copy_(std.view_as(net.teacher_std))

    # ------------------------------------------------------------------ training

    def make_optimizer(self) -> torch.optim.Optimizer:
        trained = [self.network.student, self.network.autoencoder]
        params = itertools.chain(*(m.parameters() for m in trained if m is not None))
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [max(1, round(0.95 * self.epochs))], gamma=0.1
        )

    def losses(
        self, images: Tensor, augmented: Tensor, penalty: Tensor | None
    ) -> dict[str, Tensor]:
        """``hard``, ``penalty`` (when given), ``ae`` and ``stae`` terms and their sum ``loss``
        (without an autoencoder: ``hard`` and ``penalty``; ``augmented`` is then unused)."""
        self._check_size(images)
        net, c = self.network, self.network.out_channels
        teacher = net.teacher_features(images)
        student = net.student(net.normalise_input(images))[:, :c].float()
        distance = (teacher - student).pow(2)
        hard = distance[distance >= quantile(distance, HARD_QUANTILE)].mean()
        terms = {"hard": hard}
        if net.autoencoder is not None:
            teacher_aug = net.teacher_features(augmented)
            x_aug = net.normalise_input(augmented)
            ae = net.autoencoder(x_aug, teacher_aug.shape[-2:]).float()
            student_ae = net.student(x_aug)[:, c:].float()
            terms["ae"] = (teacher_aug - ae).pow(2).mean()
            terms["stae"] = (ae - student_ae).pow(2).mean()
        if penalty is not None:
            student_penalty = net.student(net.normalise_input(penalty))[:, :c].float()
            terms["penalty"] = student_penalty.pow(2).mean()
        terms["loss"] = sum(terms.values())
        return terms

    def loss(self, images: Tensor) -> dict[str, Tensor]:
        """Every term (``hard``, ``ae``, ``stae``, ``penalty`` when on) and their sum ``loss``
        on the batch and its colour-jittered copy (no copy without an autoencoder)."""
        penalty = None
        if self._penalty_batches is not None:
            penalty = next(self._penalty_batches)[: len(images)].to(self.device, non_blocking=True)
        if self.network.autoencoder is None:
            return self.losses(images, images, penalty)
        augmented = jitter_colours(images, seeded_generator())
        return self.losses(images, augmented, penalty)

    def distillation_outputs(self, images: Tensor) -> Tensor:
        """The student's output [B, 2C, h, w] and the autoencoder's [B, C, h, w], concatenated
        along channels: [B, 3C, h, w] (without an autoencoder the student's [B, C, h, w])."""
        net = self.network
        x = net.normalise_input(images)
        student = net.student(x)
        if net.autoencoder is None:
            return student
        return torch.cat([student, net.autoencoder(x, student.shape[-2:])], dim=1)

    def validation_loss(self, images: Tensor) -> Tensor:
        return self.losses(images, images, None)["loss"]

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        if dataset_length(train) == 0:
            raise ValueError("EfficientAD.fit: the training set is empty")
        self._check_size(train[0][0])
        self.network.to(self.device)
        if not bool(self.network.teacher_ready):
            self.distill_teacher(train)
        self.teacher_statistics(train)
        if self.penalty is not None:
            penalty = self.penalty.resized(tuple(train[0][0].shape[-2:]))
            loader = DataLoader(
                penalty,
                batch_size=self.batch_size,
                shuffle=True,
                generator=seeded_generator(),
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            self._penalty_batches = cycle(loader)
        try:
            super().fit(train, val)
        finally:
            self._penalty_batches = None
        self.map_quantiles(val if val is not None and dataset_length(val) > 0 else train)

    @torch.no_grad()
    def map_quantiles(self, data: Dataset) -> None:
        """``q_a, q_b`` of the raw ``M_ST`` and ``M_AE`` values over ``data`` (``M_ST`` alone
        without an autoencoder)."""
        self.network.eval()
        st: list[Tensor] = []
        ae: list[Tensor] = []
        for images, _, _ in self._loader(data, shuffle=False):
            images = images.to(self.device)
            self._check_size(images)
            with self.autocast():
                map_st, map_ae = self.network.maps(images)
            st.append(map_st)
            if map_ae is not None:  # None without an autoencoder
                ae.append(map_ae)
        q_a, q_b = MAP_QUANTILES
        if self.network.autoencoder is None:
            maps_st = torch.cat(st)
            self.network.quantiles.copy_(
                torch.stack([quantile(maps_st, q_a), quantile(maps_st, q_b)])
            )
            return
        maps_st, maps_ae = torch.cat(st), torch.cat(ae)
        self.network.quantiles.copy_(
            torch.stack(
                [
                    quantile(maps_st, q_a),
                    quantile(maps_st, q_b),
                    quantile(maps_ae, q_a),
                    quantile(maps_ae, q_b),
                ]
            )
        )

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self._check_size(x)
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        with self.autocast():
            map_st, map_ae = self.network.maps(x)
        if map_ae is None:
            q_st_a, q_st_b = self.network.quantiles
            scale_st = 0.1 / (q_st_b - q_st_a).clamp_min(1e-12)
            combined = ((map_st - q_st_a) * scale_st)[:, None]  # [B, 1, h, w]
            lowest = -q_st_a * scale_st
        else:
            q_st_a, q_st_b, q_ae_a, q_ae_b = self.network.quantiles
            scale_st = 0.1 / (q_st_b - q_st_a).clamp_min(1e-12)
            scale_ae = 0.1 / (q_ae_b - q_ae_a).clamp_min(1e-12)
            map_st, map_ae = (map_st - q_st_a) * scale_st, (map_ae - q_ae_a) * scale_ae
            combined = (0.5 * map_st + 0.5 * map_ae)[:, None]  # [B, 1, h, w]
            lowest = -0.5 * q_st_a * scale_st - 0.5 * q_ae_a * scale_ae
        if not self.network.padding:
            # the 4-cell ring the unpadded PDN does not see: 0 after normalising (the reference
            # code), or the normalised value of a zero raw map (anomalib's, the lowest possible)
            border = 0.0 if self.border == "zero" else float(lowest)
            combined = F.pad(combined, (4, 4, 4, 4), value=border)
        maps = F.interpolate(combined, size=x.shape[-2:], mode="bilinear")[:, 0]  # [B, H, W]
        return Scores(image=maps.flatten(1).amax(dim=1).cpu(), pixel=maps.cpu())
