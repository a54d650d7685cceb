"""The Detector contract and the shared training loop of trained detectors."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from clad.errors import TrainingError
from clad.models.components.backbone import FeatureExtractor
from clad.models.components.precision import Precision, Scalers, autocast
from clad.profiling import timed
from clad.progress import progress
from clad.records import Scores, dataset_length

Regularizer = Callable[[Tensor], Tensor]
"""A term added to a trained detector's training loss: batch images [B, C, H, W] -> scalar."""
GradientTransform = Callable[[Mapping[str, nn.Parameter]], None]
"""A change of a trained detector's gradients between back-propagation and the optimiser step
(A-GEM's projection): called with ``trainable_parameters()``, whose ``.grad`` hold the batch's
gradients (unscaled), it rewrites them in place."""

COST_KINDS = ("trainable", "pretrained", "memory")
"""What a detector's bytes are: ``trainable`` (the weights and parameters it fitted or drew,
saved with its state), ``pretrained`` (frozen pretrained weights, loaded from their source and
not saved; a random-init backbone is saved, since nothing could reload it) and ``memory``
(stored data: banks, Gaussians, centroids, embeddings)."""


@dataclass(frozen=True)
class Training:
    """The training settings a detector is handed: one value, stated once per detector class
    (``Detector.training_defaults``, the paper's) and overridden by the run's ``training`` block.

    Attributes:
        epochs: passes over the training images (trained detectors).
        batch_size: images per batch, for training and for feature extraction.
        lr: the learning rate (trained detectors).
        patience: epochs without a lower validation loss before training stops; 0 trains every
            epoch (trained detectors).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        num_workers: data-loader worker processes.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast on CUDA
            (``clad.models.components.precision``; float32 on the CPU whatever the setting).
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 0
    device: str = "auto"
    num_workers: int = 0
    precision: Precision = "bf16"


def training_for(
    detector: type[Detector],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    precision: Precision | None = None,
) -> Training:
    """``detector``'s own ``training_defaults`` with the fields given here replaced: the
    ``training`` argument of a detector built in Python, e.g.
    ``STFPM(training=training_for(STFPM, epochs=5, device="cpu"))``."""
    given: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "device": device,
        "num_workers": num_workers,
        "precision": precision,
    }
    changes = {key: value for key, value in given.items() if value is not None}
    return dataclasses.replace(detector.training_defaults, **changes)


TRAINING_KEYS = tuple(field.name for field in dataclasses.fields(Training))
"""Every field of ``Training``, in order."""
LOADER_KEYS = ("batch_size", "device", "num_workers")
"""The ``Training`` fields a detector that trains nothing uses (it only reads images)."""


def tensor_bytes(state: object) -> int:
    """Bytes of all tensors in a (nested) state: dicts, lists, tuples."""
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


def frozen_backbones(network: nn.Module) -> dict[str, FeatureExtractor]:
    """The pretrained feature extractors inside ``network``, by module path."""
    return {
        name: module
        for name, module in network.named_modules()
        if isinstance(module, FeatureExtractor)
    }


def resolve_device(device: str) -> torch.device:
    """Map ``"auto"`` to CUDA when present, else CPU; pass other names through."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str) -> None:
    """Fail with a ``ValueError`` naming ``training.device`` when this machine lacks it
    (``auto`` always works: CUDA when present, else the CPU)."""
    if device in ("auto", "cpu"):
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"training.device: {device!r}, but this machine has no CUDA device (torch "
            f"{torch.__version__}); use auto or cpu"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"training.device: {device!r}, but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1})"
        )


def seeded_generator() -> torch.Generator:
    """A generator seeded from the global torch RNG, so loaders follow the run's seed."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))


@runtime_checkable
class BatchedDataset(Protocol):
    """A training set that brings its own batching (``replay`` with ``mixing: "batch"``).

    The shared loop's shuffled passes (``TrainedDetector.train_epochs``) take their batches of
    indices from ``batch_sampler`` instead of shuffling the dataset; every other pass
    (validation, feature extraction, a memory bank's one pass, the Fisher information) reads
    it as a plain dataset, each item once. A detector knows this protocol, never the strategy
    that made the dataset.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def batch_sampler(self, batch_size: int, generator: torch.Generator) -> Sampler[list[int]]:
        """Batches of indices for one pass, random draws from ``generator``."""
        ...


def private_generator() -> torch.Generator:
    """A generator of its own for loaders that do not shuffle: a ``DataLoader`` without one draws
    its workers' base seed from the global torch RNG at every pass, so scoring or validating
    would shift every later random draw of the run (how many evaluations ran would change the
    training)."""
    return torch.Generator().manual_seed(0)


class Detector(ABC):
    """An anomaly detector. It sees normal images only and never logs.

    Subclasses take explicit keyword arguments in ``__init__`` (the registry validates a config
    against that signature). Batches from datasets are ``(image, mask, label)`` with images
    ``[3, H, W]`` in [0, 1]; ``fit`` uses the images only. Detectors that also take depth
    (MVTec 3D-AD layouts) name an ``input_mode`` parameter, which the runner fills from
    ``dataset.mode``: their images are [2, H, W] (height, foreground) for ``depth`` and
    [5, H, W] (RGB, height, foreground) for ``rgb+depth``.
    """

    name: ClassVar[str]
    training_keys: ClassVar[tuple[str, ...]] = ()
    """The ``Training`` fields this detector uses; a run that sets another is refused at load."""
    training_defaults: ClassVar[Training] = Training()
    """The detector's own training settings (its paper's), for the fields a run leaves out."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A detector's ``name`` is its registered name (``register_detector``); a class defined
        outside clad (a plugin named by import path or entry point) is named after itself."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        """Checks of the constructor's arguments that their types and ranges cannot state: one
        argument against another, files that must exist, and the inputs' [H, W]
        (``input_size``: the images' side after resizing and cropping, or the log-mel
        spectrogram's mels x frames) against what the network can take. Raise ``ValueError``
        naming the argument or the dataset setting. Run once, when a configuration is loaded,
        before any data is read. By default there is nothing to check."""
        return None

    @abstractmethod
    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        """Learn from normal images; trained detectors continue from their current state."""

    @abstractmethod
    def predict(self, x: Tensor) -> Scores:
        """Score a batch ``x`` [B, C, H, W] in eval mode, without side effects."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to restore the detector exactly."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load_state_dict`` of a fitted state) has run."""

    @abstractmethod
    def cost_bytes(self) -> dict[str, int]:
        """Bytes by ``COST_KINDS``: each byte of the detector counted once."""

    def export_module(self) -> nn.Module | None:
        """A self-contained ``nn.Module`` mapping images [B, C, H, W] in [0, 1] to
        ``(image scores [B], maps [B, H, W])`` as ``predict`` computes them (float32), for
        TorchScript or ONNX export (``python main.py export``); None, the default, where the
        scoring is not one network's forward pass (a memory-bank search, routing over
        per-task parts, several models)."""
        return None

    def check_fitted(self) -> None:
        """Fail, naming the detector, when ``predict`` is called before anything was learnt."""
        if not self.is_fitted:
            raise RuntimeError(
                f"{self.name}: predict called before fit (the detector has learnt nothing yet)"
            )


class TrainedDetector(Detector):
    """A detector whose network is trained by gradient descent on normal images.

    The loop: ``epochs`` passes over ``train`` in seeded shuffled batches (so replay samples mix
    with the current task's; a ``BatchedDataset`` gives its own batches), the validation loss
    on ``val`` (normal images held out from training) after every epoch; the weights with the
    lowest validation loss are kept, and training stops after ``patience`` epochs without
    improvement (``patience = 0`` disables early stopping). Without ``val`` the last epoch's
    weights are kept.

    Settings: one ``Training`` value (``training``; the class's ``training_defaults`` when
    None), read through ``epochs``, ``batch_size``, ``lr``, ``patience``, ``num_workers`` and
    ``precision``: fp32, bf16 or fp16 autocast on CUDA (fp16 with one gradient scaler per
    optimiser); on CPU everything is float32. Batches come from pinned memory on CUDA.

    One hook is required:
        ``loss(images)``: the objective on a batch of normal images, a scalar tensor or a dict of
            named terms with ``"loss"`` among them (every term is logged, averaged per epoch into
            ``history`` as ``train_<key>``). Training minimises it and model selection watches
            it on the validation images, in eval mode and without gradients; random draws in it
            come from ``noise()``, fixed for validation passes so their losses compare.
    Optional hooks:
        ``make_optimizer()``: Adam over ``network`` by default; it may return anything
            ``training_step`` understands, e.g. a tuple of optimizers.
        ``make_scheduler(optimizer)``: an LR scheduler stepped once per epoch, or None.
        ``training_step(images, optimizer)``: one update; by default one step on ``loss``.
            Override it for updates one loss cannot express (adversarial pairs: RDNA, AEGAN-AD);
            use ``backward_step``.
        ``validation_loss(images)``: the model-selection loss when it is not ``loss`` (EfficientAD
            validates without its augmentation and penalty).
        ``distillation_outputs(images)``: the network's outputs on a batch, with gradients (what
            a distillation term compares with a previous copy's); not defined by default.

    The interface continual strategies for trained networks use (EWC, LwF), which says nothing
    about them: ``trainable_parameters()`` (what gradient descent changes),
    ``squared_gradients(data)`` (the diagonal empirical Fisher information of ``loss``),
    ``distillation_outputs(images)`` and ``set_regularizer(term)``: a function of the batch
    images added to the training loss of every default ``training_step`` (logged as
    ``train_regularizer``; model selection on ``val`` keeps the detector's own loss), and
    ``set_gradient_transform(fn)``: a change of the gradients between back-propagation and the
    optimiser step of every ``backward_step`` (A-GEM's projection). Detectors whose updates are
    not one loss (``supports_regularizer = False``: RDNA's and AEGAN-AD's adversarial steps)
    refuse both.
    """

    network: nn.Module
    val_seed: int = 0  # seed of ``noise()`` during validation passes
    supports_regularizer: ClassVar[bool] = True
    training_keys = TRAINING_KEYS

    def __init__(self, training: Training | None = None) -> None:
        self.training = training or type(self).training_defaults
        self.device = resolve_device(self.training.device)
        self.scalers = Scalers(self.device, self.precision)
        self.history: list[dict[str, float]] = []
        self._validation_noise: torch.Generator | None = None
        self.regularizer: Regularizer | None = None
        self.gradient_transform: GradientTransform | None = None

    @property
    def epochs(self) -> int:
        return self.training.epochs

    @property
    def batch_size(self) -> int:
        return self.training.batch_size

    @property
    def lr(self) -> float:
        return self.training.lr

    @property
    def patience(self) -> int:
        return self.training.patience

    @property
    def num_workers(self) -> int:
        return self.training.num_workers

    @property
    def precision(self) -> Precision:
        return self.training.precision

    @abstractmethod
    def loss(self, images: Tensor) -> Tensor | Mapping[str, Tensor]:
        """The objective on a batch of normal images [B, C, H, W]: a scalar, or named terms
        with ``"loss"`` among them."""

    @property
    def is_fitted(self) -> bool:
        """A trained detector is fitted once it has trained an epoch (its history is saved with
        its state, so a loaded one is too)."""
        return bool(self.history)

    def memory_bytes(self) -> int:
        """Bytes of stored data besides the network (CFA's centroids, AEGAN-AD's embeddings)."""
        return 0

    def cost_bytes(self) -> dict[str, int]:
        """``trainable``: the network's tensors outside its pretrained backbones (the
        student, flows, adaptor, ...; EfficientAD's distilled teacher too); ``pretrained``: the
        frozen backbones; ``memory``: ``memory_bytes()``."""
        pretrained = sum(
            tensor_bytes(m.state_dict()) for m in frozen_backbones(self.network).values()
        )
        total = tensor_bytes(self.network.state_dict())
        return {
            "trainable": total - pretrained,
            "pretrained": pretrained,
            "memory": self.memory_bytes(),
        }

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The network's parameters that gradient descent changes (``requires_grad``), by name;
        frozen backbones and teachers are left out."""
        return {n: p for n, p in self.network.named_parameters() if p.requires_grad}

    def squared_gradients(self, data: Dataset) -> dict[str, Tensor]:
        """The diagonal empirical Fisher information of ``loss`` on ``data``: for each trainable
        parameter, the squared gradient of the batch loss, averaged over the batches of
        ``batch_size`` (the network in eval mode, so batch norm statistics stay; float32).

        Returns:
            name -> tensor of the parameter's shape, on the CPU.
        """
        params = self.trainable_parameters()
        sums = {name: torch.zeros_like(p, device="cpu") for name, p in params.items()}
        self.network.to(self.device).eval()
        batches = 0
        for images, _, _ in self._loader(data, shuffle=False):
            self.network.zero_grad(set_to_none=True)
            _total(self.loss(images.to(self.device))).float().backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad.detach().float().pow(2).cpu()
            batches += 1
        self.network.zero_grad(set_to_none=True)
        return {name: total / max(batches, 1) for name, total in sums.items()}

    def distillation_outputs(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The network's outputs on ``images`` [B, C, H, W] as trained (gradients on, the
        current train/eval mode): what a distillation term keeps close to a previous copy's."""
        raise NotImplementedError(f"{self.name} does not define distillation_outputs")

    def set_regularizer(self, regularizer: Regularizer | None) -> None:
        """Add ``regularizer(images)`` to the training loss of every later ``training_step``
        (None removes it). Not saved with the state."""
        if regularizer is not None and not self.supports_regularizer:
            raise TypeError(
                f"{self.name} trains with its own adversarial updates; a regularizer (EWC, "
                "LwF) cannot be added to them"
            )
        self.regularizer = regularizer

    def set_gradient_transform(self, transform: GradientTransform | None) -> None:
        """Apply ``transform(trainable_parameters())`` to the gradients of every later
        ``backward_step``, after back-propagation (and fp16 unscaling) and before the optimiser
        step (A-GEM's projection); None removes it. Not saved with the state. Detectors whose
        updates are adversarial pairs (``supports_regularizer = False``) refuse it."""
        if transform is not None and not self.supports_regularizer:
            raise TypeError(
                f"{self.name} trains with its own adversarial updates; a gradient transform "
                "(A-GEM) cannot be applied to them"
            )
        self.gradient_transform = transform

    def validation_loss(self, images: Tensor) -> Tensor:
        """Loss used for model selection; by default ``loss`` (its ``"loss"`` term)."""
        return _total(self.loss(images))

    def make_optimizer(self) -> Any:
        return torch.optim.Adam(self.network.parameters(), lr=self.lr)

    def make_scheduler(self, optimizer: Any) -> torch.optim.lr_scheduler.LRScheduler | None:
        """An LR scheduler stepped after every epoch; None (constant LR) by default."""
        return None

    def noise(self) -> torch.Generator:
        """The generator for random draws inside ``loss``: during a validation pass one
        generator seeded with ``val_seed`` at the pass's start (the same draws every epoch);
        otherwise a fresh one seeded from the run's global torch RNG."""
        return self._validation_noise or seeded_generator()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of forward passes (``precision`` on CUDA, no-op on CPU)."""
        return autocast(self.device, self.precision)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero the gradients, back-propagate ``loss`` (scaled for fp16, by the optimiser's own
        scaler) and step ``optimizer``; with a ``gradient_transform`` set, the gradients are
        unscaled and transformed between the two."""
        optimizer.zero_grad(set_to_none=True)
        if self.gradient_transform is None:
            self.scalers.step(loss, optimizer)
            return
        scaler = self.scalers.scalers.setdefault(
            id(optimizer), torch.amp.GradScaler("cuda", enabled=self.scalers.enabled)
        )
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the transform sees the gradients in their own units
        self.gradient_transform(self.trainable_parameters())
        scaler.step(optimizer)
        scaler.update()

    def training_step(self, images: Tensor, optimizer: Any) -> dict[str, float]:
        """One update on a batch; returns the batch's terms as floats (``"loss"`` among them)."""
        with self.autocast():
            terms = self.loss(images)
            terms = dict(terms) if isinstance(terms, Mapping) else {"loss": terms}
            if self.regularizer is not None:
                terms["regularizer"] = self.regularizer(images).float()
                terms["loss"] = terms["loss"] + terms["regularizer"]
        self.backward_step(terms["loss"], optimizer)
        return {key: value.item() for key, value in terms.items()}

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        """Batches of ``batch_size`` of ``data``, shuffled from the run's seed when ``shuffle``;
        a shuffled pass over a ``BatchedDataset`` takes the dataset's own batches."""
        pin = self.device.type == "cuda"
        if shuffle and isinstance(data, BatchedDataset):
            generator = seeded_generator()
            return DataLoader(
                data,
                batch_sampler=data.batch_sampler(self.batch_size, generator),
                generator=generator,
                num_workers=self.num_workers,
                pin_memory=pin,
            )
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=seeded_generator() if shuffle else private_generator(),
            num_workers=self.num_workers,
            pin_memory=pin,
        )

    def _check_finite(self, logs: dict[str, float], epoch: int, epochs: int) -> None:
        """Stop at the first non-finite training term, before the weights it ruined are used."""
        bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
        if bad:
            terms = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise TrainingError(
                f"{self.name}: the training loss became non-finite ({terms}) in epoch "
                f"{epoch + 1} of {epochs} (lr {self.lr}, batch size {self.batch_size}); lower "
                "training.lr, or check the data and the detector's settings"
            )

    @torch.no_grad()
    def mean_loss(self, data: Dataset) -> float:
        """``validation_loss`` averaged over ``data``'s images (eval mode, ``noise()`` fixed)."""
        self.network.eval()
        self._validation_noise = torch.Generator().manual_seed(self.val_seed)
        total, count = 0.0, 0
        try:
            for images, _, _ in self._loader(data, shuffle=False):
                images = images.to(self.device)
                with self.autocast():
                    loss = self.validation_loss(images)
                total += float(loss) * len(images)
                count += len(images)
        finally:
            self._validation_noise = None
        return total / max(count, 1)

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        if dataset_length(train) == 0:
            raise ValueError(f"{type(self).__name__}.fit: the training set is empty")
        self.train_epochs(train, val, self.epochs)

    @timed("epochs")
    def train_epochs(self, train: Dataset, val: Dataset | None, epochs: int) -> None:
        """The shared loop for ``epochs`` epochs: a fresh optimizer and scheduler, early
        stopping on ``val``, the best validation state restored. Detectors that train in
        phases (AST: teacher, then student) call it once per phase.

        Each epoch appends one record to ``history``: ``epoch`` (from 0 in each call),
        ``train_<term>`` (each term's mean over the epoch's images), ``lr`` (the first
        parameter group's, during the epoch) and ``val_loss`` (with ``val``); a call's last
        record also holds ``stopped_early`` (patience ended it before ``epochs``) and, with
        ``val``, ``best_epoch`` (the epoch whose weights are kept)."""
        self.network.to(self.device)
        optimizer = self.make_optimizer()
        scheduler = self.make_scheduler(optimizer)
        best_loss, best_state, stale = math.inf, None, 0
        best_epoch: int | None = None
        first = len(self.history)
        bar = progress(range(epochs), desc=f"fit {self.name}")
        for epoch in bar:
            lr = learning_rate(optimizer)
            self.network.train()
            sums: dict[str, float] = {}
            seen: dict[str, int] = {}  # images behind each logged term
            for images, _, _ in self._loader(train, shuffle=True):
                images = images.to(self.device, non_blocking=True)
                logs = self.training_step(images, optimizer)
                self._check_finite(logs, epoch, epochs)
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + value * len(images)
                    seen[key] = seen.get(key, 0) + len(images)
            if scheduler is not None:
                scheduler.step()
            record = {"epoch": epoch, **{f"train_{k}": v / seen[k] for k, v in sums.items()}}
            if lr is not None:
                record["lr"] = lr
            if val is not None and dataset_length(val) > 0:
                val_loss = self.mean_loss(val)
                record["val_loss"] = val_loss
                if val_loss < best_loss:
                    best_loss, stale, best_epoch = val_loss, 0, epoch
                    best_state = copy.deepcopy(self.network.state_dict())
                else:
                    stale += 1
            self.history.append(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
            if self.patience > 0 and stale >= self.patience:
                break
        if len(self.history) > first:  # how this call ended, on its last epoch's record
            self.history[-1]["stopped_early"] = len(self.history) - first < epochs
            if best_epoch is not None:
                self.history[-1]["best_epoch"] = best_epoch
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self.network.eval()

    def _reloadable(self) -> list[str]:
        """Module paths of the frozen backbones with named weights: reloaded from their source,
        so left out of the state."""
        return [name for name, m in frozen_backbones(self.network).items() if m.weights != "none"]

    def state_dict(self) -> dict:
        """The network's tensors (pretrained backbones left out: see ``COST_KINDS``) and the
        training history."""
        skip = tuple(f"{name}." for name in self._reloadable())
        network = {k: v for k, v in self.network.state_dict().items() if not k.startswith(skip)}
        return {"network": network, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        result = self.network.load_state_dict(state["network"], strict=False)
        skip = tuple(f"{name}." for name in self._reloadable())
        missing = [k for k in result.missing_keys if not k.startswith(skip)]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"{self.name}: the saved state does not fit this network (missing "
                f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}); was it saved with "
                "other settings?"
            )
        self.history = list(state["history"])
        self.network.to(self.device)


def learning_rate(optimizer: Any) -> float | None:
    """The learning rate of ``optimizer``'s first parameter group (of the first optimizer when
    ``make_optimizer`` returned several), None when it has none."""
    first = optimizer[0] if isinstance(optimizer, (tuple, list)) and optimizer else optimizer
    groups = getattr(first, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


def _total(terms: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The scalar of ``loss``'s result: itself, or its ``"loss"`` term."""
    return terms["loss"] if isinstance(terms, Mapping) else terms
