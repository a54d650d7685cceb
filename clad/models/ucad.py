"""UCAD (Liu et al., "Unsupervised Continual Anomaly Detection with Contrastively-learned
Prompt", AAAI 2024; official code github.com/shirowalker/UCAD).

A frozen ViT (timm) is read after block ``feature_layer`` (the 6th, index 5: ``seg_feat`` in
the official ``patchcore/vision_transformer.py``); each patch token [C] becomes a feature [D]
by adaptive average pooling over channels (``embed_dimension``, the official 1024;
``pooled_embedding``). Each ``fit`` learns one task part, the paper's key-prompt-knowledge
memory entry:

- key K_t: a greedy coreset of ``key_size`` (196) patch features of the task's training images
  through the frozen, unprompted ViT (the official ``fit_with_limit_size``);
- prompt P_t: a prefix of ``prompt_length`` (1) keys and values in each block up to
  ``feature_layer`` (``clad.models.components.vit_prompts``), initialised uniform in [-1, 1]
  for every task and trained by gradient descent (below);
- knowledge V_t: a greedy coreset of ``memory_size`` (196) patch features of the training
  images through the ViT prompted with P_t (``fit_with_limit_size_prompt``).

Test (task-agnostic; the official ``run_ucad.py`` inference block): an image's frozen features
are matched with every key, s_t = max_patches min_{k in K_t} ||f - k||^2, and it is sent to
t* = argmin_t s_t (``predict_routed`` returns the routes); its prompted features (P_t*) give
patch scores ||f - v*||^2 to their nearest knowledge vector v* in V_t*. The image score is the
largest patch score; the map is the patch scores upsampled bilinearly to the input size and
smoothed by a Gaussian of sigma ``smoothing_sigma * H / 224`` (scipy's ``gaussian_filter``
with its reflect border, as the official ``RescaleSegmentor``). ``predict_part(x, t)`` scores
with part t whatever the keys say (oracle routing).

Prompt training, per task: Adam (lr 5e-4, betas 0.9/0.999, no weight decay) on the prompt only,
gradient norm clipped at 1.0, batches of 8, 25 epochs (``run_ucad.py`` with the official
``args_dict.npy``), on the structure-based contrastive loss (``structure_contrastive_loss``,
temperature 0.5) of the prompted tokens at ``feature_layer``, whose structure labels come from
``structure``:

- ``"sam"``: the paper's SCL: SAM's automatic masks of each training image (``sam_checkpoint``,
  the ``segment_anything`` package), labelled by area rank (largest 1; 0 where no mask), read
  at the patch grid (nearest);
- ``"clusters"`` (clad's stand-in without SAM): per-image k-means (``structure_clusters``) of
  the frozen ViT's patch tokens (``kmeans_labels``);
- ``"none"``: the prompts are not trained (they stay at their random initialisation).

Model selection on validation normals only: the shared loop keeps the prompt with the lowest
contrastive loss on the held-out normal images (the last epoch's without them), then builds V_t
with it. The official code builds V_t after every epoch and keeps the epoch whose *test* AUROC
is highest (``run_ucad.py``): not done here.

Where ours differs from the official code (each measured or stated in docs/methods/ucad.md):

- Routing per image; the official (commented-out) inference sums the image scores s_t over
  all of a test set's images and sends the whole set to one task, using the knowledge that a
  test set is one task.
- Prompts in blocks 0..feature_layer only: the official allocates all 12 blocks, but blocks
  after ``feature_layer`` neither change the features nor receive gradients.
- Each image gets its prompt's key prefix and value prefix. The official ``EPrompt`` reshapes
  [layers, 2, B, ...] to [layers, B, 2, ...] without a permute, so in a batch of B > 1 the
  first half of the images get the key prefix as both key and value and the second half the
  value prefix as both: its scores depend on an image's position in the batch (batch size 1
  is the exact one, against which the parity check ran).
- Coresets: clad's exact greedy k-center on a Gaussian projection to ``projection_dim`` (128)
  dims (``clad.models.components.coreset``), where the official uses PatchCore's approximate
  greedy coreset (10 random start points, a random linear layer to 128 dims).
- SAM labels read at the grid by nearest neighbour, where the official resizes the label image
  with cv2's default bilinear interpolation (mixing label values at region borders); masks
  computed at the input resolution on the fly (cached per image), where the official
  precomputes them on 224 px images with ``segment_anything/dataset_sam.py``.
- No min-max normalisation of scores and maps over a test set (the official normalises each
  test set before its metrics; no effect on AUROC, and a batch must not see its set).
- Input side: any multiple of the patch size (16), the position embeddings resampled bicubically
  for the input's grid (timm ``dynamic_img_size``); the paper's and the shipped configs' 224 px
  need no resampling. Sizes stay 196 whatever the grid (capped at the number of training
  patches).
- Default weights: timm's ``vit_base_patch16_224`` (ImageNet-21k pretrained, fine-tuned on
  ImageNet-1k); the official code loads Google's ImageNet-21k ViT-B/16 without the fine-tuning,
  ``vit_base_patch16_224.orig_in21k`` in timm: name it in ``vit`` to use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from clad.models.base import (
    TRAINING_KEYS,
    TrainedDetector,
    Training,
    private_generator,
    tensor_bytes,
)
from clad.models.components.arguments import check_weights
from clad.models.components.backbone import batch_digest
from clad.models.components.coreset import greedy_coreset, random_projection
from clad.models.components.knn import KnnBackend, KnnIndex
from clad.models.components.vit_prompts import (
    PromptedViT,
    gaussian_smooth_reflect,
    init_prompt,
    kmeans_labels,
    pooled_embedding,
    structure_contrastive_loss,
    vit_depth,
)
from clad.records import Scores, dataset_length
from clad.registry import register_detector

log = logging.getLogger(__name__)
Structure = Literal["sam", "clusters", "none"]
CLIP_NORM = 1.0  # the official ``args.clip_grad``
_said: set[str] = set()


def say_once(message: str) -> None:
    """Log a start-up notice once per process."""
    if message not in _said:
        _said.add(message)
        log.warning(message)


def sam_available() -> bool:
    try:
        import segment_anything  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


class PromptNetwork(nn.Module):
    """What gradient descent trains: the current task's prompt (the ViT is kept apart, frozen,
    so the shared loop's copies of the best state hold the prompt only)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.prompt = nn.Parameter(torch.zeros(shape))


class SamStructure:
    """SAM's automatic masks as structure labels at the patch grid, cached per image."""

    def __init__(self, checkpoint: str, model: str, device: torch.device) -> None:
        from segment_anything import (  # type: ignore[import-not-found]
            SamAutomaticMaskGenerator,
            sam_model_registry,
        )

        sam = sam_model_registry[model](checkpoint=checkpoint).to(device)
        self.generator = SamAutomaticMaskGenerator(sam)
        self.cache: dict[tuple, Tensor] = {}

    def labels(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, h * w] long: mask rank by area (largest 1; later,
        smaller masks overwrite; 0 where none), read at the grid by nearest neighbour."""
        rows = []
        for image in images:
            key = batch_digest(image.cpu())
            if key not in self.cache:
                pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
                masks = sorted(self.generator.generate(pixels), key=lambda m: -m["area"])
                label = torch.zeros(image.shape[1:])
                for rank, mask in enumerate(masks, start=1):
                    label[torch.from_numpy(mask["segmentation"])] = rank
                small = F.interpolate(label[None, None], size=grid, mode="nearest")
                self.cache[key] = small.flatten().long()
            rows.append(self.cache[key])
        return torch.stack(rows).to(images.device)


@register_detector("ucad")
class Ucad(TrainedDetector):
    """UCAD's frozen ViT with a key, a prompt and a knowledge memory per task (module docstring).

    Args:
        vit: a timm ViT name (a tag may follow: ``vit_base_patch16_224.orig_in21k``).
        weights: ``"imagenet"`` (timm's pretrained weights from its cache), a state dict file,
            or ``"none"`` (random init).
        feature_layer: the block whose patch tokens are the features (0-based; official 5).
        prompt_length: prefix tokens per block (official 1).
        key_size: patch features per task key (official 196).
        memory_size: patch features per task knowledge memory (official 196).
        embed_dimension: feature size after channel pooling (official 1024).
        projection_dim: random projection size of the coreset selection (official 128).
        structure: the contrastive loss's structure labels: ``"sam"``, ``"clusters"`` or
            ``"none"`` (no prompt training).
        structure_clusters: k of ``"clusters"``.
        sam_checkpoint: a SAM checkpoint file (``structure: "sam"`` only).
        sam_model: the SAM variant of the checkpoint.
        temperature: of the contrastive loss (official 0.5).
        smoothing_sigma: Gaussian sigma of the maps at 224 px (official 4).
        knn_backend: nearest-neighbour search (``clad.models.components.knn``).
        training: ``Training``; by default the official 25 epochs, batch 8, lr 5e-4.
    """

    network: PromptNetwork
    training_defaults = Training(epochs=25, batch_size=8, lr=5e-4, patience=0)
    training_keys = tuple(key for key in TRAINING_KEYS if key != "precision")  # float32 only

    def __init__(
        self,
        vit: str = "vit_base_patch16_224",
        weights: str = "imagenet",
        feature_layer: NonNegativeInt = 5,
        prompt_length: PositiveInt = 1,
        key_size: PositiveInt = 196,
        memory_size: PositiveInt = 196,
        embed_dimension: PositiveInt = 1024,
        projection_dim: PositiveInt = 128,
        structure: Structure = "clusters",
        structure_clusters: Annotated[int, Field(ge=2)] = 8,
        sam_checkpoint: str | None = None,
        sam_model: Literal["vit_b", "vit_l", "vit_h"] = "vit_b",
        temperature: Annotated[float, Field(gt=0)] = 0.5,
        smoothing_sigma: NonNegativeFloat = 4.0,
        knn_backend: KnnBackend = "auto",
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.vit_name = vit
        self.weights = weights
        self.feature_layer = feature_layer
        self.prompt_length = prompt_length
        self.key_size = key_size
        self.memory_size = memory_size
        self.embed_dimension = embed_dimension
        self.projection_dim = projection_dim
        self.structure: Structure = structure
        self.structure_clusters = structure_clusters
        self.temperature = temperature
        self.smoothing_sigma = smoothing_sigma
        self.knn_backend: KnnBackend = knn_backend
        if weights == "none":
            say_once(f"ucad: weights 'none': the ViT {vit} is randomly initialised")
        if structure == "sam":
            say_once(f"ucad: structure-based contrastive loss on SAM masks ({sam_checkpoint})")
        elif structure == "clusters":
            say_once(
                "ucad: SAM's structure-based contrastive loss is off (no SAM checkpoint); the "
                f"prompts learn the same loss on {structure_clusters} k-means clusters of the "
                "frozen ViT's patch tokens per image (clad's stand-in)"
            )
        else:
            say_once("ucad: structure 'none': the prompts are not trained (random init)")
        self.vit = PromptedViT(vit, weights, feature_layer).to(self.device)
        self.network = PromptNetwork(self.vit.prompt_shape(prompt_length)).to(self.device)
        self.sam = (
            SamStructure(str(sam_checkpoint), sam_model, self.device)
            if structure == "sam"
            else None
        )
        self.prompts: list[Tensor] = []  # per task [layers, 2, length, heads, head_dim]
        self.keys: list[Tensor] = []  # per task [<= key_size, D]
        self.knowledge: list[Tensor] = []  # per task [<= memory_size, D]
        self._indices: dict[tuple[str, int], KnnIndex] = {}

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        check_weights(arguments["weights"])
        import timm

        name = arguments["vit"].split(".")[0]
        if name not in timm.list_models():
            raise ValueError(f"vit: {arguments['vit']!r} is not a timm model")
        depth = vit_depth(name)
        if arguments["feature_layer"] >= depth:
            raise ValueError(
                f"feature_layer: {arguments['feature_layer']}, but {name} has "
                f"{depth} blocks (0 to {depth - 1})"
            )
        checkpoint, structure = arguments["sam_checkpoint"], arguments["structure"]
        if structure == "sam":
            if checkpoint is None:
                raise ValueError("structure: 'sam' needs sam_checkpoint (a SAM checkpoint file)")
            if not Path(checkpoint).is_file():
                raise ValueError(f"sam_checkpoint: {checkpoint} is not a file")
            if not sam_available():
                raise ValueError(
                    "sam_checkpoint: the segment_anything package is not installed (pip "
                    "install segment-anything); without it use structure 'clusters' or 'none'"
                )
        elif checkpoint is not None:
            raise ValueError(f"sam_checkpoint is used by structure 'sam' only, not {structure!r}")
        height, width = input_size
        if height % 16 or width % 16:
            raise ValueError(
                f"input size {height}x{width}: UCAD's ViT takes sides divisible by its 16 px "
                "patches (224 is the paper's); set dataset.image_size (or crop_size)"
            )

    # ------------------------------------------------------------------ features

    def tokens(self, x: Tensor, prompt: Tensor | None) -> Tensor:
        """Patch tokens [B, N, C] after ``feature_layer`` (``prompt`` None: the frozen ViT)."""
        return self.vit(x, prompt)

    def embed(self, x: Tensor, prompt: Tensor | None) -> Tensor:
        """Patch features [B, N, D] (no gradients)."""
        with torch.no_grad():
            tokens = self.tokens(x.to(self.device), prompt)
        return pooled_embedding(tokens, self.embed_dimension)

    def grid(self, x: Tensor) -> tuple[int, int]:
        patch = int(self.vit.patch)
        return int(x.shape[-2]) // patch, int(x.shape[-1]) // patch

    def images(self, data: Dataset) -> list[Tensor]:
        loader = DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=False,
            generator=private_generator(),
            num_workers=self.num_workers,
        )
        return [images for images, _, _ in loader]

    def coreset(self, data: Dataset, prompt: Tensor | None, size: int) -> Tensor:
        """A greedy coreset [min(size, N), D] of all patch features of ``data`` (CPU)."""
        features = torch.cat(
            [self.embed(x, prompt).flatten(0, 1).cpu() for x in self.images(data)]
        )  # [N, D]
        projected = random_projection(features, self.projection_dim)
        chosen = greedy_coreset(projected, min(size, len(features)))
        return features[chosen].contiguous()

    # ------------------------------------------------------------------ training

    def structure_labels(self, images: Tensor) -> Tensor:
        """[B, N] structure labels of a batch (``structure``)."""
        if self.sam is not None:
            return self.sam.labels(images, self.grid(images))
        with torch.no_grad():
            frozen = self.tokens(images, None)
        return kmeans_labels(frozen, self.structure_clusters)

    def loss(self, images: Tensor) -> Tensor:
        """The contrastive loss of the current prompt's tokens on a batch."""
        labels = self.structure_labels(images)
        tokens = self.tokens(images, self.network.prompt)
        return structure_contrastive_loss(tokens, labels, self.temperature)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.network.prompt], lr=self.lr, betas=(0.9, 0.999), eps=1e-8)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Back-propagate, transform (A-GEM), clip the gradient norm at 1.0 and step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.trainable_parameters()
        if self.gradient_transform is not None:
            self.gradient_transform(params)
        torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP_NORM)
        optimizer.step()

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        """Learn a new task part: key, prompt (trained unless ``structure`` is ``"none"``)
        and knowledge memory."""
        if dataset_length(train) == 0:
            raise ValueError("Ucad.fit: the training set is empty")
        key = self.coreset(train, None, self.key_size)
        shape = tuple(self.network.prompt.shape)
        self.network.prompt = nn.Parameter(init_prompt(shape).to(self.device))
        if self.structure != "none":
            self.train_epochs(train, val, self.epochs)
        prompt = self.network.prompt.detach().clone()
        knowledge = self.coreset(train, prompt, self.memory_size)
        self.keys.append(key)
        self.prompts.append(prompt.cpu())
        self.knowledge.append(knowledge)
        self._indices.clear()

    # ------------------------------------------------------------------ scoring

    @property
    def is_fitted(self) -> bool:
        return bool(self.prompts)

    def index(self, kind: str, task: int) -> KnnIndex:
        """The search index of task ``task``'s ``"key"`` or ``"knowledge"`` (built once)."""
        found = self._indices.get((kind, task))
        if found is None:
            bank = (self.keys if kind == "key" else self.knowledge)[task]
            found = self._indices[(kind, task)] = KnnIndex(bank.to(self.device), self.knn_backend)
        return found

    def nearest_squared(self, features: Tensor, kind: str, task: int) -> Tensor:
        """Squared distances [B, N] of features [B, N, D] to their nearest bank vector (faiss'
        ``IndexFlatL2`` distances, as the official ``NearestNeighbourScorer``)."""
        distances, _ = self.index(kind, task).search(features.flatten(0, 1), 1)
        return distances[:, 0].pow(2).reshape(features.shape[:2])

    def routes(self, x: Tensor) -> Tensor:
        """Each image's task [B] long: argmin_t max_patches ||f - K_t||^2 (frozen features)."""
        frozen = self.embed(x, None)  # [B, N, D]
        matching = torch.stack(
            [self.nearest_squared(frozen, "key", t).amax(1) for t in range(len(self.keys))]
        )  # [T, B]
        return matching.argmin(0).cpu()

    def score_part(self, x: Tensor, task: int) -> Scores:
        """Scores of ``x`` [B, 3, H, W] with task ``task``'s prompt and knowledge."""
        features = self.embed(x, self.prompts[task].to(self.device))  # [B, N, D]
        h, w = self.grid(x)
        patches = self.nearest_squared(features, "knowledge", task).reshape(-1, 1, h, w)
        maps = F.interpolate(patches, size=x.shape[-2:], mode="bilinear", align_corners=False)
        sigma = self.smoothing_sigma * x.shape[-2] / 224
        maps = gaussian_smooth_reflect(maps[:, 0].float(), sigma)
        return Scores(image=patches.flatten(1).amax(1).float().cpu(), pixel=maps.cpu())

    @torch.no_grad()
    def predict_part(self, x: Tensor, task_id: int) -> Scores:
        """Scores with task ``task_id``'s part (oracle routing)."""
        self.check_fitted()
        return self.score_part(x, task_id)

    @torch.no_grad()
    def predict_routed(self, x: Tensor) -> tuple[Scores, Tensor]:
        """Scores of ``x`` through the key-matched part of each image, and the routes [B]."""
        self.check_fitted()
        routes = self.routes(x)
        image = torch.zeros(len(x))
        pixel = torch.zeros(len(x), *x.shape[-2:])
        for task in routes.unique().tolist():
            rows = (routes == task).nonzero()[:, 0]
            scores = self.score_part(x[rows], task)
            image[rows] = scores.image
            assert scores.pixel is not None
            pixel[rows] = scores.pixel
        return Scores(image=image, pixel=pixel), routes

    def predict(self, x: Tensor) -> Scores:
        return self.predict_routed(x)[0]

    # ------------------------------------------------------------------ state and costs

    def state_dict(self) -> dict:
        """Every part (prompts, keys, knowledge), the history, and the ViT's weights when they
        are a random initialisation (named weights are reloaded from their source)."""
        state: dict[str, Any] = {
            "prompts": list(self.prompts),
            "keys": list(self.keys),
            "knowledge": list(self.knowledge),
            "history": list(self.history),
        }
        if self.weights == "none":
            state["vit"] = self.vit.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "vit" in state:
            self.vit.load_state_dict(state["vit"])
        self.prompts = list(state["prompts"])
        self.keys = list(state["keys"])
        self.knowledge = list(state["knowledge"])
        self.history = list(state["history"])
        self._indices.clear()

    def memory_bytes(self) -> int:
        """Keys and knowledge memories (float32)."""
        return tensor_bytes(self.keys) + tensor_bytes(self.knowledge)

    def cost_bytes(self) -> dict[str, int]:
        """``trainable``: the prompts; ``pretrained``: the ViT up to ``feature_layer`` (saved
        with the state when randomly initialised); ``memory``: keys and knowledge."""
        return {
            "trainable": tensor_bytes(self.prompts),
            "pretrained": tensor_bytes(self.vit.state_dict()),
            "memory": self.memory_bytes(),
        }
