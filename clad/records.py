"""Small records shared by every layer: samples, tasks, detector scores and scored test sets.

Nothing here imports another clad module: readers, detectors, strategies, metrics and tracking
all speak through these types.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Sample:
    """One image of a category, as found on disk.

    Attributes:
        path: the image file.
        label: 0 for normal, 1 for anomalous.
        defect: defect kind (``"good"`` for normal images).
        mask_path: ground-truth mask file (anomalous images of categories with masks only).
        category: the category (task) the sample belongs to.
        has_masks: whether the category provides pixel ground truth at all. When False, pixel
            metrics for the task are not available (NaN), never invented.
        section: machine sounds only: the DCASE section or machine id (``"section_00"``,
            ``"id_02"``) that per-section metrics group by; None for images.
        domain: machine sounds only: ``"source"`` or ``"target"`` (DCASE 2021+ domain shift);
            None for images and for data without domains (DCASE 2020).
        mask_nonzero: how the mask file marks the defect. False (MVTec AD's 0/255 masks):
            values above 127, or above 0 when the mask holds only 0 and 1. True (VisA, whose
            masks number the defect instances 1, 2, 3, ...): every non-zero value.
    """

    path: Path
    label: int
    defect: str
    category: str
    mask_path: Path | None = None
    has_masks: bool = True
    section: str | None = None
    domain: str | None = None
    mask_nonzero: bool = False


def dataset_length(data: Dataset) -> int:
    """``len(data)``. Every dataset clad builds or passes on is map-style with a length; torch's
    ``Dataset`` type does not declare ``__len__``, so the type checker is told here, once."""
    return len(cast(Sized, data))


@dataclass(frozen=True)
class Task:
    """One experience of the stream: one or more categories, learnt together, with their train,
    validation and test splits.

    Datasets yield ``(image [3, H, W] float in [0, 1], mask [1, H, W] float in {0, 1}, label int)``.
    ``val`` holds normal training images only, held out for model selection and thresholds.
    ``test`` holds every category's test images; ``categories`` names the task's categories and
    ``category_tests`` holds each one's test set alone (results are reported per category;
    both are empty for a task built without them, which then counts as one category named
    ``name`` with ``test`` as its test set: see ``parts``).

    Machine sounds carry the grouping that DCASE's metrics need: ``test_sections`` and
    ``test_domains``, one entry per test clip in ``test``'s order (a domain is None for data
    without domains, DCASE 2020). Both are None for images.
    """

    task_id: int
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    has_masks: bool = True
    test_sections: tuple[str, ...] | None = None
    test_domains: tuple[str | None, ...] | None = None
    categories: tuple[str, ...] = ()
    category_tests: tuple[Dataset, ...] = ()
    category_has_masks: tuple[bool, ...] = ()

    def parts(self) -> list[Task]:
        """One task per category of this one, each with its own test set (this task itself when
        it holds one category): what results are reported for."""
        if len(self.categories) <= 1:
            return [self]
        return [
            Task(
                task_id=self.task_id,
                name=name,
                train=self.train,
                val=self.val,
                test=test,
                has_masks=has_masks,
            )
            for name, test, has_masks in zip(
                self.categories, self.category_tests, self.category_has_masks, strict=True
            )
        ]


@dataclass(frozen=True)
class Scores:
    """Detector output for a batch.

    Attributes:
        image: [B] image anomaly scores, higher = more anomalous.
        pixel: [B, H, W] anomaly maps at input resolution, or None for detectors without maps.
    """

    image: Tensor
    pixel: Tensor | None


@dataclass
class ScoredSet:
    """Scores of one dataset, in its order: labels [N], image scores [N], masks and maps
    [N, H, W] (or None), the seconds ``predict`` took, and, for a method that routes each image
    to one of its per-task parts, the task index of the part that scored it [N] (None for
    others)."""

    labels: np.ndarray
    image: np.ndarray
    masks: np.ndarray | None
    maps: np.ndarray | None
    seconds: float
    routes: np.ndarray | None = None
