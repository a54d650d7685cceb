"""The audio feature cache lives in the user's cache, one folder per dataset root: nothing is
written into the dataset (which may be read-only or shared), two roots never collide."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clad.benchmarks import audio_features
from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic_audio import generate_dataset
from clad.config import DatasetConfig
from clad.errors import DatasetError

TINY = dict(sections=2, n_train=4, n_train_target=2, n_test=2, duration_s=0.5)
AUDIO = {"n_fft": 512, "hop_length": 256, "n_mels": 32, "frames": 32, "db_range": [-90.0, 10.0]}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dcase2022")
    generate_dataset(root, ["bearing"], "dcase2022", seed=0, **TINY)
    return root


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def build(root: Path, **audio) -> None:
    config = DatasetConfig(
        name="dcase2022", root=str(root), categories=["bearing"], audio={**AUDIO, **audio}
    )
    build_tasks(config, seed=0)


def test_without_a_cache_dir_nothing_is_written_into_the_dataset(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAD_CACHE_DIR", str(tmp_path / "cache"))
    before = listing(tree)
    build(tree)
    assert listing(tree) == before  # no <root>/.clad_cache
    [folder] = (tmp_path / "cache" / "audio_features").iterdir()
    assert folder == audio_features.default_cache_dir(tree)
    assert folder.name.startswith(f"{tree.name}-")
    assert len(list(folder.glob("bearing-*.npy"))) == 2  # train and test


def test_two_roots_get_two_cache_folders(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAD_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "elsewhere" / tree.name
    shutil.copytree(tree, copy)
    assert audio_features.default_cache_dir(copy) != audio_features.default_cache_dir(tree)
    build(tree)
    build(copy)
    assert len(list((tmp_path / "cache" / "audio_features").iterdir())) == 2


def test_the_user_cache_follows_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CLAD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert audio_features.user_cache_dir() == tmp_path / "xdg" / "clad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert audio_features.user_cache_dir() == tmp_path / "home" / ".cache" / "clad"
    monkeypatch.setenv("CLAD_CACHE_DIR", str(tmp_path / "mine"))
    assert audio_features.user_cache_dir() == tmp_path / "mine"


def test_an_unwritable_cache_is_one_error_naming_it_and_the_setting(tree, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(DatasetError) as caught:
        build(tree, cache_dir=str(blocker / "cache"))
    message = str(caught.value)
    assert message.startswith(f"{blocker / 'cache'}: cannot write the audio feature cache")
    assert "dataset.audio.cache_dir" in message
