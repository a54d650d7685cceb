"""A frozen timm ViT with prefix-tuning prompts, read at one block (UCAD's feature path), and the
pieces UCAD trains and scores with: the structure-based contrastive loss, per-image k-means
structure, and the Gaussian smoothing of its maps.

Prefix tuning (Li and Liang 2021; DualPrompt's ``PreT_Attention``, which UCAD's
``patchcore/attention.py`` copies): block l's attention gets ``length`` extra keys and values,
the prompt ``P[l] = (P_k [length, heads, head_dim], P_v [length, heads, head_dim])``, prepended
to the keys and values of every image; queries and outputs stay one per token, so the token
count and the grid never change.

Weights (``weights``): ``"imagenet"`` = timm's pretrained weights for the model name (its
default tag, or the tag in the name, e.g. ``vit_base_patch16_224.orig_in21k``), from timm's
cache (Hugging Face hub; fails with a message when they cannot be had, never falls back to
random weights); a path = a state dict file of the timm model (``.pth``/``.bin`` or
``.safetensors``; resized position embeddings are resampled by timm's own filter);
``"none"`` = random initialisation under the current torch seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clad.models.components.backbone import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"ViT weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def build_vit(name: str, weights: str) -> Any:
    """The timm ViT ``name`` (``dynamic_img_size=True``: the position embeddings are resampled,
    bicubic, for an input grid other than the weights'), with ``weights`` (module docstring)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if weights == "imagenet":
        try:
            model: Any = timm.create_model(
                name, pretrained=True, num_classes=0, dynamic_img_size=True
            )
        except Exception as err:  # no network, no cached file, unknown tag, ...
            raise WeightsUnavailableError(
                f"{name} pretrained weights could not be loaded from timm's cache "
                f"({type(err).__name__}: {err}). Put them in the Hugging Face cache "
                "($HF_HOME/hub) on a machine with access, or pass weights=<path to the "
                "state dict>"
            ) from err
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        if weights != "none":
            state = checkpoint_filter_fn(_read_state(Path(weights)), model)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            model.load_state_dict(state, strict=True)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{name} is not a timm VisionTransformer")
    return model


def vit_depth(name: str) -> int:
    """The number of blocks of the timm ViT ``name`` (built on the meta device: no weights)."""
    import timm

    with torch.device("meta"):
        model: Any = timm.create_model(name, pretrained=False)
    return len(model.blocks)


class PromptedViT(nn.Module):
    """A frozen ViT cut after block ``layer``, whose blocks 0..layer take prefix prompts.

    Inputs in [0, 1] are normalised with ImageNet's mean and std (UCAD's data transform,
    ``patchcore/datasets/mvtec.py``). ``forward(x [B, 3, H, W], prompt)`` returns the patch
    tokens after block ``layer``, [B, h * w, C] (class token dropped, row-major over the
    h x w = H/p x W/p grid), with ``prompt`` [layer + 1, 2, length, heads, head_dim] (keys,
    values) or None (the frozen, unprompted ViT).
    """

    mean: Tensor  # [1, 3, 1, 1] buffers
    std: Tensor

    def __init__(self, name: str, weights: str, layer: int) -> None:
        super().__init__()
        vit: Any = build_vit(name, weights)  # a timm VisionTransformer
        if layer >= len(vit.blocks):
            raise ValueError(f"feature_layer {layer}: {name} has {len(vit.blocks)} blocks")
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.no_embed_class = vit.no_embed_class
        self.prefix_tokens = vit.num_prefix_tokens
        self.vit_pos_embed = vit._pos_embed  # bound: resamples for the input's grid
        self.norm_pre = vit.norm_pre
        self.blocks = nn.ModuleList(vit.blocks[: layer + 1])
        attention = vit.blocks[0].attn
        self.heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.dim = vit.embed_dim
        self.patch = vit.patch_embed.patch_size[0]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def prompt_shape(self, length: int) -> tuple[int, ...]:
        """[blocks, 2 (key, value), length, heads, head_dim]."""
        return (len(self.blocks), 2, length, self.heads, self.head_dim)

    def forward(self, x: Tensor, prompt: Tensor | None = None) -> Tensor:
        x = self.patch_embed((x - self.mean) / self.std)  # [B, h, w, C] (dynamic_img_size)
        x = self.norm_pre(self.vit_pos_embed(x))  # [B, prefix + h*w, C]
        block: Any
        for index, block in enumerate(self.blocks):
            attended = prefix_attention(
                block.attn, block.norm1(x), None if prompt is None else prompt[index]
            )
            x = x + block.drop_path1(block.ls1(attended))
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x[:, self.prefix_tokens :]


def prefix_attention(attention: Any, x: Tensor, prompt: Tensor | None) -> Tensor:
    """timm ``Attention`` on ``x`` [B, N, C] with the prefix ``prompt`` [2, length, heads,
    head_dim] prepended to every image's keys and values (None: the plain attention).

    softmax(q [k_p; k]^T / sqrt(d)) [v_p; v], per head (DualPrompt's ``PreT_Attention``)."""
    batch, tokens, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, d]
    q, k = attention.q_norm(q), attention.k_norm(k)
    if prompt is not None:
        prefix = prompt.to(k.dtype).permute(0, 2, 1, 3)  # [2, heads, length, d]
        k = torch.cat([prefix[0].expand(batch, -1, -1, -1), k], dim=2)  # [B, heads, L + N, d]
        v = torch.cat([prefix[1].expand(batch, -1, -1, -1), v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d]
    out = out.transpose(1, 2).reshape(batch, tokens, -1)  # [B, N, heads * d]
    out = attention.norm(out)
    gate = getattr(attention, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    return attention.proj_drop(attention.proj(out))


def init_prompt(shape: tuple[int, ...]) -> Tensor:
    """A new prompt, uniform in [-1, 1] (UCAD's ``prompt_init='uniform'``), from the global RNG."""
    return torch.empty(shape).uniform_(-1, 1)


def pooled_embedding(tokens: Tensor, dim: int) -> Tensor:
    """Patch tokens [B, N, C] -> [B, N, dim] by adaptive average pooling over channels (UCAD's
    PatchCore glue: ``MeanMapper`` then ``Aggregator`` in ``patchcore/common.py``, both
    ``F.adaptive_avg_pool1d``; the second, from ``dim`` to ``dim``, is the identity)."""
    batch, count, channels = tokens.shape
    flat = tokens.reshape(batch * count, 1, channels)  # [B*N, 1, C]
    return F.adaptive_avg_pool1d(flat, dim).reshape(batch, count, dim)


def structure_contrastive_loss(tokens: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """UCAD's structure-based contrastive loss (``contrastive_loss`` in
    ``patchcore/vision_transformer.py``): with s_ij = cos(t_i, t_j) / temperature over one
    image's patch tokens and m_ij = 1 when patches i and j share a structure label,

        loss = mean_{b, i, j} [ -s_ij m_ij + (1 - m_ij) exp(s_ij) ]

    (the diagonal included). ``tokens`` [B, N, C], ``labels`` [B, N] -> scalar."""
    unit = F.normalize(tokens.float(), dim=2)
    similarity = torch.bmm(unit, unit.transpose(1, 2)) / temperature  # [B, N, N]
    same = (labels[:, None, :] == labels[:, :, None]).float()  # [B, N, N]
    return (-similarity * same + (1 - same) * similarity.exp()).mean()


def kmeans_labels(features: Tensor, clusters: int, iterations: int = 10) -> Tensor:
    """Per-image k-means labels of patch features [B, N, C] -> [B, N] long, deterministic: the
    first centre is the patch farthest from the image's mean feature, each next one the patch
    farthest from the centres so far (greedy k-center), then ``iterations`` Lloyd steps
    (an emptied cluster keeps its centre). ``clusters`` is capped at N."""
    points = features.detach().float()  # [B, N, C]
    batch, count, _ = points.shape
    k = min(clusters, count)
    rows = torch.arange(batch, device=points.device)
    distance = (points - points.mean(1, keepdim=True)).pow(2).sum(2)  # [B, N]
    centres = [points[rows, distance.argmax(1)]]  # each [B, C]
    nearest = torch.full((batch, count), math.inf, device=points.device)
    for _ in range(1, k):
        nearest = torch.minimum(nearest, (points - centres[-1][:, None]).pow(2).sum(2))
        centres.append(points[rows, nearest.argmax(1)])
    centre = torch.stack(centres, 1)  # [B, k, C]
    labels = torch.cdist(points, centre).argmin(2)  # [B, N]
    for _ in range(iterations):
        one_hot = F.one_hot(labels, k).float()  # [B, N, k]
        sizes = one_hot.sum(1)  # [B, k]
        sums = one_hot.transpose(1, 2) @ points  # [B, k, C]
        centre = torch.where(sizes[..., None] > 0, sums / sizes.clamp(min=1)[..., None], centre)
        labels = torch.cdist(points, centre).argmin(2)
    return labels


def gaussian_smooth_reflect(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy's ``ndimage.gaussian_filter(map, sigma)`` on [B, H, W] maps: a separable kernel of
    radius ``int(truncate * sigma + 0.5)``, borders extended by scipy's ``reflect`` mode (the
    edge pixel repeated: d c b a | a b c d), which torch's ``reflect`` padding is not."""
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype).to(maps.device)  # [2r + 1]
    x = maps[:, None]  # [B, 1, H, W]
    for dim in (2, 3):
        x = _symmetric_pad(x, radius, dim)
        weight = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        x = F.conv2d(x, weight)
    return x[:, 0]


def _symmetric_pad(x: Tensor, radius: int, dim: int) -> Tensor:
    """Pad ``x`` by ``radius`` on both sides of ``dim`` with scipy's ``reflect`` rule (whole
    periods of the mirrored signal when radius exceeds the side)."""
    size = x.shape[dim]
    index = torch.arange(-radius, size + radius, device=x.device)
    period = 2 * size
    index = index % period
    index = torch.where(index >= size, period - 1 - index, index)
    return x.index_select(dim, index)
