"""CL metrics on hand-computed T x T matrices, including cases where the forgetting formulas
disagree, NaN columns, unfinished rows and a single task."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from clad.metrics.continual import (
    average_forgetting,
    backward_transfer,
    final_average,
    forward_transfer,
    pyclad_forgetting,
    relative_forgetting,
    summarize,
)

nan = float("nan")

# R[t, k]: metric on task k after training on tasks 0..t.
#   task 0: 0.6 when learned, rises to 0.9 after task 1, falls to 0.7 after task 2.
#   task 1: 0.85 zero-shot (before it is learned), 0.7 when learned, 0.8 after task 2.
#   task 2: 0.65 zero-shot, 0.9 when learned.
R = np.array(
    [
        [0.6, 0.85, 0.4],
        [0.9, 0.70, 0.65],
        [0.7, 0.80, 0.9],
    ]
)


def test_final_average_by_hand():
    assert final_average(R) == pytest.approx((0.7 + 0.8 + 0.9) / 3)  # 0.8
    assert final_average(R, upto=1) == pytest.approx((0.9 + 0.7) / 2)  # unseen R[1, 2] ignored
    assert final_average(R, upto=0) == pytest.approx(0.6)


def test_chaudhry_forgetting_and_bwt_disagree_when_accuracy_rises_then_falls():
    # Chaudhry, t=2: task 0: max(0.6, 0.9) - 0.7 = 0.2; task 1: max(0.7) - 0.8 = -0.1
    #   -> (0.2 - 0.1) / 2 = 0.05 > 0: task 0 has forgotten part of its best.
    assert average_forgetting(R) == pytest.approx(0.05)
    # BWT, t=2: (0.7 - 0.6) + (0.8 - 0.7) = 0.2 -> 0.1 > 0: "positive backward transfer".
    assert backward_transfer(R) == pytest.approx(0.1)
    # t=1: task 0 rose from 0.6 to 0.9: forgetting 0.6 - 0.9 = -0.3, BWT 0.9 - 0.6 = +0.3.
    assert average_forgetting(R, upto=1) == pytest.approx(-0.3)
    assert backward_transfer(R, upto=1) == pytest.approx(0.3)


def test_chaudhry_forgetting_ignores_zero_shot_rows():
    # Task 1's reference is max over l in [1, 1] = 0.7, not the zero-shot 0.85 at l = 0;
    # with the zero-shot row the task-1 term would be 0.85 - 0.8 = 0.05 and the mean 0.125.
    assert average_forgetting(R) == pytest.approx((0.2 + (0.7 - 0.8)) / 2)


def test_clad_relative_forgetting_by_hand():
    # t=2, reference max over all earlier rows l in [0, 1] (zero-shot included):
    #   task 0: 1 - 0.7 / max(0.6, 0.9) = 1 - 7/9 = 2/9
    #   task 1: 1 - 0.8 / max(0.85, 0.7) = 1 - 0.8/0.85 = 1/17
    assert relative_forgetting(R) == pytest.approx((2 / 9 + 1 / 17) / 2)
    # t=1: task 0: 1 - 0.9 / 0.6 < 0, clipped to 0.
    assert relative_forgetting(R, upto=1) == 0.0


def test_clad_relative_forgetting_matches_its_per_row_ratio_form():
    # CLAD writes each term as max(0, max_l (1 - R[t, k] / R[l, k])) over l in [0, t-1].
    rng = np.random.default_rng(0)
    for _ in range(20):
        matrix = rng.uniform(0.05, 1.0, (5, 5))
        for t in range(1, 5):
            terms = [
                max([0.0] + [1 - matrix[t, k] / matrix[step, k] for step in range(t)])
                for k in range(t)
            ]
            assert relative_forgetting(matrix, upto=t) == pytest.approx(np.mean(terms))


def test_relative_forgetting_with_zero_reference_is_zero():
    # Pixel F1 of task 0 was 0 at every earlier step: nothing to forget (no division by 0).
    matrix = np.array([[0.0, 0.5], [0.0, 0.5]])
    assert relative_forgetting(matrix) == 0.0


def test_forward_transfer_by_hand():
    # t=2: (R[0, 1] - 0.5) + (R[1, 2] - 0.5) = 0.35 + 0.15 -> 0.25.
    assert forward_transfer(R, 0.5) == pytest.approx(0.25)
    assert forward_transfer(R, 0.5, upto=1) == pytest.approx(0.35)
    # A per-task baseline vector b = [b0, b1, b2]; b0 is never used.
    assert forward_transfer(R, np.array([9.0, 0.8, 0.6])) == pytest.approx((0.05 + 0.05) / 2)


def test_nan_column_is_left_out():
    # Task 1 has no pixel ground truth: its whole column is NaN.
    matrix = R.copy()
    matrix[:, 1] = nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN handling must not warn
        assert final_average(matrix) == pytest.approx((0.7 + 0.9) / 2)
        assert average_forgetting(matrix) == pytest.approx(0.9 - 0.7)
        assert backward_transfer(matrix) == pytest.approx(0.7 - 0.6)
        assert forward_transfer(matrix, 0.5) == pytest.approx(0.65 - 0.5)  # R[0, 1] is NaN
        assert relative_forgetting(matrix) == pytest.approx(2 / 9)


def test_unfinished_rows_are_ignored_and_all_nan_gives_nan():
    partial = R.copy()
    partial[2] = nan  # step 2 not run yet
    summary = summarize({"image_auroc": partial}, upto=1)
    assert summary == pytest.approx(summarize({"image_auroc": R}, upto=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = summarize({"image_auroc": np.full((3, 3), nan)})
    assert all(math.isnan(v) for v in values.values())


def test_single_task():
    matrix = np.array([[0.8]])
    assert final_average(matrix) == 0.8
    for metric in (average_forgetting, backward_transfer, relative_forgetting):
        assert math.isnan(metric(matrix))
    assert math.isnan(forward_transfer(matrix, 0.5))
    summary = summarize({"pixel_f1_best": matrix, "pixel_auroc": matrix})
    assert summary["final_avg/pixel_f1_best"] == 0.8
    assert math.isnan(summary["rel_forgetting/pixel_f1_best"])
    assert math.isnan(summary["fwt/pixel_auroc"])


def test_summarize_keys_and_values():
    matrices = {name: R for name in ("image_auroc", "pixel_auroc", "pixel_aupro")}
    matrices["pixel_f1_best"] = R
    matrices["pixel_f1_val"] = R * 0.5
    summary = summarize(matrices)
    prefixes = ("final_avg", "forgetting", "forgetting_pyclad", "bwt")
    expected_keys = {f"{prefix}/{name}" for prefix in prefixes for name in matrices}
    expected_keys |= {"fwt/image_auroc", "fwt/pixel_auroc"}
    expected_keys |= {"rel_forgetting/pixel_f1_best", "rel_forgetting/pixel_f1_val"}
    assert set(summary) == expected_keys
    assert summary["final_avg/pixel_aupro"] == pytest.approx(0.8)
    assert summary["forgetting/image_auroc"] == pytest.approx(0.05)
    assert summary["bwt/pixel_auroc"] == pytest.approx(0.1)
    assert summary["fwt/image_auroc"] == pytest.approx(0.25)  # chance baseline 0.5
    # The relative form is scale-free: halving every F1 leaves it unchanged.
    assert summary["rel_forgetting/pixel_f1_val"] == pytest.approx((2 / 9 + 1 / 17) / 2)


def test_bad_shapes_and_steps_fail():
    with pytest.raises(ValueError, match="needs ``learned``"):
        final_average(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="learned has"):
        final_average(np.zeros((2, 3)), learned=np.array([0, 1]))
    with pytest.raises(ValueError, match="square task matrix"):
        pyclad_forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="upto"):
        final_average(R, upto=3)
    with pytest.raises(ValueError, match="upto"):
        average_forgetting(R, upto=-1)


def test_pyclad_forgetting_also_averages_the_task_just_learned():
    # FM_2 = mean_{j<=2} (max_{i<2} R[i, j] - R[2, j]): the new task's term compares its value
    # when learned (0.9) with its zero-shot values (max 0.65), so learning it well lowers FM
    terms = [0.9 - 0.7, 0.85 - 0.8, 0.65 - 0.9]
    assert pyclad_forgetting(R) == pytest.approx(sum(terms) / 3)
    assert pyclad_forgetting(R, upto=0) == 0.0
    # Chaudhry's measure on the same matrix: the earlier tasks only, from their learned step on
    assert average_forgetting(R) == pytest.approx(((0.9 - 0.7) + (0.7 - 0.8)) / 2)
    assert pyclad_forgetting(R) != pytest.approx(average_forgetting(R))


# A protocol whose first step learns two categories and the second one more: C = 3 columns,
# T = 2 rows; column 2 is evaluated zero-shot after step 0.
CATEGORIES = np.array(
    [
        [0.9, 0.8, 0.55],
        [0.7, 0.8, 0.95],
    ]
)
LEARNED = np.array([0, 0, 1])


def test_category_matrices_use_the_step_each_category_was_learned():
    assert final_average(CATEGORIES, upto=0, learned=LEARNED) == pytest.approx(0.85)
    assert final_average(CATEGORIES, learned=LEARNED) == pytest.approx((0.7 + 0.8 + 0.95) / 3)
    assert average_forgetting(CATEGORIES, learned=LEARNED) == pytest.approx((0.2 + 0.0) / 2)
    assert backward_transfer(CATEGORIES, learned=LEARNED) == pytest.approx((-0.2 + 0.0) / 2)
    assert forward_transfer(CATEGORIES, 0.5, learned=LEARNED) == pytest.approx(0.05)
    assert math.isnan(average_forgetting(CATEGORIES, upto=0, learned=LEARNED))
    # one category per step: the category matrix is the task matrix and both read alike
    for function in (final_average, average_forgetting, backward_transfer, relative_forgetting):
        assert function(R, learned=np.arange(3)) == pytest.approx(function(R))


def test_summarize_reads_the_category_matrix_and_pyclad_the_task_matrix():
    tasks = {"image_auroc": np.array([[0.85, 0.55], [0.75, 0.95]])}  # task 0: mean of its two
    categories = {"image_auroc": CATEGORIES}
    summary = summarize(tasks, category_matrices=categories, learned=LEARNED)
    assert summary["final_avg/image_auroc"] == pytest.approx((0.7 + 0.8 + 0.95) / 3)
    assert summary["forgetting/image_auroc"] == pytest.approx(0.1)
    expected = ((0.85 - 0.75) + (0.55 - 0.95)) / 2  # pyCLAD's, over the task matrix
    assert summary["forgetting_pyclad/image_auroc"] == pytest.approx(expected)
