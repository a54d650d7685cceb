"""AEGAN-AD: every scoring variant runs and is deterministic, the maps, the embedding scores by
hand, early stopping on validation data, the state round trip, shape checks, and a quality floor
on the synthetic machine sounds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_distances
from torch.utils.data import TensorDataset

from clad.errors import ConfigError
from clad.models.aegan import AEGAN, SCORE_NAMES, patch_distance, pool, stage_count
from clad.models.base import training_for
from clad.registry import validate_params
from tests.quality import sound_quality_task, sound_scores

N_MELS, FRAMES = 16, 32
TINY = dict(
    n_mels=N_MELS,
    patch_frames=16,
    patch_hop=8,
    patches_per_clip=2,
    nz=8,
    ndf=4,
    ngf=4,
)
TINY_TRAINING = training_for(AEGAN, epochs=2, batch_size=4, lr=1e-3, patience=0, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks: one torch thread spares the threads' synchronisation, which dominates on a
    busy 2-core machine (results do not depend on the thread count here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clips(n: int, seed: int) -> TensorDataset:
    """Spectrogram-like [n, 3, 16, 32] in [0, 1]: a smooth ramp over mel bands plus noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.8, 0.2, N_MELS)[:, None].expand(N_MELS, FRAMES)
    spec = (ramp + 0.05 * torch.randn(n, N_MELS, FRAMES, generator=g)).clamp(0, 1)
    images = spec[:, None].expand(n, 3, N_MELS, FRAMES).contiguous()
    return TensorDataset(images, torch.zeros(n, 1, N_MELS, FRAMES), torch.zeros(n).long())


def trained(seed: int = 0, epochs: int = TINY_TRAINING.epochs) -> AEGAN:
    torch.manual_seed(seed)
    detector = AEGAN(**TINY, training=replace(TINY_TRAINING, epochs=epochs))
    detector.fit(clips(10, 1), clips(4, 2))
    return detector


@pytest.fixture(scope="module")
def twins() -> tuple[AEGAN, AEGAN, torch.Tensor]:
    """Two detectors trained with the same seed, and a test batch."""
    x = clips(5, 9).tensors[0]
    x[0, :, 4:8, 10:14] = 1.0  # one clip with a loud time-frequency blob
    return trained(), trained(), x


@pytest.fixture(scope="module")
def twin_scores(twins) -> tuple[dict, dict]:
    first, second, x = twins
    return first.score_variants(x), second.score_variants(x)


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_every_scoring_variant_runs_and_is_deterministic(twin_scores, name):
    a, b = twin_scores[0][name], twin_scores[1][name]
    assert a.shape == (5,) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["G-z-cos-min", "G-x-L2-mean", "D-LOF", "D-KNN"])
def test_predict_gives_the_configured_variant(twins, twin_scores, name):
    detector, _, x = twins
    detector.score = name
    torch.testing.assert_close(detector.predict(x).image, twin_scores[0][name])


def test_variants_are_what_they_say(twins, twin_scores):
    detector, _, x = twins
    values = twin_scores[0]
    # pooling over the same per-patch values: min <= mean <= max, sum = mean x patches (3 here:
    # offsets 0, 8, 16 at hop 8 for 32 frames and 16-frame patches)
    for space in ("x", "z"):
        for distance in ("L1", "L2", "cos"):
            stem = f"G-{space}-{distance}"
            assert (values[f"{stem}-min"] <= values[f"{stem}-mean"] + 1e-6).all()
            assert (values[f"{stem}-mean"] <= values[f"{stem}-max"] + 1e-6).all()
            torch.testing.assert_close(values[f"{stem}-sum"], 3 * values[f"{stem}-mean"])
    # the blob clip has the largest input-space error
    assert int(values["G-x-L2-max"].argmax()) == 0
    # D-KNN by hand: sum of the cosine distances to the 2 nearest training embeddings
    embedding = detector._analyse(x, ["D-KNN"], with_map=False)["embedding"].double().numpy()
    distances = np.sort(cosine_distances(embedding, detector.train_embeddings.double().numpy()))
    np.testing.assert_allclose(values["D-KNN"].numpy(), distances[:, :2].sum(1), rtol=1e-5)


@torch.no_grad()
def reference_scores(detector: AEGAN, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Every variant and the map as the first implementation computed them: all windows of the
    batch cut at once, every network pass on every window, E(x) by its own encoder pass."""
    detector.network.eval()
    spec = x.float().mean(dim=1) * 2 - 1  # [B, H, T]
    batch, height, frames = spec.shape
    last = frames - detector.patch_frames
    starts = list(range(0, last + 1, detector.patch_hop))
    starts += [] if starts[-1] == last else [last]
    patches = torch.stack([spec[:, :, s : s + detector.patch_frames] for s in starts], 1)
    flat = patches.reshape(-1, 1, height, detector.patch_frames)  # [B * P, 1, H, W]
    recon = detector.generator(flat)
    latent, latent_recon = detector.generator.encode(flat), detector.generator.encode(recon)
    feature = detector.discriminator(flat)[1].reshape(batch, len(starts), -1)
    scores = {}
    for name in SCORE_NAMES:
        if name.startswith("D-"):
            scores[name] = detector._embedding_score(feature.mean(1), name[2:])
            continue
        _, space, distance, pooling = name.split("-")
        a, b = (recon, flat) if space == "x" else (latent_recon, latent)
        scores[name] = pool(patch_distance(a, b, distance).reshape(batch, -1), pooling)
    error = (recon - flat).square().reshape(batch, len(starts), height, -1)
    summed, cover = torch.zeros_like(spec), torch.zeros(frames)
    for k, s in enumerate(starts):
        summed[:, :, s : s + detector.patch_frames] += error[:, k]
        cover[s : s + detector.patch_frames] += 1
    return scores, summed / cover


@pytest.mark.parametrize("hop", [8, 5])
def test_scoring_path_gives_the_reference_scores(twins, hop):
    """The scoring path (only the passes a score needs, windows gathered per chunk, E(x) taken
    from G's forward pass) gives every variant and the map as the plain implementation does,
    with a hop that leaves an extra window ending at the last frame (5) and one that does not;
    ``maps=False`` gives the same score and no map."""
    detector, _, x = twins
    detector.patch_hop = hop
    try:
        expected, expected_map = reference_scores(detector, x)
        variants = detector.score_variants(x)
        for name in SCORE_NAMES:
            torch.testing.assert_close(variants[name], expected[name], rtol=1e-5, atol=1e-6)
        detector.patch_hop = detector.patch_frames  # a D- score's map: the tiling windows
        _, tiled_map = reference_scores(detector, x)
        detector.patch_hop = hop
        for name in ("D-LOF", "G-z-L1-sum", "G-x-cos-max"):
            detector.score = name
            scores = detector.predict(x)
            torch.testing.assert_close(scores.image, expected[name], rtol=1e-5, atol=1e-6)
            wanted = tiled_map if name.startswith("D-") else expected_map
            torch.testing.assert_close(scores.pixel, wanted, rtol=1e-5, atol=1e-7)
            detector.maps = False
            lean = detector.predict(x)
            detector.maps = True
            assert lean.pixel is None
            torch.testing.assert_close(lean.image, expected[name], rtol=1e-5, atol=1e-6)
    finally:
        detector.patch_hop, detector.score, detector.maps = TINY["patch_hop"], "D-LOF", True


def test_a_discriminator_score_without_maps_runs_the_critic_only(twins):
    """D-LOF with ``maps=False`` makes one critic pass per window and no generator pass."""
    detector, _, x = twins
    calls = {"generator": 0, "discriminator": 0}
    hooks = [
        getattr(detector, name).register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in ("discriminator",)
    ] + [
        detector.generator.encoder.register_forward_hook(
            lambda *_: calls.__setitem__("generator", calls["generator"] + 1)
        )
    ]
    detector.score, detector.maps = "D-LOF", False
    try:
        detector.predict(x)
    finally:
        detector.maps = True
        for hook in hooks:
            hook.remove()
    assert calls["generator"] == 0 and calls["discriminator"] >= 1


def test_encoder_first_norm_drops_the_first_layer_norm():
    """The official DCASE 2022 generator for bearing, fan and ToyCar: no LayerNorm after the
    encoder's first convolution; the critic keeps its own."""

    def norms(module: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.LayerNorm) for m in module.modules())

    with_norm = AEGAN(**TINY, training=TINY_TRAINING)
    without = AEGAN(**TINY, encoder_first_norm=False, training=TINY_TRAINING)
    assert norms(without.generator.encoder) == norms(with_norm.generator.encoder) - 1
    assert isinstance(without.generator.encoder.trunk.blocks[0][1], torch.nn.LeakyReLU)
    assert norms(without.discriminator) == norms(with_norm.discriminator)


def test_map_is_the_mean_squared_error_per_bin(twins):
    detector, _, x = twins
    scores = detector.predict(x)
    assert scores.pixel.shape == (5, N_MELS, FRAMES) and torch.isfinite(scores.pixel).all()
    # with windows that tile the clip exactly, the map sums to the input-space L2 over patches
    detector.patch_hop = 16
    try:
        tiled = detector.predict(x).pixel
        total = detector.score_variants(x)["G-x-L2-sum"]
    finally:
        detector.patch_hop = TINY["patch_hop"]
    # the map is in the generator's [-1, 1] space, like the L2 score
    torch.testing.assert_close(tiled.sum(dim=(1, 2)), total, rtol=1e-4, atol=1e-4)


def test_early_stopping_keeps_the_best_validation_epoch():
    detector = trained(epochs=3)
    best = min(record["val_loss"] for record in detector.history)
    assert detector.mean_loss(clips(4, 2)) == pytest.approx(best, rel=1e-5)
    assert {"train_loss_d", "train_loss_g", "train_recon", "val_loss"} <= set(detector.history[-1])


def test_state_round_trip_refits_lof_and_knn(twins, tmp_path):
    detector, _, x = twins
    detector.score = "D-LOF"
    before = detector.score_variants(x)
    torch.save(detector.state_dict(), tmp_path / "aegan.pt")
    torch.manual_seed(123)
    fresh = AEGAN(**TINY, training=TINY_TRAINING)
    assert not fresh.is_fitted
    fresh.load_state_dict(torch.load(tmp_path / "aegan.pt", weights_only=False))
    after = fresh.score_variants(x)
    for name in SCORE_NAMES:
        torch.testing.assert_close(before[name], after[name])
    torch.testing.assert_close(detector.predict(x).pixel, fresh.predict(x).pixel)


def test_shapes_are_checked():
    detector = AEGAN(**TINY, training=TINY_TRAINING)
    with pytest.raises(ValueError, match="n_mels=16"):
        detector.predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="frames >= 16"):
        detector.predict(torch.rand(2, 3, 16, 8))
    with pytest.raises(RuntimeError, match="before fit"):
        detector.predict(torch.rand(2, 3, 16, 32))
    assert stage_count(128, 128) == 5 and stage_count(64, 32) == 3
    with pytest.raises(ValueError, match="power of two"):
        stage_count(12, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        stage_count(32, 36)


def test_config_rejects_unknown_scores():
    with pytest.raises(ConfigError, match="score"):
        validate_params(AEGAN, {"score": "G-q-L3-median"}, "detector")
    assert validate_params(AEGAN, {"score": "G-z-cos-min"}, "detector")["score"] == "G-z-cos-min"


def test_quality_floor_on_synthetic_machine_sounds(tmp_path):
    """AEGAN-AD's generator must learn to separate anomalous from normal synthetic sounds (one
    machine type from scratch, the official window sampling, 40 epochs), and a network that
    learnt nothing must miss the same floor.

    The generator's reconstruction score ``G-x-L2-max`` is tested, not D-LOF: on the synthetic
    set the critic's embeddings separate the sounds before any training (measured with lr 0,
    seed 0: D-LOF AUC 0.906 / pAUC 0.882 on gearbox, 0.840 / 0.836 on bearing), so a D-LOF
    floor cannot tell a trained network from an untrained one."""
    task, x, labels = sound_quality_task(tmp_path)

    def measured(lr: float, epochs: int) -> dict:
        torch.manual_seed(0)
        detector = AEGAN(
            n_mels=32,
            patch_frames=32,
            patch_hop=8,
            patches_per_clip=None,
            nz=32,
            ndf=8,
            ngf=8,
            score="G-x-L2-max",
            training=training_for(
                AEGAN, epochs=epochs, batch_size=64, lr=lr, patience=0, device="cpu"
            ),
        )
        return sound_scores(detector, task, x, labels)

    trained, untrained = measured(1e-3, 40), measured(0.0, 1)
    # measured (seed 0, CPU, about 20 s): trained AUC 1.000, pAUC 1.000; untrained (lr 0)
    # AUC 0.469, pAUC 0.579
    assert trained["auc"] >= 0.90 and trained["pauc"] >= 0.85
    assert untrained["auc"] < 0.90 and untrained["pauc"] < 0.85


def test_official_sampling_feeds_every_window_once_per_epoch():
    from clad.models.aegan import Windows

    data = clips(3, 1)  # 3 clips of 32 frames; windows of 16 every 8: starts 0, 8, 16
    windows = Windows(data, 16, 8)
    assert len(windows) == 9 and windows.starts == [0, 8, 16]
    image, mask, _ = windows[4]  # clip 1, window 1
    torch.testing.assert_close(image, data.tensors[0][1][..., 8:24])
    assert mask.shape[-1] == 16
    seen = []
    training = replace(TINY_TRAINING, epochs=1, batch_size=4)
    detector = AEGAN(**{**TINY, "patches_per_clip": None}, training=training)
    original = detector.training_step

    def record(images, optimizer):
        seen.append(images.shape)
        return original(images, optimizer)

    detector.training_step = record
    detector.fit(data)
    assert sum(shape[0] for shape in seen) == 9  # every window once, in batches of windows
    assert all(shape[-1] == 16 for shape in seen)
