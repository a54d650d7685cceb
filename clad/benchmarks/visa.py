"""VisA reader: the official split file -> train and test samples of one category.

Expected layout (the official release, and the synthetic set with ``layout: visa``)::

    <root>/split_csv/1cls.csv                       object,split,label,image,mask
    <root>/<category>/Data/Images/Normal/*.JPG
    <root>/<category>/Data/Images/Anomaly/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png      (non-zero pixels mark the defect)

The split file ``split_csv/1cls.csv`` (VisA's one-class protocol) decides which image is train
or test: ``split`` is ``train`` or ``test``, ``label`` ``normal`` or ``anomaly``; ``image`` and
``mask`` are paths relative to ``<root>``, ``mask`` empty for normal images. VisA's masks number
the defect instances (1, 2, 3, ... rather than 255), so every non-zero pixel counts as defective
(``Sample.mask_nonzero``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from clad.errors import DatasetError
from clad.records import Sample

SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
SPLITS = ("train", "test")
LABELS = ("normal", "anomaly")
ANOMALY = "anomaly"  # the defect name of VisA's anomalous samples (the split file has no kinds)


def read_split_file(root: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of ``root/split_csv/1cls.csv`` with their line numbers, columns checked."""
    path = root / SPLIT_FILE
    if not path.is_file():
        raise DatasetError(
            f"VisA split file {path} not found; expected {SPLIT_FILE.as_posix()} under the "
            f"dataset root, with columns {','.join(COLUMNS)} (as in the official release)"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DatasetError(
                    f"VisA split file {path} lacks the column(s) {', '.join(missing)}; its "
                    f"header is {','.join(header) or '(empty)'}, expected {','.join(COLUMNS)}"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                rows.append((reader.line_num, {k: (row.get(k) or "").strip() for k in COLUMNS}))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read VisA split file {path}: {err}") from err
    return rows


def listed_path(root: Path, text: str, where: str, column: str) -> Path:
    """``root / text`` for a path column of the split file, refused when it leads outside the
    root (an absolute path elsewhere, or ``..``): the split file names the dataset's own
    files."""
    path = root / text
    base = Path(os.path.abspath(root))
    if not Path(os.path.abspath(base / text)).is_relative_to(base):
        raise DatasetError(
            f"{where}: {column} {text!r} is outside the dataset root {root}; the split file's "
            "paths are relative to the root"
        )
    return path


def read_category_visa(root: Path | str, category: str) -> tuple[list[Sample], list[Sample]]:
    """List the train and test samples of one VisA category from ``split_csv/1cls.csv``.

    Returns:
        (train, test): train holds the category's ``train`` rows (all normal) sorted by path;
        test holds its normal ``test`` rows first, then the anomalous ones, each sorted by path.
        Every sample has ``mask_nonzero=True``; anomalous ones have the defect ``"anomaly"``.

    Raises:
        DatasetError: when the root or the split file is missing, the split file lacks a
            column, the category has no rows (naming those present), a row has an unknown split
            or label, a training row is anomalous, an anomalous row has no mask, a listed
            image or mask file does not exist or lies outside the root (naming the file and the
            csv line), or an image is listed twice (naming both lines: in train and test it
            would leak the test image into training; twice in one split it would count twice).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    rows = read_split_file(root)
    split_path = root / SPLIT_FILE
    mine = [(line, row) for line, row in rows if row["object"] == category]
    if not mine:
        present = ", ".join(sorted({row["object"] for _, row in rows})) or "none"
        raise DatasetError(
            f"category {category!r} has no rows in {split_path}; categories listed there: {present}"
        )
    train: list[Sample] = []
    test_good: list[Sample] = []
    test_bad: list[Sample] = []
    listed: dict[str, tuple[int, str]] = {}  # normalised image path -> (line, split)
    for line, row in mine:
        where = f"{split_path} line {line}"
        split, label = row["split"], row["label"]
        if split not in SPLITS:
            raise DatasetError(
                f"{where}: split {split!r} unknown; expected one of {', '.join(SPLITS)}"
            )
        if label not in LABELS:
            raise DatasetError(
                f"{where}: label {label!r} unknown; expected one of {', '.join(LABELS)}"
            )
        if not row["image"]:
            raise DatasetError(f"{where}: the image column is empty")
        image = listed_path(root, row["image"], where, "image")
        key = os.path.normpath(os.path.abspath(image))
        if key in listed:
            first, first_split = listed[key]
            consequence = (
                "a test image in the training set leaks it"
                if first_split != split
                else "it would be counted twice"
            )
            raise DatasetError(
                f"{split_path}: image {row['image']} is listed twice, line {first} ({first_split})"
                f" and line {line} ({split}): {consequence}; keep one row"
            )
        listed[key] = (line, split)
        if not image.is_file():
            raise DatasetError(f"{where}: image {image} does not exist")
        if label == "normal":
            sample = Sample(image, 0, "good", category, None, True, mask_nonzero=True)
            (train if split == "train" else test_good).append(sample)
            continue
        if split == "train":
            raise DatasetError(
                f"{where}: an anomalous training image ({image}); VisA's one-class protocol "
                "trains on normal images only"
            )
        if not row["mask"]:
            raise DatasetError(
                f"{where}: anomalous image {image} has an empty mask column; every anomalous "
                "row needs its mask (Data/Masks/Anomaly/<name>.png)"
            )
        mask = listed_path(root, row["mask"], where, "mask")
        if not mask.is_file():
            raise DatasetError(f"{where}: mask {mask} of image {image} does not exist")
        test_bad.append(Sample(image, 1, ANOMALY, category, mask, True, mask_nonzero=True))
    if not train:
        raise DatasetError(f"category {category!r}: no train rows in {split_path}")
    test = sorted(test_good, key=lambda s: s.path) + sorted(test_bad, key=lambda s: s.path)
    if not test:
        raise DatasetError(f"category {category!r}: no test rows in {split_path}")
    return sorted(train, key=lambda s: s.path), test
