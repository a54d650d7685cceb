"""Argument types and checks of detector constructors.

A constructor's type hints are its configuration schema (``clad.registry``), so ranges are
stated in the hints, with pydantic's types or ``Annotated[..., Field(...)]``; these are the
ones several detectors share. The checks run once, when a configuration is loaded
(``Detector.check_arguments``), before any data is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

Fraction = Annotated[float, Field(gt=0, le=1)]
"""A share in (0, 1]."""
Probability = Annotated[float, Field(ge=0, le=1)]
"""A probability in [0, 1]."""


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be an odd number, got {value}")
    return value


OddWindow = Annotated[int, Field(ge=1), AfterValidator(_odd)]
"""The side of a centred window: a positive odd number of pixels."""


def check_folder(path: str | None, field: str) -> None:
    """Fail naming ``field`` when ``path`` is given and is not a folder."""
    if path is not None and path != "" and not Path(path).is_dir():
        raise ValueError(f"{field}: {path} is not a folder")


def check_weights(weights: str, field: str = "weights") -> None:
    """``weights`` is ``"imagenet"``, ``"none"`` or an existing file."""
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ValueError(
            f"{field}: {weights} is not a file; give 'imagenet', 'none' (random init) or the "
            "path of a saved state dict"
        )


def check_side(input_size: tuple[int, int], multiple: int, minimum: int = 1) -> None:
    """The inputs' sides are multiples of ``multiple`` and at least ``minimum``."""
    height, width = input_size
    if height % multiple or width % multiple or min(height, width) < minimum:
        least = f" and at least {minimum}" if minimum > multiple else ""
        raise ValueError(
            f"input size {height}x{width}: the network needs sides divisible by {multiple}"
            f"{least}; set dataset.image_size (or dataset.crop_size) accordingly"
        )


def check_blur(sigma: float, input_size: tuple[int, int]) -> None:
    """``smoothing_sigma``'s Gaussian (radius ``int(4 sigma + 0.5)``, as ``gaussian_smooth``)
    fits inside the images."""
    height, width = input_size
    radius = int(4 * sigma + 0.5)
    if radius >= min(height, width):
        raise ValueError(
            f"smoothing_sigma: {sigma} blurs over {radius} px, more than the {height}x{width} "
            f"images allow; use at most {(min(height, width) - 1) / 4:.2f}"
        )
