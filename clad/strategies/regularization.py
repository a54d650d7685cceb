"""Regularisation strategies for trained detectors: EWC and LwF.

Both train one detector on the current task's images only (as ``naive``) and add a term to its
training loss through the detector's ``set_regularizer``; they reach the detector only through
the interface of ``clad.models.base.TrainedDetector`` (``trainable_parameters``,
``squared_gradients``, ``distillation_outputs``, ``set_regularizer``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, NonNegativeFloat
from torch import Tensor

from clad.errors import ConfigError
from clad.models.base import TrainedDetector, tensor_bytes
from clad.records import Task
from clad.registry import register_strategy
from clad.strategies.base import (
    DetectorFactory,
    Strategy,
    copy_bytes,
    copy_state,
    detector_name,
    restore_copy,
)


def check_trained(detector: type, strategy: str) -> None:
    """A ``ConfigError`` naming ``detector`` (a class) unless it trains one loss by gradient
    descent (``TrainedDetector`` with ``supports_regularizer``)."""
    name = detector_name(detector)
    if not issubclass(detector, TrainedDetector):
        raise ConfigError(
            f"strategy.name: {strategy!r} regularises a trained network; detector {name!r} has "
            "none (memory-bank detectors learn without gradients: use naive, replay or cl)"
        )
    if not detector.supports_regularizer:
        raise ConfigError(
            f"strategy.name: {strategy!r} cannot regularise {name!r}: its updates "
            "are adversarial pairs, not one loss"
        )


def trained(detector: object, strategy: str) -> TrainedDetector:
    """``detector`` if it trains one loss by gradient descent (``check_trained``)."""
    check_trained(type(detector), strategy)
    assert isinstance(detector, TrainedDetector)
    return detector


def ewc_penalty(
    params: Mapping[str, Tensor],
    anchors: list[dict[str, Tensor]],
    fishers: list[dict[str, Tensor]],
) -> Tensor:
    """``sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` over the stored tasks ``k`` (a scalar;
    0 with no task stored)."""
    total = torch.zeros((), device=next(iter(params.values())).device)
    for anchor, fisher in zip(anchors, fishers, strict=True):
        for name, p in params.items():
            total = (
                total + (fisher[name].to(p.device) * (p - anchor[name].to(p.device)).pow(2)).sum()
            )
    return total


@register_strategy("ewc")
class EWC(Strategy):
    """Elastic weight consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in
    neural networks", PNAS 2017).

    While learning task t the detector minimises, on task t's training images only,

        L_t(theta) + (ewc_lambda / 2) * sum_{k<t} sum_i F_k,i (theta_i - theta*_k,i)^2

    where ``theta*_k`` are the trainable parameters after task k and ``F_k`` the diagonal
    empirical Fisher information of the detector's own training loss on task k's training
    images (``squared_gradients``: squared gradients of the batch loss averaged over the
    batches, as Avalanche's ``EWCPlugin``). ``mode="separate"`` keeps one (anchor, Fisher) pair
    per past task (the paper); ``mode="online"`` keeps one pair, ``F <- decay F + F_t`` and the
    latest anchor (online EWC: Schwarz et al., "Progress & Compress", ICML 2018). Model selection
    on the current task's validation images uses the detector's own loss, without the penalty.

    Memory: the stored anchors and Fishers (2 x the trainable parameters' bytes per stored pair,
    float32), counted as strategy memory. The detector sees task t's training images only.

    The penalty's scale: the paper's (ewc_lambda / 2), not Avalanche's. Avalanche 0.6's
    ``EWCPlugin.before_backward`` (``avalanche/training/plugins/ewc.py``) adds
    ``ewc_lambda * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` to the loss, without the 1/2,
    with the same Fisher (squared batch gradients averaged over the batches,
    ``compute_importances``). A lambda taken from an Avalanche-based paper is therefore half as
    strong here: ``ewc_lambda`` here = 2 x Avalanche's ``ewc_lambda`` for the same penalty.

    Args:
        make_detector: the detector factory (the runner's).
        ewc_lambda: lambda of the paper's penalty (ewc_lambda / 2) * sum F (theta - theta*)^2;
            twice Avalanche's ``ewc_lambda`` for the same strength.
        mode: ``"separate"`` (one anchor and Fisher per past task) or ``"online"``.
        decay: the online mode's Fisher decay (``F <- decay F + F_t``).
    """

    def __init__(
        self,
        make_detector: DetectorFactory,
        ewc_lambda: Annotated[
            float,
            Field(
                ge=0,
                description="lambda of the paper's penalty (lambda / 2) * sum F (theta - "
                "theta*)^2; Avalanche's EWCPlugin adds lambda * sum F (theta - theta*)^2, so "
                "this value is twice Avalanche's for the same strength",
            ),
        ] = 10000.0,
        mode: Literal["separate", "online"] = "separate",
        decay: Annotated[float, Field(ge=0, le=1)] = 1.0,
    ) -> None:
        super().__init__(make_detector)
        self.ewc_lambda = ewc_lambda
        self.mode = mode
        self.decay = decay
        self.anchors: list[dict[str, Tensor]] = []
        self.fishers: list[dict[str, Tensor]] = []

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_trained(detector, cls.name)

    def penalty(self, detector: TrainedDetector) -> Tensor:
        """``(ewc_lambda / 2) * ewc_penalty`` at the detector's current parameters."""
        params = detector.trainable_parameters()
        return 0.5 * self.ewc_lambda * ewc_penalty(params, self.anchors, self.fishers)

    def learn(self, task: Task) -> None:
        detector = trained(self._current(), self.name)
        if self.anchors:
            detector.set_regularizer(lambda images: self.penalty(detector))
        try:
            detector.fit(task.train, task.val)
        finally:
            detector.set_regularizer(None)
        fisher = detector.squared_gradients(task.train)
        anchor = {
            n: p.detach().float().cpu().clone() for n, p in detector.trainable_parameters().items()
        }
        if self.mode == "online" and self.fishers:
            old = self.fishers[0]
            fisher = {n: self.decay * old[n] + f for n, f in fisher.items()}
            self.anchors, self.fishers = [anchor], [fisher]
        else:
            self.anchors.append(anchor)
            self.fishers.append(fisher)

    def memory_bytes(self) -> int:
        return tensor_bytes(self.anchors) + tensor_bytes(self.fishers)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "anchors": self.anchors, "fishers": self.fishers}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.anchors = list(state["anchors"])
        self.fishers = list(state["fishers"])


def distillation_loss(current: Tensor | tuple, previous: Tensor | tuple) -> Tensor:
    """Mean squared difference of two models' outputs, averaged over the output tensors."""
    current = current if isinstance(current, tuple) else (current,)
    previous = previous if isinstance(previous, tuple) else (previous,)
    terms = [(c.float() - p.float()).pow(2).mean() for c, p in zip(current, previous, strict=True)]
    return torch.stack(terms).mean()


@register_strategy("lwf")
class LwF(Strategy):
    """Learning without forgetting (Li and Hoiem, "Learning without Forgetting", TPAMI 2017),
    for a network without class outputs: distillation of the previous model's outputs.

    While learning task t > 0 the detector minimises, on task t's training images x only,

        L_t(theta) + lwf_weight * mean_o || f_o(x; theta) - f_o(x; theta_{t-1}) ||^2 / n_o

    where ``f_o`` are the detector's ``distillation_outputs`` (the reconstruction of an
    autoencoder, the student's feature maps of STFPM, the flows' outputs of FastFlow, ...),
    ``theta_{t-1}`` a frozen copy of the detector after task t-1, and each squared difference is
    averaged over its elements. The paper's knowledge-distillation loss compares softened class
    probabilities; anomaly detectors have none, so their outputs are compared by mean squared
    error (as LwF is applied to regression and dense outputs). The copy runs in the same
    train/eval mode as the network and with the same random draws (dropout), so the term is
    exactly 0 while the weights equal the copy's. Each step costs two more forward passes.
    Model selection on the current task's validation images uses the detector's own loss.

    Memory: the frozen copy's trained weights (its ``trainable`` bytes; a pretrained backbone
    is not counted again), counted as strategy memory. The detector sees task t's training
    images only.
    """

    def __init__(self, make_detector: DetectorFactory, lwf_weight: NonNegativeFloat = 1.0) -> None:
        super().__init__(make_detector)
        self.lwf_weight = lwf_weight
        self.previous: TrainedDetector | None = None

    def distillation(self, detector: TrainedDetector, images: Tensor) -> Tensor:
        """``lwf_weight`` x the mean squared difference of the detector's outputs and the
        previous copy's on ``images``."""
        if self.previous is None:
            raise RuntimeError("lwf: no previous model to distil from")
        previous = self.previous
        previous.network.train(detector.network.training)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            old = previous.distillation_outputs(images)
        new = detector.distillation_outputs(images)
        return self.lwf_weight * distillation_loss(new, old)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], detector: type) -> None:
        check_trained(detector, cls.name)
        assert issubclass(detector, TrainedDetector)  # ``check_trained`` raised otherwise
        if detector.distillation_outputs is TrainedDetector.distillation_outputs:
            raise ConfigError(
                f"strategy.name: 'lwf' needs the detector's outputs to distil; "
                f"{detector_name(detector)!r} does not define distillation_outputs"
            )

    def learn(self, task: Task) -> None:
        detector = trained(self._current(), self.name)
        type(self).check_arguments({}, type(detector))
        if self.previous is not None:
            detector.set_regularizer(lambda images: self.distillation(detector, images))
        try:
            detector.fit(task.train, task.val)
        finally:
            detector.set_regularizer(None)
        self.previous = self.frozen_copy(detector)

    @staticmethod
    def frozen_copy(detector: TrainedDetector) -> TrainedDetector:
        """A deep copy of ``detector`` whose parameters take no gradients."""
        previous = copy.deepcopy(detector)
        previous.network.requires_grad_(False)
        return previous

    def memory_bytes(self) -> int:
        return copy_bytes(self.previous)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "previous": copy_state(self.previous)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        previous = restore_copy(state["previous"], self.make_detector)
        self.previous = None if previous is None else self.frozen_copy(trained(previous, self.name))
