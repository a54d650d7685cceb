"""Rehearsal strategies for trained detectors that regularise with a memory of past images:
DER++ and A-GEM.

Both train one detector on the current task's training images (as ``naive``) and reach it only
through the interface of ``clad.models.base.TrainedDetector``: DER++ adds a term to the
training loss (``set_regularizer``) and reads the network's ``distillation_outputs`` in place of
a classifier's logits; A-GEM rewrites the gradients between back-propagation and the optimiser
step (``set_gradient_transform``). What they store is kept by the strategy and counted in its
``memory_bytes``: images at one byte per value (as ``replay`` counts them: the datasets' images
come from 8-bit files, kept as uint8), DER++'s stored outputs at four (float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import Field, NonNegativeFloat, PositiveInt
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from clad.errors import ConfigError
from clad.models.base import TrainedDetector, tensor_bytes
from clad.records import Task, dataset_length
from clad.registry import register_strategy
from clad.strategies.base import DetectorFactory, Strategy, detector_name
from clad.strategies.regularization import check_trained, distillation_loss, trained

if TYPE_CHECKING:
    from avalanche.training.storage_policy import ReservoirSamplingBuffer


def to_uint8(images: Tensor) -> Tensor:
    """Images [N, C, H, W] in [0, 1] as stored: uint8, ``round(255 x)``."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(images: Tensor) -> Tensor:
    """Stored uint8 images back to float32 in [0, 1]."""
    return images.float() / 255


def read_images(data: Dataset, indices: Sequence[int]) -> Tensor:
    """The images [N, C, H, W] of ``data``'s items ``indices`` (items are (image, mask, label))."""
    return torch.stack([data[int(i)][0] for i in indices])


def total_loss(terms: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The scalar of a detector's ``loss``: itself, or its ``"loss"`` term."""
    return terms["loss"] if isinstance(terms, Mapping) else terms


def outputs_tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def reservoir_buffer(mem_size: int) -> ReservoirSamplingBuffer:
    """Avalanche's reservoir-sampling buffer of ``mem_size`` records (imported when a strategy is
    built, not when configurations are checked)."""
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    return ReservoirSamplingBuffer(mem_size)


def check_der_detector(detector: type, strategy: str) -> None:
    """``check_trained``, and a ``ConfigError`` unless ``detector`` defines
    ``distillation_outputs`` (what DER++ stores and matches in place of logits)."""
    check_trained(detector, strategy)
    assert issubclass(detector, TrainedDetector)  # ``check_trained`` raised otherwise
    if detector.distillation_outputs is TrainedDetector.distillation_outputs:
        raise ConfigError(
            f"strategy.name: {strategy!r} stores the network's outputs in place of logits; "
            f"{detector_name(detector)!r} does not define distillation_outputs"
        )


@register_strategy("der")
class DER(Strategy):
    """DER++ (Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple
    Baseline", NeurIPS 2020, Sec. 3-4), for a network without class outputs.

    While learning task t the detector minimises, on batches x of task t's training images,

        L(x) + alpha * mean_o MSE(f_o(x'), z'_o) + beta * L(x'')

    where L is the detector's own training loss, (x', z') and x'' two independent batches drawn
    without replacement from the memory (images and the outputs ``f = distillation_outputs``
    stored with them: the distillation outputs stand in for the paper's logits, e.g. STFPM's
    student feature maps; MSE is averaged over each output tensor's elements, then over the
    tensors), each of ``batch_size_mem`` images (the detector's batch size by default, as the
    paper's minibatch). ``beta = 0`` is DER. The terms are added through the detector's
    ``set_regularizer`` (logged as ``train_regularizer``); model selection on task t's
    validation images uses the detector's own loss.

    Memory: ``mem_size`` images over all tasks seen, chosen by reservoir sampling (Avalanche's
    ``ReservoirSamplingBuffer``: every training image seen so far is in memory with the same
    probability, the paper's rule), each with its outputs at storage time.

    Where ours departs from the paper and Avalanche (``avalanche/training/supervised/der.py``):

    - The memory is updated after each task, with the outputs of the network trained on it (in
      eval mode), as Avalanche does; the paper inserts each training batch during training
      with the outputs of that step (train mode, augmented input).
    - Avalanche's buffer is balanced by class (``ClassBalancedBufferWithLogits``); anomaly
      detection has no classes, so ours is one reservoir over the stream, the paper's.
    - Two memory batches per step (the paper's and Mammoth's), where Avalanche draws one for both
      terms.
    - In train mode a network with batch norm gives outputs that differ from the stored
      (eval-mode) ones even at equal weights, as in Avalanche.

    Args:
        make_detector: the detector factory (the runner's).
        mem_size: images kept over all tasks seen.
        alpha: weight of the output-matching (dark knowledge) term.
        beta: weight of the detector's own loss on memory images (0: DER).
        batch_size_mem: images per memory batch; None = the detector's training batch size.
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        mem_size: PositiveInt = 200,
        alpha: NonNegativeFloat = 0.1,
        beta: NonNegativeFloat = 0.5,
        batch_size_mem: PositiveInt | None = None,
    ) -> None:
        super().__init__(make_detector)
        self.mem_size = mem_size
        self.alpha = alpha
        self.beta = beta
        self.batch_size_mem = batch_size_mem
        self.buffer = reservoir_buffer(mem_size)
        self.images = torch.zeros(0, dtype=torch.uint8)  # [M, C, H, W], the buffer's order
        self.outputs: list[Tensor] = []  # per output tensor [M, ...], float32
        self.seen = 0  # training images offered to the reservoir so far

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_der_detector(detector, cls.name)

    def records(self) -> Tensor:
        """The memory's (task id, index) records [M, 2], in the buffer's order."""
        buffer = self.buffer.buffer
        rows = [buffer[i] for i in range(len(buffer))]
        return torch.tensor([[int(t), int(i)] for t, i in rows], dtype=torch.long).reshape(-1, 2)

    def sample(self, count: int) -> Tensor:
        """Indices [min(count, M)] into the memory, drawn without replacement (global RNG)."""
        return torch.randperm(len(self.images))[:count]

    def term(self, detector: TrainedDetector, images: Tensor) -> Tensor:
        """``alpha * MSE(f(x'), z') + beta * L(x'')`` on two memory batches (``images``, the
        current batch, gives the batch size and the device)."""
        count = self.batch_size_mem or len(images)
        first = self.sample(count)
        x = from_uint8(self.images[first]).to(images.device)
        stored = tuple(o[first].to(images.device) for o in self.outputs)
        value = self.alpha * distillation_loss(
            outputs_tuple(detector.distillation_outputs(x)), stored
        )
        if self.beta > 0:
            second = self.sample(count)
            x = from_uint8(self.images[second]).to(images.device)
            value = value + self.beta * total_loss(detector.loss(x)).float()
        return value

    def learn(self, task: Task) -> None:
        detector = trained(self._current(), self.name)
        type(self).check_arguments({}, type(detector))
        if len(self.images):
            detector.set_regularizer(lambda images: self.term(detector, images))
        try:
            detector.fit(task.train, task.val)
        finally:
            detector.set_regularizer(None)
        self.update_memory(detector, task)

    @torch.no_grad()
    def update_memory(self, detector: TrainedDetector, task: Task) -> None:
        """Offer task's training images to the reservoir; store the images and outputs of the
        ones that enter (kept ones keep theirs)."""
        from avalanche.benchmarks.utils import AvalancheDataset

        count = dataset_length(task.train)
        before = {tuple(r): k for k, r in enumerate(self.records().tolist())}
        records = TensorDataset(torch.full((count,), task.task_id), torch.arange(count))
        self.buffer.post_adapt(None, SimpleNamespace(dataset=AvalancheDataset([records])))
        self.seen += count
        kept = self.records().tolist()
        new = [i for t, i in kept if (t, i) not in before]  # all of them from this task
        fresh_images = to_uint8(read_images(task.train, new)) if new else self.images[:0]
        fresh_outputs = self.compute_outputs(detector, fresh_images) if new else ()
        images, outputs, n_new = [], [], 0
        for t, i in kept:
            if (t, i) in before:
                k = before[(t, i)]
                images.append(self.images[k])
                outputs.append(tuple(o[k] for o in self.outputs))
            else:
                images.append(fresh_images[n_new])
                outputs.append(tuple(o[n_new] for o in fresh_outputs))
                n_new += 1
        self.images = torch.stack(images)
        self.outputs = [torch.stack(column) for column in zip(*outputs, strict=True)]

    @staticmethod
    def compute_outputs(detector: TrainedDetector, images: Tensor) -> tuple[Tensor, ...]:
        """The detector's outputs on stored images (eval mode, float32, CPU), in batches."""
        network: nn.Module = detector.network
        was_training = network.training
        network.eval()
        parts: list[tuple[Tensor, ...]] = []
        try:
            for start in range(0, len(images), detector.batch_size):
                x = from_uint8(images[start : start + detector.batch_size]).to(detector.device)
                out = outputs_tuple(detector.distillation_outputs(x))
                parts.append(tuple(o.detach().float().cpu() for o in out))
        finally:
            network.train(was_training)
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def memory_bytes(self) -> int:
        """Images at one byte per value, outputs at four (float32)."""
        return self.images.numel() + tensor_bytes(self.outputs)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "records": self.records(),
            "weights": self.buffer._buffer_weights.clone(),
            "images": self.images,
            "outputs": self.outputs,
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict) -> None:
        from avalanche.benchmarks.utils import AvalancheDataset

        super().load_state_dict(state)
        records = state["records"]  # [M, 2]: task id, index
        self.buffer = reservoir_buffer(self.mem_size)
        self.buffer.buffer = AvalancheDataset([TensorDataset(records[:, 0], records[:, 1])])
        self.buffer._buffer_weights = state["weights"].clone()
        self.images = state["images"]
        self.outputs = list(state["outputs"])
        self.seen = int(state["seen"])


def agem_projection(gradient: Tensor, reference: Tensor) -> Tensor:
    """A-GEM's rule (Chaudhry et al. 2019, Eq. 11) on flat gradients [P]:
    ``g - (g . g_ref / g_ref . g_ref) g_ref`` when ``g . g_ref < 0``, else ``g`` unchanged."""
    dot = torch.dot(gradient, reference)
    if dot >= 0:
        return gradient
    return gradient - (dot / torch.dot(reference, reference)) * reference


def flat_gradients(params: Mapping[str, nn.Parameter]) -> Tensor:
    """The parameters' gradients as one vector [P] (zeros where a gradient is None)."""
    return torch.cat(
        [
            (p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1))
            for p in params.values()
        ]
    )


@register_strategy("agem")
class AGEM(Strategy):
    """A-GEM (Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019, Sec. 4).

    While learning task t > 0, at every step the gradient g of the detector's loss on the
    current batch (of task t's training images only) is compared with the reference gradient
    g_ref of the same loss on a batch drawn from the episodic memory of tasks 0..t-1; when
    ``g . g_ref < 0`` the step uses

        g~ = g - (g . g_ref / g_ref . g_ref) g_ref

    (``agem_projection``), which no longer increases the memory's loss to first order; otherwise
    g itself. Applied through the detector's ``set_gradient_transform`` (after back-propagation,
    before the optimiser step), over ``trainable_parameters()``. Model selection on task t's
    validation images uses the detector's own loss.

    Memory: after each task, ``patterns_per_experience`` of its training images drawn at random
    (all of them for a smaller task), as Avalanche's ``AGEMPlugin``; the reference batch takes
    ``sample_size // T`` images (at least one) at random from each of the T stored tasks, as
    Avalanche's group-balanced loader.

    Where ours departs from the paper and Avalanche (``avalanche/training/plugins/agem.py``):

    - The reference gradient is computed after the batch's back-propagation (the current
      gradients set aside meanwhile) instead of before its forward pass: the parameters are the
      same, so is the gradient. Its extra forward pass updates batch-norm statistics, as in
      Avalanche.
    - The paper's memory batch is drawn from the whole memory; ours (as Avalanche's) balances
      it over the stored tasks.
    - Under fp16 the reference loss is back-propagated unscaled.

    Args:
        make_detector: the detector factory (the runner's).
        patterns_per_experience: images kept per task.
        sample_size: images of the reference batch, over all stored tasks.
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        patterns_per_experience: PositiveInt = 50,
        sample_size: Annotated[int, Field(ge=1)] = 16,
    ) -> None:
        super().__init__(make_detector)
        self.patterns_per_experience = patterns_per_experience
        self.sample_size = sample_size
        self.memories: list[Tensor] = []  # per task, uint8 [m_k, C, H, W]
        self.projections = 0  # steps whose gradient was projected (not saved)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_trained(detector, cls.name)

    def reference_batch(self) -> Tensor:
        """A memory batch [S, C, H, W] (float32): ``sample_size // T`` (at least 1) images drawn
        without replacement from each stored task."""
        per_task = max(1, self.sample_size // len(self.memories))
        parts = [m[torch.randperm(len(m))[:per_task]] for m in self.memories]
        return from_uint8(torch.cat(parts))

    def project(self, detector: TrainedDetector, params: Mapping[str, nn.Parameter]) -> None:
        """Replace the batch's gradients by ``agem_projection(g, g_ref)``."""
        current = flat_gradients(params)
        had_gradient = [p.grad is not None for p in params.values()]
        for p in params.values():
            p.grad = None
        reference_images = self.reference_batch().to(detector.device)
        with detector.autocast():
            reference_loss = total_loss(detector.loss(reference_images))
        reference_loss.float().backward()
        reference = flat_gradients(params)
        projected = agem_projection(current, reference)
        self.projections += int(projected is not current)
        offset = 0
        for p, had in zip(params.values(), had_gradient, strict=True):
            n = p.numel()  # a parameter the batch's loss did not reach stays without gradient
            p.grad = projected[offset : offset + n].view_as(p).clone() if had else None
            offset += n

    def learn(self, task: Task) -> None:
        detector = trained(self._current(), self.name)
        type(self).check_arguments({}, type(detector))
        if self.memories:
            detector.set_gradient_transform(lambda params: self.project(detector, params))
        try:
            detector.fit(task.train, task.val)
        finally:
            detector.set_gradient_transform(None)
        count = dataset_length(task.train)
        chosen = torch.randperm(count)[: self.patterns_per_experience].sort().values
        self.memories.append(to_uint8(read_images(task.train, chosen.tolist())))

    def memory_bytes(self) -> int:
        """Images at one byte per value."""
        return sum(m.numel() for m in self.memories)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memories": list(self.memories)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memories = list(state["memories"])
