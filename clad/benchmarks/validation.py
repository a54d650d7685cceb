"""The validation split: normal training images held out for model selection and thresholds."""

from __future__ import annotations

import numpy as np

from clad.errors import ConfigError
from clad.records import Sample


def split_validation(
    train: list[Sample], fraction: float, seed: int, category: str
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``round(fraction * n)`` (at least 1) normal training images, chosen by a
    permutation seeded with (seed, category), for model selection and thresholds."""
    if len(train) < 2:
        raise ConfigError(
            f"category {category!r}: {len(train)} training image(s); at least 2 are needed "
            "(one to train on, one held out for validation)"
        )
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    key = [seed, *category.encode()]
    order = np.random.default_rng(key).permutation(len(train))
    val_idx = set(order[:n_val].tolist())
    fit = [s for i, s in enumerate(train) if i not in val_idx]
    val = [s for i, s in enumerate(train) if i in val_idx]
    return fit, val
