"""Named protocols: their steps and orders as the papers' code defines them, the docs table
that lists them, and the drift protocols' corruptions."""

from __future__ import annotations

import pytest
import torch

from clad.benchmarks.catalog import CLAD_TASK_ORDER, MVTEC_OBJECTS, MVTEC_TEXTURES, VISA_CATEGORIES
from clad.benchmarks.drift import DRIFT_STEPS, Corruption, DriftDataset
from clad.benchmarks.protocols import PROTOCOLS
from clad.benchmarks.spec import DatasetConfig
from clad.benchmarks.stream import build_tasks
from clad.benchmarks.synthetic_drawing import SYNTHETIC_CATEGORIES
from tests.paths import REPO

KNOWN = {
    "mvtec": set(MVTEC_OBJECTS + MVTEC_TEXTURES),
    "visa": set(VISA_CATEGORIES),
    "synthetic": set(SYNTHETIC_CATEGORIES),
}


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("mvtec_15x1", [1] * 15),
        ("mvtec_14-1", [14, 1]),
        ("mvtec_10-5", [10, 5]),
        ("mvtec_3x5", [3] * 5),
        ("mvtec_10-1x5", [10, 1, 1, 1, 1, 1]),
        ("mvtec_clad", [1] * 10),
        ("dne_3x5", [3] * 5),
        ("dne_10+1x5", [10, 1, 1, 1, 1, 1]),
        ("visa_12x1", [1] * 12),
        ("visa_11-1", [11, 1]),
        ("visa_8-4", [8, 4]),
        ("visa_8-1x4", [8, 1, 1, 1, 1]),
    ],
)
def test_protocol_steps_cover_their_dataset_once(name, sizes):
    protocol = PROTOCOLS[name]
    assert list(protocol.sizes) == sizes
    categories = protocol.categories
    assert len(set(categories)) == len(categories)
    assert set(categories) <= KNOWN[protocol.dataset]
    if protocol.dataset != "mvtec" or name != "mvtec_clad":
        assert set(categories) == KNOWN[protocol.dataset]


def test_orders_follow_the_reference_code():
    assert PROTOCOLS["mvtec_15x1"].categories == tuple(sorted(KNOWN["mvtec"]))  # UCAD
    assert PROTOCOLS["mvtec_14-1"].steps[1] == ("zipper",)  # CDAD setting 1
    assert PROTOCOLS["mvtec_10-5"].steps[1] == (
        "tile",
        "toothbrush",
        "transistor",
        "wood",
        "zipper",
    )
    assert PROTOCOLS["mvtec_clad"].categories == CLAD_TASK_ORDER
    assert PROTOCOLS["dne_3x5"].steps[0] == ("leather", "bottle", "metal_nut")  # order 1
    assert PROTOCOLS["visa_8-4"].steps[1] == ("pcb2", "pcb3", "pcb4", "pipe_fryum")


def test_the_docs_table_lists_every_protocol_as_defined():
    text = (REPO / "docs" / "protocols.md").read_text()
    for protocol in PROTOCOLS.values():
        line = next(row for row in text.splitlines() if row.startswith(f"| `{protocol.name}` |"))
        for step in protocol.steps:
            assert ", ".join(step) in line
        assert protocol.shape() in line


def test_a_drift_stream_corrupts_one_category_more_at_every_step(tmp_path):
    config = DatasetConfig(
        name="synthetic",
        root=str(tmp_path),
        protocol="drift_blur",
        categories=["stripes"],
        image_size=32,
        synthetic={"image_size": 32, "n_train": 8, "n_test_good": 3, "n_test_per_defect": 1},
    )
    tasks = build_tasks(config, seed=0)
    assert [t.name for t in tasks] == [f"stripes_blur{s}" for s in range(1, DRIFT_STEPS + 1)]
    first, last = tasks[1].test[0][0], tasks[-1].test[0][0]
    sharpness = [
        float((image[:, :, 1:] - image[:, :, :-1]).abs().mean()) for image in (first, last)
    ]
    assert sharpness[1] < sharpness[0]  # blurred more at the last step
    assert torch.equal(tasks[3].test[2][0], tasks[3].test[2][0])  # the same image every time


def test_a_geometric_drift_moves_the_masks_with_the_images():
    image = torch.zeros(3, 32, 32)
    mask = torch.zeros(1, 32, 32)
    image[:, 10:20, 10:20] = 1.0
    mask[:, 10:20, 10:20] = 1.0
    data = torch.utils.data.TensorDataset(image[None], mask[None], torch.zeros(1).long())
    moved, moved_mask, _ = DriftDataset(data, Corruption("geometric", 9, train=False))[0]
    assert not torch.equal(moved_mask, mask)
    inside = moved[0][moved_mask[0] > 0.5]
    assert inside.mean() > 0.8  # the mask still marks the moved square


def test_drift_needs_exactly_one_category():
    with pytest.raises(ValueError, match="give exactly one in dataset.categories"):
        DatasetConfig(name="synthetic", protocol="drift_color", categories=["stripes", "disc"])
