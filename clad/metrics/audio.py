"""Machine-sound metrics as DCASE Task 2 computes them: AUC, pAUC, per section, harmonic means.

The definitions follow the official evaluators (DCASE 2020: ``dcase2020_task2_evaluator``; DCASE
2022: ``dcase2022_task2_evaluator``), which call scikit-learn:

- **AUC** of a section: ``roc_auc_score`` over all its test clips (normal and anomalous, both
  domains): P(s_anomalous > s_normal) + 0.5 P(tie).
- **pAUC** of a section: ``roc_auc_score(y, s, max_fpr=0.1)`` over the same clips. Note that
  scikit-learn returns the *McClish-standardised* partial area: with A_p the raw area under the
  ROC curve for FPR in [0, p] (the curve interpolated at FPR = p),
  pAUC = 0.5 (1 + (A_p - p^2 / 2) / (p - p^2 / 2)),
  so chance gives 0.5 and a perfect detector 1. The DCASE task pages write the unstandardised
  A_p / p (chance p / 2 = 0.05); the evaluators, and so every published DCASE number (and
  AEGAN-AD's), use the standardised value, and so does this module.
- **Domain AUC** (DCASE 2021+): AUC_d of a section over its normal clips of domain d and its
  anomalous clips of *both* domains (``(domain == d) | anomalous`` in the 2022 evaluator).
- **Harmonic mean** as the evaluators take it: ``scipy.stats.hmean`` of the values floored at
  ``sys.float_info.epsilon``. DCASE 2021/2022's score of a machine type is the harmonic mean over
  its sections of {AUC_source, AUC_target, pAUC}; for DCASE 2020 (no domains) it is taken here
  over {AUC, pAUC} of each section.
- Per machine type, DCASE 2020 reports the *arithmetic* mean over machine ids of AUC and of pAUC.

Labels: 1 = anomalous (the positive class); higher score = more anomalous. A metric that is
undefined (one class only) is NaN and is left out of the means; a mean with nothing left is NaN.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from clad.metrics.image import as_array, binary_labels

MAX_FPR = 0.1
"""DCASE's pAUC range: FPR in [0, 0.1]."""

DOMAINS = ("source", "target")
AUDIO_TASK_METRICS = ("auc", "pauc", "auc_source", "auc_target", "hmean")
"""Per-machine-type metrics (one T x T matrix each); per-section ones are ``<metric>/<section>``
with metric in ``SECTION_METRICS``. ``auc_source``/``auc_target`` exist for data with domains."""
SECTION_METRICS = ("auc", "pauc", "auc_source", "auc_target")


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC (scikit-learn ``roc_auc_score``); NaN when only one class is present."""
    y = binary_labels(labels)
    s = as_array(scores, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def partial_auc(labels: Any, scores: Any, max_fpr: float = MAX_FPR) -> float:
    """McClish-standardised partial AUC over FPR in [0, ``max_fpr``], as DCASE computes it
    (scikit-learn ``roc_auc_score(..., max_fpr=max_fpr)``; formula in the module docstring).

    Returns:
        The pAUC (0.5 for a ranking no better than chance, 1 perfect); NaN with one class.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    y = binary_labels(labels)
    s = as_array(scores, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def harmonic_mean(values: Iterable[float]) -> float:
    """DCASE's harmonic mean: n / Σ 1 / max(v, ε) over the non-NaN values (ε = machine epsilon,
    as ``scipy.stats.hmean(np.maximum(values, sys.float_info.epsilon))`` in the evaluators).

    Returns:
        The harmonic mean, or NaN when no value is left.
    """
    array = np.asarray(list(values), dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return float("nan")
    floored = np.maximum(array, sys.float_info.epsilon)
    return float(array.size / np.sum(1.0 / floored))


def domain_auc(labels: Any, scores: Any, domains: Sequence[str | None], domain: str) -> float:
    """AUC of ``domain``: its normal clips against the anomalous clips of every domain
    (DCASE 2022 evaluator); NaN when the domain has no normal clip or there is no anomaly."""
    y = binary_labels(labels)
    s = as_array(scores, dtype=np.float64).ravel()
    in_domain = np.array([d == domain for d in domains], dtype=bool)
    keep = in_domain | y
    return auc(y[keep], s[keep])


def _nanmean(values: Iterable[float]) -> float:
    array = np.asarray(list(values), dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else float("nan")


def audio_metric_names(sections: Iterable[str], with_domains: bool) -> tuple[str, ...]:
    """Every matrix name of an audio run: the per-machine-type metrics, then per section
    (sorted) ``auc/<s>``, ``pauc/<s>`` and, with domains, ``auc_source/<s>``, ``auc_target/<s>``."""
    per_section = SECTION_METRICS if with_domains else SECTION_METRICS[:2]
    names = [m for m in AUDIO_TASK_METRICS if with_domains or m not in ("auc_source", "auc_target")]
    for section in sorted(set(sections)):
        names += [f"{metric}/{section}" for metric in per_section]
    return tuple(names)


def evaluate_audio_scores(
    labels: Any,
    scores: Any,
    sections: Sequence[str],
    domains: Sequence[str | None],
    max_fpr: float = MAX_FPR,
) -> dict[str, float]:
    """DCASE metrics of one machine type's test set.

    Args:
        labels: [N] clip labels, 1 = anomalous.
        scores: [N] clip anomaly scores.
        sections: [N] section (or machine id) of each clip.
        domains: [N] ``"source"``/``"target"``, or None for every clip of data without domains.
        max_fpr: pAUC's FPR limit (DCASE: 0.1).

    Returns:
        Per section s: ``auc/s``, ``pauc/s`` (and ``auc_source/s``, ``auc_target/s`` with
        domains). Per machine type: ``auc`` and ``pauc`` (arithmetic means over sections, the
        DCASE 2020 report), ``auc_source`` and ``auc_target`` (arithmetic means over sections,
        with domains), and ``hmean``: the harmonic mean over sections of {AUC_source, AUC_target,
        pAUC} (DCASE 2021/2022 score of a machine type), or of {AUC, pAUC} without domains.
    """
    y = binary_labels(labels)
    s = as_array(scores, dtype=np.float64).ravel()
    section_of = np.asarray(list(sections), dtype=object)
    domain_list = list(domains)
    if not len(y) == len(s) == len(section_of) == len(domain_list):
        raise ValueError(
            f"labels, scores, sections and domains differ in length: {len(y)}, {len(s)}, "
            f"{len(section_of)}, {len(domain_list)}"
        )
    with_domains = any(d is not None for d in domain_list)
    if with_domains and not all(d in DOMAINS for d in domain_list):
        raise ValueError(f"domains must all be one of {DOMAINS} (or all None)")
    values: dict[str, float] = {}
    harmonic_terms: list[float] = []
    for section in sorted(set(section_of.tolist())):
        keep = section_of == section
        values[f"auc/{section}"] = auc(y[keep], s[keep])
        values[f"pauc/{section}"] = partial_auc(y[keep], s[keep], max_fpr)
        if with_domains:
            kept_domains = [d for d, k in zip(domain_list, keep) if k]
            for domain in DOMAINS:
                values[f"auc_{domain}/{section}"] = domain_auc(
                    y[keep], s[keep], kept_domains, domain
                )
            harmonic_terms += [values[f"auc_source/{section}"], values[f"auc_target/{section}"]]
        else:
            harmonic_terms.append(values[f"auc/{section}"])
        harmonic_terms.append(values[f"pauc/{section}"])
    section_names = sorted(set(section_of.tolist()))
    summary = {
        "auc": _nanmean(values[f"auc/{x}"] for x in section_names),
        "pauc": _nanmean(values[f"pauc/{x}"] for x in section_names),
    }
    if with_domains:
        for domain in DOMAINS:
            summary[f"auc_{domain}"] = _nanmean(values[f"auc_{domain}/{x}"] for x in section_names)
    summary["hmean"] = harmonic_mean(harmonic_terms)
    return {**summary, **values}


OFFICIAL_SCORE = "official/hmean"
"""Summary key of the DCASE 2021/2022 official score (``official_score``)."""


def official_score(matrices: dict[str, Any], upto: int) -> float:
    """DCASE 2021/2022's official score after step ``upto``: one harmonic mean (``harmonic_mean``)
    over all machine types, sections and domains,

        Omega = h{ AUC_{m,n,d}, pAUC_{m,n} : m machine types, n their sections, d in (source,
        target) }

    taken here over the row ``upto`` of the per-section matrices (``auc_source/<n>``,
    ``auc_target/<n>``, ``pauc/<n>``), every column (machine type) of it; a section that a
    machine type does not have is NaN and left out. With as many terms per type, it is lower
    than the mean of the per-type harmonic means (``final_avg/hmean``) whenever the types
    differ (a harmonic mean of harmonic means). NaN for data without
    domains (DCASE 2020, whose evaluator reports arithmetic means over machine ids per type:
    ``auc`` and ``pauc``, and their averages ``final_avg/auc``, ``final_avg/pauc``).
    """
    terms: list[float] = []
    for name, matrix in matrices.items():
        metric = name.split("/", 1)[0]
        if "/" in name and metric in ("auc_source", "auc_target", "pauc"):
            terms += np.asarray(matrix, dtype=np.float64)[upto].tolist()
    has_domains = any(name.startswith("auc_source/") for name in matrices)
    return harmonic_mean(terms) if has_domains else float("nan")
