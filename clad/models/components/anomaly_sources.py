"""Auxiliary images for detectors: anomaly-source textures and ImageNet penalty images.

- ``FolderTextures``: every image under a folder, searched recursively (DTD, the Describable
  Textures Dataset of Cimpoi et al., CVPR 2014, as CLAD and DRAEM use it through
  ``anomaly_source_path``; DTD's own layout is ``images/<class>/<name>.jpg``).
- ``ProceduralTextures``: a built-in, seeded source for when no folder is given: smooth
  colour noise, stripes, checkerboards, cells and grain with random colours, frequencies and
  angles. It stands in for DTD offline; it is not DTD (fewer kinds of structure, no natural
  photographs), and results with it are not comparable with DRAEM's published numbers.
- ``augment_texture``: DRAEM's augmentation of a source texture (3 of its 10 operations).
- ``PenaltyImages``: the images of an ImageNet-style folder (Tiny ImageNet, as CLAD passes it
  with ``imagenet_train_path``) for EfficientAD's penalty loss.

Textures and images are float tensors [3, S, S] in [0, 1]; every random choice comes from the
``torch.Generator`` passed in.
"""

from __future__ import annotations

import copy
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from clad.errors import DatasetError
from clad.imageio import IMAGE_EXTENSIONS, decode

log = logging.getLogger(__name__)


class TextureSource(Protocol):
    """Something that draws anomaly-source textures."""

    def sample(self, size: int, generator: torch.Generator) -> Tensor:
        """One texture [3, size, size] in [0, 1]."""
        ...


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively (hidden files and folders skipped), sorted."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _existing_folder(path: str | Path, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"{what} folder {root} does not exist (or is not a folder); check the path, or leave "
            "it unset"
        )
    return root


@lru_cache(maxsize=512)
def _load_resized(path: Path, size: int) -> Tensor:
    """uint8 [3, size, size]: the image squashed to a square (bilinear with antialiasing)."""
    import torchvision.transforms.functional as TF  # torchvision loads torch._dynamo: lazily

    image = decode(path, "RGB")  # [3, H, W] uint8
    return TF.resize(image, [size, size], antialias=True)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=generator))


class FolderTextures:
    """Textures read from the images under ``root`` (recursively; DTD's ``images/`` folder).

    Each draw picks a file uniformly and squashes it to ``size`` x ``size``, as DRAEM's code
    does. Decoded, resized images are cached (the last 512 per process).

    Raises:
        DatasetError: the folder is missing (naming it) or holds no images.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = _existing_folder(root, "anomaly source")
        self.files = find_images(self.root)
        if not self.files:
            raise DatasetError(
                f"anomaly source folder {self.root} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}), searched recursively"
            )

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, size: int, generator: torch.Generator) -> Tensor:
        path = self.files[_randint(generator, 0, len(self.files))]
        return _load_resized(path, size).float() / 255.0


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [0, 1): (y, x), each [S, S]."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return y, x


def _colours(generator: torch.Generator, count: int) -> Tensor:
    """``count`` random RGB colours [count, 3, 1, 1] in [0, 1]."""
    return torch.rand(count, 3, 1, 1, generator=generator)


def value_noise(size: int, cells: int, channels: int, generator: torch.Generator) -> Tensor:
    """Smooth noise [channels, S, S] in about [0, 1]: a random ``cells`` x ``cells`` grid,
    upsampled bicubically."""
    coarse = torch.rand(1, channels, cells + 1, cells + 1, generator=generator)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return fine[0].clamp(0, 1)


class ProceduralTextures:
    """Built-in seeded textures, used when no anomaly source folder is given.

    Kinds (picked uniformly per draw): smooth colour noise at 2-16 cells, stripes and
    checkerboards at 2-16 periods per side and any angle (sharp or soft edges) between two random
    colours, Voronoi-like cells with random colours, and colour grain. A layer of smooth noise
    (up to 30 % contrast) is mixed into every texture.
    """

    KINDS = ("noise", "stripes", "checker", "cells", "grain")

    def sample(self, size: int, generator: torch.Generator) -> Tensor:
        kind = self.KINDS[_randint(generator, 0, len(self.KINDS))]
        texture = getattr(self, f"_{kind}")(size, generator)  # [3, S, S]
        shading = value_noise(size, _randint(generator, 2, 9), 1, generator)
        weight = _uniform(generator, 0.0, 0.3)
        return ((1 - weight) * texture + weight * shading).clamp(0, 1)

    @staticmethod
    def _noise(size: int, generator: torch.Generator) -> Tensor:
        return value_noise(size, _randint(generator, 2, 17), 3, generator)

    @staticmethod
    def _waves(size: int, generator: torch.Generator, checker: bool) -> Tensor:
        y, x = _grid(size)
        angle = _uniform(generator, 0, math.pi)
        periods = _uniform(generator, 2, 16)
        u = x * math.cos(angle) + y * math.sin(angle)
        v = -x * math.sin(angle) + y * math.cos(angle)
        wave = torch.sin(2 * math.pi * periods * u)
        if checker:
            wave = wave * torch.sin(2 * math.pi * periods * v)
        sharpness = _uniform(generator, 1, 20)
        t = torch.sigmoid(sharpness * wave)[None]  # [1, S, S]
        low, high = _colours(generator, 2)
        return low * (1 - t) + high * t

    def _stripes(self, size: int, generator: torch.Generator) -> Tensor:
        return self._waves(size, generator, checker=False)

    def _checker(self, size: int, generator: torch.Generator) -> Tensor:
        return self._waves(size, generator, checker=True)

    @staticmethod
    def _cells(size: int, generator: torch.Generator) -> Tensor:
        count = _randint(generator, 4, 33)
        centres = torch.rand(count, 2, generator=generator)  # [K, 2] as (y, x)
        y, x = _grid(size)
        points = torch.stack([y, x], dim=-1).reshape(-1, 2)  # [S*S, 2]
        nearest = torch.cdist(points, centres).argmin(dim=1)  # [S*S]
        colours = torch.rand(count, 3, generator=generator)  # [K, 3]
        return colours[nearest].T.reshape(3, size, size)  # [3, S*S] -> [3, S, S]

    @staticmethod
    def _grain(size: int, generator: torch.Generator) -> Tensor:
        base = _colours(generator, 1)[0]  # [3, 1, 1]
        grain = torch.rand(3, size, size, generator=generator)
        amount = _uniform(generator, 0.2, 0.8)
        return (1 - amount) * base + amount * grain


def texture_source(path: str | None) -> TextureSource:
    """``FolderTextures(path)``, or the built-in ``ProceduralTextures`` when ``path`` is None
    (said in the log)."""
    if path:
        source = FolderTextures(path)
        log.info("anomaly source: %d images under %s", len(source), source.root)
        return source
    log.warning(
        "anomaly source: no anomaly_source_path given; using the built-in procedural textures "
        "(not DTD: results are not comparable with published DRAEM numbers)"
    )
    return ProceduralTextures()


# --------------------------------------------------------------------------- augmentation


def _autocontrast(x: Tensor) -> Tensor:
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def _hue_saturation(x: Tensor, hue: float, saturation: float) -> Tensor:
    """imgaug's ``AddToHueAndSaturation``: add ``hue`` (a fraction of the colour circle) and
    ``saturation`` (in [0, 1] units) in HSV."""
    hsv = kornia.color.rgb_to_hsv(x)  # [1, 3, S, S]: h in [0, 2 pi), s and v in [0, 1]
    h = torch.remainder(hsv[:, :1] + hue * 2 * math.pi, 2 * math.pi)
    s = (hsv[:, 1:2] + saturation).clamp(0, 1)
    return kornia.color.hsv_to_rgb(torch.cat([h, s, hsv[:, 2:]], dim=1))


AUGMENTATIONS = 10  # DRAEM's list of imgaug operations


def augment_texture(texture: Tensor, generator: torch.Generator) -> Tensor:
    """DRAEM's augmentation of a source texture [3, S, S]: three distinct operations of its ten,
    in random order (``randAugmenter`` in DRAEM's ``data_loader.py``):

    0. ``GammaContrast((0.5, 2), per_channel=True)``: a gamma per channel;
    1. ``MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))``: on RGB here (imgaug changes
       the luminance channel of a colour space);
    2. ``pillike.EnhanceSharpness()``: factor in (0, 2) (kornia's ``sharpness``, PIL's rule);
    3. ``AddToHueAndSaturation((-50, 50), per_channel=True)``: separate hue and saturation
       shifts of up to 50/255 in HSV;
    4. ``Solarize(0.5, threshold=(32, 128))``: with probability 0.5;
    5. ``Posterize()``: 1 to 8 bits;
    6. ``Invert()``; 7. ``pillike.Autocontrast()``; 8. ``pillike.Equalize()``;
    9. ``Affine(rotate=(-45, 45))``: corners filled with 0.

    These are torch/kornia versions of imgaug's operations; every random draw comes from
    ``generator``.
    """
    operations = torch.randperm(AUGMENTATIONS, generator=generator)[:3].tolist()
    x = texture[None]  # [1, 3, S, S]
    for op in operations:
        if op == 0:
            gammas = torch.tensor([_uniform(generator, 0.5, 2.0) for _ in range(3)])
            x = x.clamp_min(0) ** gammas.view(1, 3, 1, 1)
        elif op == 1:
            x = x * _uniform(generator, 0.8, 1.2) + _uniform(generator, -30, 30) / 255
        elif op == 2:
            x = kornia.enhance.sharpness(x, _uniform(generator, 0.0, 2.0))
        elif op == 3:
            hue, saturation = _uniform(generator, -50, 50), _uniform(generator, -50, 50)
            x = _hue_saturation(x, hue / 255, saturation / 255)
        elif op == 4:
            threshold = _uniform(generator, 32, 128) / 255
            if float(torch.rand((), generator=generator)) < 0.5:
                x = kornia.enhance.solarize(x, threshold)
        elif op == 5:
            x = kornia.enhance.posterize(x, _randint(generator, 1, 9))
        elif op == 6:
            x = 1.0 - x
        elif op == 7:
            x = _autocontrast(x)
        elif op == 8:
            x = kornia.enhance.equalize(x)
        else:
            angle = torch.tensor([_uniform(generator, -45, 45)])
            x = kornia.geometry.transform.rotate(x, angle)
        x = x.clamp(0, 1)
    return x[0]


# --------------------------------------------------------------------------- penalty images


class PenaltyImages(Dataset):
    """The images of an ImageNet-style folder for EfficientAD's penalty, at ``image_size`` (a
    side, or (H, W)) as the reference code makes them: resized to twice the size, then centre-
    cropped to it (the central quarter of the image); ``resized`` gives the same files at another
    size.

    ``root`` may be the Tiny ImageNet folder (``tiny-imagenet-200``: only its ``train/`` images
    are used, never ``val/`` or ``test/``) or any folder of images, searched recursively. Items are
    ``[3, S, S]`` float in [0, 1]; with ``grayscale_probability`` > 0 an item is turned to gray
    (3 equal channels) with that probability, from the global torch RNG (the paper uses 0.3).

    Raises:
        DatasetError: the folder is missing (naming it) or holds no images.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | tuple[int, int],
        grayscale_probability: float = 0.0,
    ) -> None:
        folder = _existing_folder(root, "ImageNet penalty (imagenet_train_path)")
        self.root = folder / "train" if (folder / "train").is_dir() else folder
        self.files = find_images(self.root)
        if not self.files:
            raise DatasetError(
                f"ImageNet penalty folder {self.root} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}), searched recursively"
            )
        self.image_size = image_size
        self.grayscale_probability = grayscale_probability

    def resized(self, image_size: int | tuple[int, int]) -> PenaltyImages:
        """The same images at another size (the file list is shared, not searched again)."""
        other = copy.copy(self)
        other.image_size = image_size
        return other

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        import torchvision.transforms.functional as TF  # torchvision loads torch._dynamo: lazily

        side = self.image_size
        size = [side, side] if isinstance(side, int) else list(side)
        image = decode(self.files[index], "RGB")  # [3, H, W] uint8
        # the reference code's pipeline: resize to twice the size, then the central crop
        image = TF.resize(image, [2 * size[0], 2 * size[1]], antialias=True)
        image = TF.center_crop(image, size).float() / 255.0
        if self.grayscale_probability > 0 and float(torch.rand(())) < self.grayscale_probability:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        return image
