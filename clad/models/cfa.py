"""CFA: coupled-hypersphere-based feature adaptation.

Lee, Lee and Song, "CFA: Coupled-hypersphere-based Feature Adaptation for Target-Oriented
Anomaly Localization", IEEE Access 10, 2022 (arXiv:2206.04325).

Patch descriptors come from a frozen pretrained CNN: each chosen stage's features are
3x3-average-pooled, upsampled to the first stage's resolution and concatenated,
``p`` [B, D, h, w]. A trainable patch adaptor (a 1x1 CoordConv: the features plus two
coordinate channels in [-1, 1]) maps them to ``phi(p)`` [B, D', h, w]. A memory of centroids
``C`` [M, D'] is built from the adapted features of the training images before training and
then kept fixed. With ``d_1 <= d_2 <= ...`` the squared distances from ``phi(p)`` to its
nearest centroids and ``r`` a learned radius, the soft-boundary loss is

    L_att = (1/nu) mean relu(d_k - r^2),            k = 1..K        (pull to K nearest)
    L_rep = (1/nu) mean relu(r^2 - d_k - alpha),    k = K+1..K+J    (push hard negatives)

At test time, with ``e_k = sqrt(d_k)`` the Euclidean distances (the paper's code and anomalib take
the square root first), a position's score is ``softmin(e_1..e_K)_1 * e_1``; the map is
upsampled to the input size and Gaussian-smoothed, and the image score is its maximum.
``score_distance="squared"`` scores ``softmin(d_1..d_K)_1 * d_1`` instead (an option, not the
method; see docs/results/parity.md for what it measures).

Where ours differs from (simplifies) the paper and its code:
- Memory initialisation (``memory_init``): by default the paper's code's, ``"position_mean"``:
  the mean adapted descriptor over all training images at each position (one centroid per
  position, h x w of them; the paper's optional k-means compression by ``gamma_c`` is not
  implemented), which presumes aligned images of one category; under replay or joint training it
  averages the categories it is given, as CLAD's code does. ``"coreset"`` is an option for mixed
  data: ``memory_size`` centroids chosen from all training descriptors (at most about
  ``MAX_INIT_FEATURES``, an equal random share from each batch) by greedy k-center coreset
  selection (PatchCore's rule, ``clad.models.components.coreset``), refined by ``kmeans_iters``
  Lloyd iterations. On real bottle at equal settings (docs/results/parity.md) the paper's memory
  gives image / pixel AUROC 1.000 / 0.928 (anomalib 1.000 / 0.930), the coreset 0.972 / 0.909.
- Continual learning: every ``fit`` rebuilds the memory from the data it is given with the
  current adaptor, then continues training the adaptor (and ``r``) from their current values.
  Under ``naive`` the memory therefore holds the current task only; under ``replay`` and the
  joint strategies it holds what they pass in.
- Hard negatives: the paper's code takes ``dist[:, :, J:]`` of the ``K + J`` nearest, which is
  the (K+1)..(K+J)-th only when ``K == J``; here always the (K+1)..(K+J)-th. With the paper's
  ``r`` (initialised at 1e-5) and ``alpha = 0.1`` the repulsive term stays zero until ``r^2``
  exceeds ``alpha``; that is kept as published.
- Backbone: the shared backbones, default ``efficientnet_lite0`` (the pretrained network
  available offline) at strides 4, 8, 16; the paper reports WRN-50 (its main results),
  ResNet-18 and EfficientNet-B5. Its code divides EfficientNet features by their channel count
  before concatenation; we do not.
- Training: the shared loop (validation-loss early stopping on held-out normal images) with
  AdamW (amsgrad, as the paper's code), ``lr`` and ``weight_decay`` (the paper: lr 1e-3, weight
  decay 5e-4, 30 epochs). Image size: the dataset's (the paper uses 224 or 256);
  ``smoothing_sigma`` is in input pixels (the paper's 4 at 256 px; scale it with the image).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor, nn
from torch.utils.data import Dataset

from clad.models.base import TrainedDetector, Training, tensor_bytes
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import FeatureExtractor, check_layers, pyramid_layers
from clad.models.components.coreset import greedy_coreset
from clad.models.components.ssim import gaussian_smooth
from clad.records import Scores, dataset_length
from clad.registry import register_detector

MAX_INIT_FEATURES = 65_536  # descriptors sampled for memory initialisation
DISTANCE_CHUNK = 8_192  # rows per block when computing feature-to-memory distances


def squared_distances(x: Tensor, memory: Tensor) -> Tensor:
    """``||x_i - c_j||^2`` for ``x`` [..., D] and ``memory`` [M, D] -> [..., M], clamped at 0."""
    d = x.pow(2).sum(-1, keepdim=True) + memory.pow(2).sum(-1) - 2 * x @ memory.T
    return d.clamp_min(0)


def nearest_centroid(features: Tensor, centroids: Tensor) -> Tensor:
    """Index [N] of each feature's nearest centroid, in blocks of ``DISTANCE_CHUNK`` rows."""
    return torch.cat(
        [
            squared_distances(block, centroids).argmin(dim=1)
            for block in features.split(DISTANCE_CHUNK)
        ]
    )


def kmeans_refine(features: Tensor, centroids: Tensor, iterations: int) -> Tensor:
    """Lloyd iterations from ``centroids`` [M, D]; a centroid without members stays put."""
    for _ in range(iterations):
        assign = nearest_centroid(features, centroids)  # [N]
        sums = torch.zeros_like(centroids).index_add_(0, assign, features)
        counts = torch.bincount(assign, minlength=len(centroids)).to(features.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids


class CoordConv1x1(nn.Module):
    """1x1 convolution over the input plus two coordinate channels (x and y in [-1, 1])."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 2, channels_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [h, w] each
        coords = torch.stack([grid_x, grid_y]).expand(b, 2, h, w)
        return self.conv(torch.cat([x, coords], dim=1))


class CFANetwork(nn.Module):
    """Frozen extractor, patch descriptor, trainable CoordConv adaptor and radius ``r``."""

    def __init__(self, backbone: str, layers: tuple[str, ...], weights: str, gamma_d: int) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, weights)  # frozen, always eval
        dim = sum(self.extractor.channels)
        self.adaptor = CoordConv1x1(dim, dim // gamma_d)
        self.radius = nn.Parameter(torch.full((1,), 1e-5))

    def descriptors(self, x: Tensor, reuse: bool = False) -> Tensor:
        """``x`` [B, 3, H, W] -> patch descriptors [B, D, h, w] at the first stage's size;
        ``reuse``: the frozen extractor's outputs for inputs seen before (at test time)."""
        feats = self.extractor.reused(x) if reuse else self.extractor(x)
        size = feats[0].shape[-2:]
        pooled = [
            F.interpolate(
                F.avg_pool2d(f.float(), 3, 1, 1), size=size, mode="bilinear", align_corners=False
            )
            for f in feats
        ]
        return torch.cat(pooled, dim=1)

    def forward(self, x: Tensor, reuse: bool = False) -> Tensor:
        """Adapted descriptors ``phi(p)``, channels last: [B, h, w, D'] (``reuse``: see
        ``descriptors``)."""
        return self.adaptor(self.descriptors(x, reuse)).permute(0, 2, 3, 1)


@register_detector("cfa")
class CFA(TrainedDetector):
    """Coupled-hypersphere feature adaptation (Lee et al., 2022); see the module docstring.

    Args:
        backbone: the frozen feature extractor (a name from the shared backbone table).
        layers: backbone stages in the descriptor (None: the backbone's default three).
        weights: ``"imagenet"``, a file path, or ``"none"`` (random init, tests only).
        gamma_d: descriptor compression; the adaptor outputs ``D // gamma_d`` channels.
        memory_size: number of memorised centroids M (fewer if the training set has fewer
            patch descriptors).
        kmeans_iters: Lloyd iterations refining the coreset-selected centroids.
        k_nearest: K, the centroids each descriptor is pulled towards and scored against.
        j_negatives: J, the hard negatives after the K nearest.
        nu: the soft-boundary weight (the loss is divided by it).
        alpha: the repulsion margin.
        smoothing_sigma: Gaussian smoothing of the map, in input pixels.
        weight_decay: AdamW weight decay.
        score_distance: ``"euclidean"`` (the paper's code: square root of the squared
            distances before the softmin) or ``"squared"``.
        memory_init: ``"position_mean"`` (the paper's code: the mean descriptor at each
            position; h x w centroids, ``memory_size`` and ``kmeans_iters`` unused) or
            ``"coreset"`` (``memory_size`` centroids from all descriptors).
        training: ``Training``; by default 20 epochs of AdamW at lr 1e-3, batch 16, early
            stopping after 5 epochs.
    """

    network: CFANetwork
    training_defaults = Training(epochs=20, batch_size=16, lr=1e-3, patience=5)

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: tuple[str, ...] | None = None,
        weights: str = "imagenet",
        gamma_d: PositiveInt = 1,
        memory_size: PositiveInt = 1024,
        kmeans_iters: NonNegativeInt = 3,
        k_nearest: PositiveInt = 3,
        j_negatives: NonNegativeInt = 3,
        nu: PositiveFloat = 1e-3,
        alpha: NonNegativeFloat = 0.1,
        smoothing_sigma: NonNegativeFloat = 4.0,
        weight_decay: NonNegativeFloat = 5e-4,
        score_distance: Literal["euclidean", "squared"] = "euclidean",
        memory_init: Literal["coreset", "position_mean"] = "position_mean",
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.network = (
            CFANetwork(backbone, pyramid_layers(backbone, layers), weights, gamma_d)
            .to(self.device)
            .eval()
        )
        self.memory_size = memory_size
        self.kmeans_iters = kmeans_iters
        self.k_nearest = k_nearest
        self.j_negatives = j_negatives
        self.nu = nu
        self.alpha = alpha
        self.smoothing_sigma = smoothing_sigma
        self.weight_decay = weight_decay
        self.score_distance = score_distance
        self.memory_init = memory_init
        self.memory: Tensor | None = None  # [M, D'] centroids, fixed during training

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        check_layers(arguments["backbone"], arguments["layers"])
        needed = arguments["k_nearest"] + arguments["j_negatives"]
        if arguments["memory_size"] < needed:
            raise ValueError(
                f"memory_size: {arguments['memory_size']} centroids cannot give k_nearest + "
                f"j_negatives = {needed}"
            )

    @property
    def is_fitted(self) -> bool:
        return self.memory is not None

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.network.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, amsgrad=True)

    @torch.no_grad()
    def build_memory(self, train: Dataset) -> Tensor:
        """Centroids [M, D'] from the adapted descriptors of ``train`` (see the module doc)."""
        self.network.eval()
        if self.memory_init == "position_mean":
            return self._position_means(train)
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        loader = self._loader(train, shuffle=False)
        per_batch = -(-MAX_INIT_FEATURES // len(loader))  # keeps at most ~MAX_INIT_FEATURES
        kept = []
        for images, _, _ in loader:
            batch = self.network(images.to(self.device)).flatten(0, 2)  # [B*h*w, D']
            if len(batch) > per_batch:
                pick = torch.randperm(len(batch), generator=generator)[:per_batch]
                batch = batch[pick.to(batch.device)]
            kept.append(batch)
        feats = torch.cat(kept)  # [N, D']
        if len(feats) < self.k_nearest + self.j_negatives:
            raise ValueError(
                f"CFA.fit: {len(feats)} patch descriptors, fewer than K + J = "
                f"{self.k_nearest + self.j_negatives}"
            )
        start = int(torch.randint(len(feats), (1,), generator=generator))
        # "dense": exact and one matrix-vector product per pick, cheap at CFA's memory sizes
        chosen = greedy_coreset(
            feats, min(self.memory_size, len(feats)), start=start, method="dense"
        )
        centroids = feats[chosen.to(feats.device)]  # [M, D']
        return kmeans_refine(feats, centroids, self.kmeans_iters)

    def _position_means(self, train: Dataset) -> Tensor:
        """The paper's memory: the mean adapted descriptor at each position over ``train``,
        [h * w, D'] (images must share one size)."""
        total, count = None, 0
        for images, _, _ in self._loader(train, shuffle=False):
            phi = self.network(images.to(self.device)).float()  # [B, h, w, D']
            total = phi.sum(dim=0) if total is None else total + phi.sum(dim=0)
            count += len(phi)
        assert total is not None  # training sets are never empty (``fit`` refuses them)
        return (total / count).flatten(0, 1)  # [h * w, D']

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        if dataset_length(train) == 0:
            raise ValueError("CFA.fit: the training set is empty")
        self.network.to(self.device)
        self.memory = self.build_memory(train)
        super().fit(train, val)

    def _nearest(self, images: Tensor, count: int, reuse: bool = False) -> Tensor:
        """Squared distances [B, h, w, count] from each adapted descriptor to its nearest
        centroids, ascending."""
        if self.memory is None:
            raise RuntimeError("CFA: fit() must run before the memory is used")
        phi = self.network(images, reuse)  # [B, h, w, D']
        return squared_distances(phi, self.memory).topk(count, dim=-1, largest=False).values

    def loss(self, images: Tensor) -> Tensor:
        k = self.k_nearest
        dist = self._nearest(images, k + self.j_negatives)  # [B, h, w, K+J]
        r2 = self.network.radius.pow(2)
        attract = F.relu(dist[..., :k] - r2).mean()
        if self.j_negatives == 0:
            return attract / self.nu
        repel = F.relu(r2 - dist[..., k:] - self.alpha).mean()
        return (attract + repel) / self.nu

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        self.check_fitted()
        self.network.eval()
        x = x.to(self.device)
        with self.autocast():
            dist = self._nearest(x, self.k_nearest, reuse=True).float()  # [B, h, w, K], squared
        if self.score_distance == "euclidean":
            dist = dist.sqrt()
        score = F.softmin(dist, dim=-1)[..., 0] * dist[..., 0]  # [B, h, w]
        maps = F.interpolate(
            score[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]  # [B, H, W]
        maps = gaussian_smooth(maps, self.smoothing_sigma)
        return Scores(image=maps.flatten(1).amax(dim=1).cpu(), pixel=maps.cpu())

    def memory_bytes(self) -> int:
        return 0 if self.memory is None else tensor_bytes(self.memory)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "memory": None if self.memory is None else self.memory.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        memory = state["memory"]
        self.memory = None if memory is None else memory.to(self.device)
