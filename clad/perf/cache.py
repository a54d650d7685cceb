"""The decoded-image cache of the speed benchmarks (``memory-bank`` and ``parity``): one
MVTec-layout category read once, resized, and kept as uint8 tensors so every implementation and
every process sees the same pixels.

A cache file is ``<cache_dir>/<category>_<size>_<key>.pt``, the key a hash of what was read:
the data folder's resolved path and, for every file of the category, its relative path, size
and modification time (and ``CACHE_VERSION``). Another data folder, or a file added, removed or
changed, gives another file: a benchmark never scores stale data. Files are written atomically
(``clad.tracking.files.atomic_write``), and one that does not load (a truncated or damaged file)
is built again.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from clad.errors import DatasetError
from clad.tracking.files import atomic_write

CACHE_VERSION = 1  # bump when what a cache file holds changes
KEYS = ("train", "test", "masks", "labels")


def data_key(data: Path, category: str, image_size: int) -> str:
    """16 hex digits of SHA-256 over the resolved data folder, the image size and the listing
    (relative path, size, mtime in ns) of every file under ``data/category``."""
    folder = data / category
    digest = hashlib.sha256(
        f"{CACHE_VERSION}\n{data.resolve()}\n{category}\n{image_size}\n".encode()
    )
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _build(data: Path, category: str, image_size: int) -> dict[str, torch.Tensor]:
    from clad.benchmarks.mvtec import ImageDataset, read_category

    train, test = read_category(data, category)
    train_set, test_set = ImageDataset(train, image_size), ImageDataset(test, image_size)
    return {
        "train": train_set.images,  # [N, 3, S, S] uint8
        "test": test_set.images,
        "masks": test_set.masks,  # [M, 1, S, S] bool
        "labels": torch.tensor(test_set.labels),
    }


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    """The cache file's tensors, or None when it does not load or lacks one (a line says so)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, damaged pickle, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        print(f"[perf] cache {path} does not load ({reason}): building it again")
        return None
    if not isinstance(data, dict) or any(key not in data for key in KEYS):
        print(f"[perf] cache {path} lacks {', '.join(KEYS)}: building it again")
        return None
    return data


def category_cache(
    data: Path, category: str, image_size: int, cache_dir: Path
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The cache file of ``data/category`` at ``image_size`` and its tensors (``train``,
    ``test`` [N, 3, S, S] uint8, ``masks`` [M, 1, S, S] bool, ``labels`` [M]), built first
    when missing or damaged.

    Raises:
        DatasetError: naming ``--data`` when the folder or the category is missing.
    """
    if not data.is_dir():
        raise DatasetError(
            f"--data {data}: no such folder; pass an MVTec-layout dataset root (the folder "
            "that holds <category>/train and <category>/test)"
        )
    if not (data / category).is_dir():
        found = ", ".join(sorted(p.name for p in data.iterdir() if p.is_dir())) or "none"
        raise DatasetError(
            f"--category {category}: no folder {data / category}; categories in --data: {found}"
        )
    path = cache_dir / f"{category}_{image_size}_{data_key(data, category, image_size)}.pt"
    if path.is_file():
        cached = _load(path)
        if cached is not None:
            return path, cached
    built = _build(data, category, image_size)
    atomic_write(path, lambda handle: torch.save(built, handle))
    return path, built


def category_cache_or_exit(
    data: Path, category: str, image_size: int, cache_dir: Path
) -> tuple[Path, dict[str, torch.Tensor]]:
    """``category_cache`` for a command: a missing or unreadable dataset is one ``error:``
    line on stderr and exit code 2, as for ``main.py``."""
    try:
        return category_cache(data, category, image_size, cache_dir)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def teacher_path(cache: Path, smoke: bool) -> Path:
    """EfficientAD's distilled teacher beside the image cache it was distilled from, keyed the
    same way (another data folder or image set: another teacher)."""
    suffix = "_smoke" if smoke else ""
    return cache.with_name(f"efficientad_teacher_{cache.stem}{suffix}.pt")
