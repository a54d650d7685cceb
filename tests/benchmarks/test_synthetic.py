"""The synthetic MVTec-layout generator: layout, exact masks, determinism, learnability, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clad.benchmarks import synthetic_layouts
from clad.benchmarks.generated import MARKER
from clad.benchmarks.synthetic import SYNTHETIC_CATEGORIES, generate_category, generate_dataset
from clad.benchmarks.synthetic_drawing import (
    OBJECTS,
    TEXTURES,
    defect_kinds,
    image_rng,
    render_sample,
)
from clad.cli import generate
from tests.paths import REPO

SMALL = {"image_size": 32, "n_train": 3, "n_test_good": 2, "n_test_per_defect": 2}
CASES = [
    (category, defect) for category in SYNTHETIC_CATEGORIES for defect in defect_kinds(category)
]


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), seed=0, **SMALL)


def test_categories_are_textures_then_objects() -> None:
    assert SYNTHETIC_CATEGORIES == TEXTURES + OBJECTS
    assert len(TEXTURES) >= 3 and len(OBJECTS) >= 3
    for category in SYNTHETIC_CATEGORIES:
        assert len(defect_kinds(category)) >= 3


def test_layout_is_mvtec(dataset: Path) -> None:
    for category in SYNTHETIC_CATEGORIES:
        folder = dataset / category
        assert sorted(p.name for p in (folder / "train" / "good").iterdir()) == [
            "000.png",
            "001.png",
            "002.png",
        ]
        assert len(list((folder / "test" / "good").glob("*.png"))) == 2
        test_folders = {p.name for p in (folder / "test").iterdir()}
        assert test_folders == {"good", *defect_kinds(category)}
        assert {p.name for p in (folder / "ground_truth").iterdir()} == set(defect_kinds(category))
        for defect in defect_kinds(category):
            for index in range(2):
                with Image.open(folder / "test" / defect / f"{index:03d}.png") as image:
                    assert image.mode == "RGB" and image.size == (32, 32)
                mask_path = folder / "ground_truth" / defect / f"{index:03d}_mask.png"
                with Image.open(mask_path) as mask:
                    assert mask.mode == "L" and mask.size == (32, 32)
                    values = set(np.unique(np.array(mask)).tolist())
                assert values == {0, 255}
        assert (folder / MARKER).is_file()
    assert not [p for p in dataset.iterdir() if p.name.startswith(".")]  # no partial folders


@pytest.mark.parametrize(("category", "defect"), CASES)
def test_mask_is_exactly_the_changed_pixels(category: str, defect: str) -> None:
    """Outside the mask the image equals the normal draw; inside, pixels visibly change."""
    drawn = render_sample(category, defect, 64, image_rng(0, category, defect, 0))
    assert drawn.image.shape == (64, 64, 3) and drawn.image.dtype == np.uint8
    assert drawn.mask.shape == (64, 64) and drawn.mask.dtype == bool
    np.testing.assert_array_equal(drawn.image[~drawn.mask], drawn.normal[~drawn.mask])
    change = np.abs(drawn.image.astype(int) - drawn.normal.astype(int)).max(axis=-1)  # [S, S]
    assert (change[drawn.mask] >= 8).mean() > 0.95
    area = drawn.mask.mean()
    assert 4 / 64**2 <= area < 0.1, f"{category}/{defect}: mask covers {area:.1%}"


def test_written_masks_match_the_drawing(dataset: Path) -> None:
    for category, defect in CASES:
        drawn = render_sample(category, defect, 32, image_rng(0, category, defect, 1))
        folder = dataset / category
        np.testing.assert_array_equal(load(folder / "test" / defect / "001.png"), drawn.image)
        written = load(folder / "ground_truth" / defect / "001_mask.png")
        np.testing.assert_array_equal(written == 255, drawn.mask)


def test_normal_images_vary() -> None:
    for category in SYNTHETIC_CATEGORIES:
        a, b = (
            render_sample(category, None, 64, image_rng(0, category, "train", i)) for i in (0, 1)
        )
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 2.0
        assert not a.mask.any()


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_defects_stand_out_from_the_mean_normal_image(category: str) -> None:
    """Crude learnability check: defective pixels are far further from the average normal
    image than the rest of the image is."""
    size = 64
    normals = [
        render_sample(category, None, size, image_rng(0, category, "train", i)) for i in range(16)
    ]
    mean_normal = np.mean([n.image for n in normals], axis=0)  # [S, S, 3]
    inside, outside = [], []
    for defect in defect_kinds(category):
        for index in range(3):
            drawn = render_sample(category, defect, size, image_rng(0, category, defect, index))
            distance = np.abs(drawn.image - mean_normal).mean(axis=-1)  # [S, S]
            inside.append(distance[drawn.mask].mean())
            outside.append(distance[~drawn.mask].mean())
    assert np.mean(inside) > 1.5 * np.mean(outside)
    assert min(i / o for i, o in zip(inside, outside, strict=True)) > 1.05


@pytest.mark.parametrize("size", [32, 97, 512])
def test_any_image_size_works(size: int) -> None:
    cases = CASES if size < 512 else [(c, defect_kinds(c)[0]) for c in SYNTHETIC_CATEGORIES]
    for category, defect in cases:
        drawn = render_sample(category, defect, size, image_rng(3, category, defect, 0))
        assert drawn.image.shape == (size, size, 3)
        assert drawn.mask.sum() >= 4
        assert drawn.mask.mean() < 0.1


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    params = {"categories": ["stripes", "nut"], **SMALL}
    first = files_of(generate_dataset(tmp_path / "a", seed=7, **params))
    again = files_of(generate_dataset(tmp_path / "b", seed=7, **params))
    other = files_of(generate_dataset(tmp_path / "c", seed=8, **params))
    assert first == again
    assert first.keys() == other.keys()
    images = [name for name in first if name.endswith(".png")]
    assert all(first[name] != other[name] for name in images if "train" in name)


def test_more_images_leave_the_first_ones_unchanged(tmp_path: Path) -> None:
    few = files_of(generate_category(tmp_path / "a", "disc", 0, 32, 2, 1, 1))
    many = files_of(generate_category(tmp_path / "b", "disc", 0, 32, 4, 2, 3))
    shared = [name for name in few if name.endswith(".png")]
    assert all(few[name] == many[name] for name in shared)


def test_complete_category_is_skipped_and_stale_one_replaced(tmp_path: Path) -> None:
    folder = generate_category(tmp_path, "checker", 0, 32, 2, 1, 1)
    sentinel = folder / "sentinel.txt"
    sentinel.write_text("left alone when the parameters match")
    generate_category(tmp_path, "checker", 0, 32, 2, 1, 1)
    assert sentinel.exists()
    with pytest.raises(FileExistsError, match="sentinel.txt"):  # not the generator's to delete
        generate_category(tmp_path, "checker", 0, 32, 3, 1, 1)
    assert sentinel.exists()
    sentinel.unlink()
    generate_category(tmp_path, "checker", 0, 32, 3, 1, 1)
    assert len(list((folder / "train" / "good").glob("*.png"))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checker"]


def test_folder_not_written_by_the_generator_is_refused(tmp_path: Path) -> None:
    (tmp_path / "disc").mkdir()
    (tmp_path / "disc" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by the synthetic generator"):
        generate_category(tmp_path, "disc", 0, 32, 2, 1, 1)
    assert (tmp_path / "disc" / "mine.txt").exists()


def test_interrupted_write_leaves_no_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_write = synthetic_layouts.write_png

    def failing_write(array: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(array, path)

    monkeypatch.setattr(synthetic_layouts, "write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_category(tmp_path, "nut", 0, 32, 3, 2, 2)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic_layouts, "write_png", real_write)
    assert (generate_category(tmp_path, "nut", 0, 32, 3, 2, 2) / MARKER).is_file()


def test_unknown_category_and_bad_parameters_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic category 'bolt'.*stripes.*capsule"):
        generate_dataset(tmp_path, categories=["disc", "bolt"])
    assert not (tmp_path / "disc").exists()  # validated before anything is written
    with pytest.raises(ValueError, match="image_size must be in"):
        generate_dataset(tmp_path, image_size=16)
    with pytest.raises(ValueError, match="n_train must be at least 1"):
        generate_dataset(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate_dataset(tmp_path, seed=-1)
    with pytest.raises(TypeError, match="list of names"):
        generate_dataset(tmp_path, categories="disc")
    with pytest.raises(ValueError, match="has no defect 'hole'"):
        render_sample("disc", "hole", 32, image_rng(0, "disc", "hole", 0))


def test_cli_writes_and_reports(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "main.py",
        "generate",
        "synthetic",
        "--out",
        str(tmp_path),
        "--seed",
        "1",
        "--categories",
        "weave",
        "capsule",
        "--image-size",
        "32",
        "--n-train",
        "2",
        "--n-test-good",
        "1",
        "--n-test-per-defect",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert "weave" in result.stdout and "capsule" in result.stdout and "written" in result.stdout
    assert (tmp_path / "capsule" / "ground_truth" / "extra" / "000_mask.png").is_file()
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert "already complete" in rerun.stdout


def test_cli_unknown_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        generate.synthetic(["--out", str(tmp_path), "--categories", "bolt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown synthetic category 'bolt'" in err and "stripes" in err
    assert list(tmp_path.iterdir()) == []
