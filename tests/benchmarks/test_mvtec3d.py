"""MVTec 3D-AD reader, AST-style depth preprocessing and the synthetic 3D generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clad.benchmarks.mvtec3d import (
    RGBDDataset,
    background_plane,
    depth_and_foreground,
    fill_gaps,
    read_category_3d,
    xyz_path,
)
from clad.benchmarks.synthetic3d import DEFECTS_3D, generate_dataset_3d
from clad.errors import DatasetError


@pytest.fixture(scope="module")
def root3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3d")
    return generate_dataset_3d(
        root,
        seed=0,
        categories=["puck", "dome"],
        image_size=48,
        n_train=6,
        n_test_good=3,
        n_test_per_defect=2,
    )


def test_fill_gaps_sets_holes_to_the_neighbour_mean():
    z = np.ones((5, 5), dtype=np.float32) * 2.0
    z[2, 2] = 0.0  # an isolated hole: all 8 neighbours are 2
    z[0, 0] = 0.0
    z[0, 1] = 4.0
    filled = fill_gaps(z, passes=1)
    assert filled[2, 2] == pytest.approx(2.0)
    assert filled[0, 0] == pytest.approx((4.0 + 2.0 + 2.0) / 3)  # mean of its valid neighbours
    big = np.zeros((7, 7), dtype=np.float32)
    big[0, 0] = 1.0
    assert (fill_gaps(big, passes=1) > 0).sum() == 4  # one pass grows by one ring only
    assert (fill_gaps(big, passes=3) > 0).sum() == 16


def test_background_plane_is_removed_and_foreground_found():
    h = w = 40
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    plane = 0.5 + 0.001 * rows / h + 0.002 * cols / w  # tilted background
    np.testing.assert_allclose(background_plane(plane), plane, atol=2e-4)
    z = plane.copy()
    z[15:25, 15:25] -= 0.02  # a 2 cm tall box, closer to the sensor
    xyz = np.stack([cols, rows, z], axis=2)
    height, foreground = depth_and_foreground(xyz)
    assert foreground[15:25, 15:25].all() and foreground.sum() == 100
    np.testing.assert_allclose(height[15:25, 15:25], 0.02, atol=3e-4)
    assert (height[~foreground] == 0).all()


def test_reader_and_modes(root3d):
    train, validation, test = read_category_3d(root3d, "puck")
    assert len(train) == 6 and validation == [] and len(test) == 3 + 2 * len(DEFECTS_3D)
    assert {s.defect for s in test} == {"good", *DEFECTS_3D}
    assert all(xyz_path(s).suffix == ".tiff" for s in test)
    for mode, channels in (("rgb", 3), ("depth", 2), ("rgb+depth", 5)):
        data = RGBDDataset(test, 32, mode)
        x, mask, label = data[0]
        assert x.shape == (channels, 32, 32) and mask.shape == (1, 32, 32)
        assert torch.isfinite(x).all()
    data = RGBDDataset(test, 48, "rgb+depth")
    for i, sample in enumerate(test):
        _, mask, label = data[i]
        assert label == int(sample.defect != "good")
        assert (mask.sum() > 0) == bool(label)


def test_geometric_defects_show_in_depth_and_stains_only_in_rgb():
    from clad.benchmarks.synthetic3d import render

    for defect in DEFECTS_3D:
        for index in range(3):
            seed = [7, index]
            rgb, xyz, mask = render("puck", defect, 64, np.random.default_rng(seed))
            rgb0, xyz0, mask0 = render("puck", None, 64, np.random.default_rng(seed))
            assert mask.any() and not mask0.any()
            height, _ = depth_and_foreground(xyz)
            height0, _ = depth_and_foreground(xyz0)
            depth_change = np.abs(height - height0)[mask].mean()  # metres
            rgb_change = np.abs(rgb.astype(float) - rgb0).mean(axis=2)[mask].mean() / 255
            if defect == "stain":
                assert depth_change < 3e-4 and rgb_change > 0.05, (defect, depth_change)
            else:
                assert depth_change > 1e-3, (defect, depth_change)


def test_generation_is_deterministic(tmp_path):
    a = generate_dataset_3d(
        tmp_path / "a",
        seed=3,
        categories=["bar"],
        image_size=32,
        n_train=2,
        n_test_good=1,
        n_test_per_defect=1,
    )
    b = generate_dataset_3d(
        tmp_path / "b",
        seed=3,
        categories=["bar"],
        image_size=32,
        n_train=2,
        n_test_good=1,
        n_test_per_defect=1,
    )
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_errors_name_the_file(root3d, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(root3d / "dome", broken / "dome")
    _, _, test = read_category_3d(broken, "dome")
    victim = xyz_path(test[0])
    victim.write_bytes(b"not a tiff")
    with pytest.raises(DatasetError, match=str(victim)):
        RGBDDataset(test, 32, "depth")
    victim.unlink()
    with pytest.raises(DatasetError, match="no point map"):
        read_category_3d(broken, "dome")
    with pytest.raises(DatasetError, match="found there: dome"):
        read_category_3d(broken, "tire")
    with pytest.raises(DatasetError, match="does not exist"):
        read_category_3d(tmp_path / "nothing", "dome")
