"""Generators delete only what they wrote: the marker lists the generated files, regenerating
with other settings removes exactly those, and a folder holding anything else (a user's run
folder inside the data root) is refused, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clad.benchmarks import generated
from clad.benchmarks.generated import MARKER, read_marker, write_folder
from clad.benchmarks.synthetic import generate_category
from clad.benchmarks.synthetic3d import generate_dataset_3d
from clad.benchmarks.synthetic_audio import generate_machine

AUDIO = dict(sections=1, n_train=2, n_train_target=1, n_test=1, duration_s=0.2)


def contents(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def test_the_marker_lists_every_file_written(tmp_path: Path) -> None:
    folder = generate_category(tmp_path, "disc", 0, 32, 2, 1, 1)
    raw = json.loads((folder / MARKER).read_text())
    assert sorted(raw[generated.FILES_KEY]) == sorted(contents(folder))
    assert generated.FILES_KEY not in read_marker(folder)  # the parameters, as before


@pytest.mark.parametrize("generator", ["synthetic", "synthetic3d", "synthetic_audio"])
def test_a_user_run_folder_in_a_category_is_never_deleted(tmp_path: Path, generator) -> None:
    """``--output`` = the data root and ``run_name`` = a category: the run folder (and its lock
    beside it) sits inside the generated folder; regenerating with other settings refuses,
    naming them, and leaves every file in place."""

    def make(n_train: int) -> Path:
        if generator == "synthetic":
            return generate_category(tmp_path, "stripes", 0, 32, n_train, 1, 1)
        if generator == "synthetic3d":
            return generate_dataset_3d(tmp_path, 0, ["dome"], 32, n_train, 1, 1) / "dome"
        return generate_machine(tmp_path, "bearing", "dcase2022", **{**AUDIO, "n_train": n_train})

    folder = make(2)
    run = folder / "seed_0"
    run.mkdir()
    (run / "metrics.json").write_text('{"the": "only copy"}')
    (folder / ".seed_0.lock").write_text("pid 1")
    before = contents(folder)
    with pytest.raises(FileExistsError) as caught:
        make(3)
    message = str(caught.value)
    assert str(folder) in message and "seed_0" in message and ".seed_0.lock" in message
    assert contents(folder) == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_regenerating_removes_exactly_the_files_listed(tmp_path: Path) -> None:
    folder = generate_category(tmp_path, "checker", 0, 32, 3, 1, 1)
    generate_category(tmp_path, "checker", 0, 32, 2, 1, 1)
    assert len(list((folder / "train" / "good").glob("*.png"))) == 2
    fresh = generate_category(tmp_path / "fresh", "checker", 0, 32, 2, 1, 1)
    assert contents(folder) == contents(fresh)  # byte for byte what a first generation writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checker", "fresh"]


def test_a_folder_from_before_the_file_list_is_not_deleted(tmp_path: Path) -> None:
    folder = generate_category(tmp_path, "nut", 0, 32, 2, 1, 1)
    marker = json.loads((folder / MARKER).read_text())
    del marker[generated.FILES_KEY]
    (folder / MARKER).write_text(json.dumps(marker))
    assert generate_category(tmp_path, "nut", 0, 32, 2, 1, 1) == folder  # same settings: kept
    before = contents(folder)
    with pytest.raises(FileExistsError, match="did not record the files it wrote"):
        generate_category(tmp_path, "nut", 0, 32, 3, 1, 1)
    assert contents(folder) == before


def test_a_file_added_while_regenerating_is_kept(tmp_path: Path) -> None:
    """The check before drawing is repeated after the old folder is moved aside."""
    target = tmp_path / "thing"

    def write(marker: dict):
        def draw(partial: Path) -> dict:
            partial.mkdir()
            (partial / "a.txt").write_text(str(marker))
            if marker["v"] == 2:
                (target / "late.txt").write_text("arrived during the drawing")
            return marker

        return draw

    write_folder(target, write({"v": 1}), owner="test generator")
    with pytest.raises(FileExistsError, match="late.txt"):
        write_folder(target, write({"v": 2}), owner="test generator")
    assert (target / "late.txt").is_file() and read_marker(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]
