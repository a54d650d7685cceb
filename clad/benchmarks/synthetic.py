"""Seeded synthetic image categories with drawn defects and exact masks: the entry point.

Six categories (``SYNTHETIC_CATEGORIES``): textures ``stripes``, ``checker``, ``weave`` and
objects ``disc``, ``nut``, ``capsule``, each with its own defect kinds (``scratch``, ``hole``,
``stain``, ``missing``, ``extra``). The modules behind this one:

- ``clad.benchmarks.synthetic_drawing``: the drawing (scenes, defects, masks, per-image seeds);
- ``clad.benchmarks.synthetic_layouts``: the files of the ``mvtec`` (MVTec AD), ``visa`` and
  ``mvtec_ad2`` layouts (``LAYOUTS``), and the VisA split file;
- ``clad.benchmarks.generated``: the ``.complete`` markers and atomic writes every generator
  shares.

Every image has its own ``numpy.random.Generator`` seeded with
``(seed, crc32(category), crc32(split or defect), index)``, so equal parameters give
byte-identical files (on one platform) and asking for more images leaves the first ones as
they were. All sizes are fractions of the image side, so any ``image_size`` in [32, 1024] draws
the same scene.

Command line::

    python main.py generate synthetic --out data/synthetic --seed 0
    python main.py generate synthetic --out data/synthetic_visa --layout visa
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clad.benchmarks.generated import is_complete, write_folder
from clad.benchmarks.synthetic_drawing import (
    GENERATOR_VERSION,
    SYNTHETIC_CATEGORIES,
    category_spec,
    check_image_size,
)
from clad.benchmarks.synthetic_layouts import (
    LAYOUTS,
    check_split_file,
    validation_count,
    write_category_files,
    write_visa_split,
)


def generation_params(
    category: str,
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    layout: str = "mvtec",
) -> dict[str, int | str]:
    """Validated parameters of one category, as recorded in its ``.complete`` marker.

    The ``mvtec`` layout records no ``layout`` key (its markers are as they always were); the
    others record theirs, so a folder written in another layout never counts as complete and
    is rewritten.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown synthetic layout {layout!r}; known: {', '.join(LAYOUTS)}")
    category_spec(category)
    check_image_size(image_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, count in (
        ("n_train", n_train),
        ("n_test_good", n_test_good),
        ("n_test_per_defect", n_test_per_defect),
    ):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    params: dict[str, int | str] = {
        "generator_version": GENERATOR_VERSION,
        "category": category,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
    }
    if layout != "mvtec":
        params["layout"] = layout
    if layout == "mvtec_ad2":
        params["n_validation"] = validation_count(n_train)
    return params


def generate_category(
    root: Path | str,
    category: str,
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    layout: str = "mvtec",
) -> Path:
    """Write one category to ``root/category`` unless it is already there with these parameters.

    The files are written to a hidden temporary folder next to the target, which is renamed
    into place only once complete, with a ``.complete`` marker (JSON of the parameters, the
    layout among them) inside; a killed write leaves no half folder under the category's name.
    A folder from an earlier generation with other parameters or another layout is replaced; a
    folder without a marker (not written by this generator) is never touched. In the ``visa``
    layout the root's ``split_csv/1cls.csv`` is then rebuilt to list every VisA-layout
    category under the root; a split file that the generator did not write is never touched
    (refused before anything is written).

    Returns:
        The category folder.
    """
    params = generation_params(
        category, seed, image_size, n_train, n_test_good, n_test_per_defect, layout
    )
    root = Path(root)
    target = root / category
    if layout == "visa":
        check_split_file(root)
    if not is_complete(target, params):
        write_category(target, params)
    if layout == "visa":
        write_visa_split(root)
    return target


def write_category(target: Path, params: dict) -> None:
    """Write ``params``' category atomically to ``target`` (see ``generate_category``)."""

    def write(partial: Path) -> dict:
        write_category_files(partial, params)
        return params

    write_folder(target, write, owner="synthetic generator")


def generate_dataset(
    root: Path | str,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    image_size: int = 64,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_per_defect: int = 4,
    layout: str = "mvtec",
) -> Path:
    """Write the synthetic categories (all of ``SYNTHETIC_CATEGORIES`` by default) under
    ``root`` in ``layout`` (``LAYOUTS``), skipping those already complete with the same
    parameters.

    Returns:
        ``root``.
    """
    if isinstance(categories, str):
        raise TypeError(f"categories must be a list of names, got the string {categories!r}")
    names = list(SYNTHETIC_CATEGORIES if categories is None else categories)
    for category in names:
        generation_params(
            category, seed, image_size, n_train, n_test_good, n_test_per_defect, layout
        )
    for category in names:
        generate_category(
            root,
            category=category,
            seed=seed,
            image_size=image_size,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_per_defect=n_test_per_defect,
            layout=layout,
        )
    return Path(root)
