"""Measures that mean what their names say: thresholds a deployed system could have, DCASE's
official score, PatchCore's smoothing at any size, forward transfer only where it is one, and
the comparison report's best marks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import hmean

from clad.config import load_config
from clad.metrics.audio import official_score
from clad.models.autoencoder import ConvAE
from clad.models.base import training_for
from clad.models.components.ssim import gaussian_smooth
from clad.models.patchcore import PatchCore
from clad.runner import Run
from clad.strategies.joint import Cumulative, MultiTask
from clad.strategies.naive import Naive
from clad.strategies.single_model import SingleModel

F1_VAL = ("image_f1_val", "pixel_f1_val")


def run(tiny_config, tmp_path, **changes) -> dict:
    data = json.loads(tiny_config.read_text())
    for block, value in changes.items():
        data[block] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    config = load_config(path)
    return Run(config, 0, str(tmp_path / "out"), loggers=[]).execute()


def test_multi_task_keeps_its_f1_rows(tiny_config, tmp_path):
    record = run(tiny_config, tmp_path, strategy={"name": "multi_task"})
    for metric in F1_VAL:
        rows = np.array(record["matrices"][metric], dtype=float)
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape))
        assert record["summary"][f"forgetting/{metric}"] == 0.0
        assert record["summary"][f"bwt/{metric}"] == 0.0
    assert "fwt/image_auroc" not in record["summary"]  # row k-1 has already seen task k


def test_a_frozen_detector_keeps_its_f1_rows(tiny_config, tmp_path, monkeypatch):
    """A detector that learns only its first task (later fits change nothing), under naive: each
    task's threshold is set from its own validation images when it is learnt, so the F1 of a
    model that does not change does not change either."""
    original = ConvAE.fit

    def first_fit_only(self, train, val=None):
        if not self.history:
            original(self, train, val)

    monkeypatch.setattr(ConvAE, "fit", first_fit_only)
    record = run(tiny_config, tmp_path, strategy={"name": "naive"})
    for metric in F1_VAL:
        rows = np.array(record["matrices"][metric], dtype=float)
        for k in range(3):  # a task's cells from the row it was learnt in
            np.testing.assert_allclose(rows[k:, k], rows[k, k])
        assert record["summary"][f"forgetting/{metric}"] == 0.0
        assert record["summary"][f"bwt/{metric}"] == 0.0
    thresholds = record["thresholds"]["image"]
    assert len(thresholds) == 3 and all(len(row) == 3 for row in thresholds)
    assert thresholds[2][0] == thresholds[0][0]  # task 0's threshold is kept once it is set
    assert "fwt/image_auroc" in record["summary"]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (lambda: Naive(lambda: None), [(0,), (1,), (2,)]),
        (lambda: SingleModel(lambda: None), [(0,), (1,), (2,)]),
        (lambda: Cumulative(lambda: None, []), [(0,), (0, 1), (0, 1, 2)]),
        (lambda: MultiTask(lambda: None, []), [(0, 1, 2)] * 3),
    ],
)
def test_which_validation_sets_each_strategy_holds(strategy, expected):
    assert [strategy().calibration_tasks(t, 3) for t in range(3)] == expected


def test_official_dcase_score_is_one_harmonic_mean_over_types_sections_and_domains():
    # two machine types (columns), two sections each
    matrices = {
        "auc_source/section_00": np.array([[0.9, 0.6]]),
        "auc_target/section_00": np.array([[0.8, 0.5]]),
        "pauc/section_00": np.array([[0.7, 0.55]]),
        "auc_source/section_01": np.array([[0.95, 0.65]]),
        "auc_target/section_01": np.array([[0.85, 0.45]]),
        "pauc/section_01": np.array([[0.75, 0.6]]),
        "auc/section_00": np.array([[0.99, 0.99]]),  # not a term of the official score
        "hmean": np.array([[0.5, 0.5]]),
    }
    first, second = [0.9, 0.8, 0.7, 0.95, 0.85, 0.75], [0.6, 0.5, 0.55, 0.65, 0.45, 0.6]
    assert official_score(matrices, 0) == pytest.approx(hmean(first + second))
    per_type = np.mean([hmean(first), hmean(second)])  # final_avg/hmean
    assert official_score(matrices, 0) < per_type  # lower whenever the types differ
    # a section a machine type does not have (NaN) is left out
    matrices["pauc/section_01"] = np.array([[0.75, math.nan]])
    assert official_score(matrices, 0) == pytest.approx(hmean(first + second[:5]))
    without_domains = {"auc/id_00": np.array([[0.9]]), "pauc/id_00": np.array([[0.8]])}
    assert math.isnan(official_score(without_domains, 0))


def test_patchcore_smoothing_scales_with_the_input_size():
    torch.manual_seed(0)
    detector = PatchCore(
        backbone="resnet18",
        weights="none",
        training=training_for(PatchCore, device="cpu", batch_size=4),
    )
    assert detector.sigma_pixels(224) == 4.0 and detector.sigma_pixels(448) == 8.0
    train = torch.utils.data.TensorDataset(
        torch.rand(4, 3, 64, 64), torch.zeros(4, 1, 64, 64), torch.zeros(4)
    )
    detector.fit(train)
    for side in (32, 64):
        x = torch.rand(2, 3, side, side)
        smoothed = detector.predict(x).pixel
        detector.smoothing_sigma = 0.0
        raw = detector.predict(x).pixel
        detector.smoothing_sigma = 4.0
        torch.testing.assert_close(smoothed, gaussian_smooth(raw, 4.0 * side / 224))
