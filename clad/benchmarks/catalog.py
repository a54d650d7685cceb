"""What each dataset holds, by name, and the check of a dataset block against the disk.

Light on purpose (no torch, no image decoding): a configuration's categories are checked here
when it is loaded, before any data is read. The readers (``mvtec``, ``visa``, ...) take their
category names from here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from clad.errors import ConfigError

MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
CLAD_TASK_ORDER = (
    "hazelnut",
    "bottle",
    "cable",
    "capsule",
    "metal_nut",
    "pill",
    "toothbrush",
    "transistor",
    "zipper",
    "screw",
)
"""CLAD's task order: MVTec AD's ten object categories."""
VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
MVTEC_AD2_CATEGORIES = (
    "can",
    "fabric",
    "fruit_jelly",
    "rice",
    "sheet_metal",
    "vial",
    "wallplugs",
    "walnuts",
)
MVTEC3D_CATEGORIES = (
    "bagel",
    "cable_gland",
    "carrot",
    "cookie",
    "dowel",
    "foam",
    "peach",
    "potato",
    "rope",
    "tire",
)
DCASE2020_MACHINES = ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")
DCASE2022_MACHINES = ("bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve")


def synthetic_names(name: str) -> tuple[str, ...]:
    """The categories (machine types) a built-in generator draws."""
    if name == "synthetic3d":
        from clad.benchmarks.synthetic3d import SYNTHETIC_3D_CATEGORIES

        return SYNTHETIC_3D_CATEGORIES
    if name == "synthetic_audio":
        from clad.benchmarks.synthetic_audio import SYNTHETIC_MACHINES

        return SYNTHETIC_MACHINES
    from clad.benchmarks.synthetic_drawing import SYNTHETIC_CATEGORIES

    return SYNTHETIC_CATEGORIES


def default_categories(name: str) -> tuple[str, ...]:
    """The categories of dataset ``name`` when a configuration names none: the dataset's usual
    order (CLAD's ten MVTec AD objects for ``mvtec``)."""
    if name in ("synthetic", "synthetic3d", "synthetic_audio"):
        return synthetic_names(name)
    if name == "dcase2020":
        return DCASE2020_MACHINES
    if name == "dcase2022":
        return DCASE2022_MACHINES
    return {
        "mvtec3d": MVTEC3D_CATEGORIES,
        "visa": VISA_CATEGORIES,
        "mvtec_ad2": MVTEC_AD2_CATEGORIES,
    }.get(name, CLAD_TASK_ORDER)


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_categories(name: str, root: str | Path, categories: Sequence[str]) -> None:
    """Fail with a ``ConfigError`` naming ``dataset.categories`` or ``dataset.root`` when a
    category is unknown to a built-in generator (dataset ``name``) or has no folder under a
    real dataset's ``root`` (with the closest name), or when the root is missing or is one
    category's folder. Reads folder names only; no image is opened."""
    if name in ("synthetic", "synthetic3d", "synthetic_audio"):
        known = synthetic_names(name)
        for category in categories:
            if category not in known:
                raise ConfigError(
                    f"dataset.categories: {category!r} is not a {name} category"
                    f"{did_you_mean(category, known)}; known: {', '.join(known)}"
                )
        return
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"dataset.root: {root} does not exist or is not a folder (the {name} "
            "dataset's top folder, holding one folder per category)"
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        raise ConfigError(
            f"dataset.root: {root} is one category's folder (it holds train/ and test/); set "
            f"dataset.root to the folder above it, {root.resolve().parent}"
        )
    places = [root]
    if name in ("dcase2020", "dcase2022") and (root / "dev_data").is_dir():
        places.append(root / "dev_data")  # DCASE's archives unpack into dev_data/<machine>
    found = [name for place in places for name in _folders(place)]
    for category in categories:
        if not any((place / category).is_dir() for place in places):
            raise ConfigError(
                f"dataset.categories: {category!r} has no folder in {root}"
                f"{did_you_mean(category, found)}; folders there: {', '.join(found) or 'none'}"
            )
