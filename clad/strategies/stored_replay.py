"""Replay of something other than raw images: compressed images, latent codes, generated images.

``downscaled_replay`` and ``latent_replay`` choose which past images to keep exactly as
``replay`` does (Avalanche's ``ExperienceBalancedBuffer``, ``mem_size // (t + 1)`` per task) and
store each chosen image in another form; ``generative_replay`` stores no image at all.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor
from torch.utils.data import Dataset

from clad.errors import ConfigError
from clad.models.base import Detector
from clad.records import Task
from clad.registry import register_strategy
from clad.strategies.base import (
    DetectorFactory,
    Strategy,
    concat,
    copy_bytes,
    copy_state,
    detector_name,
    restore_copy,
)
from clad.strategies.replay import Mixing, Replay, check_mixing


class NormalImages(Dataset):
    """Replayed images as a task dataset: ``(image [C, H, W] float in [0, 1], mask [1, H, W]
    zeros, label 0)``; stored as uint8 [N, C, H, W]."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image = self.images[index].float() / 255.0
        return image, torch.zeros((1, *image.shape[1:])), 0


def to_uint8(image: Tensor) -> Tensor:
    """[C, H, W] in [0, 1] -> uint8 (the datasets' images were uint8: exact for them)."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


class StoredReplay(Replay):
    """Replay whose memory holds a transformed copy of each chosen image (``store``), made when
    the image enters the memory and turned back into an image (``restore``) when replayed."""

    def __init__(self, make_detector: DetectorFactory, tasks: Sequence[Task], mem_size: int):
        super().__init__(make_detector, tasks, mem_size)
        self.stored: dict[tuple[int, int], Tensor] = {}  # (task id, index) -> stored form

    @abstractmethod
    def store(self, images: Tensor) -> list[Tensor]:
        """The stored forms of ``images`` [N, C, H, W] in [0, 1]."""

    @abstractmethod
    def restore(self, stored: list[Tensor], shape: tuple[int, ...]) -> Tensor:
        """uint8 images [N, *shape] from their stored forms."""

    def memory(self) -> Dataset | None:
        if not self.stored:
            return None
        shape = tuple(self.tasks[0].train[0][0].shape)
        keys = sorted(self.stored)
        return NormalImages(self.restore([self.stored[k] for k in keys], shape))

    def learn(self, task: Task) -> None:
        super().learn(task)
        held = {(t, i) for t, indices in self.memory_indices().items() for i in indices}
        self.stored = {k: v for k, v in self.stored.items() if k in held}
        new = sorted(k for k in held if k not in self.stored)
        if new:
            images = torch.stack([self.tasks[t].train[i][0] for t, i in new])  # [N, C, H, W]
            for key, value in zip(new, self.store(images), strict=True):
                self.stored[key] = value

    def memory_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.stored.values())

    def state_dict(self) -> dict:
        keys = sorted(self.stored)
        return {**super().state_dict(), "stored": [(k, self.stored[k]) for k in keys]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stored = {tuple(k): v for k, v in state["stored"]}


@register_strategy("downscaled_replay")
class CompressedReplay(StoredReplay):
    """Replay of past images stored downscaled (and optionally as JPEGs), so that more images fit
    the same bytes. This is clad's own method: CLAD's ``compressed_replay`` (a 32 x 32 memory
    restored by a pix2pix super-resolution model) is ``compressed_replay_sr``.

    Each image chosen for the memory (as ``replay`` chooses them) is stored as uint8 at
    ``scale`` times its side (bilinear with antialiasing; ``scale = 1`` keeps it), then, when
    ``jpeg_quality`` is set, as a JPEG of that quality (RGB images only). Replayed, it is
    decoded and resized back to the task's side (bilinear): the detector sees the current
    task's training images plus these reconstructions.

    Memory: the stored bytes exactly (JPEG: the files' lengths; otherwise
    ``C * round(scale * H) * round(scale * W)`` per image). ``replay`` of the same ``mem_size``
    stores ``C * H * W`` bytes per image: at ``scale = 0.5`` and no JPEG, ``downscaled_replay``
    with ``4 * mem_size`` images holds the same bytes as ``replay`` with ``mem_size``.
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        tasks: Sequence[Task],
        mem_size: PositiveInt = 100,
        scale: Annotated[float, Field(gt=0, le=1)] = 0.5,
        jpeg_quality: Annotated[int, Field(ge=1, le=100)] | None = None,
    ) -> None:
        super().__init__(make_detector, tasks, mem_size)
        channels = tasks[0].train[0][0].shape[0] if tasks else 3
        if jpeg_quality is not None and channels != 3:
            raise ConfigError(
                f"strategy.jpeg_quality: JPEG stores RGB images; these have {channels} channels "
                "(depth inputs): use scale alone"
            )
        self.scale = scale
        self.jpeg_quality = jpeg_quality

    def store(self, images: Tensor) -> list[Tensor]:
        side = images.shape[-2:]
        small = (max(1, round(self.scale * side[0])), max(1, round(self.scale * side[1])))
        if small != tuple(side):
            images = F.interpolate(images, size=small, mode="bilinear", antialias=True)
        stored = [to_uint8(image) for image in images]  # each [C, h, w]
        if self.jpeg_quality is not None:
            from torchvision.io import encode_jpeg  # torchvision loads torch._dynamo: lazily

            stored = [encode_jpeg(image, quality=self.jpeg_quality) for image in stored]
        return stored

    def restore(self, stored: list[Tensor], shape: tuple[int, ...]) -> Tensor:
        from torchvision.io import decode_jpeg  # torchvision loads torch._dynamo: lazily

        images = [decode_jpeg(s) if self.jpeg_quality is not None else s for s in stored]
        batch = torch.stack(images).float() / 255.0  # [N, C, h, w]
        if tuple(batch.shape[1:]) != shape:
            batch = F.interpolate(batch, size=shape[1:], mode="bilinear", align_corners=False)
        return to_uint8(batch)


@runtime_checkable
class LatentModel(Protocol):
    """A detector with an encoder and a decoder (``vae``): codes [N, D] <-> images in [0, 1].
    All three run in eval mode without gradients and return CPU tensors."""

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, codes: Tensor) -> Tensor: ...

    def sample_codes(self, n: int, generator: torch.Generator) -> Tensor: ...


LATENT_METHODS = ("encode", "decode", "sample_codes")


def check_latent_model(detector: type, strategy: str) -> None:
    """A ``ConfigError`` naming ``detector`` (a class) unless it encodes, decodes and samples
    codes (``LatentModel``)."""
    if not all(callable(getattr(detector, name, None)) for name in LATENT_METHODS):
        raise ConfigError(
            f"strategy.name: {strategy!r} needs a detector with an encoder and a decoder "
            f"(encode, decode, sample_codes: the vae); {detector_name(detector)!r} has none"
        )


def latent_model(detector: Detector, strategy: str) -> LatentModel:
    """``detector`` if it encodes and decodes (``check_latent_model``)."""
    check_latent_model(type(detector), strategy)
    assert isinstance(detector, LatentModel)
    return detector


@register_strategy("latent_replay")
class LatentReplay(StoredReplay):
    """Replay of past images through the detector's own encoder and decoder (CLAD's
    ``latent_replay``). The images are chosen as ``replay`` chooses them; what is kept of each
    is ``regenerate``'s choice:

    ``regenerate = False`` (default): the code. Each chosen image is encoded right after the
        detector learnt its task (``encode``: the posterior mean) and only the code is kept.
        When a later task is learnt, every code is decoded by the detector as it is then
        (``decode``: the decoder trained on all tasks so far, with this replay), so an image of
        task k replayed at task t went once through the encoder after task k and once through
        the decoder after task t - 1. Memory: ``latent_dim`` float32 values per image.
    ``regenerate = True`` (CLAD's ``MemoryLatentReplay`` as ``memory_update_main`` in
        ``src/utilities/utility_main.py`` drives it): the reconstruction. Right after task k is
        learnt, each chosen image x is replaced by its reconstruction ``decode(encode(x))``
        (uint8, as CLAD's PNG); after every later task t, every kept reconstruction is passed
        through the model again, ``x_hat <- decode(encode(x_hat))``, so an image of task k
        replayed at task t has been through the models after tasks k, k + 1, ..., t - 1 in
        turn (t - k reconstructions). CLAD also saves the code z, but replays the generated
        images only. CLAD's forward pass decodes a sampled z = mu + eps * sigma; here the
        posterior mean (the latent interface's ``encode``). Memory: C * H * W bytes per image,
        as ``replay``.

    ``mixing`` is ``replay``'s (``"batch"``: CLAD's batches, half of every step replay).
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        tasks: Sequence[Task],
        mem_size: PositiveInt = 100,
        regenerate: bool = False,
        mixing: Mixing = "dataset",
    ) -> None:
        super().__init__(make_detector, tasks, mem_size)
        self.regenerate = regenerate
        self.mixing = mixing

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_latent_model(detector, cls.name)
        check_mixing(arguments.get("mixing", "dataset"), detector)

    def learn(self, task: Task) -> None:
        latent_model(self._current(), self.name)
        earlier = set(self.stored)
        super().learn(task)
        kept = sorted(k for k in self.stored if k in earlier)
        if self.regenerate and kept:
            # the earlier tasks' reconstructions, through the model after this task
            images = torch.stack([self.stored[k] for k in kept]).float() / 255.0  # [N, C, H, W]
            for key, value in zip(kept, self.store(images), strict=True):
                self.stored[key] = value

    def store(self, images: Tensor) -> list[Tensor]:
        model = latent_model(self._current(), self.name)
        codes = model.encode(images)  # [N, D]
        if not self.regenerate:
            return list(codes.float().cpu())
        return [to_uint8(image) for image in model.decode(codes).cpu()]  # each [C, H, W]

    def restore(self, stored: list[Tensor], shape: tuple[int, ...]) -> Tensor:
        if self.regenerate:
            return torch.stack(stored)  # [N, C, H, W] uint8
        decoded = latent_model(self._current(), self.name).decode(torch.stack(stored))
        return to_uint8(decoded.cpu())


@register_strategy("generative_replay")
class GenerativeReplay(Strategy):
    """Deep generative replay (Shin et al., "Continual Learning with Deep Generative Replay",
    NeurIPS 2017) with the detector as its own generator (CLAD's ``generative_replay``).

    After each task a frozen copy of the detector is kept. When task t > 0 is learnt,
    ``mem_size`` codes are drawn from the prior (``sample_codes``, with a generator seeded from
    the run's torch RNG) and decoded by that frozen copy of the model after task t-1; the
    detector sees the current task's training images plus these ``mem_size`` generated images
    (drawn once per task, not per epoch). No image of a past task is stored.

    Memory: the frozen copy's trained weights (its ``trainable`` bytes), counted as strategy
    memory.
    """

    def __init__(self, make_detector: DetectorFactory, mem_size: PositiveInt = 100) -> None:
        super().__init__(make_detector)
        self.mem_size = mem_size
        self.generator: Detector | None = None

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_latent_model(detector, cls.name)

    def generated(self) -> Dataset | None:
        """``mem_size`` images decoded from prior samples by the frozen copy (None before)."""
        if self.generator is None:
            return None
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        model = latent_model(self.generator, self.name)
        codes = model.sample_codes(self.mem_size, torch.Generator().manual_seed(seed))
        return NormalImages(to_uint8(model.decode(codes).cpu()))

    def learn(self, task: Task) -> None:
        detector = self._current()
        latent_model(detector, self.name)  # refuses a detector that cannot encode and decode
        replayed = self.generated()
        train = task.train if replayed is None else concat([task.train, replayed])
        self._current().fit(train, task.val)
        self.generator = copy.deepcopy(detector)

    def memory_bytes(self) -> int:
        return copy_bytes(self.generator)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": copy_state(self.generator)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator = restore_copy(state["generator"], self.make_detector)
