"""MVTec AD reader: a category folder -> train and test samples -> an in-memory image dataset.

Expected layout (the synthetic set is written the same way)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png    (0/255)

A category without a ``ground_truth/`` folder is image-level data: its samples carry
``has_masks=False`` and pixel metrics are not computed for it. A category with one must have a
mask for every defective image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from clad.errors import DatasetError
from clad.imageio import IMAGE_EXTENSIONS, decode
from clad.records import Sample

PROGRESS_MIN_IMAGES = 50  # show a decoding progress bar above this many images


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (by extension, hidden files skipped), sorted by name."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and path.name[0] != "."
    )


def list_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (hidden ones skipped), sorted by name."""
    return sorted(path for path in folder.iterdir() if path.is_dir() and path.name[0] != ".")


def category_folder(root: Path | str, category: str, dataset: str = "dataset") -> Path:
    """``root/category``, checked: the root and the category folder must exist.

    Raises:
        DatasetError: naming the missing root, or the category and the folders found instead.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{dataset} root {root} does not exist or is not a folder")
    folder = root / category
    if not folder.is_dir():
        found = ", ".join(path.name for path in list_folders(root)) or "none"
        raise DatasetError(
            f"category {category!r} not found in {root}; categories found there: {found}"
        )
    return folder


def read_category(root: Path | str, category: str) -> tuple[list[Sample], list[Sample]]:
    """List the train and test samples of one category.

    Returns:
        (train, test): train holds the normal images of ``train/good`` sorted by name; test
        holds ``test/good`` first, then each defect folder in name order, each sorted by name.

    Raises:
        DatasetError: when the root, the category, ``train/good`` or ``test`` is missing or
            empty, when images lie directly in ``test/``, or when a category with a
            ``ground_truth/`` folder lacks the mask of a defective image.
    """
    folder = category_folder(root, category)
    extensions = "/".join(IMAGE_EXTENSIONS)
    train_dir = folder / "train" / "good"
    if not train_dir.is_dir():
        raise DatasetError(f"category {category!r}: missing training folder {train_dir}")
    train_paths = list_images(train_dir)
    if not train_paths:
        raise DatasetError(f"category {category!r}: no {extensions} images in {train_dir}")
    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"category {category!r}: missing test folder {test_dir}")
    loose = list_images(test_dir)
    if loose:
        raise DatasetError(
            f"category {category!r}: {len(loose)} image(s) directly in {test_dir} (e.g. "
            f"{loose[0].name}); test images belong in test/good/ or test/<defect>/"
        )

    mask_dir = folder / "ground_truth"
    has_masks = mask_dir.is_dir()
    train = [Sample(path, 0, "good", category, None, has_masks) for path in train_paths]
    test = []
    defect_dirs = sorted(list_folders(test_dir), key=lambda path: (path.name != "good", path.name))
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        for path in list_images(defect_dir):
            if defect == "good":
                test.append(Sample(path, 0, "good", category, None, has_masks))
                continue
            mask_path = mask_dir / defect / f"{path.stem}_mask.png" if has_masks else None
            if mask_path is not None and not mask_path.is_file():
                raise DatasetError(
                    f"category {category!r}: defective image {path} has no mask; expected "
                    f"{mask_path} (a category with a ground_truth/ folder needs one per "
                    "defective image; remove ground_truth/ to use it as image-level data)"
                )
            test.append(Sample(path, 1, defect, category, mask_path, has_masks))
    if not test:
        raise DatasetError(
            f"category {category!r}: no {extensions} images in the sub-folders of {test_dir}"
        )
    return train, test


class ImageDataset(Dataset):
    """Images and masks of a list of samples, decoded once into memory as uint8.

    Every image is resized to ``image_size`` x ``image_size`` (bilinear with antialiasing;
    masks nearest), then centre-cropped to ``crop_size`` when given; grayscale images become
    3-channel RGB. Masks are binarized: > 127 (0/1-coded masks: > 0), or every non-zero value
    for samples with ``mask_nonzero`` (VisA's instance-numbered masks). Normal images and
    categories without pixel ground truth get all-zero masks.

    Items are ``(image [3, S, S] float32 in [0, 1], mask [1, S, S] float32 in {0, 1}, label)``
    with S = ``crop_size or image_size``.

    Attributes:
        samples: the samples, in order.
        labels: their labels (0 normal, 1 anomalous).
        images: [N, 3, S, S] uint8.
        masks: [N, 1, S, S] bool.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, crop_size: int | None = None):
        if len(samples) == 0:
            raise DatasetError("ImageDataset needs at least one sample")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_size is not None and not 1 <= crop_size <= image_size:
            raise ValueError(f"crop_size must be in [1, image_size={image_size}], got {crop_size}")
        self.samples = list(samples)
        self.labels = [sample.label for sample in self.samples]
        self.image_size = image_size
        self.crop_size = crop_size
        workers = min(8, os.cpu_count() or 1, len(self.samples))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = list(
                tqdm(
                    pool.map(self._load, self.samples),
                    total=len(self.samples),
                    desc=f"decoding {self.samples[0].category}",
                    disable=len(self.samples) <= PROGRESS_MIN_IMAGES,
                    leave=False,
                )
            )
        self.images = torch.stack([image for image, _ in loaded])  # [N, 3, S, S] uint8
        self.masks = torch.stack([mask for _, mask in loaded])  # [N, 1, S, S] bool

    @property
    def has_masks(self) -> bool:
        """Whether every sample comes from a category with pixel ground truth."""
        return all(sample.has_masks for sample in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image = self.images[index].float() / 255.0  # [3, S, S]
        mask = self.masks[index].float()  # [1, S, S]
        return image, mask, self.labels[index]

    def _fit(self, tensor: Tensor, interpolation: InterpolationMode) -> Tensor:
        """[C, H, W] -> [C, S, S]: resize to image_size, then centre-crop to crop_size."""
        size = [self.image_size, self.image_size]
        tensor = TF.resize(tensor, size, interpolation=interpolation, antialias=True)
        if self.crop_size is not None:
            tensor = TF.center_crop(tensor, [self.crop_size, self.crop_size])
        return tensor

    def _load(self, sample: Sample) -> tuple[Tensor, Tensor]:
        """One sample -> (image [3, S, S] uint8, mask [1, S, S] bool)."""
        raw = decode(sample.path, "RGB")  # [3, H, W]
        image = self._fit(raw, InterpolationMode.BILINEAR)  # [3, S, S]
        if sample.mask_path is None:
            if sample.label == 1 and sample.has_masks:
                raise DatasetError(
                    f"defective image {sample.path} has no mask_path, but its category "
                    f"{sample.category!r} has pixel ground truth (has_masks=True)"
                )
            return image, torch.zeros((1, *image.shape[1:]), dtype=torch.bool)
        mask = decode(sample.mask_path, "L")  # [1, H, W]
        if mask.shape[1:] != raw.shape[1:]:
            raise DatasetError(
                f"mask {sample.mask_path} is {mask.shape[2]}x{mask.shape[1]} pixels but its "
                f"image {sample.path} is {raw.shape[2]}x{raw.shape[1]}"
            )
        threshold = 0 if sample.mask_nonzero or mask.max() <= 1 else 127
        mask = (mask > threshold).to(torch.uint8)
        return image, self._fit(mask, InterpolationMode.NEAREST).bool()
