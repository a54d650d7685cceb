"""Continual-learning metrics: pure functions over a results matrix.

``R[t, c]`` is a metric (higher = better) on test set c after training steps 0..t; rows are
training steps, columns test sets. A column is a task (the T x T task matrix) or a category (the
T x C category matrix of a protocol whose steps learn several categories together); ``learned[c]``
is the step at which column c was learned (``c`` itself for a T x T matrix, the default), and
cells with ``t < learned[c]`` are evaluations of something not yet seen. Every function reads the
matrix "after step t" (``upto``, default the last row T - 1) and ignores rows beyond it. NaN
marks a cell that is unavailable (a task without masks, a detector without maps) or not yet
evaluated; terms involving it are left out of every average, and a metric with no term left is
NaN, never 0.

Forgetting, as each paper defines it (all from the same matrix):

- ``average_forgetting``: Chaudhry et al. 2018, the drop from the best value since learning
  (UCAD's "FM", DNE's, most continual anomaly-detection papers);
- ``pyclad_forgetting``: pyCLAD's ``ForgettingMeasure`` as released, which also averages the
  task just learned, against its values before it was learned;
- ``relative_forgetting``: CLAD's relative form, used on the pixel F1;
- the gap to joint training (ReplayCAD's "FM": a joint model's final average minus the
  continual one's) needs the joint run and is computed where both are, in the sweep report
  (``clad.tracking.comparison``).
"""

from __future__ import annotations

import numpy as np

CHANCE_LEVEL = 0.5
"""FWT baseline b_k for AUROC metrics: the AUROC of scores independent of the labels."""

AUROC_METRICS = ("image_auroc", "pixel_auroc")
RELATIVE_FORGETTING_METRICS = ("pixel_f1_best", "pixel_f1_val")


def _matrix(results: np.ndarray) -> np.ndarray:
    matrix = np.asarray(results, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a steps x columns results matrix, got shape {matrix.shape}")
    return matrix


def _learned(matrix: np.ndarray, learned: np.ndarray | None) -> np.ndarray:
    """The step at which each column was learned: ``learned``, or the column's own index for a
    square task matrix."""
    if learned is None:
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"a {matrix.shape[0]} x {matrix.shape[1]} matrix needs ``learned``: the step at "
                "which each column was learned"
            )
        return np.arange(matrix.shape[1])
    steps = np.asarray(learned, dtype=int)
    if steps.shape != (matrix.shape[1],):
        raise ValueError(f"learned has {steps.shape} entries for {matrix.shape[1]} columns")
    return steps


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


def final_average(
    results: np.ndarray, upto: int | None = None, learned: np.ndarray | None = None
) -> float:
    """Average performance over what has been learned so far.

    A_t = mean_{c: learned[c] <= t} R[t, c] (for a task matrix (1 / (t + 1)) Σ_{k=0}^{t}
    R[t, k]): the average accuracy A_k of Chaudhry et al. ("Riemannian Walk for Incremental
    Learning", ECCV 2018) and, at t = T - 1, ACC of Lopez-Paz & Ranzato ("Gradient Episodic
    Memory", NeurIPS 2017); over a category matrix, the mean over categories the papers of
    multi-class steps report. NaN cells are left out of the mean.

    Args:
        results: [T, C] matrix R.
        upto: step t (default T - 1).
        learned: [C] step at which each column was learned (default: column k at step k).

    Returns:
        A_t, or NaN when every R[t, c] with learned[c] <= t is NaN.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    steps = _learned(matrix, learned)
    return _nanmean(matrix[t, steps <= t])


def average_forgetting(
    results: np.ndarray, upto: int | None = None, learned: np.ndarray | None = None
) -> float:
    """Average forgetting of Chaudhry et al. ("Riemannian Walk for Incremental Learning", 2018).

    f_c^t = max_{l in [learned[c], t-1]} R[l, c] - R[t, c] for each column learned before step
    t: the drop from the best value it had since it was learned. F_t = mean of f_c^t over those
    columns ((1/t) Σ_{k<t} f_k^t for a task matrix). Chaudhry et al. take the max over all
    earlier steps, where their a_{l,k} exists only for l >= k; the zero-shot cells R[l, c],
    l < learned[c], that this harness also records are likewise excluded. Positive =
    forgetting; f_c^t < 0 only when c is now better than it ever was. Unlike BWT, which compares
    with R[learned[c], c], it measures the drop from the best point. UCAD's "FM" (Liu et al.,
    AAAI 2024) and DNE's forgetting are this measure.

    Args:
        results: [T, C] matrix R.
        upto: step t (default T - 1).
        learned: [C] step at which each column was learned (default: column k at step k).

    Returns:
        F_t; NaN when nothing was learned before step t or no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    steps = _learned(matrix, learned)
    earlier = np.flatnonzero(steps < t)
    if earlier.size == 0:
        return float("nan")
    best = np.array([_nanmax(matrix[steps[c] : t, c]) for c in earlier])
    return _nanmean(best - matrix[t, earlier])


def pyclad_forgetting(results: np.ndarray, upto: int | None = None) -> float:
    """pyCLAD's forgetting measure (lifelonglab/pyCLAD, ``metrics/continual/
    forgetting_measure.py``, ``ForgettingMeasure.compute`` as released up to commit 9fe99d4),
    on the square task matrix M (pyCLAD's concept matrix):

        FM_t = (1 / (t + 1)) Σ_{j=0}^{t} (max_{i < t} M[i, j] - M[t, j]),   FM_0 = 0.

    It differs from Chaudhry's ``average_forgetting`` in two ways: the mean also takes the task
    just learned (j = t), whose "best earlier value" was measured before it was learned (so
    learning a task well lowers FM), and the max runs over every earlier row, including
    zero-shot cells i < j. pyCLAD's later releases drop the j = t term. NaN cells are left out of
    the max and the mean (pyCLAD's released code propagates them).

    Args:
        results: [T, T] task matrix M.
        upto: step t (default T - 1).

    Returns:
        FM_t (0 at t = 0, as pyCLAD reports).
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError("pyCLAD's forgetting is defined on the square task matrix")
    if t == 0:
        return 0.0
    best = np.array([_nanmax(matrix[:t, j]) for j in range(t + 1)])  # max_{i<t} M[i, j]
    return _nanmean(best - matrix[t, : t + 1])


def relative_forgetting(
    results: np.ndarray, upto: int | None = None, learned: np.ndarray | None = None
) -> float:
    """CLAD's relative forgetting, used on the pixel F1 (Bugarin et al., CVPRW 2024).

    As computed by the CLAD benchmark code (github.com/projectclad769/clad,
    ``src/utilities/utility_ad.py``, function ``forgetting``, called after each task in
    ``src/strategy_ad.py`` on the best-threshold pixel F1):

        F^rel_t = (1/t) Σ_{k<t} max(0, max_{l in [0, t-1]} (1 - R[t, k] / R[l, k])),

    which for R >= 0 is max(0, 1 - R[t, k] / max_{l in [0, t-1]} R[l, k]): the drop from the best
    earlier value as a fraction of it, clipped at 0 per task (no credit for improvement); over
    a category matrix, the mean over the columns learned before step t. Note
    the reference runs over all earlier rows, including l < k (the task evaluated zero-shot,
    before it was learned), unlike ``average_forgetting``. Differences from the CLAD code, which
    assumes complete matrices: NaN cells are left out (a term whose R[t, k] or every R[l, k] is
    NaN, and the average is over the remaining terms); a reference max <= 0 gives 0 for the term
    (CLAD divides by 0 and its running max stays 0); t = 0 gives NaN (CLAD logs 0).

    Args:
        results: [T, C] matrix R (e.g. pixel F1 in [0, 1]).
        upto: step t (default T - 1).
        learned: [C] step at which each column was learned (default: column k at step k).

    Returns:
        F^rel_t in [0, 1]; NaN at t = 0 or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    earlier = np.flatnonzero(_learned(matrix, learned) < t)
    if earlier.size == 0:
        return float("nan")
    reference = np.array([_nanmax(matrix[:t, c]) for c in earlier])  # max_{l<t} R[l, c]
    current = matrix[t, earlier]
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(reference > 0, np.maximum(0.0, 1.0 - current / reference), 0.0)
    drop[np.isnan(reference) | np.isnan(current)] = np.nan
    return _nanmean(drop)


def backward_transfer(
    results: np.ndarray, upto: int | None = None, learned: np.ndarray | None = None
) -> float:
    """Backward transfer of Lopez-Paz & Ranzato ("Gradient Episodic Memory", NeurIPS 2017).

    BWT_t = mean over columns learned before t of (R[t, c] - R[learned[c], c]) ((1/t)
    Σ_{k<t} (R[t, k] - R[k, k]) for a task matrix): how learning later steps changed each
    earlier column relative to just after it was learned. Negative = forgetting.

    Args:
        results: [T, C] matrix R.
        upto: step t (default T - 1).
        learned: [C] step at which each column was learned (default: column k at step k).

    Returns:
        BWT_t; NaN at t = 0 or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    steps = _learned(matrix, learned)
    earlier = np.flatnonzero(steps < t)
    if earlier.size == 0:
        return float("nan")
    return _nanmean(matrix[t, earlier] - matrix[steps[earlier], earlier])


def forward_transfer(
    results: np.ndarray,
    baseline: float | np.ndarray,
    upto: int | None = None,
    learned: np.ndarray | None = None,
) -> float:
    """Forward transfer of Lopez-Paz & Ranzato ("Gradient Episodic Memory", NeurIPS 2017).

    FWT_t = mean over columns learned at steps 1..t of (R[learned[c] - 1, c] - b_c) ((1/t)
    Σ_{k=1}^{t} (R[k-1, k] - b_k) for a task matrix): how well each column is handled just
    before it is learned, relative to a baseline b_c (GEM uses a randomly initialised model; for
    AUROC the chance level 0.5 is the natural baseline).

    Args:
        results: [T, C] matrix R.
        baseline: b_c, a scalar or a [C] vector.
        upto: step t (default T - 1).
        learned: [C] step at which each column was learned (default: column k at step k).

    Returns:
        FWT_t; NaN at t = 0 or when no term is defined.
    """
    matrix = _matrix(results)
    t = _step(matrix, upto)
    steps = _learned(matrix, learned)
    b = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (matrix.shape[1],))
    later = np.flatnonzero((steps >= 1) & (steps <= t))
    if later.size == 0:
        return float("nan")
    return _nanmean(matrix[steps[later] - 1, later] - b[later])


def summarize(
    matrices: dict[str, np.ndarray],
    upto: int | None = None,
    transfer: bool = True,
    category_matrices: dict[str, np.ndarray] | None = None,
    learned: np.ndarray | None = None,
) -> dict[str, float]:
    """CL metrics of every results matrix after step ``upto``.

    For every metric m, over the category matrix when there is one (the task matrix
    otherwise; the two are the same when every task holds one category): ``final_avg/m``
    (``final_average``), ``forgetting/m`` (``average_forgetting``, Chaudhry et al. 2018) and
    ``bwt/m`` (``backward_transfer``, GEM); for the AUROC metrics ``image_auroc`` and
    ``pixel_auroc``: ``fwt/m`` (``forward_transfer``, GEM) with the chance level b = 0.5 as
    baseline; for ``pixel_f1_best`` and ``pixel_f1_val``: ``rel_forgetting/m``
    (``relative_forgetting``, CLAD's relative form). Over the task matrix:
    ``forgetting_pyclad/m`` (``pyclad_forgetting``).

    Args:
        matrices: ``{metric: [T, T] task matrix}``; cells may be NaN (unavailable or not yet
            run).
        upto: step t (default T - 1 of each matrix).
        transfer: whether ``fwt/*`` is a transfer measure for these matrices; False for a
            strategy whose row k-1 has already seen task k (joint training), where it is left
            out.
        category_matrices: ``{metric: [T, C] category matrix}``, or None.
        learned: [C] the step at which each category was learned (with
            ``category_matrices``).

    Returns:
        ``{"<cl_metric>/<metric>": value}``; undefined values are NaN.
    """
    summary: dict[str, float] = {}
    for name, task_results in matrices.items():
        if category_matrices is None:
            results, steps = task_results, None
        else:
            results, steps = category_matrices[name], learned
        summary[f"final_avg/{name}"] = final_average(results, upto, steps)
        summary[f"forgetting/{name}"] = average_forgetting(results, upto, steps)
        summary[f"forgetting_pyclad/{name}"] = pyclad_forgetting(task_results, upto)
        summary[f"bwt/{name}"] = backward_transfer(results, upto, steps)
        if name in AUROC_METRICS and transfer:
            summary[f"fwt/{name}"] = forward_transfer(results, CHANCE_LEVEL, upto, steps)
        if name in RELATIVE_FORGETTING_METRICS:
            summary[f"rel_forgetting/{name}"] = relative_forgetting(results, upto, steps)
    return summary
