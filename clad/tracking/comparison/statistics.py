"""Paired comparisons of strategies across seeds, with a percentile bootstrap interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clad.tracking.comparison.rows import IMAGE_METRICS, Row, metric_set
from clad.tracking.report import record_values

PAIR_METRICS = IMAGE_METRICS.pairs
MIN_PAIRED_SEEDS = 3


@dataclass
class Pair:
    detector: str
    axes: str
    a: str
    b: str
    metric: str
    seeds: list[int]
    mean: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0, on at least ``MIN_PAIRED_SEEDS`` seeds (with two, the
        percentile interval is just the two differences' range)."""
        enough = len(self.seeds) >= MIN_PAIRED_SEEDS
        return enough and math.isfinite(self.low) and (self.low > 0 or self.high < 0)


def paired_bootstrap(
    differences: np.ndarray, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of paired differences and its percentile bootstrap interval.

    Args:
        differences: [S] d_s = m_A(s) - m_B(s), one per seed.
        resamples: bootstrap resamples B; each draws S seeds with replacement.
        seed: seed of the numpy generator (the interval is reproducible).
        level: coverage of the interval.

    Returns:
        (mean d, lower, upper); the bounds are NaN with fewer than two seeds.
    """
    diffs = np.asarray(differences, dtype=float)
    if diffs.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, diffs.size, size=(resamples, diffs.size))  # [B, S]
    means = diffs[index].mean(axis=1)  # [B]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high)


def strategy_pairs(rows: Sequence[Row], metrics: Sequence[str] | None = None) -> list[Pair]:
    """Every pair of strategies of one detector (same other axes), on the seeds both finished,
    on ``metrics`` (by default the sweep's: ``PAIR_METRICS`` for images, AUC, pAUC and AUC
    forgetting for machine sounds)."""
    if metrics is None:
        metrics = metric_set(rows).pairs
    pairs = []
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.records:
            groups.setdefault((row.detector, row.axes_text()), []).append(row)
    for (detector, axes), group in groups.items():
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                common = sorted(set(first.records) & set(second.records))
                if not common:
                    continue
                for metric in metrics:
                    a = np.array(
                        [record_values(first.records[s]).get(metric, math.nan) for s in common]
                    )
                    b = np.array(
                        [record_values(second.records[s]).get(metric, math.nan) for s in common]
                    )
                    keep = np.isfinite(a) & np.isfinite(b)
                    if not keep.any():
                        continue
                    mean, low, high = paired_bootstrap(a[keep] - b[keep])
                    pairs.append(
                        Pair(
                            detector,
                            axes,
                            first.strategy,
                            second.strategy,
                            metric,
                            [s for s, k in zip(common, keep) if k],
                            mean,
                            low,
                            high,
                        )
                    )
    return pairs
