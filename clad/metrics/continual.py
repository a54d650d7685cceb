"""Continual-learning metrics: pure functions over a T x T results matrix.

``R[t, k]`` is a metric (higher = better) on task k's test set after training on tasks 0..t; rows
are training steps, columns test tasks, and cells with k > t are evaluations of tasks not yet
seen. Every function reads the matrix "after step t" (``upto``, default the last row T - 1) and
ignores rows beyond it. NaN marks a cell that is unavailable (a task without masks, a detector
without maps) or not yet evaluated; terms involving it are left out of every average, and a
metric with no term left is NaN, never 0.
"""

from __future__ import annotations

import numpy as np

CHANCE_LEVEL = 0.5
"""FWT baseline b_k for AUROC metrics: the AUROC of scores independent of the labels."""

AUROC_METRICS = ("image_auroc", "pixel_auroc")
RELATIVE_FORGETTING_METRICS = ("pixel_f1_best", "pixel_f1_val")


def _matrix(results: np.ndarray) -> np.ndarray:
    matrix = np.asarray(results, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square T x T results matrix, got shape {matrix.shape}")
    return matrix


def _step(matrix: np.ndarray, upto: int | None) -> int:
    n_tasks = matrix.shape[0]
    t = n_tasks - 1 if upto is None else int(upto)
    if not 0 <= t < n_tasks:
        raise ValueError(f"upto must lie in [0, {n_tasks - 1}], got {upto}")
    return t


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (silently) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _nanmax(values: np.ndarray) -> float:
    """Max of the non-NaN entries; NaN (silently) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.max()) if kept.size else float("nan")


def final_average(results: np.ndarray, upto: int | None = None) -> float:
    """Average performance over the tasks seen so far.

    A_t = (1 / (t + 1)) Σ_{k=0}^{t} R[t, k]: the average accuracy A_k of Chaudhry et al.
    ("Riemannian Walk for Incremental Learning", ECCV 2018) and, at t = T - 1, ACC of Lopez-Paz &
    Ranzato ("Gradient Episodic Memory", NeurIPS 2017). NaN cells are left out of the mean.

    Args:
        results: [T, T] matrix R.
        upto: step t (default T - 1).

    Returns:
        A_t, or NaN when every R[t, k], k <= t, is NaN.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    return _nanmean(matrix[t, : t + 1])


def average_forgetting(results: np.ndarray, upto: int | None = None) -> float:
    """Average forgetting of Chaudhry et al. ("Riemannian Walk for Incremental Learning", 2018).

    f_k^t = max_{l in [k, t-1]} R[l, k] - R[t, k] for each earlier task k < t: the drop from the
    best value the task had since it was learned. F_t = (1/t) Σ_{k<t} f_k^t. Chaudhry et al. take
    the max over all earlier steps, where their a_{l,k} exists only for l >= k; the zero-shot
    cells R[l, k], l < k, that this harness also records are likewise excluded. Positive =
    forgetting; f_k^t < 0 only when task k is now better than it ever was. Unlike BWT, which
    compares with R[k, k], it measures the drop from the best point.

    Args:
        results: [T, T] matrix R.
        upto: step t (default T - 1).

    Returns:
        F_t; NaN at t = 0 (nothing to forget) or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    if t == 0:
        return float("nan")
    best = np.array([_nanmax(matrix[k:t, k]) for k in range(t)])  # [t], max_{l in [k, t-1]}
    return _nanmean(best - matrix[t, :t])


def relative_forgetting(results: np.ndarray, upto: int | None = None) -> float:
    """CLAD's relative forgetting, used on the pixel F1 (Bugarin et al., CVPRW 2024).

    As computed by the CLAD benchmark code (github.com/projectclad769/clad,
    ``src/utilities/utility_ad.py``, function ``forgetting``, called after each task in
    ``src/strategy_ad.py`` on the best-threshold pixel F1):

        F^rel_t = (1/t) Σ_{k<t} max(0, max_{l in [0, t-1]} (1 - R[t, k] / R[l, k])),

    which for R >= 0 is max(0, 1 - R[t, k] / max_{l in [0, t-1]} R[l, k]): the drop from the best
    earlier value as a fraction of it, clipped at 0 per task (no credit for improvement). Note
    the reference runs over all earlier rows, including l < k (the task evaluated zero-shot,
    before it was learned), unlike ``average_forgetting``. Differences from the CLAD code, which
    assumes complete matrices: NaN cells are left out (a term whose R[t, k] or every R[l, k] is
    NaN, and the average is over the remaining terms); a reference max <= 0 gives 0 for the term
    (CLAD divides by 0 and its running max stays 0); t = 0 gives NaN (CLAD logs 0).

    Args:
        results: [T, T] matrix R (e.g. pixel F1 in [0, 1]).
        upto: step t (default T - 1).

    Returns:
        F^rel_t in [0, 1]; NaN at t = 0 or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    if t == 0:
        return float("nan")
    reference = np.array([_nanmax(matrix[:t, k]) for k in range(t)])  # [t], max_{l<t} R[l, k]
    current = matrix[t, :t]  # [t]
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(reference > 0, np.maximum(0.0, 1.0 - current / reference), 0.0)
    drop[np.isnan(reference) | np.isnan(current)] = np.nan
    return _nanmean(drop)


def backward_transfer(results: np.ndarray, upto: int | None = None) -> float:
    """Backward transfer of Lopez-Paz & Ranzato ("Gradient Episodic Memory", NeurIPS 2017).

    BWT_t = (1/t) Σ_{k<t} (R[t, k] - R[k, k]): how learning later tasks changed each earlier task
    relative to just after it was learned. Negative = forgetting.

    Args:
        results: [T, T] matrix R.
        upto: step t (default T - 1).

    Returns:
        BWT_t; NaN at t = 0 or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    if t == 0:
        return float("nan")
    return _nanmean(matrix[t, :t] - np.diag(matrix)[:t])


def forward_transfer(
    results: np.ndarray, baseline: float | np.ndarray, upto: int | None = None
) -> float:
    """Forward transfer of Lopez-Paz & Ranzato ("Gradient Episodic Memory", NeurIPS 2017).

    FWT_t = (1/t) Σ_{k=1}^{t} (R[k-1, k] - b_k): how well each task is handled just before it is
    learned, relative to a baseline b_k (GEM uses a randomly initialised model; for AUROC the
    chance level 0.5 is the natural baseline).

    Args:
        results: [T, T] matrix R.
        baseline: b_k, a scalar or a [T] vector.
        upto: step t (default T - 1).

    Returns:
        FWT_t; NaN at t = 0 or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    b = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (matrix.shape[0],))
    if t == 0:
        return float("nan")
    tasks = np.arange(1, t + 1)
    return _nanmean(matrix[tasks - 1, tasks] - b[tasks])


def summarize(
    matrices: dict[str, np.ndarray], upto: int | None = None, transfer: bool = True
) -> dict[str, float]:
    """CL metrics of every results matrix after step ``upto``.

    For every metric m: ``final_avg/m`` (``final_average``), ``forgetting/m``
    (``average_forgetting``, Chaudhry et al. 2018) and ``bwt/m`` (``backward_transfer``, GEM).
    For the AUROC metrics ``image_auroc`` and ``pixel_auroc``: ``fwt/m`` (``forward_transfer``,
    GEM) with the chance level b_k = 0.5 as baseline. For ``pixel_f1_best`` and
    ``pixel_f1_val``: ``rel_forgetting/m`` (``relative_forgetting``, CLAD's relative form).

    Args:
        matrices: ``{metric: [T, T] matrix}``; cells may be NaN (unavailable or not yet run).
        upto: step t (default T - 1 of each matrix).
        transfer: whether ``fwt/*`` is a transfer measure for these matrices; False for a
            strategy whose row k-1 has already seen task k (joint training), where it is left
            out.

    Returns:
        ``{"<cl_metric>/<metric>": value}``; undefined values are NaN.
    """
    summary: dict[str, float] = {}
    for name, results in matrices.items():
        summary[f"final_avg/{name}"] = final_average(results, upto)
        summary[f"forgetting/{name}"] = average_forgetting(results, upto)
        summary[f"bwt/{name}"] = backward_transfer(results, upto)
        if name in AUROC_METRICS and transfer:
            summary[f"fwt/{name}"] = forward_transfer(results, CHANCE_LEVEL, upto)
        if name in RELATIVE_FORGETTING_METRICS:
            summary[f"rel_forgetting/{name}"] = relative_forgetting(results, upto)
    return summary
