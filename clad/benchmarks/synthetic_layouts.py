"""File layouts of the synthetic image categories: MVTec AD, VisA and MVTec AD 2.

Layout ``mvtec`` (as MVTec AD)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png   (mode L, 0/255)

The same draws can be written in two other layouts, read by their readers:

- ``visa`` (``clad.benchmarks.visa``): ``<category>/Data/Images/Normal/0000.JPG`` (training
  images first, then the normal test images), ``Data/Images/Anomaly/000.JPG`` (every defect
  kind in turn), ``Data/Masks/Anomaly/000.png`` (mode L, the defect's connected regions
  numbered 1, 2, ... as VisA's masks are), and ``<root>/split_csv/1cls.csv`` listing every
  VisA-layout category generated under ``<root>``. Images are JPEG (quality 95).
- ``mvtec_ad2`` (``clad.benchmarks.mvtec_ad2``): ``<category>/train/good/000.png``,
  ``validation/good/000.png`` (max(2, n_train // 5) more normal draws from their own seed
  stream), ``test_public/good/000.png``, ``test_public/bad/000.png`` (every defect kind in
  turn) and ``test_public/ground_truth/bad/000_mask.png`` (0/255).

The writers take a category's parameters (``clad.benchmarks.synthetic.generation_params``) and
draw with ``clad.benchmarks.synthetic_drawing``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from clad.benchmarks.generated import (
    MARKER,
    FileLock,
    read_marker,
    write_marker,
    write_text_atomically,
)
from clad.benchmarks.synthetic_drawing import (
    GENERATOR_VERSION,
    SYNTHETIC_CATEGORIES,
    Rendering,
    defect_kinds,
    image_rng,
    render_sample,
)

LAYOUTS = ("mvtec", "visa", "mvtec_ad2")
JPEG_QUALITY = 95  # VisA layout images
VISA_SPLIT_DIR = "split_csv"
VISA_SPLIT_NAME = "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def validation_count(n_train: int) -> int:
    """Normal ``validation/good`` images of the ``mvtec_ad2`` layout: max(2, n_train // 5)."""
    return max(2, n_train // 5)


def write_png(array: np.ndarray, path: Path) -> None:
    """uint8 [H, W, 3] -> RGB PNG, or [H, W] -> mode L PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_jpeg(array: np.ndarray, path: Path) -> None:
    """uint8 [H, W, 3] -> RGB JPEG of quality ``JPEG_QUALITY``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=JPEG_QUALITY)


def instance_mask(mask: np.ndarray) -> np.ndarray:
    """[S, S] bool -> [S, S] uint8: each 8-connected region numbered 1, 2, ... (VisA style)."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return np.minimum(labels, 255).astype(np.uint8)


def defect_jobs(params: dict) -> list[tuple[str, int]]:
    """(defect kind, index) of every defective image, kind by kind."""
    kinds = defect_kinds(params["category"])
    return [(kind, i) for kind in kinds for i in range(params["n_test_per_defect"])]


def file_width(count: int) -> int:
    """Digits of the zero-padded file numbers of ``count`` files: at least 3."""
    return max(3, len(str(count - 1)))


def draw(params: dict, split: str, index: int) -> Rendering:
    """The image ``index`` of ``split`` ("train", "validation", "good" or a defect kind)."""
    category, size = params["category"], params["image_size"]
    rng = image_rng(params["seed"], category, split, index)
    return render_sample(category, None if split in ("train", "validation") else split, size, rng)


def visa_names(params: dict) -> tuple[list[str], list[str], list[str]]:
    """File stems of the VisA layout: (training normals, test normals, anomalies)."""
    n_train, n_good = params["n_train"], params["n_test_good"]
    width = max(4, len(str(n_train + n_good - 1)))
    normal = [f"{i:0{width}d}" for i in range(n_train + n_good)]
    bad_width = file_width(len(defect_jobs(params)))
    anomalies = [f"{i:0{bad_width}d}" for i in range(len(defect_jobs(params)))]
    return normal[:n_train], normal[n_train:], anomalies


def write_visa_files(folder: Path, params: dict) -> None:
    """One category in the VisA layout (its split-file rows are ``visa_rows``)."""
    train_names, good_names, bad_names = visa_names(params)
    images = folder / "Data" / "Images"
    for split, names in (("train", train_names), ("good", good_names)):
        for index, name in enumerate(names):
            write_jpeg(draw(params, split, index).image, images / "Normal" / f"{name}.JPG")
    for (kind, index), name in zip(defect_jobs(params), bad_names, strict=True):
        drawn = draw(params, kind, index)
        write_jpeg(drawn.image, images / "Anomaly" / f"{name}.JPG")
        write_png(instance_mask(drawn.mask), folder / "Data" / "Masks" / "Anomaly" / f"{name}.png")


def visa_rows(params: dict) -> list[tuple[str, str, str, str, str]]:
    """The ``split_csv/1cls.csv`` rows of one VisA-layout category (paths relative to root)."""
    category = params["category"]
    train_names, good_names, bad_names = visa_names(params)
    base = f"{category}/Data"
    rows = [(category, "train", "normal", f"{base}/Images/Normal/{n}.JPG", "") for n in train_names]
    rows += [(category, "test", "normal", f"{base}/Images/Normal/{n}.JPG", "") for n in good_names]
    rows += [
        (
            category,
            "test",
            "anomaly",
            f"{base}/Images/Anomaly/{n}.JPG",
            f"{base}/Masks/Anomaly/{n}.png",
        )
        for n in bad_names
    ]
    return rows


def write_mvtec_ad2_files(folder: Path, params: dict) -> None:
    """One category in the MVTec AD 2 layout (public test set only)."""
    jobs = [
        ("train", "train/good", params["n_train"]),
        ("validation", "validation/good", params["n_validation"]),
        ("good", "test_public/good", params["n_test_good"]),
    ]
    for split, subdir, count in jobs:
        width = file_width(count)
        for index in range(count):
            write_png(draw(params, split, index).image, folder / subdir / f"{index:0{width}d}.png")
    bad = defect_jobs(params)
    width = file_width(len(bad))
    for number, (kind, index) in enumerate(bad):
        drawn = draw(params, kind, index)
        name = f"{number:0{width}d}"
        write_png(drawn.image, folder / "test_public" / "bad" / f"{name}.png")
        mask = drawn.mask.astype(np.uint8) * 255
        write_png(mask, folder / "test_public" / "ground_truth" / "bad" / f"{name}_mask.png")


def write_category_files(folder: Path, params: dict) -> None:
    """Draw and write every image and mask of one category under ``folder``, in the layout of
    its parameters."""
    layout = params.get("layout", "mvtec")
    if layout == "visa":
        return write_visa_files(folder, params)
    if layout == "mvtec_ad2":
        return write_mvtec_ad2_files(folder, params)
    category, seed, size = params["category"], params["seed"], params["image_size"]
    jobs = [
        ("train", "train/good", params["n_train"]),
        ("good", "test/good", params["n_test_good"]),
    ]
    jobs += [(d, f"test/{d}", params["n_test_per_defect"]) for d in defect_kinds(category)]
    for split, subdir, count in jobs:
        width = max(3, len(str(count - 1)))
        for index in range(count):
            rng = image_rng(seed, category, split, index)
            drawn = render_sample(category, None if split == "train" else split, size, rng)
            name = f"{index:0{width}d}"
            write_png(drawn.image, folder / subdir / f"{name}.png")
            if split not in ("train", "good"):
                mask = drawn.mask.astype(np.uint8) * 255
                write_png(mask, folder / "ground_truth" / split / f"{name}_mask.png")


def split_file_owned(root: Path) -> bool:
    """Whether ``root/split_csv/1cls.csv`` is absent or was written by this generator (its
    folder holds the generator's marker): a real VisA split file is never overwritten."""
    split_dir = root / VISA_SPLIT_DIR
    return not (split_dir / VISA_SPLIT_NAME).exists() or read_marker(split_dir) is not None


def check_split_file(root: Path) -> None:
    """Raise FileExistsError unless ``split_file_owned(root)``."""
    if not split_file_owned(root):
        raise FileExistsError(
            f"{root / VISA_SPLIT_DIR / VISA_SPLIT_NAME} exists but was not written by the "
            f"synthetic generator (no readable {VISA_SPLIT_DIR}/{MARKER} marker); a VisA-layout "
            "synthetic set needs a root of its own; move it away or choose another root"
        )


def visa_category_params(root: Path) -> list[dict]:
    """The markers of every complete VisA-layout category under ``root``: built-in categories
    in ``SYNTHETIC_CATEGORIES`` order first, then any others by name."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name[0] != "."):
        params = read_marker(folder)
        if isinstance(params, dict) and params.get("layout") == "visa":
            if params.get("category") == folder.name:
                found.append(params)
    order = {name: i for i, name in enumerate(SYNTHETIC_CATEGORIES)}
    return sorted(found, key=lambda p: (order.get(p["category"], len(order)), p["category"]))


def write_visa_split(root: Path | str) -> Path:
    """(Re)write ``root/split_csv/1cls.csv`` listing every complete VisA-layout category under
    ``root``, under a lock and atomically (a temporary file renamed over the old one); left as
    it is when already up to date.

    Raises:
        FileExistsError: when the split file exists but is not this generator's.
    """
    root = Path(root)
    split_dir = root / VISA_SPLIT_DIR
    target = split_dir / VISA_SPLIT_NAME
    check_split_file(root)
    split_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(split_dir / ".lock"):
        check_split_file(root)
        if read_marker(split_dir) is None:  # before the csv: a kill in between leaves it ours
            write_marker(split_dir, {"generator_version": GENERATOR_VERSION, "layout": "visa"})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(VISA_COLUMNS)
        for params in visa_category_params(root):
            writer.writerows(visa_rows(params))
        text = buffer.getvalue()
        if target.is_file() and target.read_text() == text:
            return target
        write_text_atomically(target, text)
    return target
