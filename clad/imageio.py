"""Reading image files: the extensions that count as images, and decoding to uint8 tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clad.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""PIL modes of more than 8 bits per pixel (16-bit grayscale PNG/TIFF, 32-bit integer or float),
which ``Image.convert("RGB")`` would clip to white rather than scale."""


def _to_uint8(image: Image.Image, path: Path) -> Image.Image:
    """A high-bit-depth grayscale image scaled to 8 bits by its type's range (16 bit: / 257)."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = array.astype(np.float64) / 257.0
    elif image.mode == "I" and array.min() >= 0 and array.max() <= 65535:
        scaled = array.astype(np.float64) / 257.0  # 16-bit data that PIL opened as 32-bit
    elif image.mode == "F" and array.min() >= 0.0 and array.max() <= 1.0:
        scaled = array.astype(np.float64) * 255.0
    else:
        raise DatasetError(
            f"cannot read image {path}: mode {image.mode} with values in [{array.min()}, "
            f"{array.max()}] has no known 8-bit scale; save it as 8- or 16-bit"
        )
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def decode(path: Path, mode: str) -> Tensor:
    """Read an image file as uint8 [C, H, W] in PIL ``mode`` ("RGB": C=3, "L": C=1). 16-bit
    grayscale images are scaled to 8 bits (``HIGH_BIT_DEPTH``); other modes convert as PIL does.

    Raises:
        DatasetError: naming the file, when it is missing, truncated, not an image, or of a
            bit depth with no known scale.
    """
    image: Image.Image
    try:
        with Image.open(path) as image:
            if image.mode in HIGH_BIT_DEPTH:
                image = _to_uint8(image, path)
            array = np.array(image.convert(mode))  # [H, W, 3] or [H, W], uint8
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    if array.ndim == 2:
        array = array[..., None]  # [H, W, 1]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [C, H, W]
