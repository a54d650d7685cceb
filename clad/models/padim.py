"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021).

Features: three backbone layers (strides 4, 8, 16: ``layer1-3`` of the ResNets,
``blocks.1``/``blocks.2``/``blocks.4`` of efficientnet-lite0), the coarser ones upsampled
(nearest) to the stride-4 grid and concatenated, then a fixed random subset of ``n_features``
channels (drawn once, at construction, from the global torch RNG): [B, D, H/4, W/4].

Memory: a Gaussian per patch position, kept as its streaming sufficient statistics (count, sum,
sum of outer products, float64; ``clad.models.components.gaussian``), so the Gaussian of
several tasks' data can be pooled exactly. Covariances are regularised by ``covariance_eps * I``.

Scores: the Mahalanobis distance of each patch to its position's Gaussian, upsampled bilinearly
to the input size and smoothed with a Gaussian (sigma ``smoothing_sigma``); the image score is
the map's maximum. The routing distance of an image is its mean patch Mahalanobis distance.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt
from torch import Tensor
from torch.utils.data import Dataset

from clad.models.base import Training
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import LAYERS, FeatureExtractor, check_layers, pyramid_layers
from clad.models.components.gaussian import (
    Accumulator,
    add_stats,
    gaussian,
    inverse_covariance,
    mahalanobis,
)
from clad.models.components.ssim import upsample_smooth
from clad.models.memory_bank import Memory, MemoryBankDetector
from clad.profiling import timed
from clad.records import Scores
from clad.registry import register_detector

Backbone = Literal["efficientnet_lite0", "resnet18", "wide_resnet50_2"]


@register_detector("padim")
class Padim(MemoryBankDetector):
    """PaDiM with exact streaming Gaussians (module docstring for the method).

    Args:
        backbone: feature extractor (see ``PatchCore``).
        weights: ``"imagenet"``, a path to a state dict, or ``"none"``.
        layers: backbone layers; default the backbone's stride-4, -8 and -16 layers.
        n_features: size of the random channel subset (the paper: 100 for resnet18, 550 for
            wide_resnet50_2); capped at the number of channels of ``layers``.
        covariance_eps: regulariser added to every covariance's diagonal.
        smoothing_sigma: Gaussian sigma (pixels) of the anomaly-map smoothing; 0 disables it.
        training: feature-extraction batches, device and loader workers (``Training``).
    """

    def __init__(
        self,
        backbone: Backbone = "efficientnet_lite0",
        weights: str = "imagenet",
        layers: tuple[str, ...] | None = None,
        n_features: PositiveInt = 100,
        covariance_eps: NonNegativeFloat = 0.01,
        smoothing_sigma: NonNegativeFloat = 4.0,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.layers = pyramid_layers(backbone, layers)
        self.extractor = FeatureExtractor(backbone, self.layers, weights).to(self.device)
        total = sum(LAYERS[backbone][layer][0] for layer in self.layers)
        self.channels = torch.randperm(total)[: min(n_features, total)]  # [D]
        self.covariance_eps = covariance_eps
        self.smoothing_sigma = smoothing_sigma

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        check_layers(arguments["backbone"], arguments["layers"])

    def extra_state(self) -> dict[str, Tensor]:
        return {"channels": self.channels}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.channels = state["channels"].clone()

    def embed(self, x: Tensor, reuse: bool = True) -> Tensor:
        """The layers upsampled (nearest) to the finest grid, concatenated, then the random
        channel subset: [B, D, h, w]. Computed as the subset of each layer first (nearest
        upsampling acts per channel, so the result is the same), which avoids upsampling and
        copying the channels that are thrown away."""
        with torch.no_grad():
            features = self.extractor.reused(x) if reuse else self.extractor(x)
            grid = features[0].shape[-2:]
            channels = self.channels.to(features[0].device)
            order = torch.argsort(channels)  # position in the subset of each sorted channel
            picked, start = [], 0
            for feature in features:
                stop = start + feature.shape[1]
                inside = channels[(channels >= start) & (channels < stop)].sort().values
                part = feature.index_select(1, inside - start)
                if part.shape[-2:] != grid:
                    part = F.interpolate(part, size=grid, mode="nearest")
                picked.append(part)
                start = stop
            sorted_subset = torch.cat(picked, 1)  # [B, D, h, w], channels in ascending order
            embedding = torch.empty_like(sorted_subset)
            embedding[:, order] = sorted_subset  # back to the order of self.channels
        return embedding

    @timed("gaussians")
    def build_memory(self, data: Dataset) -> Memory:
        began = time.perf_counter()
        sums = Accumulator()
        grid = None
        for images in self.images(data):
            embedding = self.embed(images, reuse=False)  # [B, D, h, w]
            b, d, h, w = embedding.shape
            if grid is None:
                grid = (h, w)
            elif (h, w) != grid:
                raise ValueError(
                    f"padim: images of different sizes in one dataset ({grid}, {h, w})"
                )
            sums.add(embedding.reshape(b, d, h * w))
        stats = sums.stats()
        self.timings = {"feature": time.perf_counter() - began}
        return {**stats, "grid": torch.tensor(grid)}

    def prepare(self, memory: Memory) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        grid = tuple(int(v) for v in memory["grid"])
        if "precision" in memory:  # an ``average_memories`` result: mean and precision as is
            return memory["mean"].float(), memory["precision"].float(), grid
        mean, covariance = gaussian(memory, self.covariance_eps)
        precision = inverse_covariance(covariance)
        return mean.float(), precision.float(), grid

    def average_memories(self, average: Memory | None, memory: Memory) -> Memory:
        """CLAD's PaDiM ``cl`` (``Trainer_PaDiM.train_epoch``, CLAD's
        ``src/trainer/trainer_padim.py``): the running average, task by task with equal
        weights, of the tasks' mean [P, D] and precision (inverse regularised covariance)
        [P, D, D]: after task t, mean = (t * mean + mean_t) / (t + 1), likewise the precision.
        ``average`` is the previous result (None before the first task), ``memory`` task t's
        statistics (``build_memory``). The result is not the Gaussian of any data (averaging
        precisions is not pooling; ``merge_memories`` pools exactly)."""
        mean, precision, _ = self.prepare(memory)
        if average is None:
            tasks = torch.tensor(1.0, dtype=torch.float64)
        else:
            if not torch.equal(average["grid"].cpu(), memory["grid"].cpu()):
                raise ValueError("padim: memories of different feature grids")
            done = average["tasks"].double()
            mean = (done * average["mean"].to(mean.device) + mean) / (done + 1)
            precision = (done * average["precision"].to(mean.device) + precision) / (done + 1)
            tasks = done + 1
        return {
            "mean": mean.float(),
            "precision": precision.float(),
            "tasks": tasks,
            "grid": memory["grid"],
        }

    def score(
        self, embedding: Tensor, prepared: tuple, size: Sequence[int], key: Hashable | None = None
    ) -> tuple[Scores, Tensor]:
        mean, precision, grid = prepared
        b, d, h, w = embedding.shape
        if (h, w) != grid:
            raise ValueError(
                f"padim: the test images give a {h}x{w} feature grid, the memory was built on "
                f"{grid[0]}x{grid[1]}: use the training image size"
            )
        distances = mahalanobis(embedding.reshape(b, d, h * w), mean, precision)  # [B, h*w]
        # bilinear upsampling then the Gaussian, as one product per side
        maps = upsample_smooth(distances.view(b, h, w), size, self.smoothing_sigma)  # [B, H, W]
        return Scores(image=maps.flatten(1).amax(1), pixel=maps), distances.mean(1)

    def merge_memories(self, memories: Sequence[Memory], budget: int | None) -> Memory:
        """The exact statistics of the union of the tasks' data (``budget`` does not apply:
        the memory has a fixed size)."""
        grids = {tuple(int(v) for v in m["grid"]) for m in memories}
        if len(grids) != 1:
            raise ValueError(f"padim: memories of different feature grids {sorted(grids)}")
        parts = [{k: m[k].to(self.device) for k in ("count", "total", "outer")} for m in memories]
        return {**add_stats(parts), "grid": memories[0]["grid"]}
