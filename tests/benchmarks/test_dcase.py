"""DCASE readers on small generated trees, log-mel features and their cache, the audio stream."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import soundfile
import torch

from clad.benchmarks import audio_features
from clad.benchmarks.audio_features import (
    LogMelParams,
    extract_features,
    fit_frames,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    read_wav,
)
from clad.benchmarks.catalog import check_categories
from clad.benchmarks.dcase import parse_clip_name, read_machine
from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic_audio import generate_dataset
from clad.config import DatasetConfig
from clad.errors import ConfigError, DatasetError

TINY = dict(sections=2, n_train=4, n_train_target=2, n_test=2, duration_s=0.5)
PARAMS = LogMelParams(n_fft=512, hop_length=256, n_mels=32, frames=32)


@pytest.fixture(scope="module")
def tree2020(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcase2020")
    generate_dataset(root, ["fan", "pump"], "dcase2020", seed=0, **TINY)
    return root


@pytest.fixture(scope="module")
def tree2022(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcase2022")
    generate_dataset(root, ["bearing", "gearbox"], "dcase2022", seed=0, **TINY)
    return root


def test_file_names_parse():
    assert parse_clip_name("anomaly_id_04_00000123.wav", "dcase2020") == {
        "label": "anomaly",
        "section": "id_04",
        "domain": None,
        "split": None,
        "index": "00000123",
    }
    fields = parse_clip_name("section_02_target_test_normal_0042_vel_8_loc_A.wav", "dcase2022")
    assert fields == {
        "label": "normal",
        "section": "section_02",
        "domain": "target",
        "split": "test",
        "index": "0042",
    }
    assert (
        parse_clip_name("section_00_source_train_normal_0000.wav", "dcase2022")["domain"]
        == "source"
    )
    for name, layout in [
        ("id_05_00000000.wav", "dcase2020"),  # evaluation set: no label
        ("section_03_0000.wav", "dcase2022"),
        ("normal_id_00_00000000.wav", "dcase2022"),
    ]:
        with pytest.raises(DatasetError, match="naming pattern"):
            parse_clip_name(name, layout)


def test_dcase2020_reader(tree2020):
    train, test = read_machine(tree2020, "fan", "dcase2020")  # found under dev_data/
    assert len(train) == 8 and len(test) == 8
    first = test[0]
    assert first.path.name == "anomaly_id_00_00000000.wav"
    assert (first.category, first.section, first.domain, first.label, first.defect) == (
        "fan",
        "id_00",
        None,
        1,
        "anomaly",
    )
    assert not first.has_masks and first.mask_path is None
    assert [s.section for s in train] == ["id_00"] * 4 + ["id_02"] * 4
    # a root that is the dev_data folder itself works too
    again, _ = read_machine(tree2020 / "dev_data", "fan", "dcase2020")
    assert [s.path for s in again] == [s.path for s in train]


def test_dcase2022_reader(tree2022):
    train, test = read_machine(tree2022, "gearbox", "dcase2022")
    assert len(train) == 2 * (4 + 2)
    assert sum(s.domain == "target" for s in train) == 4
    clip = next(s for s in test if s.path.name.startswith("section_01_target_test_anomaly"))
    assert (clip.section, clip.domain, clip.label, clip.category) == (
        "section_01",
        "target",
        1,
        "gearbox",
    )
    assert {(s.section, s.domain, s.label) for s in test} == {
        (sec, dom, lab)
        for sec in ("section_00", "section_01")
        for dom in ("source", "target")
        for lab in (0, 1)
    }


def test_reader_errors_name_the_problem(tree2022, tmp_path):
    with pytest.raises(DatasetError, match="machine type 'valve' not found.*bearing"):
        read_machine(tree2022, "valve", "dcase2022")
    with pytest.raises(DatasetError, match="does not exist"):
        read_machine(tmp_path / "nowhere", "fan", "dcase2022")
    broken = tmp_path / "broken"
    shutil.copytree(tree2022 / "bearing", broken / "bearing")
    stray = broken / "bearing" / "train" / "section_00_source_train_anomaly_0000_x.wav"
    shutil.copy(next((broken / "bearing" / "train").glob("*.wav")), stray)
    with pytest.raises(DatasetError, match="anomalous clip in the training folder"):
        read_machine(broken, "bearing", "dcase2022")
    stray.unlink()
    moved = broken / "bearing" / "train" / "section_00_source_test_normal_0099.wav"
    shutil.copy(next((broken / "bearing" / "train").glob("*.wav")), moved)
    with pytest.raises(DatasetError, match="a test clip in the train/ folder"):
        read_machine(broken, "bearing", "dcase2022")
    moved.unlink()
    (broken / "bearing" / "test" / "id_05_00000000.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="id_05_00000000.wav.*naming pattern"):
        read_machine(broken, "bearing", "dcase2022")
    shutil.rmtree(broken / "bearing" / "test")
    with pytest.raises(DatasetError, match="missing folder .*test"):
        read_machine(broken, "bearing", "dcase2022")


def test_bad_wav_error_names_the_file(tree2020, tmp_path):
    victim = tmp_path / "normal_id_00_00000007.wav"
    victim.write_bytes(b"RIFF but not really a wave file")
    with pytest.raises(DatasetError, match="normal_id_00_00000007.wav"):
        read_wav(victim, 16000)
    good = sorted((tree2020 / "dev_data" / "fan" / "train").glob("*.wav"))[:2]
    with pytest.raises(DatasetError, match="normal_id_00_00000007.wav"):
        extract_features([*good, victim], PARAMS, tmp_path / "cache", "fan-train")
    assert not list((tmp_path / "cache").glob("*.npy")), "a failed extraction left a cache file"
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DatasetError, match="empty.wav"):
        read_wav(empty, 16000)


def test_log_mel_shapes_and_a_tone_in_the_right_band(tmp_path):
    sr, seconds = 16000, 0.5
    t = np.arange(int(sr * seconds)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    spec = log_mel(wave, PARAMS)
    assert spec.shape == (32, 32) and spec.dtype == np.float32
    # 0.5 s at hop 256 gives 1 + 8000 // 256 = 32 frames; the loudest band holds 1 kHz
    band = int(np.argmax(spec[:, 5:25].mean(axis=1)))
    points = mel_to_hz(
        np.linspace(0.0, float(np.asarray(audio_features.hz_to_mel(sr / 2))), 32 + 2)
    )
    assert points[band] < 1000.0 < points[band + 2]
    assert spec.max() - spec.min() <= 80.0 + 1e-3  # top_db floor
    longer = log_mel(wave, LogMelParams(n_fft=512, hop_length=256, n_mels=32, frames=40))
    np.testing.assert_array_equal(longer[:, 32:], longer[:, :8])  # wrapped, not invented
    np.testing.assert_array_equal(fit_frames(spec, 10), spec[:, :10])
    # resampling: the same tone written at 8 kHz is read back at 16 kHz
    path = tmp_path / "tone8k.wav"
    soundfile.write(str(path), wave[::2], 8000)
    assert read_wav(path, 16000).shape == wave.shape


def test_mel_filters_have_unit_area():
    bank = mel_filterbank(16000, 1024, 40, 0.0, None).numpy()  # [40, 513]
    hz_per_bin = 16000 / 1024
    area = bank.sum(axis=1) * hz_per_bin
    np.testing.assert_allclose(area[10:], 1.0, rtol=0.05)  # wide enough to be well sampled
    assert (bank >= 0).all()


def test_feature_cache_reused_and_keyed(tree2020, tmp_path, monkeypatch):
    paths = sorted((tree2020 / "dev_data" / "pump" / "test").glob("*.wav"))
    first = extract_features(paths, PARAMS, tmp_path, "pump-test")
    assert first.shape == (len(paths), 32, 32) and first.dtype == np.float16
    cached = list(tmp_path.glob("pump-test-*.npy"))
    assert len(cached) == 1

    def refuse(*args):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(audio_features, "log_mel", refuse)
    np.testing.assert_array_equal(extract_features(paths, PARAMS, tmp_path, "pump-test"), first)
    monkeypatch.undo()
    other = LogMelParams(n_fft=512, hop_length=256, n_mels=16, frames=32)
    assert extract_features(paths, other, tmp_path, "pump-test").shape[1] == 16
    extract_features(paths[:-1], PARAMS, tmp_path, "pump-test")  # another file list
    assert len(list(tmp_path.glob("pump-test-*.npy"))) == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_audio_stream(tree2022, tmp_path):
    config = DatasetConfig(
        name="dcase2022",
        root=str(tree2022),
        categories=["bearing", "gearbox"],
        val_fraction=0.2,
        audio={
            "n_fft": 512,
            "hop_length": 256,
            "n_mels": 32,
            "frames": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    tasks = build_tasks(config, seed=0)
    assert [t.name for t in tasks] == ["bearing", "gearbox"]
    assert all(not t.has_masks for t in tasks)
    task = tasks[1]
    assert len(task.train) + len(task.val) == 12 and len(task.val) == 2
    image, mask, label = task.test[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert torch.equal(image[0], image[2]) and float(mask.abs().sum()) == 0
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    sections, domains = task.test_sections, task.test_domains
    assert len(sections) == len(task.test) == 16
    assert set(sections) == {"section_00", "section_01"} and set(domains) == {"source", "target"}
    # the dB range comes from the first task's training clips: they span [0, 1] exactly
    first = torch.stack(
        [tasks[0].train[i][0][0] for i in range(len(tasks[0].train))]
        + [tasks[0].val[i][0][0] for i in range(len(tasks[0].val))]
    )
    assert math.isclose(float(first.min()), 0.0, abs_tol=1e-6)
    assert math.isclose(float(first.max()), 1.0, abs_tol=1e-6)


def test_dcase2020_stream_has_no_domains(tree2020, tmp_path):
    config = DatasetConfig(
        name="dcase2020",
        root=str(tree2020),
        categories=["pump"],
        audio={
            "n_fft": 512,
            "hop_length": 256,
            "n_mels": 32,
            "frames": 32,
            "db_range": [-90.0, 10.0],
            "cache_dir": str(tmp_path),
        },
    )
    (task,) = build_tasks(config, seed=0)
    sections, domains = task.test_sections, task.test_domains
    assert set(sections) == {"id_00", "id_02"} and set(domains) == {None}


def test_audio_config_checks():
    assert DatasetConfig(name="synthetic_audio").audio.n_mels == 128  # defaults filled in
    assert DatasetConfig(name="synthetic").audio is None
    assert DatasetConfig(name="dcase2020").modality == "audio"
    assert DatasetConfig().modality == "image"
    with pytest.raises(ValueError, match="audio block applies to"):
        DatasetConfig(name="mvtec", audio={})
    with pytest.raises(ValueError, match="fmax"):
        DatasetConfig(name="dcase2022", audio={"fmax": 9000.0})
    with pytest.raises(ValueError, match="db_range"):
        DatasetConfig(name="dcase2022", audio={"db_range": [0.0, -10.0]})
    with pytest.raises(ValueError, match="n_mel"):
        DatasetConfig(name="dcase2022", audio={"n_mel": 64})


def test_unknown_synthetic_machine_is_named(tmp_path):
    config = DatasetConfig(name="synthetic_audio", root=str(tmp_path), categories=["drill"])
    with pytest.raises(ConfigError, match="'drill' is not a synthetic_audio category"):
        check_categories(config.name, config.root, config.category_list)
