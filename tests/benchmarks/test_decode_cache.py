"""The decode cache: a second dataset over the same files reads what the first decoded, and
nothing stale, damaged or half-written is ever read."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import clad.benchmarks.mvtec as mvtec
import clad.benchmarks.mvtec3d as mvtec3d
from clad.benchmarks import decode_cache, user_cache
from clad.benchmarks.decode_cache import DecodeCache, decode_cache_folder
from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.spec import DatasetConfig
from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic import generate_dataset
from clad.benchmarks.synthetic3d import generate_dataset_3d


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("decode"),
        seed=0,
        categories=["capsule"],
        image_size=48,
        n_train=3,
        n_test_good=2,
        n_test_per_defect=1,
    )


@pytest.fixture()
def copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root / "capsule", tmp_path / "data" / "capsule")
    return tmp_path / "data"


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although every entry is cached")


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.bin"))


def test_a_second_dataset_reads_the_cache_and_equals_a_decoded_one(copy, tmp_path, monkeypatch):
    _, test = read_category(copy, "capsule")
    cache = tmp_path / "cache"
    first = ImageDataset(test, 40, 32, decode_cache=cache)
    plain = ImageDataset(test, 40, 32, decode_cache=False)
    assert first.cache is not None and first.cache.misses == len(test) + sum(
        s.mask_path is not None for s in test
    )
    monkeypatch.setattr(mvtec, "decode", no_decoding)
    second = ImageDataset(test, 40, 32, decode_cache=cache)
    assert second.cache is not None and second.cache.misses == 0
    for data in (first, second):
        assert torch.equal(data.images, plain.images) and torch.equal(data.masks, plain.masks)
        assert data.masks.any()


def test_a_dataset_with_its_cache_pickles_for_spawned_loader_workers(copy, tmp_path):
    """DataLoader workers started by ``spawn`` (as in sweep workers) pickle the dataset."""
    _, test = read_category(copy, "capsule")
    data = ImageDataset(test, 40, 32, decode_cache=tmp_path / "cache")
    again = pickle.loads(pickle.dumps(data))
    assert again.cache is not None and again.cache.folder == data.cache.folder
    assert torch.equal(again.images, data.images)
    with again.cache.lock:  # a lock of its own
        assert not data.cache.lock.locked()


def test_another_size_or_crop_or_a_changed_file_is_another_entry(copy, tmp_path):
    train, _ = read_category(copy, "capsule")
    cache = tmp_path / "cache"
    ImageDataset(train, 40, 32, decode_cache=cache)
    assert len(entries(cache)) == len(train)
    for size, crop in ((40, None), (36, 32)):
        data = ImageDataset(train, size, crop, decode_cache=cache)
        assert data.cache is not None and data.cache.misses == len(train)
    assert len(entries(cache)) == 3 * len(train)
    image = np.zeros((48, 48, 3), np.uint8)
    mvtec.Image.fromarray(image).save(train[0].path)  # same name, new content
    data = ImageDataset(train, 40, 32, decode_cache=cache)
    assert data.cache is not None and (data.cache.hits, data.cache.misses) == (len(train) - 1, 1)
    assert int(data.images[0].max()) == 0


def test_a_damaged_entry_is_decoded_again_and_rewritten(copy, tmp_path):
    train, _ = read_category(copy, "capsule")
    cache = tmp_path / "cache"
    clean = ImageDataset(train, 32, decode_cache=cache).images
    files = entries(cache)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    data = bytearray(files[1].read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the CRC no longer matches
    files[1].write_bytes(bytes(data))
    files[2].write_bytes(b"not an entry")
    again = ImageDataset(train, 32, decode_cache=cache)
    assert again.cache is not None and again.cache.misses == 3
    assert torch.equal(again.images, clean)
    third = ImageDataset(train, 32, decode_cache=cache)  # rewritten whole
    assert third.cache is not None and third.cache.misses == 0


def test_an_interrupted_write_leaves_no_entry_and_no_temporary_file(copy, tmp_path, monkeypatch):
    train, _ = read_category(copy, "capsule")
    cache = tmp_path / "cache"

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(user_cache.os, "replace", fail)
    data = ImageDataset(train, 32, decode_cache=cache)  # decoded all the same
    assert len(data) == len(train)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_an_unwritable_folder_is_reported_once_and_the_run_goes_on(copy, tmp_path, capsys):
    train, _ = read_category(copy, "capsule")
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    data = ImageDataset(train, 32, decode_cache=blocked / "cache")
    assert len(data) == len(train)
    assert capsys.readouterr().err.count("cannot write there") == 1


def test_the_setting_picks_the_folder_or_turns_the_cache_off(copy, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAD_CACHE_DIR", str(tmp_path / "user"))
    assert decode_cache_folder(True) == tmp_path / "user" / "decoded"
    assert decode_cache_folder(str(tmp_path / "mine")) == tmp_path / "mine"
    assert decode_cache_folder(False) is None and DecodeCache.from_setting(False) is None
    train, _ = read_category(copy, "capsule")
    ImageDataset(train, 32)  # the default: the user's cache
    assert len(entries(tmp_path / "user" / "decoded")) == len(train)
    ImageDataset(train, 24, decode_cache=False)
    assert len(entries(tmp_path / "user" / "decoded")) == len(train)


def test_runs_use_the_configured_cache(copy, tmp_path, monkeypatch):
    def config(setting) -> DatasetConfig:
        return DatasetConfig(
            name="mvtec",
            root=str(copy),
            categories=["capsule"],
            image_size=32,
            decode_cache=setting,
        )

    off = build_tasks(config(False), seed=0)
    assert not (tmp_path / "runs").exists()
    build_tasks(config(str(tmp_path / "runs")), seed=0)
    assert entries(tmp_path / "runs")
    monkeypatch.setattr(mvtec, "decode", no_decoding)
    cached = build_tasks(config(str(tmp_path / "runs")), seed=0)
    for a, b in zip(off, cached):
        for split in ("train", "val", "test"):
            x, y = getattr(a, split), getattr(b, split)
            assert all(torch.equal(x[i][0], y[i][0]) for i in range(len(x)))


def test_rgbd_inputs_are_cached_exactly(tmp_path, monkeypatch):
    root3d = generate_dataset_3d(
        tmp_path / "3d",
        seed=0,
        categories=["puck"],
        image_size=32,
        n_train=2,
        n_test_good=1,
        n_test_per_defect=1,
    )
    train, _, test = mvtec3d.read_category_3d(root3d, "puck")
    samples = train + test
    plain = mvtec3d.RGBDDataset(samples, 32, "rgb+depth", decode_cache=False)
    mvtec3d.RGBDDataset(samples, 32, "rgb+depth", decode_cache=tmp_path / "cache")
    monkeypatch.setattr(mvtec3d, "read_xyz", no_decoding)
    monkeypatch.setattr(mvtec3d, "decode", no_decoding)
    cached = mvtec3d.RGBDDataset(samples, 32, "rgb+depth", decode_cache=tmp_path / "cache")
    assert torch.equal(cached.inputs, plain.inputs) and torch.equal(cached.masks, plain.masks)


def test_decoding_uses_every_core(monkeypatch):
    monkeypatch.setattr(decode_cache.os, "sched_getaffinity", lambda pid: set(range(6)))
    assert decode_cache.parallel_workers(100) == 6 and decode_cache.parallel_workers(2) == 2
    assert os.cpu_count() is not None
