"""Dataset config -> a stream of tasks, one Avalanche experience per category."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset
from torch.utils.data import Dataset

from clad.benchmarks.drift import Corruption, DriftDataset
from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.mvtec_ad2 import read_category_ad2
from clad.benchmarks.protocols import PROTOCOLS
from clad.benchmarks.spec import DatasetConfig
from clad.benchmarks.synthetic import generate_dataset
from clad.benchmarks.validation import split_validation
from clad.benchmarks.visa import read_category_visa
from clad.records import Sample, Task

Reader = Callable[[str], tuple[list[Sample], list[Sample] | None, list[Sample]]]


def without_validation(read: Callable[[str], tuple[list[Sample], list[Sample]]]) -> Reader:
    """A (train, test) reader as a (train, None, test) one: the validation split is drawn."""

    def read3(category: str) -> tuple[list[Sample], None, list[Sample]]:
        train, test = read(category)
        return train, None, test

    return read3


def image_reader(config: DatasetConfig, root: Path) -> Reader:
    """The reader of one category's (train, validation, test) samples in the dataset's layout;
    a validation of None is drawn from train with ``val_fraction``."""
    layout = config.image_layout
    if layout == "visa":
        return without_validation(partial(read_category_visa, root))
    if layout == "mvtec_ad2":
        # MVTec AD 2 ships its own validation/good: used as is, val_fraction is ignored.
        return partial(read_category_ad2, root, test_split=config.test_split)
    return without_validation(partial(read_category, root))


def _read_3d(config: DatasetConfig, root: Path, categories: list[str]) -> Reader:
    """Generate the synthetic 3D set when needed; return a reader of one category's
    (train, None, test) samples."""
    from clad.benchmarks.mvtec3d import read_category_3d
    from clad.benchmarks.synthetic3d import generate_dataset_3d

    if config.name == "synthetic3d":
        gen = config.synthetic
        generate_dataset_3d(
            root,
            seed=gen.seed,
            categories=categories,
            image_size=gen.image_size,
            n_train=gen.n_train,
            n_test_good=gen.n_test_good,
            n_test_per_defect=gen.n_test_per_defect,
        )

    def read(category: str) -> tuple[list[Sample], None, list[Sample]]:
        # MVTec 3D-AD's validation/good images are normal training data here: the harness
        # draws its own seeded validation split from all of them (as for MVTec AD).
        train, validation, test = read_category_3d(root, category)
        return train + validation, None, test

    return read


def build_tasks(config: DatasetConfig, seed: int) -> list[Task]:
    """Read (generating the synthetic set first when needed) and stream the categories.

    Returns one ``Task`` per step of ``config.task_categories(seed)`` (one category each, or
    several learnt together, or the steps of a drift), each category read and decoded once; the
    datasets are those of an Avalanche ``benchmark_from_datasets`` scenario (train, val and test
    streams; a task's are the concatenation of its categories'), with each category's own test
    set in ``Task.category_tests``. Audio datasets (machine types as tasks) are read by
    ``clad.benchmarks.dcase.build_audio_tasks``.
    """
    if config.modality == "audio":
        from clad.benchmarks.dcase import build_audio_tasks

        return build_audio_tasks(config, seed)
    root = Path(config.root)
    categories = list(config.category_list)
    read = image_reader(config, root)
    make_dataset: Callable[..., Dataset] = partial(
        ImageDataset,
        image_size=config.image_size,
        crop_size=config.crop_size,
        decode_cache=config.decode_cache,
    )
    if config.use_3D_dataset:
        from clad.benchmarks.mvtec3d import RGBDDataset

        read = _read_3d(config, root, categories)
        rgbd = partial(
            RGBDDataset,
            image_size=config.image_size,
            mode=config.mode,
            crop_size=config.crop_size,
            decode_cache=config.decode_cache,
        )

        def make_dataset(samples: list[Sample], split: str = "") -> Dataset:
            return rgbd(samples)
    elif config.name == "synthetic":
        gen = config.synthetic
        generate_dataset(
            root,
            seed=gen.seed,
            categories=categories,
            image_size=gen.image_size,
            n_train=gen.n_train,
            n_test_good=gen.n_test_good,
            n_test_per_defect=gen.n_test_per_defect,
            layout=gen.layout,
        )
    steps = config.task_categories(seed)
    drift = PROTOCOLS[config.protocol].drift if config.protocol else None
    datasets: dict[str, tuple[Dataset, Dataset, Dataset, bool]] = {}

    def category_sets(category: str) -> tuple[Dataset, Dataset, Dataset, bool]:
        """(train, val, test, has_masks) of a category, read and decoded once."""
        if category not in datasets:
            fit, val, test = read(category)
            if val is None:
                fit, val = split_validation(fit, config.val_fraction, seed, category)
            has_masks = all(s.has_masks for s in test)
            datasets[category] = (
                make_dataset(fit, split="train"),
                make_dataset(val, split="val"),
                make_dataset(test, split="test"),
                has_masks,
            )
        return datasets[category]

    splits: dict[str, list[AvalancheDataset]] = {"train": [], "val": [], "test": []}
    parts: list[tuple[list[Dataset], list[bool]]] = []
    for step, names in enumerate(steps):
        trains, vals, tests, masks = [], [], [], []
        for name in names:
            train, val, test, has_masks = category_sets(categories[0] if drift else name)
            if drift is not None:  # the category corrupted as this step of the drift says
                train = DriftDataset(train, Corruption(drift, step, train=True))
                val = DriftDataset(val, Corruption(drift, step, train=True))
                test = DriftDataset(test, Corruption(drift, step, train=False))
            trains.append(train)
            vals.append(val)
            tests.append(test)
            masks.append(has_masks)
        for split, parts_of_split in (("train", trains), ("val", vals), ("test", tests)):
            splits[split].append(AvalancheDataset(parts_of_split))
        parts.append((tests, masks))
    scenario = benchmark_from_datasets(**splits)
    return [
        Task(
            task_id=i,
            name=task_name(names, i),
            train=scenario.train_stream[i].dataset,
            val=scenario.val_stream[i].dataset,
            test=scenario.test_stream[i].dataset,
            has_masks=all(parts[i][1]),
            categories=tuple(names),
            category_tests=tuple(parts[i][0]),
            category_has_masks=tuple(parts[i][1]),
        )
        for i, names in enumerate(steps)
    ]


def task_name(categories: tuple[str, ...], index: int) -> str:
    """A task's name: its category, ``a+b+c`` for up to three, else ``step<i>_<n>_categories``
    (names become parts of file names)."""
    if len(categories) <= 3:
        return "+".join(categories)
    return f"step{index}_{len(categories)}_categories"
