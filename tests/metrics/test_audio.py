"""DCASE metrics against hand-computed cases: pAUC (McClish-standardised, as the official
evaluators via scikit-learn), domain AUCs, harmonic means, per-section and per-machine values."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from clad.metrics import audio_metric_names, evaluate_audio_scores, harmonic_mean, partial_auc
from clad.metrics.audio import auc, domain_auc

# 10 normal clips scored 0..9, two anomalies at 9.5 and 5.5. The ROC curve: TPR 0.5 from FPR 0
# (9.5 beats every normal), TPR 1 from FPR 0.4 (5.5 beats the six normals 0..5).
LABELS = np.array([0] * 10 + [1, 1])
SCORES = np.array([*range(10), 9.5, 5.5], dtype=float)


def mcclish(raw_area: float, max_fpr: float) -> float:
    """The standardisation scikit-learn applies: 0.5 (1 + (A - p^2/2) / (p - p^2/2))."""
    low, high = max_fpr**2 / 2, max_fpr
    return 0.5 * (1 + (raw_area - low) / (high - low))


def test_auc_by_hand():
    # pairs (anomaly > normal): 10 for 9.5, 6 for 5.5, out of 2 x 10
    assert auc(LABELS, SCORES) == pytest.approx(16 / 20)


def test_partial_auc_by_hand():
    # raw area for FPR in [0, 0.1]: TPR 0.5 over a width of 0.1 = 0.05
    expected = mcclish(0.05, 0.1)
    assert expected == pytest.approx(0.5 * (1 + 0.045 / 0.095))
    assert partial_auc(LABELS, SCORES) == pytest.approx(expected)
    # FPR <= 0.15: still TPR 0.5 throughout, raw area 0.075
    assert partial_auc(LABELS, SCORES, max_fpr=0.15) == pytest.approx(mcclish(0.075, 0.15))


def test_partial_auc_bounds_and_undefined():
    assert partial_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)
    # every anomaly below every normal: raw area 0, standardised 0.5 (1 - 0.005 / 0.095)
    assert partial_auc([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2]) == pytest.approx(mcclish(0.0, 0.1))
    assert math.isnan(partial_auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="max_fpr"):
        partial_auc(LABELS, SCORES, max_fpr=0.0)


def test_harmonic_mean_as_dcase_takes_it():
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / (1 / 0.5 + 1 / 1.0))
    assert harmonic_mean([0.6, float("nan"), 0.6]) == pytest.approx(0.6)
    # a zero is floored at machine epsilon (scipy.stats.hmean(np.maximum(v, eps)))
    assert harmonic_mean([0.0, 1.0]) == pytest.approx(2 / (1 / sys.float_info.epsilon + 1))
    assert math.isnan(harmonic_mean([]))


def test_domain_auc_uses_the_domains_normals_and_every_anomaly():
    # source normals 0.1, 0.2; target normals 0.6, 0.7; anomalies 0.5 (source), 0.8 (target)
    labels = [0, 0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.7, 0.5, 0.8]
    domains = ["source", "source", "target", "target", "source", "target"]
    # source: both anomalies beat both source normals -> 1
    assert domain_auc(labels, scores, domains, "source") == pytest.approx(1.0)
    # target: 0.8 beats 0.6 and 0.7, 0.5 beats neither -> 2 / 4
    assert domain_auc(labels, scores, domains, "target") == pytest.approx(0.5)


def test_evaluate_audio_scores_with_domains_by_hand():
    # section_00 as in the previous test; section_01 perfectly separated in both domains
    labels = [0, 0, 0, 0, 1, 1] + [0, 0, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.7, 0.5, 0.8] + [0.1, 0.2, 0.9, 0.95]
    sections = ["section_00"] * 6 + ["section_01"] * 4
    domains = [
        "source",
        "source",
        "target",
        "target",
        "source",
        "target",
        "source",
        "target",
        "source",
        "target",
    ]
    values = evaluate_audio_scores(labels, scores, sections, domains)
    # section_00, all clips: pairs won 0.5 > {0.1, 0.2} and 0.8 > all four -> 6 / 8
    assert values["auc/section_00"] == pytest.approx(6 / 8)
    assert values["auc_source/section_00"] == pytest.approx(1.0)
    assert values["auc_target/section_00"] == pytest.approx(0.5)
    # pAUC, 4 normals: FPR steps of 0.25; at FPR 0 the top score 0.8 gives TPR 0.5 -> raw 0.05
    assert values["pauc/section_00"] == pytest.approx(mcclish(0.05, 0.1))
    assert values["auc/section_01"] == values["pauc/section_01"] == 1.0
    assert values["auc"] == pytest.approx((6 / 8 + 1.0) / 2)
    assert values["pauc"] == pytest.approx((mcclish(0.05, 0.1) + 1.0) / 2)
    assert values["auc_source"] == pytest.approx(1.0)
    assert values["auc_target"] == pytest.approx(0.75)
    terms = [1.0, 0.5, mcclish(0.05, 0.1), 1.0, 1.0, 1.0]
    assert values["hmean"] == pytest.approx(len(terms) / sum(1 / v for v in terms))
    assert set(values) == set(audio_metric_names(sections, with_domains=True))


def test_evaluate_audio_scores_without_domains():
    values = evaluate_audio_scores(LABELS, SCORES, ["id_00"] * 12, [None] * 12)
    assert set(values) == {"auc", "pauc", "hmean", "auc/id_00", "pauc/id_00"}
    assert values["auc"] == pytest.approx(0.8)
    assert values["hmean"] == pytest.approx(harmonic_mean([0.8, mcclish(0.05, 0.1)]))


def test_metric_names_and_input_checks():
    assert audio_metric_names(["id_02", "id_00", "id_02"], with_domains=False) == (
        "auc",
        "pauc",
        "hmean",
        "auc/id_00",
        "pauc/id_00",
        "auc/id_02",
        "pauc/id_02",
    )
    assert "auc_target/section_00" in audio_metric_names(["section_00"], with_domains=True)
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_audio_scores([0, 1], [0.1, 0.2], ["id_00"], [None, None])
    with pytest.raises(ValueError, match="domains"):
        evaluate_audio_scores([0, 1], [0.1, 0.2], ["s", "s"], ["source", "elsewhere"])
