"""Every detector that exports (``export_module`` not None) scores through its exported module
exactly as ``predict`` does, traced to TorchScript too; the others export nothing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from clad.cli.commands import export_parser
from clad.models.base import Detector
from clad.predict import exportable_detectors
from clad.registry import detector_table
from tests.models.test_contract import SIZE, case

# tracing bakes the sizes in (the export's image size), and torch 2.14 deprecates TorchScript
pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", exportable_detectors())
def test_the_exported_module_scores_as_predict(name, tmp_path):
    detector = case(name).make()
    train = images(8, 0)
    detector.fit(TensorDataset(train, torch.zeros(8, 1, SIZE, SIZE), torch.zeros(8)))
    test = images(3, 1)
    expected = detector.predict(test)
    module = detector.export_module()
    assert module is not None
    with torch.no_grad():
        scores, maps = module.cpu().eval()(test)
        traced = torch.jit.trace(module, test, check_trace=False)
    assert torch.allclose(scores, expected.image, atol=1e-5)
    assert expected.pixel is not None and torch.allclose(maps, expected.pixel, atol=1e-5)
    torch.jit.save(traced, str(tmp_path / "m.pt"))
    again, _ = torch.jit.load(str(tmp_path / "m.pt"))(test)
    assert torch.allclose(again, expected.image, atol=1e-5)


def test_detectors_whose_scoring_is_not_one_forward_pass_export_nothing():
    others = sorted(set(detector_table()) - set(exportable_detectors()))
    assert {"patchcore", "padim", "dne", "ucad"} <= set(others)
    assert Detector.export_module is detector_table()["patchcore"].export_module
    assert "conv_ae, fastflow, stfpm, unet_ae, vae" in export_parser().description  # --help
