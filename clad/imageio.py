"""Reading image files: the extensions that count as images, and decoding to uint8 tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clad.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def decode(path: Path, mode: str) -> Tensor:
    """Read an image file as uint8 [C, H, W] in PIL ``mode`` ("RGB": C=3, "L": C=1).

    Raises:
        DatasetError: naming the file, when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            array = np.array(image.convert(mode))  # [H, W, 3] or [H, W], uint8
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    if array.ndim == 2:
        array = array[..., None]  # [H, W, 1]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [C, H, W]
