"""MVTec 3D-AD reader: RGB plus xyz point maps -> RGB, depth or RGB+depth tensors.

Expected layout (the synthetic 3D set is written the same way)::

    <root>/<category>/train/good/{rgb/*.png, xyz/*.tiff}
    <root>/<category>/validation/good/{rgb, xyz}          (optional; MVTec 3D-AD ships one)
    <root>/<category>/test/<defect>/{rgb/*.png, xyz/*.tiff, gt/*.png}

Each ``xyz/*.tiff`` holds float32 [H, W, 3] (x, y, z per pixel, 0 where the sensor has no point).

Depth, as AST (Rudolph et al., WACV 2023, official preprocessing) derives it:

1. take the z channel;
2. fill missing points (z == 0) ``n_fills`` times (default 3): each pass sets every missing pixel
   that has valid 3x3 neighbours to their mean (vectorised here; AST loops over pixels);
3. background plane: bilinear interpolation between the mean z of the four 2x2 image corners;
   foreground = |z - plane| > ``bg_thresh`` (default 7e-3, AST's value) and z != 0.

Unlike AST, which feeds raw z to its flow, the depth channel here is the height above that
background plane, (plane - z) on the foreground and 0 elsewhere, so that one scale serves all
categories; the foreground mask is returned as a channel of its own (AST uses it to restrict
training and scoring to the object).

Items by ``mode``: ``rgb`` -> [3, S, S]; ``depth`` -> [2, S, S] (height, foreground);
``rgb+depth`` -> [5, S, S] (RGB, height, foreground). Masks and labels as for MVTec AD.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from clad.benchmarks.decode_cache import DecodeCache, DecodeCacheSetting, parallel_workers
from clad.benchmarks.mvtec import category_folder, list_folders, list_images
from clad.errors import DatasetError
from clad.imageio import decode
from clad.records import Sample

Mode = Literal["rgb", "depth", "rgb+depth"]
MODE_CHANNELS = {"rgb": 3, "depth": 2, "rgb+depth": 5}


def xyz_path(sample: Sample) -> Path:
    """``.../<split>/<defect>/rgb/000.png`` -> ``.../<split>/<defect>/xyz/000.tiff``."""
    return sample.path.parent.parent / "xyz" / f"{sample.path.stem}.tiff"


def _split(folder: Path, category: str, split: str) -> list[Sample]:
    where = folder / split
    if not where.is_dir():
        raise DatasetError(f"category {category!r}: missing folder {where}")
    samples = []
    for defect_dir in list_folders(where):
        rgb_dir = defect_dir / "rgb"
        if not rgb_dir.is_dir():
            raise DatasetError(f"{defect_dir}: missing rgb/ folder (MVTec 3D-AD layout)")
        label = 0 if defect_dir.name == "good" else 1
        for path in list_images(rgb_dir):
            gt = defect_dir / "gt" / path.name
            if split == "test" and label == 1 and not gt.is_file():
                raise DatasetError(f"defective image {path} has no mask: expected {gt}")
            sample = Sample(
                path=path,
                label=label,
                defect=defect_dir.name,
                category=category,
                mask_path=gt if label == 1 else None,
                has_masks=True,
            )
            if not xyz_path(sample).is_file():
                raise DatasetError(f"image {path} has no point map: expected {xyz_path(sample)}")
            samples.append(sample)
    if not samples:
        raise DatasetError(f"category {category!r}: no images under {where}")
    return samples


def read_category_3d(
    root: Path | str, category: str
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Train, validation (empty when the folder is absent) and test samples of a category."""
    folder = category_folder(root, category, dataset="MVTec 3D-AD")
    train = _split(folder, category, "train")
    validation = _split(folder, category, "validation") if (folder / "validation").is_dir() else []
    return train, validation, _split(folder, category, "test")


def read_xyz(path: Path) -> np.ndarray:
    """float32 [H, W, 3]; raises DatasetError naming the file when it cannot be read."""
    import tifffile

    try:
        xyz = np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as err:  # tifffile raises several types for corrupt files
        raise DatasetError(f"cannot read point map {path}: {err}") from err
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(f"point map {path}: expected [H, W, 3], got {list(xyz.shape)}")
    return xyz


def check_same_size(
    xyz: np.ndarray, rgb_path: Path, xyz_file: Path, rgb_size: tuple[int, int] | None = None
) -> None:
    """A point map must have its image's height and width: resizing one to the other would
    stretch depth against the image and its mask. ``rgb_size`` (H, W) when the image is
    decoded already, else read from its header.

    Raises:
        DatasetError: naming both files and both sizes.
    """
    if rgb_size is None:
        from PIL import Image

        try:
            with Image.open(rgb_path) as image:
                rgb_size = (image.height, image.width)
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read image {rgb_path}: {err}") from err
    if tuple(xyz.shape[:2]) != rgb_size:
        raise DatasetError(
            f"point map {xyz_file} is {xyz.shape[0]}x{xyz.shape[1]} but its image {rgb_path} "
            f"is {rgb_size[0]}x{rgb_size[1]} (height x width); they must match pixel for pixel"
        )


def fill_gaps(z: np.ndarray, passes: int = 3) -> np.ndarray:
    """Set missing points (0) that have valid 3x3 neighbours to the neighbours' mean, ``passes``
    times: [H, W] -> [H, W]."""
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))[None, None]  # [1, 1, H, W]
    kernel = torch.ones(1, 1, 3, 3)
    for _ in range(passes):
        valid = (zt != 0).float()
        total = F.conv2d(zt, kernel, padding=1)
        count = F.conv2d(valid, kernel, padding=1)
        fill = (valid == 0) & (count > 0)
        zt = torch.where(fill, total / count.clamp(min=1), zt)
    return zt[0, 0].numpy()


def background_plane(z: np.ndarray) -> np.ndarray:
    """Bilinear surface through the mean valid z of the four 2x2 corners: [H, W] -> [H, W]."""

    def corner(patch: np.ndarray) -> float:
        valid = patch[patch != 0]
        return float(valid.mean()) if valid.size else float(z[z != 0].mean())

    h, w = z.shape
    top_left, top_right = corner(z[:2, :2]), corner(z[:2, -2:])
    bottom_left, bottom_right = corner(z[-2:, :2]), corner(z[-2:, -2:])
    rows = np.linspace(0.0, 1.0, h)[:, None]  # [H, 1]
    cols = np.linspace(0.0, 1.0, w)[None, :]  # [1, W]
    top = top_left + (top_right - top_left) * cols
    bottom = bottom_left + (bottom_right - bottom_left) * cols
    return (top + (bottom - top) * rows).astype(np.float32)


def depth_and_foreground(
    xyz: np.ndarray, n_fills: int = 3, bg_thresh: float = 7e-3
) -> tuple[np.ndarray, np.ndarray]:
    """(height above the background plane [H, W], foreground [H, W] bool) from a point map."""
    z = fill_gaps(xyz[:, :, 2], n_fills)
    plane = background_plane(z)
    foreground = (np.abs(z - plane) > bg_thresh) & (z != 0)
    height = np.where(foreground, plane - z, 0.0).astype(np.float32)
    return height, foreground


class RGBDDataset(Dataset):
    """RGB images, depth and foreground of MVTec 3D-AD samples, prepared once in memory.

    Args:
        samples: samples from ``read_category_3d``.
        image_size: side S after resizing (images bilinear, depth bilinear, masks nearest).
        mode: ``rgb``, ``depth`` or ``rgb+depth`` (see the module docstring for the channels).
        depth_scale: heights are divided by this (metres -> about [0, 1] for MVTec 3D-AD's
            objects, a few centimetres tall).
        decode_cache: the decode cache of the prepared inputs and masks (True: the user's
            cache, a folder, or False; ``clad.benchmarks.decode_cache``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        mode: Mode = "rgb+depth",
        crop_size: int | None = None,
        n_fills: int = 3,
        bg_thresh: float = 7e-3,
        depth_scale: float = 0.05,
        decode_cache: DecodeCacheSetting = True,
    ) -> None:
        if mode not in MODE_CHANNELS:
            raise ValueError(f"mode must be one of {list(MODE_CHANNELS)}, got {mode!r}")
        if not samples:
            raise DatasetError("RGBDDataset needs at least one sample")
        self.samples = list(samples)
        self.labels = [s.label for s in self.samples]
        self.mode = mode
        self.image_size, self.crop_size = image_size, crop_size
        self.n_fills, self.bg_thresh, self.depth_scale = n_fills, bg_thresh, depth_scale
        self.cache = DecodeCache.from_setting(decode_cache)
        with ThreadPoolExecutor(max_workers=parallel_workers(len(self.samples))) as pool:
            items = list(pool.map(self._load_cached, self.samples))
        self.inputs = torch.stack([x for x, _ in items])  # [N, C, S, S] float32
        self.masks = torch.stack([m for _, m in items])  # [N, 1, S, S] bool

    @property
    def has_masks(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.inputs[index], self.masks[index].float(), self.labels[index]

    def _fit(self, tensor: Tensor, interpolation: InterpolationMode) -> Tensor:
        tensor = TF.resize(
            tensor,
            [self.image_size] * 2,
            interpolation=interpolation,
            antialias=interpolation != InterpolationMode.NEAREST,
        )
        if self.crop_size is not None:
            tensor = TF.center_crop(tensor, [self.crop_size] * 2)
        return tensor

    def _load_cached(self, sample: Sample) -> tuple[Tensor, Tensor]:
        """``_load`` through the decode cache (inputs and mask, each an entry of its own)."""
        if self.cache is None:
            return self._load(sample)
        side = self.crop_size or self.image_size
        sizes = f"resize {self.image_size}|crop {self.crop_size}"
        sources = [sample.path] if self.mode == "rgb" else [sample.path, xyz_path(sample)]
        recipe = (
            f"rgbd|{self.mode}|fills {self.n_fills}|background {self.bg_thresh}|"
            f"scale {self.depth_scale}|{sizes}"
        )
        channels = MODE_CHANNELS[self.mode]
        inputs = self.cache.fetch(
            sources, recipe, (channels, side, side), torch.float32, lambda: self._load(sample)[0]
        )
        mask_path = sample.mask_path
        if mask_path is None:
            return inputs, torch.zeros((1, side, side), dtype=torch.bool)
        mask = self.cache.fetch(
            [mask_path],
            f"rgbd mask|above 127 (0/1-coded: above 0)|nearest|{sizes}",
            (1, side, side),
            torch.bool,
            lambda: self._mask(mask_path),
        )
        return inputs, mask

    def _mask(self, path: Path) -> Tensor:
        mask = self._fit(decode(path, "L"), InterpolationMode.NEAREST)  # [1, S, S]
        return mask > (127 if mask.max() > 1 else 0)  # 0/255 or 0/1 coded

    def _load(self, sample: Sample) -> tuple[Tensor, Tensor]:
        channels = []
        rgb_size: tuple[int, int] | None = None
        if self.mode in ("rgb", "rgb+depth"):
            rgb = decode(sample.path, "RGB")  # [3, H, W] uint8
            rgb_size = (int(rgb.shape[1]), int(rgb.shape[2]))
            channels.append(self._fit(rgb, InterpolationMode.BILINEAR).float() / 255.0)
        if self.mode in ("depth", "rgb+depth"):
            xyz = read_xyz(xyz_path(sample))
            check_same_size(xyz, sample.path, xyz_path(sample), rgb_size)
            height, foreground = depth_and_foreground(xyz, self.n_fills, self.bg_thresh)
            height_t = torch.from_numpy(height / self.depth_scale)[None]  # [1, H, W]
            fg_t = torch.from_numpy(foreground.astype(np.float32))[None]  # [1, H, W]
            channels.append(self._fit(height_t, InterpolationMode.BILINEAR))
            channels.append(self._fit(fg_t, InterpolationMode.NEAREST))
        inputs = torch.cat(channels)  # [C, S, S]
        size = inputs.shape[1:]
        if sample.mask_path is None:
            return inputs, torch.zeros((1, *size), dtype=torch.bool)
        return inputs, self._mask(sample.mask_path)
