"""MVTec AD 2 reader: a category folder -> train, validation and public test samples.

Expected layout (the official release, and the synthetic set with ``layout: mvtec_ad2``)::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png
    <root>/<category>/test_public/good/*.png
    <root>/<category>/test_public/bad/*.png
    <root>/<category>/test_public/ground_truth/bad/<stem>_mask.png   (0/255)
    <root>/<category>/test_private/, test_private_mixed/              (no labels)

The mask path is the one of MVTec's own dataset class in the code utilities shipped with the
release (``mvtec_ad_2_public_offline.py``: the ground truth of ``test_public/bad/<name>.png`` is
``test_public/ground_truth/bad/<name>_mask.png``, 255 = anomalous). ``validation/good`` is the
dataset's own validation split (normal images for model selection and thresholds), read as is.
``test_private`` and ``test_private_mixed`` have no public labels: they are scored by MVTec's
evaluation server only, so asking for them is refused.
"""

from __future__ import annotations

from pathlib import Path

from clad.benchmarks.mvtec import category_folder, list_folders, list_images
from clad.errors import DatasetError
from clad.imageio import IMAGE_EXTENSIONS
from clad.records import Sample

TEST_SPLITS = ("test_public", "test_private", "test_private_mixed")
PUBLIC_TEST = "test_public"
BAD = "bad"  # the defect name of MVTec AD 2's anomalous samples (one folder for all kinds)
EVALUATION_SERVER = "https://benchmark.mvtec.com"


def check_test_split(test_split: str) -> None:
    """Refuse every test split but ``test_public``, saying why."""
    if test_split == PUBLIC_TEST:
        return
    if test_split in TEST_SPLITS:
        raise DatasetError(
            f"MVTec AD 2's {test_split} set has no public labels: its images are scored by "
            f"MVTec's evaluation server ({EVALUATION_SERVER}) only, so no metric can be "
            f"computed here; use dataset.test_split {PUBLIC_TEST!r}"
        )
    raise DatasetError(
        f"unknown MVTec AD 2 test split {test_split!r}; known: {', '.join(TEST_SPLITS)}"
    )


def _images(folder: Path, category: str, what: str) -> list[Path]:
    """The images of a folder that must exist and hold some."""
    if not folder.is_dir():
        raise DatasetError(f"category {category!r}: missing {what} folder {folder}")
    paths = list_images(folder)
    if not paths:
        extensions = "/".join(IMAGE_EXTENSIONS)
        raise DatasetError(f"category {category!r}: no {extensions} images in {folder}")
    return paths


def read_category_ad2(
    root: Path | str, category: str, test_split: str = PUBLIC_TEST
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """List the train, validation and public test samples of one MVTec AD 2 category.

    Returns:
        (train, validation, test): ``train/good`` and ``validation/good`` sorted by name; test
        holds ``test_public/good`` first, then ``test_public/bad`` (defect ``"bad"``, with
        masks), each sorted by name.

    Raises:
        DatasetError: when ``test_split`` is a private set (no public labels) or unknown; when
            the root, the category, ``train/good``, ``validation/good`` or ``test_public`` is
            missing or empty; when images lie directly in ``test_public/`` or it holds folders
            other than good/, bad/ and ground_truth/; or when a bad image has no mask.
    """
    check_test_split(test_split)
    folder = category_folder(root, category)
    train_paths = _images(folder / "train" / "good", category, "training")
    validation_paths = _images(
        folder / "validation" / "good", category, "validation (MVTec AD 2's own normal images)"
    )
    test_dir = folder / PUBLIC_TEST
    if not test_dir.is_dir():
        raise DatasetError(f"category {category!r}: missing test folder {test_dir}")
    loose = list_images(test_dir)
    if loose:
        raise DatasetError(
            f"category {category!r}: {len(loose)} image(s) directly in {test_dir} (e.g. "
            f"{loose[0].name}); test images belong in {PUBLIC_TEST}/good/ or {PUBLIC_TEST}/bad/"
        )
    other = [p.name for p in list_folders(test_dir) if p.name not in ("good", BAD, "ground_truth")]
    if other:
        raise DatasetError(
            f"category {category!r}: unexpected folder(s) {', '.join(other)} in {test_dir}; "
            f"MVTec AD 2's {PUBLIC_TEST} holds good/, bad/ and ground_truth/bad/ only"
        )
    good_dir, bad_dir = test_dir / "good", test_dir / BAD
    good = list_images(good_dir) if good_dir.is_dir() else []
    bad = list_images(bad_dir) if bad_dir.is_dir() else []
    if not good and not bad:
        extensions = "/".join(IMAGE_EXTENSIONS)
        raise DatasetError(
            f"category {category!r}: no {extensions} images in {good_dir} or {bad_dir}"
        )
    mask_dir = test_dir / "ground_truth" / BAD
    train = [Sample(path, 0, "good", category) for path in train_paths]
    validation = [Sample(path, 0, "good", category) for path in validation_paths]
    test = [Sample(path, 0, "good", category) for path in good]
    for path in bad:
        mask_path = mask_dir / f"{path.stem}_mask.png"
        if not mask_path.is_file():
            raise DatasetError(
                f"category {category!r}: defective image {path} has no mask; expected "
                f"{mask_path} (MVTec AD 2's {PUBLIC_TEST} has one per bad image)"
            )
        test.append(Sample(path, 1, BAD, category, mask_path))
    return train, validation, test
