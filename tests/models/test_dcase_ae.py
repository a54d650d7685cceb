"""The DCASE Task 2 baseline autoencoder: frame vectors laid out as the official code builds them,
the published network, Keras' defaults, batches of frame vectors, the clip score and map by
hand, shape checks, the shipped configurations, and a quality floor on synthetic machine sounds
that an untrained network misses."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

import clad.models  # noqa: F401  (fills the detector table)
import clad.strategies  # noqa: F401
from clad.models.base import training_for
from clad.models.dcase_ae import DCASEAutoencoder, FrameWindows, frame_vectors, vector_map
from tests.paths import REPO
from tests.quality import sound_quality_task, sound_scores

N_MELS, FRAMES = 8, 12
TINY = dict(n_mels=N_MELS, frames=5, hidden=16, bottleneck=4, depth=2)
TINY_TRAINING = training_for(DCASEAutoencoder, epochs=2, batch_size=16, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks: one torch thread spares the threads' synchronisation on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clips(n: int, seed: int, frames: int = FRAMES) -> TensorDataset:
    """Spectrogram-like [n, 3, 8, frames] in [0, 1]: a ramp over mel bands plus noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.8, 0.2, N_MELS)[:, None]
    spec = (ramp + 0.05 * torch.randn(n, N_MELS, frames, generator=g)).clamp(0, 1)
    images = spec[:, None].expand(n, 3, N_MELS, frames).contiguous()
    return TensorDataset(images, torch.zeros(n, 1, N_MELS, frames), torch.zeros(n).long())


def test_frame_vectors_are_laid_out_as_the_baseline_builds_them():
    """``common.file_to_vector_array``: vector_array[:, n_mels t : n_mels (t + 1)] =
    log_mel[:, t : t + n_vectors].T for t in range(frames)."""
    spec = torch.randn(2, N_MELS, FRAMES)
    frames = 5
    count = FRAMES - frames + 1
    expected = torch.zeros(2, count, N_MELS * frames)
    for t in range(frames):
        expected[:, :, N_MELS * t : N_MELS * (t + 1)] = spec[:, :, t : t + count].transpose(1, 2)
    torch.testing.assert_close(frame_vectors(spec, frames), expected, rtol=0, atol=0)


def test_the_published_network_and_keras_defaults():
    """640-128-128-128-128-8-128-128-128-128-640 with batch norm and ReLU after every hidden
    layer (keras_model.get_model): 267,928 trainable parameters, as Keras' summary counts them;
    Keras' batch norm (momentum 0.99, epsilon 1e-3), zero biases, Adam's epsilon 1e-7."""
    detector = DCASEAutoencoder(training=replace(TINY_TRAINING, device="cpu"))
    linear = [m for m in detector.network.modules() if isinstance(m, torch.nn.Linear)]
    sizes = [linear[0].in_features] + [m.out_features for m in linear]
    assert sizes == [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    assert sum(p.numel() for p in detector.network.parameters()) == 267_928
    norms = [m for m in detector.network.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 9 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linear)
    assert isinstance(detector.network.layers[-1], torch.nn.Linear)  # linear output
    assert detector.make_optimizer().defaults["eps"] == 1e-7
    defaults = DCASEAutoencoder.training_defaults
    assert (defaults.epochs, defaults.batch_size, defaults.lr) == (100, 512, 1e-3)


def test_training_batches_are_shuffled_frame_vectors():
    """Every frame vector of every training clip once per epoch, in batches of ``batch_size``
    vectors; a last batch of one vector is left out (batch norm needs two)."""
    data = clips(3, 1)  # 3 clips x 8 vectors = 24
    seen = []
    detector = DCASEAutoencoder(**TINY, training=replace(TINY_TRAINING, epochs=1, batch_size=23))
    original = detector.training_step

    def record(images, optimizer):
        seen.append(images.shape)
        return original(images, optimizer)

    detector.training_step = record
    detector.fit(data)
    assert [shape[0] for shape in seen] == [23]  # 24 = 23 + 1: the single vector left out
    assert all(shape[1:] == (1, N_MELS, 5) for shape in seen)
    seen.clear()
    detector.training = replace(detector.training, batch_size=10)
    detector.fit(data)
    assert [shape[0] for shape in seen] == [10, 10, 4]


def test_frame_windows_gather_the_same_windows_one_by_one_or_in_a_batch():
    data = clips(2, 3)
    windows = FrameWindows(data, 5)
    assert len(windows) == 2 * 8
    image, _, label = windows[11]  # clip 1, window 3
    torch.testing.assert_close(image[0], data.tensors[0][1].mean(0)[:, 3:8])
    batch = windows.__getitems__([11, 0])
    torch.testing.assert_close(batch[0][0], image)
    assert label == 0 and batch[1][0].shape == (1, N_MELS, 5)


@pytest.fixture(scope="module")
def fitted() -> DCASEAutoencoder:
    torch.manual_seed(0)
    detector = DCASEAutoencoder(**TINY, training=TINY_TRAINING)
    detector.fit(clips(8, 1), clips(3, 2))
    return detector


def test_clip_score_and_map_by_hand(fitted):
    """Score (01_test.py): mean over the clip's vectors of the mean squared error; the map: each
    bin's squared error averaged over the vectors holding it."""
    x = clips(3, 5).tensors[0]
    x[0, :, 2:4, 6] = 1.0  # a loud bin pair in clip 0
    scores = fitted.predict(x)
    fitted.network.eval()
    spec = x.mean(1)
    expected, expected_map = [], torch.zeros(3, N_MELS, FRAMES)
    cover = torch.zeros(FRAMES)
    with torch.no_grad():
        for t in range(FRAMES - 5 + 1):
            vector = spec[:, :, t : t + 5].transpose(1, 2).reshape(3, -1)  # [3, 5 M]
            error = (fitted.network(vector) - vector).square()
            expected.append(error.mean(1))
            expected_map[:, :, t : t + 5] += error.reshape(3, 5, N_MELS).transpose(1, 2)
            cover[t : t + 5] += 1
    torch.testing.assert_close(scores.image, torch.stack(expected, 1).mean(1))
    torch.testing.assert_close(scores.pixel, expected_map / cover)
    assert int(scores.image.argmax()) == 0


def test_vector_map_covers_each_bin_by_the_vectors_that_hold_it():
    errors = torch.ones(1, 4, 3 * 2)  # 4 vectors of 3 frames x 2 mels, error 1 everywhere
    torch.testing.assert_close(vector_map(errors, 2, 3), torch.ones(1, 2, 6))


def test_validation_keeps_the_best_epoch():
    torch.manual_seed(0)
    detector = DCASEAutoencoder(**TINY, training=replace(TINY_TRAINING, epochs=4))
    detector.fit(clips(8, 1), clips(3, 2))
    best = min(record["val_loss"] for record in detector.history)
    assert detector.mean_loss(FrameWindows(clips(3, 2), 5)) == pytest.approx(best, rel=1e-5)
    whole_clips = detector.loss(clips(3, 2).tensors[0]).item()  # every vector of the clips
    assert whole_clips == pytest.approx(best, rel=1e-5)


def test_shapes_are_checked():
    detector = DCASEAutoencoder(**TINY, training=TINY_TRAINING)
    with pytest.raises(ValueError, match="n_mels=8"):
        detector.predict(torch.rand(2, 3, 16, 12))
    with pytest.raises(ValueError, match="frames >= 5"):
        detector.predict(torch.rand(2, 3, 8, 4))
    with pytest.raises(RuntimeError, match="before fit"):
        detector.predict(torch.rand(2, 3, 8, 12))
    with pytest.raises(ValueError, match="n_mels: 8 differs"):
        DCASEAutoencoder.check_arguments({"n_mels": 8, "frames": 5}, (32, 64))
    with pytest.raises(ValueError, match="frames: 5 is longer"):
        DCASEAutoencoder.check_arguments({"n_mels": 32, "frames": 5}, (32, 4))
    DCASEAutoencoder.check_arguments({"n_mels": 32, "frames": 5}, (32, 64))


def accepted_strategies() -> list[str]:
    from clad.errors import ConfigError
    from clad.registry import detector_table, strategy_table

    names = []
    for name, strategy in strategy_table().items():
        try:
            strategy.check_arguments({}, detector_table()["dcase_ae"])
        except (ConfigError, ValueError):
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("folder", ["synthetic", "dcase2020", "dcase2022"])
def test_shipped_configs_cover_every_strategy_and_validate(folder):
    """A configuration per strategy that takes dcase_ae, each loading (the DCASE data are not
    here) with the baseline's features on the DCASE protocols: n_fft 1024, hop 512, 128 mels."""
    from clad.config import load_config

    shipped = sorted(p for p in (REPO / "configurations" / folder).glob("dcase_ae_*.json"))
    names = {p.stem.removeprefix("dcase_ae_") for p in shipped}
    assert names == set(accepted_strategies())
    for path in shipped:
        config = load_config(path, check_machine=False)
        assert config.detector["name"] == "dcase_ae"
        assert config.strategy["name"] == path.stem.removeprefix("dcase_ae_")
        assert config.detector["n_mels"] == config.dataset.audio.n_mels
        assert config.detector["frames"] == 5
        if folder != "synthetic":
            audio = config.dataset.audio
            assert (audio.n_fft, audio.hop_length, audio.n_mels) == (1024, 512, 128)
            assert (config.training.epochs, config.training.batch_size) == (100, 512)


def test_quality_floor_on_synthetic_machine_sounds(tmp_path):
    """The baseline must separate anomalous from normal synthetic sounds (one machine type from
    scratch, the baseline's network, batches and 100 epochs), and the same network untrained
    (lr 0) must miss the same floor."""
    task, x, labels = sound_quality_task(tmp_path)

    def measured(lr: float, epochs: int) -> dict:
        torch.manual_seed(0)
        detector = DCASEAutoencoder(
            n_mels=32,
            training=training_for(DCASEAutoencoder, epochs=epochs, lr=lr, device="cpu"),
        )
        return sound_scores(detector, task, x, labels)

    trained, untrained = measured(1e-3, 100), measured(0.0, 1)
    # measured (seed 0, CPU, about 20 s): trained AUC 0.965, pAUC 0.947; untrained (lr 0)
    # AUC 0.600, pAUC 0.553 (30 epochs reach only AUC 0.75)
    assert trained["auc"] >= 0.90 and trained["pauc"] >= 0.85
    assert untrained["auc"] < 0.90 and untrained["pauc"] < 0.85
