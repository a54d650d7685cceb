"""The DCASE 2020 Task 2 baseline autoencoder (Koizumi et al., "Description and Discussion on
DCASE2020 Challenge Task2", DCASE 2020 Workshop; official code github.com/y-kawagu/
dcase2020_task2_baseline, reused unchanged by DCASE 2021 and github.com/Kota-Dohi/
dcase2022_task2_baseline_ae).

A dense autoencoder reconstructs *frame vectors*: ``frames`` consecutive log-mel columns of a
clip's spectrogram [n_mels, T] concatenated frame by frame (``common.file_to_vector_array``):

    v_t = [S[:, t], S[:, t + 1], ..., S[:, t + frames - 1]] in R^(frames n_mels),
    t = 0 .. T - frames  (hop 1: 309 vectors of 640 values for a 10-s clip, 128 mels, 5 frames)

Network (``keras_model.get_model``): Dense(D -> 128) BN ReLU x 4, Dense(128 -> 8) BN ReLU,
Dense(8 -> 128) BN ReLU x 4, Dense(128 -> D) linear, D = frames n_mels (640). Keras' defaults
are kept: Glorot-uniform kernels, zero biases, batch norm with momentum 0.99 (``momentum=0.01``
in torch's convention) and epsilon 1e-3, Adam with epsilon 1e-7.

Training (``baseline.yaml``, ``00_train.py``): mean squared error over every value of a batch of
512 frame vectors drawn, shuffled, from all frame vectors of all training clips; Adam, lr 1e-3;
100 epochs. Score of a clip (``01_test.py``): the mean over its frame vectors of the mean squared
reconstruction error, = mean over all its vectors' values of (v - AE(v))^2.

Where clad differs:

- **Features.** The baseline computes 10 log10(mel + eps) dB (DCASE 2022: log10(max(mel, eps))),
  eps = 2.2e-16, no floor. clad's audio datasets yield u = clip((d - low) / (high - low), 0, 1)
  with d = max(10 log10(max(mel, 1e-10)), max over the clip - 80) (``audio_features``: librosa's
  ``power_to_db(ref=1, amin=1e-10, top_db=80)``) and [low, high] the dB range of the stream's
  first training task. Above the floor the two dB values are equal; u is an affine image of
  them. The network sees u: see docs/machine-sounds.md for why the scale can change the trained
  network (not only multiply the scores by 1 / (high - low)^2) and what that did to AUC.
- **Model selection.** Keras keeps the last of the 100 epochs (``validation_split: 0.1`` only
  reports a loss on the last 10 % of the vectors). Here, as for every clad detector, the epoch
  with the lowest mean squared error on the validation clips (``dataset.val_fraction`` of the
  training clips, held out at random; every frame vector of them) is kept.
- **Batch norm.** torch's running variance is the unbiased batch variance, Keras' the biased
  one (a factor 512 / 511 on each update). A shuffled epoch whose last batch would hold one
  frame vector leaves that vector out (torch's batch norm needs two; Keras normalises it to 0).

DCASE 2022's baseline autoencoder is the same network, loss, optimiser (``lr: 0.001`` stated)
and training; what it adds is a gamma distribution fitted to the training clips' scores for a
decision threshold (precision, recall, F1), which changes no score and no AUC, so no option.

Inputs follow the image contract: x [B, C, n_mels, T] in [0, 1] (the channels are averaged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import PositiveInt
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from clad.models.base import TrainedDetector, Training, private_generator
from clad.records import Scores, dataset_length
from clad.registry import register_detector

VECTOR_CHUNK = 65536  # frame vectors per forward pass at scoring time
READ_CLIPS = 64  # clips per batch when reading a training set into memory


def frame_vectors(spec: Tensor, frames: int) -> Tensor:
    """[B, M, T] -> [B, T - frames + 1, frames M]: vector t concatenates columns t .. t + frames
    - 1, frame by frame (value ``k M + m`` is S[m, t + k], as ``common.file_to_vector_array``)."""
    windows = spec.unfold(2, frames, 1)  # [B, M, V, frames]
    return windows.permute(0, 2, 3, 1).reshape(spec.shape[0], -1, frames * spec.shape[1])


def vector_map(errors: Tensor, n_mels: int, frames: int) -> Tensor:
    """Squared errors of frame vectors [B, V, frames M] -> [B, M, V + frames - 1]: each
    time-frequency bin's error averaged over the vectors that hold it."""
    batch, count, _ = errors.shape
    per_frame = errors.reshape(batch, count, frames, n_mels).permute(0, 3, 2, 1)  # [B, M, k, V]
    summed = errors.new_zeros(batch, n_mels, count + frames - 1)
    cover = errors.new_zeros(count + frames - 1)
    for k in range(frames):  # offset k of vector t is column t + k
        summed[:, :, k : k + count] += per_frame[:, :, k]
        cover[k : k + count] += 1
    return summed / cover


class DenseAutoencoder(nn.Module):
    """``keras_model.get_model``: D -> hidden x ``depth`` -> bottleneck -> hidden x ``depth`` ->
    D, each hidden layer Dense-BatchNorm-ReLU (the bottleneck too), the output linear."""

    def __init__(self, input_dim: int, hidden: int, bottleneck: int, depth: int) -> None:
        super().__init__()
        sizes = [input_dim, *[hidden] * depth, bottleneck, *[hidden] * depth]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(sizes[:-1], sizes[1:]):
            layers += [
                nn.Linear(c_in, c_out),
                nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01),  # Keras' defaults
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Linear(sizes[-1], input_dim))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # Keras' Dense defaults
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, vectors: Tensor) -> Tensor:
        """[N, D] -> [N, D]."""
        return self.layers(vectors)


class FrameWindows(Dataset):
    """Every ``frames``-wide window (hop 1) of some clips, read into memory once: item ``i`` is
    window ``i % V`` of clip ``i // V`` as ``(window [1, n_mels, frames], zeros, 0)``, so a batch
    of windows is a batch of frame vectors. Lowering ``count`` leaves the last windows out."""

    def __init__(self, clips: Dataset, frames: int) -> None:
        loader = DataLoader(clips, batch_size=READ_CLIPS, generator=private_generator())
        self.spec = torch.cat([images.float().mean(dim=1) for images, _, _ in loader])  # [N,M,T]
        self.windows = self.spec.unfold(2, frames, 1)  # [N, M, V, frames], a view
        self.per_clip = self.windows.shape[2]
        self.count = len(self.spec) * self.per_clip
        self.mask = torch.zeros(1, 1, 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor, int]]:
        """A batch in one gather (the loader's fetcher calls this when it exists)."""
        index = torch.as_tensor(indices)
        windows = self.windows[index // self.per_clip, :, index % self.per_clip]  # [B, M, frames]
        return [(window[None], self.mask, 0) for window in windows.unbind(0)]


@register_detector("dcase_ae")
class DCASEAutoencoder(TrainedDetector):
    """The DCASE 2020/2022 Task 2 baseline: see the module docstring.

    Args:
        n_mels: mel bands of the input spectrograms (the baseline: 128).
        frames: consecutive frames per vector (the baseline: 5; vectors of frames x n_mels).
        hidden: width of the eight hidden layers (128).
        bottleneck: width of the middle layer (8).
        depth: hidden layers on each side of the bottleneck (4).
        training: ``Training`` (``batch_size`` counts frame vectors); by default the baseline's
            100 epochs of Adam at lr 1e-3 in batches of 512, every epoch trained (patience 0),
            float32.
    """

    network: DenseAutoencoder
    training_defaults = Training(epochs=100, batch_size=512, lr=1e-3, patience=0, precision="fp32")

    def __init__(
        self,
        n_mels: PositiveInt = 128,
        frames: PositiveInt = 5,
        hidden: PositiveInt = 128,
        bottleneck: PositiveInt = 8,
        depth: PositiveInt = 4,
        training: Training | None = None,
    ) -> None:
        super().__init__(training)
        self.n_mels, self.frames = n_mels, frames
        self.network = DenseAutoencoder(n_mels * frames, hidden, bottleneck, depth).to(self.device)

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any], input_size: tuple[int, int]) -> None:
        mels, length = input_size
        if arguments["n_mels"] != mels:
            raise ValueError(
                f"n_mels: {arguments['n_mels']} differs from the dataset's audio.n_mels {mels}"
            )
        if arguments["frames"] > length:
            raise ValueError(
                f"frames: {arguments['frames']} is longer than the clips' {length} frames "
                "(dataset.audio.frames)"
            )

    def _vectors(self, x: Tensor) -> Tensor:
        """Clips (or windows) [B, C, n_mels, T] in [0, 1] -> frame vectors [B, V, frames n_mels]
        on the device."""
        if x.ndim != 4 or x.shape[2] != self.n_mels or x.shape[3] < self.frames:
            raise ValueError(
                f"dcase_ae expects spectrograms [B, C, n_mels={self.n_mels}, frames >= "
                f"{self.frames}], got {tuple(x.shape)}; set detector.n_mels to "
                "dataset.audio.n_mels and frames to at most dataset.audio.frames"
            )
        spec = x.to(self.device, torch.float32).mean(dim=1)  # [B, n_mels, T]
        return frame_vectors(spec, self.frames)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam with Keras' epsilon (1e-7); betas (0.9, 0.999) as both."""
        return torch.optim.Adam(self.network.parameters(), lr=self.lr, eps=1e-7)

    def loss(self, images: Tensor) -> Tensor:
        """Mean squared reconstruction error over every value of every frame vector of
        ``images`` [B, C, n_mels, T] (training batches are windows of ``frames`` frames: one
        vector each)."""
        vectors = self._vectors(images).flatten(0, 1)  # [B V, D]
        return (self.network(vectors) - vectors).square().mean()

    def distillation_outputs(self, images: Tensor) -> Tensor:
        """The reconstructions of every frame vector [B, V, D]."""
        vectors = self._vectors(images)
        return self.network(vectors.flatten(0, 1)).reshape(vectors.shape)

    def fit(self, train: Dataset, val: Dataset | None = None) -> None:
        """The baseline's training on every frame vector of ``train`` (shuffled across clips, in
        batches of ``batch_size`` vectors; continuing from the current weights), the epoch with
        the lowest validation error kept (every frame vector of ``val``'s clips)."""
        if dataset_length(train) == 0:
            raise ValueError("dcase_ae.fit: the training set is empty")
        windows = FrameWindows(train, self.frames)
        if len(windows) % self.batch_size == 1 and len(windows) > 1:
            windows.count -= 1  # batch norm cannot train on a batch of one vector
        held_out = (
            None if val is None or dataset_length(val) == 0 else FrameWindows(val, self.frames)
        )
        self.train_epochs(windows, held_out, self.epochs)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Scores:
        """Clips x [B, C, n_mels, T]: image = the mean squared error of their frame vectors [B]
        (``01_test.py``); pixel = each bin's squared error averaged over the vectors that hold
        it [B, n_mels, T]."""
        vectors = self._vectors(x)  # shape errors first: they say what to set
        self.check_fitted()
        self.network.eval()
        flat = vectors.flatten(0, 1)  # [B V, D]
        recon = torch.cat([self.network(chunk) for chunk in flat.split(VECTOR_CHUNK)])
        errors = (recon - flat).square().reshape(vectors.shape)  # [B, V, D]
        return Scores(
            image=errors.mean(dim=(1, 2)).cpu(),
            pixel=vector_map(errors, self.n_mels, self.frames).cpu(),
        )
