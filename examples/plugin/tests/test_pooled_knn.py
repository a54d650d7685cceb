"""The plugin keeps clad's detector contract: one line."""

from clad_knn_example import PooledKnn

from clad.testing import check_detector


def test_pooled_knn_keeps_the_contract():
    check_detector(PooledKnn, {"weights": "none"}, {"batch_size": 4, "device": "cpu"})
