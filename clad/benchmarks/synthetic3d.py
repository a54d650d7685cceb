"""Synthetic MVTec 3D-AD-layout categories: height maps with dents and bumps, plus RGB.

Each sample is an object lying on a slightly tilted background plane seen from about 0.5 m:
``rgb/*.png`` (shaded, coloured), ``xyz/*.tiff`` (float32 x, y, z in metres; a few missing points
set to 0, as real scans have), and for test images ``gt/*.png`` (0/255). Defects:

- ``dent``: a smooth depression of the object surface (geometry; shading follows it);
- ``bump``: a smooth bulge (geometry);
- ``stain``: a colour blob with no change of geometry (visible in RGB only);
- ``cut``: a narrow groove, darker in RGB (both).

Masks are the pixels where the defect changes height by more than 0.5 mm or colour by more than
0.05. Everything is drawn with NumPy from a generator seeded by (seed, category, split, index).

``python main.py generate synthetic3d --out DIR --seed N`` writes a dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clad.benchmarks.generated import is_complete, stable_id, write_folder

SYNTHETIC_3D_CATEGORIES = ("puck", "dome", "bar")
DEFECTS_3D = ("dent", "bump", "stain", "cut")
DISTANCE = 0.5  # metres from the sensor to the background plane
PIXEL = 0.0005  # metres per pixel at 128 px (scaled with the image size)


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stable_id(category), stable_id(split), index])


def _object_height(category: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Height (metres) of the object at normalised coordinates u, v in [-1, 1]."""
    r = np.hypot(u, v)
    if category == "puck":
        return 0.012 * np.clip((0.62 - r) / 0.04, 0, 1)
    if category == "dome":
        return 0.025 * np.sqrt(np.clip(1 - (r / 0.6) ** 2, 0, 1))
    edge = np.maximum(np.abs(u) / 0.75, np.abs(v) / 0.3)  # bar
    return 0.015 * np.clip((1 - edge) / 0.08, 0, 1)


def _blob(u: np.ndarray, v: np.ndarray, cu: float, cv: float, radius: float) -> np.ndarray:
    return np.exp(-(((u - cu) ** 2 + (v - cv) ** 2) / (2 * radius**2)))


def render(
    category: str, defect: str | None, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample: (rgb uint8 [S, S, 3], xyz float32 [S, S, 3], mask bool [S, S])."""
    angle = rng.uniform(-0.3, 0.3)
    shift = rng.uniform(-0.06, 0.06, size=2)
    grid = np.linspace(-1, 1, size)
    v0, u0 = np.meshgrid(grid, grid, indexing="ij")
    u = np.cos(angle) * (u0 - shift[0]) + np.sin(angle) * (v0 - shift[1])
    v = -np.sin(angle) * (u0 - shift[0]) + np.cos(angle) * (v0 - shift[1])
    height = _object_height(category, u, v)
    on_object = height > 1e-4
    base_colour = {"puck": (0.75, 0.55, 0.3), "dome": (0.8, 0.35, 0.3), "bar": (0.45, 0.6, 0.35)}
    colour = np.array(base_colour[category]) + rng.normal(0, 0.02, 3)
    albedo = np.where(on_object[..., None], colour, np.array([0.2, 0.2, 0.22]))
    albedo = albedo + 0.03 * np.sin(12 * u + rng.uniform(0, 6))[..., None] * on_object[..., None]
    delta_height = np.zeros_like(height)
    delta_colour = np.zeros_like(albedo)
    if defect is not None:
        inside = np.argwhere(height > 0.5 * height.max())
        cy, cx = inside[rng.integers(len(inside))]
        cu, cv = u[cy, cx], v[cy, cx]
        radius = rng.uniform(0.06, 0.1)
        if defect == "dent":
            delta_height = -rng.uniform(0.003, 0.005) * _blob(u, v, cu, cv, radius)
        elif defect == "bump":
            delta_height = rng.uniform(0.003, 0.005) * _blob(u, v, cu, cv, radius)
        elif defect == "stain":
            stain = np.array([0.25, 0.2, 0.55]) - colour
            delta_colour = 0.8 * _blob(u, v, cu, cv, radius)[..., None] * stain
        elif defect == "cut":
            direction = rng.uniform(0, np.pi)
            along = (u - cu) * np.cos(direction) + (v - cv) * np.sin(direction)
            across = -(u - cu) * np.sin(direction) + (v - cv) * np.cos(direction)
            groove = np.exp(-(across**2) / (2 * 0.012**2)) * (np.abs(along) < 0.25)
            delta_height = -0.004 * groove
            delta_colour = -0.35 * groove[..., None] * np.ones(3)
        else:
            raise ValueError(f"unknown 3D defect {defect!r}; known: {', '.join(DEFECTS_3D)}")
        delta_height *= on_object
        delta_colour *= on_object[..., None]
    height = height + delta_height
    mask = (np.abs(delta_height) > 5e-4) | (np.abs(delta_colour).max(axis=2) > 0.05)
    # shading from the surface normal, light from the upper left
    pixel = PIXEL * 128 / size
    gy, gx = np.gradient(height, pixel)
    normal = np.stack([-gx, -gy, np.ones_like(height)], axis=2)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    light = np.array([-0.4, -0.4, 0.82])
    shade = np.clip(normal @ light, 0, 1)[..., None]
    rgb = np.clip((albedo + delta_colour) * (0.35 + 0.75 * shade), 0, 1)
    rgb = np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1)
    tilt = rng.normal(0, 0.002, size=2)
    x = (u0 * size / 2) * pixel
    y = (v0 * size / 2) * pixel
    z = DISTANCE + tilt[0] * u0 + tilt[1] * v0 - height + rng.normal(0, 1e-4, height.shape)
    missing = rng.random(height.shape) < 0.01
    z = np.where(missing, 0.0, z)
    xyz = np.stack([np.where(missing, 0, x), np.where(missing, 0, y), z], axis=2)
    return (rgb * 255).round().astype(np.uint8), xyz.astype(np.float32), mask


def _write(folder: Path, name: str, rgb: np.ndarray, xyz: np.ndarray, mask: np.ndarray | None):
    import tifffile

    for sub in ("rgb", "xyz") + (("gt",) if mask is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / "rgb" / f"{name}.png")
    tifffile.imwrite(folder / "xyz" / f"{name}.tiff", xyz)
    if mask is not None:
        Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(folder / "gt" / f"{name}.png")


def generate_category_3d(
    root: Path,
    category: str,
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
) -> Path:
    """Write one category (skipped when a marker with the same parameters exists).

    The folder is written atomically (``clad.benchmarks.generated.write_folder``): an earlier
    generation is replaced, a folder without a marker is never touched.
    """
    if category not in SYNTHETIC_3D_CATEGORIES:
        known = ", ".join(SYNTHETIC_3D_CATEGORIES)
        raise ValueError(f"unknown synthetic 3D category {category!r}; known: {known}")
    params = {
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
    }
    final = Path(root) / category
    if is_complete(final, params):
        return final

    def write(partial: Path) -> dict:
        plan = [("train", "good", n_train), ("test", "good", n_test_good)]
        plan += [("test", d, n_test_per_defect) for d in DEFECTS_3D]
        for split, defect, count in plan:
            for i in range(count):
                rng = _rng(seed, category, f"{split}/{defect}", i)
                kind = None if defect == "good" else defect
                rgb, xyz, mask = render(category, kind, image_size, rng)
                gt = mask if split == "test" else None
                _write(partial / split / defect, f"{i:03d}", rgb, xyz, gt)
        return params

    # the 3D markers keep the parameters' order (unsorted keys), as they always have
    write_folder(final, write, owner="synthetic 3D generator", sort_keys=False)
    return final


def generate_dataset_3d(
    root: Path | str,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    image_size: int = 64,
    n_train: int = 30,
    n_test_good: int = 8,
    n_test_per_defect: int = 3,
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for category in categories or SYNTHETIC_3D_CATEGORIES:
        generate_category_3d(
            root, category, seed, image_size, n_train, n_test_good, n_test_per_defect
        )
    return root
