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

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from clad.benchmarks.decode_cache import DecodeCache, DecodeCacheSetting, parallel_workers
from clad.errors import DatasetError
from clad.imageio import IMAGE_EXTENSIONS, decode
from clad.progress import progress
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
    with S = ``crop_size or image_size``. ``split`` (``train``, ``val``, ``test``) names the
    split in the decoding progress line.

    Decoding runs on a thread per core (``decode_cache.parallel_workers``), and each resized
    image and mask is kept in the decode cache (``decode_cache``: True for the user's cache, a
    folder, or False; ``clad.benchmarks.decode_cache``), so the next dataset over the same
    files at the same sizes reads them instead of decoding them again.

    Attributes:
        samples: the samples, in order.
        labels: their labels (0 normal, 1 anomalous).
        images: [N, 3, S, S] uint8.
        masks: [N, 1, S, S] bool.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        crop_size: int | None = None,
        split: str = "",
        decode_cache: DecodeCacheSetting = True,
    ):
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
        self.cache = DecodeCache.from_setting(decode_cache)
        with ThreadPoolExecutor(max_workers=parallel_workers(len(self.samples))) as pool:
            loaded = list(
                progress(
                    pool.map(self._load, self.samples),
                    desc=f"decoding {self.samples[0].category}" + (f" ({split})" if split else ""),
                    total=len(self.samples),
                    disable=len(self.samples) <= PROGRESS_MIN_IMAGES,
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

    def _cached(
        self, sources: list[Path], recipe: str, channels: int, dtype: torch.dtype, compute
    ) -> Tensor:
        """``compute()`` ([channels, S, S] of ``dtype``), through the decode cache when on."""
        if self.cache is None:
            return compute()
        side = self.crop_size or self.image_size
        recipe = f"{recipe}|resize {self.image_size}|crop {self.crop_size}"
        return self.cache.fetch(sources, recipe, (channels, side, side), dtype, compute)

    def _load(self, sample: Sample) -> tuple[Tensor, Tensor]:
        """One sample -> (image [3, S, S] uint8, mask [1, S, S] bool)."""
        if sample.mask_path is None and sample.label == 1 and sample.has_masks:
            raise DatasetError(
                f"defective image {sample.path} has no mask_path, but its category "
                f"{sample.category!r} has pixel ground truth (has_masks=True)"
            )
        image = self._cached(  # [3, S, S]
            [sample.path],
            "image|RGB|bilinear antialias",
            3,
            torch.uint8,
            lambda: self._fit(decode(sample.path, "RGB"), InterpolationMode.BILINEAR),
        )
        if sample.mask_path is None:
            return image, torch.zeros((1, *image.shape[1:]), dtype=torch.bool)
        rule = "nonzero" if sample.mask_nonzero else "above 127 (0/1-coded: above 0)"
        mask = self._cached(  # [1, S, S]
            [sample.mask_path, sample.path],
            f"mask|{rule}|nearest",
            1,
            torch.bool,
            lambda: self._mask(sample),
        )
        return image, mask

    def _mask(self, sample: Sample) -> Tensor:
        """A sample's mask, binarized and resized: [1, S, S] bool."""
        assert sample.mask_path is not None  # called for samples with a mask only
        mask = decode(sample.mask_path, "L")  # [1, H, W]
        width, height = image_size(sample.path)
        if mask.shape[1:] != (height, width):
            raise DatasetError(
                f"mask {sample.mask_path} is {mask.shape[2]}x{mask.shape[1]} pixels but its "
                f"image {sample.path} is {width}x{height}"
            )
        threshold = 0 if sample.mask_nonzero or mask.max() <= 1 else 127
        mask = (mask > threshold).to(torch.uint8)
        return self._fit(mask, InterpolationMode.NEAREST).bool()


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header.

    Raises:
        DatasetError: naming the file when it is missing or not an image.
    """
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
