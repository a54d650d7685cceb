"""The benchmarks' image cache: keyed by the data folder and its files, written atomically,
rebuilt when damaged; a missing ``--data`` is one error line and exit code 2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from clad.errors import DatasetError
from clad.perf import cache, parity, race
from clad.perf.commands import main as perf_main


@pytest.fixture()
def data(synthetic_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_root / "stripes", tmp_path / "data" / "stripes")
    return tmp_path / "data"


def test_another_data_folder_or_a_changed_file_is_another_cache(data, tmp_path):
    store = tmp_path / "cache"
    first, images = cache.category_cache(data, "stripes", 32, store)
    assert first.name.startswith("stripes_32_") and images["train"].dtype == torch.uint8
    again, _ = cache.category_cache(data, "stripes", 32, store)
    assert again == first
    other = tmp_path / "other"
    shutil.copytree(data, other)
    assert cache.category_cache(other, "stripes", 32, store)[0] != first
    image = next((data / "stripes" / "train" / "good").iterdir())
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert cache.category_cache(data, "stripes", 32, store)[0] != first
    assert cache.category_cache(data, "stripes", 48, store)[0] != first


def test_a_truncated_cache_file_is_built_again(data, tmp_path, capsys):
    path, images = cache.category_cache(data, "stripes", 32, tmp_path / "cache")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again, rebuilt = cache.category_cache(data, "stripes", 32, tmp_path / "cache")
    assert again == path and "does not load" in capsys.readouterr().out
    assert all(torch.equal(images[k], rebuilt[k]) for k in cache.KEYS)
    assert torch.equal(torch.load(path, weights_only=True)["train"], images["train"])


def test_an_interrupted_write_leaves_no_cache_file(data, tmp_path, monkeypatch):
    def interrupted(obj, handle):
        handle.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.category_cache(data, "stripes", 32, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_category_names_what_is_there(data, tmp_path):
    with pytest.raises(DatasetError, match="--category bottle: no folder .* in --data: stripes"):
        cache.category_cache(data, "bottle", 32, tmp_path / "cache")


@pytest.mark.parametrize("command", ["memory-bank", "parity"])
def test_a_missing_data_folder_is_one_error_even_after_an_earlier_run(
    tmp_path, monkeypatch, capsys, command
):
    """The issue's case: an earlier run left ``stripes_32.pt``; ``--data /does/not/exist``
    then exited 0 with the earlier run's AUROC."""
    store = tmp_path / "cache"
    store.mkdir()
    stale = {
        "train": torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        "test": torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
        "masks": torch.zeros(2, 1, 32, 32, dtype=torch.bool),
        "labels": torch.tensor([0, 1]),
    }
    torch.save(stale, store / "stripes_32.pt")
    row = {"impl": "clad", "detector": "patchcore", "image_auroc": 0.99}
    monkeypatch.setattr(race, "run_worker", lambda *args: row)
    monkeypatch.setattr(parity, "run_worker", lambda *args, **kwargs: {"outputs": {}, "fit_s": 1.0})
    missing = str(tmp_path / "does" / "not" / "exist")
    argv = [command, "--data", missing, "--category", "stripes", "--impls", "clad"]
    argv += ["--detectors", "patchcore", "--cache-dir", str(store)]
    if command == "memory-bank":
        argv += ["--image-size", "32"]
    with pytest.raises(SystemExit) as stopped:
        perf_main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --data {missing}: no such folder; pass an MVTec-layout dataset root (the "
        "folder that holds <category>/train and <category>/test)"
    ]
