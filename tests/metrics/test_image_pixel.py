"""Per-task metrics: image AUROC/F1 by hand, pixel metrics against sklearn, AU-PRO against a
slow threshold-by-threshold reference, and evaluate_scores' contract."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from clad.metrics import (
    TASK_METRICS,
    aupro,
    compute_pro_curve,
    evaluate_scores,
    f1_at_threshold,
    f1_best,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pixel_f1_at_threshold,
    pixel_f1_best,
    pixel_metrics,
    validation_threshold,
)

# ---------------------------------------------------------------- image metrics


def test_image_auroc_perfect_inverted_tied_and_partial():
    labels = [0, 0, 1, 1]
    assert image_auroc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert image_auroc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5
    # Pairs (anomalous > normal): 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4.
    assert image_auroc(labels, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # One tied pair counts one half: 0.4 = 0.4 -> (1 + 0.5 + 1 + 1) / 4.
    assert image_auroc(labels, [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)


def test_image_auroc_is_nan_with_one_class_and_accepts_tensors():
    assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(image_auroc([1, 1], [0.1, 0.2]))
    labels, scores = torch.tensor([0, 1, 0, 1]), torch.tensor([0.1, 0.9, 0.3, 0.7])
    assert image_auroc(labels, scores) == 1.0


def test_image_labels_must_be_binary():
    with pytest.raises(ValueError, match="0 or 1"):
        image_auroc([0, 2, 1], [0.1, 0.2, 0.3])


# labels [0, 0, 1, 1, 1], scores [0.1, 0.6, 0.4, 0.7, 0.9]; predicted anomalous if score >= θ:
#   θ=0.9: TP1 FP0 FN2 -> F1 = 2/4 = 0.5
#   θ=0.7: TP2 FP0 FN1 -> F1 = 4/5 = 0.8
#   θ=0.6: TP2 FP1 FN1 -> F1 = 4/6
#   θ=0.4: TP3 FP1 FN0 -> F1 = 6/7   <- best
#   θ=0.1: TP3 FP2 FN0 -> F1 = 6/8
F1_LABELS = [0, 0, 1, 1, 1]
F1_SCORES = [0.1, 0.6, 0.4, 0.7, 0.9]


def test_f1_best_by_hand():
    f1, threshold = f1_best(F1_LABELS, F1_SCORES)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.4)


def test_f1_at_threshold_by_hand():
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 0.65) == pytest.approx(0.8)
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 0.4) == pytest.approx(6 / 7)  # >= is inclusive
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 0.05) == pytest.approx(6 / 8)
    assert f1_at_threshold(F1_LABELS, F1_SCORES, 1.0) == 0.0  # nothing flagged: TP = 0
    assert math.isnan(f1_at_threshold(F1_LABELS, F1_SCORES, float("nan")))


def test_f1_is_nan_without_anomalous_samples():
    assert all(math.isnan(v) for v in f1_best([0, 0, 0], [0.1, 0.5, 0.9]))
    assert math.isnan(f1_at_threshold([0, 0, 0], [0.1, 0.5, 0.9], 0.5))


def test_f1_best_matches_the_maximum_over_all_thresholds():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.4 * labels, 2)  # ties included
    f1, threshold = f1_best(labels, scores)
    every = [f1_at_threshold(labels, scores, t) for t in np.unique(scores)]
    assert f1 == pytest.approx(max(every))
    assert f1_at_threshold(labels, scores, threshold) == pytest.approx(f1)


# ---------------------------------------------------------------- pixel data and references


def random_pixel_set(seed: int, n: int = 6, size: int = 24, levels: int | None = None):
    """Masks with irregular blobs (some images without any), maps correlated with them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n - 2):  # the last two images are normal
        seeds = rng.random((size, size)) < 0.015
        masks[i] = ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 3)))
    maps = rng.random((n, size, size)) + 0.7 * masks * rng.random((n, size, size))
    if levels is not None:
        maps = np.floor(maps / maps.max() * (levels - 1)) / (levels - 1)  # ties on purpose
    return masks, maps.astype(np.float64)


def naive_aupro(masks, maps, thresholds, fpr_limit: float) -> float:
    """Threshold-by-threshold PRO curve, recomputing everything at each threshold."""
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity, as the official MVTec code
    regions = []
    for i in range(len(masks)):
        labeled, count = ndimage.label(masks[i], structure=structure)
        regions += [(i, labeled == r) for r in range(1, count + 1)]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for threshold in sorted(thresholds, reverse=True):
        predicted = maps >= threshold
        fpr = predicted[normal].mean()
        pro = np.mean([predicted[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_cut) / 2
    return area / fpr_limit


# ---------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("levels", [None, 17])
def test_pixel_auroc_ap_and_f1_match_sklearn(levels):
    masks, maps = random_pixel_set(0, levels=levels)
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    precision, recall, _ = precision_recall_curve(y, s)
    f1_sklearn = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300))
    f1, threshold = pixel_f1_best(masks, maps)
    assert f1 == pytest.approx(f1_sklearn, abs=1e-12)
    assert pixel_f1_at_threshold(masks, maps, threshold) == pytest.approx(f1, abs=1e-12)


def test_pixel_f1_at_threshold_counts_pooled_pixels():
    masks, maps = random_pixel_set(1, levels=9)
    for threshold in [0.0, 0.125, 0.3, 0.5, 0.875, 1.0, 2.0]:
        predicted = maps >= threshold
        tp = np.sum(predicted & (masks == 1))
        fp = np.sum(predicted & (masks == 0))
        fn = np.sum(~predicted & (masks == 1))
        expected = 2 * tp / (2 * tp + fp + fn)
        assert pixel_f1_at_threshold(masks, maps, threshold) == pytest.approx(expected)
        # pixel_metrics reads the same F1 off its sorted curve.
        fixed = pixel_metrics(masks, maps, threshold=threshold)["f1_at_threshold"]
        assert fixed == pytest.approx(expected)


# One row of six pixels: two anomalous (one region), four normal.
#   scores: a1=0.6 a2=0.2 | n1=0.9 n2=0.5 n3=0.1 n4=0.05
#   descending thresholds -> (FPR, PRO): 0.9 (1/4, 0), 0.6 (1/4, 1/2), 0.5 (2/4, 1/2),
#   0.2 (2/4, 1), 0.1 (3/4, 1), 0.05 (1, 1); the curve starts at (0, 0).
#   AU-PRO@0.3 = (0.05 * 0.5) / 0.3; @0.5 = (0.25 * 0.5) / 0.5; @1 = 0.125 + 0.5.
#   AUROC: a1 beats 3 of 4 normals, a2 beats 2 -> 5/8.  AP: hits at ranks 2 and 4 -> 0.5.
#   Best F1 at θ=0.2: TP2 FP2 FN0 -> 4/6.
HAND_MASK = np.array([[[1, 1, 0, 0, 0, 0]]])
HAND_MAP = np.array([[[0.6, 0.2, 0.9, 0.5, 0.1, 0.05]]])


def test_pixel_metrics_by_hand():
    assert aupro(HAND_MASK, HAND_MAP, fpr_limit=0.3) == pytest.approx(0.025 / 0.3)
    assert aupro(HAND_MASK, HAND_MAP, fpr_limit=0.5) == pytest.approx(0.25)
    assert aupro(HAND_MASK, HAND_MAP, fpr_limit=1.0) == pytest.approx(0.625)
    assert pixel_auroc(HAND_MASK, HAND_MAP) == pytest.approx(5 / 8)
    assert pixel_ap(HAND_MASK, HAND_MAP) == pytest.approx(0.5)
    assert pixel_f1_best(HAND_MASK, HAND_MAP) == pytest.approx((4 / 6, 0.2))
    fpr, pro, thresholds = compute_pro_curve(HAND_MASK, HAND_MAP)
    np.testing.assert_allclose(fpr, [0, 0.25, 0.25, 0.5, 0.5, 0.75, 1])
    np.testing.assert_allclose(pro, [0, 0, 0.5, 0.5, 1, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.6, 0.5, 0.2, 0.1, 0.05])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_naive_reference_with_ties(seed, fpr_limit):
    masks, maps = random_pixel_set(seed, levels=200)  # 200 levels: a few hundred thresholds
    expected = naive_aupro(masks, maps, np.unique(maps), fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_matches_naive_reference_on_continuous_maps():
    masks, maps = random_pixel_set(5, n=4, size=16)
    expected = naive_aupro(masks, maps, np.unique(maps), 0.3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-9)
    # A few hundred quantile thresholds approximate the exact curve closely.
    coarse = naive_aupro(masks, maps, np.quantile(maps, np.linspace(0, 1, 400)), 0.3)
    assert aupro(masks, maps) == pytest.approx(coarse, abs=1e-2)


def test_aupro_perfect_and_constant_maps():
    masks, _ = random_pixel_set(4)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    # A constant map jumps from (0, 0) to (1, 1): area fpr_limit^2 / 2, normalised fpr_limit / 2.
    constant = np.full(masks.shape, 0.7)
    assert aupro(masks, constant, fpr_limit=0.3) == pytest.approx(0.15)
    assert aupro(masks, constant, fpr_limit=0.1) == pytest.approx(0.05)
    assert pixel_auroc(masks, constant) == pytest.approx(0.5)


def test_regions_use_8_connectivity():
    # Pixel (0, 0) touches (1, 1) diagonally: one region of 4 pixels with 8-connectivity
    # (4-connectivity would give regions of 1 and 3 pixels and PRO = (1 + 0) / 2 at θ = 0.9).
    mask = np.zeros((1, 4, 5), dtype=np.uint8)
    mask[0, 0, 0] = 1
    mask[0, 1, 1:4] = 1
    anomaly_map = np.zeros((1, 4, 5))
    anomaly_map[0, 0, 0] = 0.9
    fpr, pro, thresholds = compute_pro_curve(mask, anomaly_map)
    assert thresholds[1] == 0.9
    assert (fpr[1], pro[1]) == (0.0, pytest.approx(0.25))


def test_regions_are_separate_across_images():
    # The same blob in two images is two regions; only the first is found at θ = 0.9.
    masks = np.zeros((2, 3, 3), dtype=np.uint8)
    masks[:, 1, 1] = 1
    maps = np.zeros((2, 3, 3))
    maps[0, 1, 1] = 0.9
    _, pro, _ = compute_pro_curve(masks, maps)
    assert pro[1] == pytest.approx(0.5)


def test_pixel_metrics_are_nan_without_anomalous_pixels():
    masks = np.zeros((3, 8, 8), dtype=np.uint8)
    maps = np.random.default_rng(0).random((3, 8, 8))
    assert math.isnan(pixel_auroc(masks, maps))
    assert math.isnan(pixel_ap(masks, maps))
    assert math.isnan(aupro(masks, maps))
    assert all(math.isnan(v) for v in pixel_f1_best(masks, maps))
    assert math.isnan(pixel_f1_at_threshold(masks, maps, 0.5))
    assert all(math.isnan(v) for v in pixel_metrics(masks, maps, 0.5).values())


def _single_metric_values(masks, maps, threshold, fpr_limit):
    f1, f1_threshold = pixel_f1_best(masks, maps)
    return {
        "auroc": pixel_auroc(masks, maps),
        "ap": pixel_ap(masks, maps),
        "f1_best": f1,
        "f1_best_threshold": f1_threshold,
        "f1_at_threshold": pixel_f1_at_threshold(masks, maps, threshold),
        "aupro": aupro(masks, maps, fpr_limit=fpr_limit),
    }


def test_pixel_metrics_agree_with_single_metric_functions():
    masks, maps = random_pixel_set(7, levels=50)
    values = pixel_metrics(masks, maps, threshold=0.6, fpr_limit=0.2)
    expected = _single_metric_values(masks, maps, 0.6, 0.2)
    # pixel_metrics reads the curve at the anomalous scores only: equal to float rounding
    assert values == pytest.approx(expected, abs=1e-12, rel=0)
    assert values["f1_best_threshold"] == expected["f1_best_threshold"]


@pytest.mark.parametrize("levels", [None, 400, 20, 2])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fpr_limit", [0.01, 0.3, 1.0])
def test_pixel_metrics_equal_the_full_curve_with_ties_and_float32(levels, seed, fpr_limit):
    masks, maps = random_pixel_set(seed, levels=levels)
    maps = maps.astype(np.float32) if seed else maps  # both precisions
    values = pixel_metrics(masks, maps, threshold=0.55, fpr_limit=fpr_limit)
    expected = _single_metric_values(masks, maps, 0.55, fpr_limit)
    assert values == pytest.approx(expected, abs=1e-12, rel=0)


def test_pixel_metrics_without_normal_pixels_keep_ap_and_f1():
    masks = np.ones((2, 4, 4), dtype=np.uint8)
    maps = np.random.default_rng(1).random((2, 4, 4))
    values = pixel_metrics(masks, maps, threshold=0.5)
    assert math.isnan(values["auroc"]) and math.isnan(values["aupro"])
    assert math.isnan(pixel_auroc(masks, maps)) and math.isnan(aupro(masks, maps))
    assert values["ap"] == pytest.approx(pixel_ap(masks, maps)) == 1.0
    assert values["f1_best"] == pytest.approx(pixel_f1_best(masks, maps)[0]) == 1.0
    assert values["f1_at_threshold"] == pytest.approx(pixel_f1_at_threshold(masks, maps, 0.5))


def test_pixel_inputs_accept_tensors_channel_dim_and_single_images():
    masks, maps = random_pixel_set(2, levels=30)
    expected = aupro(masks, maps)
    as_tensors = aupro(torch.from_numpy(masks)[:, None], torch.from_numpy(maps)[:, None])
    assert as_tensors == pytest.approx(expected)
    assert aupro(masks[0], maps[0]) == pytest.approx(aupro(masks[:1], maps[:1]))
    with pytest.raises(ValueError, match="shape"):
        aupro(masks, maps[:, :-1])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, np.full(maps.shape, np.nan))


@pytest.mark.slow
def test_aupro_is_fast_on_a_realistic_test_set():
    masks, maps = random_pixel_set(0, n=100, size=256)
    maps = maps.astype(np.float32)
    began = time.perf_counter()
    values = pixel_metrics(masks, maps, threshold=0.9)
    assert time.perf_counter() - began < 10.0  # about 0.3 s on 2 CPU cores
    assert 0 < values["aupro"] < 1


# ---------------------------------------------------------------- evaluate_scores


def test_evaluate_scores_returns_every_task_metric():
    masks, maps = random_pixel_set(3, levels=40)
    labels = masks.reshape(len(masks), -1).max(axis=1)
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    values = evaluate_scores(labels, image_scores, masks, maps, 0.5, 0.8, aupro_fpr_limit=0.3)
    assert tuple(values) == TASK_METRICS
    assert values["image_auroc"] == image_auroc(labels, image_scores)
    assert values["image_f1_best"] == f1_best(labels, image_scores)[0]
    assert values["image_f1_val"] == f1_at_threshold(labels, image_scores, 0.5)
    assert values["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert values["pixel_aupro"] == pytest.approx(aupro(masks, maps, fpr_limit=0.3), abs=1e-12)
    assert values["pixel_f1_best"] == pytest.approx(pixel_f1_best(masks, maps)[0], abs=1e-12)
    assert values["pixel_f1_val"] == pytest.approx(pixel_f1_at_threshold(masks, maps, 0.8))
    assert values["pixel_ap"] == pytest.approx(pixel_ap(masks, maps), abs=1e-12)
    assert all(np.isfinite(v) for v in values.values())


def test_evaluate_scores_nan_without_masks_maps_or_thresholds():
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.1, 0.9])
    values = evaluate_scores(labels, scores)
    assert tuple(values) == TASK_METRICS
    assert values["image_auroc"] == 1.0
    assert math.isnan(values["image_f1_val"])
    assert all(math.isnan(v) for k, v in values.items() if k.startswith("pixel_"))
    masks, maps = random_pixel_set(0, n=4, levels=10)
    for pair in [(masks, None), (None, maps)]:
        values = evaluate_scores(labels, scores, *pair, image_threshold=0.5)
        assert values["image_f1_val"] == 1.0
        assert all(math.isnan(v) for k, v in values.items() if k.startswith("pixel_"))
    values = evaluate_scores(labels, scores, masks, maps, image_threshold=0.5)
    assert math.isnan(values["pixel_f1_val"]) and np.isfinite(values["pixel_aupro"])


def test_validation_threshold_is_a_quantile_of_normal_scores():
    normal = np.arange(101, dtype=float)  # 0, 1, ..., 100
    assert validation_threshold(normal, 0.95) == pytest.approx(95.0)
    assert validation_threshold(torch.arange(101.0), 0.5) == pytest.approx(50.0)
    assert validation_threshold(normal.reshape(1, 101), 1.0) == 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(validation_threshold(np.array([]), 0.9))
    with pytest.raises(ValueError, match="quantile"):
        validation_threshold(normal, 95)


def test_pixel_metrics_sorted_in_parts_equal_one_sort(monkeypatch):
    """The normal scores sorted in parts on threads (large test sets) give the same values."""
    from clad.metrics import pixel

    masks, maps = random_pixel_set(4, n=8, size=32, levels=60)
    whole = pixel_metrics(masks, maps, threshold=0.5)
    monkeypatch.setattr(pixel, "SORT_PART", 500)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert len(pixel.sorted_parts(maps.ravel())) == 3
        assert pixel_metrics(masks, maps, threshold=0.5) == whole
        torch.set_num_threads(1)  # a sweep's cell: one part, no thread
        assert len(pixel.sorted_parts(maps.ravel())) == 1
    finally:
        torch.set_num_threads(threads)
