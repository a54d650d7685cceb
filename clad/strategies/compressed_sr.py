"""CLAD's compressed replay: past images kept at 32 x 32 and restored by a pix2pix
super-resolution model.

CLAD (projectclad769/clad), ``src/memory.py``: ``MemoryCompressedReplay`` (``sample_strategy:
"compressed_replay"``) and ``MemoryCompressedDegenerativeReplay``
(``"compressed_degenerative_replay"``); the restorer is CLAD's "pix2pix scaling model"
(``trainer: "pix2pix_scaling_model"``, ``src/trainer/trainer_pix2pix.py`` with
``produce_input_scaling_model``; ``configurations/pix2pix_scaling_model/``): a pix2pix U-Net that
maps an image downscaled to 32 x 32 and resized back (``produce_scaled_A_from_B``) to the
original, trained with the GAN + 100 x L1 loss of ``clad.models.components.pix2pix``.

What CLAD does: the restorer is not pretrained, and there is no separate one. CLAD's memory
classes restore with ``strategy.trainer.vae.decoder.pix2pix_model``, the model being trained, so
compressed replay runs only when the continual model *is* the pix2pix scaling model; that model
is trained on every task in turn (``models/pix2pix.json``: 5 epochs, batch 1, lr 2e-4) on pairs
(32 x 32 -> full size) of the current task's images and the replayed ones. (CLAD's one scaling
run file, ``test_pix2pix_scaling_model.json``, sets ``num_epochs`` 0 and ``replay``, and reads
its training images from a previous run's ``memorized/`` folder.) After each task,
``mem_size // (t + 1)`` of the task's images are stored as 32 x 32 PNGs and each is restored
once by the model as it is after that task; later tasks replay those restored images. The
degenerative variant instead, after every task, downscales each old restored image to 32 x 32
again and restores it with the newest model (and resamples the old tasks to
``mem_size // (t + 1)`` each).

Here the restorer belongs to the strategy, so any detector can be fed: at task t,

1. the stored 32 x 32 uint8 images are upscaled (bicubic) and restored by the restorer as it is
   after task t-1: ``g = R_{t-1}(up(m))``, rounded to uint8;
2. the detector learns task t's training images plus these restored images (chosen as
   ``replay`` chooses them: Avalanche's experience-balanced buffer, ``mem_size // (t + 1)`` per
   task; mixed as ``replay``'s ``mixing`` says, ``"batch"`` being CLAD's);
3. the restorer learns (``restorer_epochs`` passes, batches of ``restorer_batch_size`` mixed
   the same way, fresh Adam optimizers, betas (0.5, 0.999)) the pairs ``(up(down(y)), y)`` for
   the same images y: task t's and the restored ones, as CLAD's model does;
4. the memory keeps ``down(x)`` (bicubic with antialiasing, uint8, ``stored_side`` square) of the
   newly chosen images of task t; with ``degenerative``, each kept old image becomes
   ``down(g)``, CLAD's degenerative chain: the image replayed at task t+1 is then
   ``R_t(up(down(R_{t-1}(up(down(...))))))``, as in CLAD.

Where this differs from CLAD: without ``degenerative``, CLAD restores each image once, right
after its own task, and replays that restoration at every later task (its replay memory is then
the full-size restored images, a PNG each, besides the 32 x 32 ones); here only the 32 x 32
images are kept and each task replays them as restored by the latest restorer. CLAD's
``compressed_replay`` also keeps every old image when a task adds ``mem_size // (t + 1)`` more
(its memory grows as mem_size * (1 + 1/2 + ... + 1/T)); here the total stays ``mem_size``.
CLAD resizes with PIL's Lanczos filter both ways and rounds the upscaled input to uint8; here
bicubic (antialiased down), float up. The restorer runs in eval mode when restoring (CLAD's in
training mode: dropout on). Sides not divisible by ``2**restorer_depth`` are padded (edge pixels
repeated) to the next multiple for the restorer, whose output is cropped back.

Memory (``memory_bytes``), exactly: ``C * stored_side^2`` bytes per stored image plus the
restorer's weights (generator and critic, float32; the critic is kept to go on training the
restorer at the next task). At CLAD's settings (``stored_side`` 32, ``unet_256`` at ``ngf`` 64,
PixelGAN at ``ndf`` 64) the restorer is 217,691,916 bytes (207.6 MiB) and an image 3 KiB:
compression pays only when the memory holds more than 1,125 images at 256 px (``replay``:
192 KiB each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clad.models.base import seeded_generator, tensor_bytes
from clad.models.components.pix2pix import Pix2Pix, downscale, pix2pix_step, upscale
from clad.records import Task
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, concat
from clad.strategies.replay import Mixing, ReplayBatches, check_mixing
from clad.strategies.stored_replay import NormalImages, StoredReplay, to_uint8

RESTORE_BATCH = 16
"""Images restored per generator pass."""


def _images_only(batch: list[tuple[Tensor, Tensor, int]]) -> Tensor:
    """A loader's batch of (image, mask, label) items -> the images [B, C, H, W]."""
    return torch.stack([item[0] for item in batch])


def _loader(data: Dataset, batch_size: int) -> DataLoader:
    """One shuffled pass over ``data``'s images (seeded from the run's RNG), in ``data``'s own
    batches when it brings them (``ReplayBatches``)."""
    generator = seeded_generator()
    if isinstance(data, ReplayBatches):
        sampler = data.batch_sampler(batch_size, generator)
        return DataLoader(data, batch_sampler=sampler, collate_fn=_images_only)
    return DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=_images_only
    )


@register_strategy("compressed_replay_sr")
class CompressedReplaySR(StoredReplay):
    """Replay of past images stored at ``stored_side`` x ``stored_side`` (uint8) and restored by
    a pix2pix super-resolution model the strategy trains on every task (CLAD's
    ``compressed_replay``; ``degenerative``: ``compressed_degenerative_replay``). See the module
    docstring for the order of the steps and where this differs from CLAD.

    Args:
        mem_size: images kept over all past tasks (``replay``'s balanced buffer).
        stored_side: the side of the stored images (CLAD: 32).
        degenerative: after each task, store the downscaled restoration of every kept old image
            instead of keeping its first 32 x 32 copy (CLAD's ``compressed_degenerative_replay``).
        restorer_ngf, restorer_ndf: the restorer's generator and critic widths (CLAD: 64, 64).
        restorer_depth: U-Net levels (CLAD's ``unet_256``: 8).
        restorer_disc_layers: 0: CLAD's PixelGAN critic; n: an n-layer PatchGAN.
        restorer_epochs: passes over each task's images (CLAD's pix2pix files: 5).
        restorer_batch_size: images per restorer update (CLAD: 1).
        restorer_lr: Adam's learning rate for both networks (CLAD: 2e-4).
        l1_weight: the L1 weight of the restorer's generator loss (CLAD: 100).
        mixing: ``replay``'s, for the detector and the restorer alike (``"batch"``: CLAD's
            ``Memory.create_batch_data``, every batch of b current images with b replayed ones;
            CLAD then updates its model once per image of the 2b, here once per batch).
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        tasks: Sequence[Task],
        mem_size: PositiveInt = 100,
        stored_side: PositiveInt = 32,
        degenerative: bool = False,
        restorer_ngf: PositiveInt = 64,
        restorer_ndf: PositiveInt = 64,
        restorer_depth: Annotated[int, Field(ge=2)] = 8,
        restorer_disc_layers: NonNegativeInt = 0,
        restorer_epochs: NonNegativeInt = 5,
        restorer_batch_size: PositiveInt = 1,
        restorer_lr: NonNegativeFloat = 2e-4,
        l1_weight: NonNegativeFloat = 100.0,
        mixing: Mixing = "dataset",
    ) -> None:
        super().__init__(make_detector, tasks, mem_size)
        self.mixing = mixing
        channels = tasks[0].train[0][0].shape[0] if tasks else 3
        self.stored_side = stored_side
        self.degenerative = degenerative
        self.restorer = Pix2Pix(
            channels, restorer_ngf, restorer_ndf, restorer_depth, restorer_disc_layers, True
        )
        self.restorer_depth = restorer_depth
        self.restorer_epochs = restorer_epochs
        self.restorer_batch_size = restorer_batch_size
        self.restorer_lr = restorer_lr
        self.l1_weight = l1_weight
        self.restorer_history: list[dict[str, float]] = []
        self._replayed: dict[tuple[int, int], Tensor] = {}  # this task's restored memory

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_mixing(arguments.get("mixing", "dataset"), detector)

    # ------------------------------------------------------------------------- the restorer

    def device(self) -> torch.device:
        """The detector's device (``training.device``), the CPU for a detector without one."""
        device = getattr(self.detector, "device", "cpu")
        return device if isinstance(device, torch.device) else torch.device(device)

    def _padded(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``images`` [B, C, H, W] padded at the bottom and right (edge pixels repeated) to
        sides divisible by ``2**restorer_depth``, and the original (H, W)."""
        height, width = images.shape[-2:]
        step = 2**self.restorer_depth
        pad_h, pad_w = -height % step, -width % step
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        return images, (height, width)

    def restorer_input(self, images: Tensor) -> Tensor:
        """The restorer's input for target images [B, C, H, W] in [0, 1]: ``up(down(y))``."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return upscale(downscale(images, self.stored_side), size)

    def train_restorer(self, data: Dataset) -> None:
        """``restorer_epochs`` passes of pix2pix updates on the pairs (``up(down(y))``, y) for
        the images y of ``data`` (shuffled with the run's seeded RNG, or batched by ``data``'s
        own ``batch_sampler``: ``ReplayBatches``); one record per task in ``restorer_history``:
        the last epoch's mean terms and the number of images in it."""
        if self.restorer_epochs == 0:
            return
        device = self.device()
        self.restorer.to(device).train()
        optimizers = self.restorer.optimizers(self.restorer_lr, (0.5, 0.999))
        sums: dict[str, float] = {}
        count = 0
        for _ in range(self.restorer_epochs):
            loader = _loader(data, self.restorer_batch_size)
            sums, count = {}, 0
            for images in loader:
                targets = images.float()
                inputs, _ = self._padded(self.restorer_input(targets).to(device) * 2 - 1)
                targets, _ = self._padded(targets.to(device) * 2 - 1)
                _, terms = pix2pix_step(self.restorer, inputs, targets, optimizers, self.l1_weight)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value * len(images)
                count += len(images)
        self.restorer.eval()
        self.restorer_history.append({**{k: v / count for k, v in sums.items()}, "images": count})

    @torch.no_grad()
    def restore(self, stored: list[Tensor], shape: tuple[int, ...]) -> Tensor:
        """uint8 [N, *shape]: each stored uint8 [C, s, s] image upscaled to ``shape`` and
        restored by the restorer's generator (eval mode)."""
        device = self.device()
        self.restorer.to(device).eval()
        size = (int(shape[-2]), int(shape[-1]))
        restored = []
        for chunk in torch.stack(stored).split(RESTORE_BATCH):
            inputs, (height, width) = self._padded(upscale(chunk, size).to(device) * 2 - 1)
            outputs = self.restorer(inputs)[..., :height, :width]
            restored.append(to_uint8(((outputs.float() + 1) / 2).cpu()))
        return torch.cat(restored)

    # ------------------------------------------------------------------------- the memory

    def store(self, images: Tensor) -> list[Tensor]:
        """``down(x)``: uint8 [C, stored_side, stored_side] per image."""
        return list(downscale(images, self.stored_side))

    def memory(self) -> Dataset | None:
        """The kept images as restored now (None when nothing is kept); the restorations are
        remembered until the end of the current ``learn`` (for the restorer's training and the
        degenerative update)."""
        if not self.stored:
            self._replayed = {}
            return None
        keys = sorted(self.stored)
        shape = tuple(self.tasks[0].train[0][0].shape)
        images = self.restore([self.stored[k] for k in keys], shape)
        self._replayed = dict(zip(keys, images, strict=True))
        return NormalImages(images)

    def learn(self, task: Task) -> None:
        self._replayed = {}
        super().learn(task)  # restores the memory, fits the detector, stores task t's images
        replayed = self._replayed
        data = task.train
        if replayed:  # the same images the detector got, mixed the same way
            memory = NormalImages(torch.stack(list(replayed.values())))  # sorted by (task, index)
            if self.mixing == "batch":
                data = ReplayBatches(task.train, memory, [t for t, _ in replayed])
            else:
                data = concat([task.train, memory])
        self.train_restorer(data)
        if self.degenerative:
            for key, image in replayed.items():
                if key in self.stored:  # still held after this task's resampling
                    self.stored[key] = downscale(image[None].float() / 255, self.stored_side)[0]
        self._replayed = {}

    def memory_bytes(self) -> int:
        """The stored uint8 images plus the restorer's weights (generator and critic)."""
        return super().memory_bytes() + tensor_bytes(self.restorer.state_dict())

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "restorer": {k: v.cpu() for k, v in self.restorer.state_dict().items()},
            "restorer_history": list(self.restorer_history),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.restorer.load_state_dict(state["restorer"])
        self.restorer_history = list(state["restorer_history"])
