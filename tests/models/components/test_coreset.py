"""Greedy k-center coreset and kNN search: properties against brute force, faiss vs torch."""

from __future__ import annotations

import pytest
import torch

from clad.models.components.coreset import (
    coreset_size,
    greedy_coreset,
    greedy_coreset_radii,
    random_projection,
)
from clad.models.components.knn import KnnIndex, faiss_module, torch_knn


def clustered(n: int = 600, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Points around a few centres (like patch features: clustered, not uniform)."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(8, dim, generator=g)
    which = torch.randint(0, 8, (n,), generator=g)
    return centres[which] + torch.randn(n, dim, generator=g) * torch.rand(n, 1, generator=g)


def brute_force_greedy(points: torch.Tensor, n_select: int, start: int) -> list[int]:
    points = points.double()
    selected = [start]
    min_dist = torch.cdist(points, points[[start]])[:, 0]
    for _ in range(n_select - 1):
        index = int(torch.argmax(min_dist))
        selected.append(index)
        min_dist = torch.minimum(min_dist, torch.cdist(points, points[[index]])[:, 0])
    return selected


def covering_radius(points: torch.Tensor, index: torch.Tensor) -> float:
    return float(torch.cdist(points.double(), points[index].double()).min(1).values.max())


@pytest.mark.parametrize("method", ["dense", "pruned"])
def test_size_uniqueness_and_start(method):
    points = clustered()
    index = greedy_coreset(points, 60, start=5, method=method)
    assert index.shape == (60,) and index.dtype == torch.long
    assert len(set(index.tolist())) == 60
    assert int(index[0]) == 5


@pytest.mark.parametrize("method", ["dense", "pruned"])
def test_greedy_max_min_property(method):
    """Every pick is (up to float rounding) the point farthest from the earlier picks."""
    points = clustered(n=800, dim=12, seed=1)
    index = greedy_coreset(points, 150, start=0, method=method, block_size=16)
    distances = torch.cdist(points.double(), points.double())  # [N, N]
    for i in range(1, len(index)):
        to_coreset = distances[:, index[:i]].min(1).values  # [N]
        assert float(to_coreset[index[i]]) >= float(to_coreset.max()) * (1 - 1e-5)


@pytest.mark.parametrize("method", ["dense", "pruned"])
def test_matches_brute_force(method):
    points = clustered(n=500, dim=8, seed=2)
    index = greedy_coreset(points, 80, start=3, method=method, block_size=8)
    assert index.tolist() == brute_force_greedy(points, 80, 3)


@pytest.mark.parametrize("method", ["dense", "pruned"])
def test_selection_radii_are_the_distances_to_the_earlier_picks(method):
    points = clustered(n=3000, dim=12, seed=4)
    index, radii = greedy_coreset_radii(points, 400, start=2, method=method, block_size=16)
    assert (
        index.tolist()
        == greedy_coreset(points, 400, start=2, method=method, block_size=16).tolist()
    )
    assert radii.shape == (400,) and radii[0] == float("inf")
    centred = (points - points.mean(0)).double()
    expected = [
        float(torch.cdist(centred[index[i : i + 1]], centred[index[:i]]).min())
        for i in range(1, 400)
    ]
    torch.testing.assert_close(
        radii[1:].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4
    )
    assert bool((radii[1:-1] >= radii[2:] - 1e-4).all())  # non-increasing


def test_pruned_equals_dense_on_many_rounds():
    """Large enough for several pruned rounds and block rebuilds."""
    points = clustered(n=6000, dim=32, seed=3)
    dense = greedy_coreset(points, 700, start=0, method="dense")
    pruned = greedy_coreset(points, 700, start=0, method="pruned", block_size=16)
    assert covering_radius(points, pruned) == pytest.approx(
        covering_radius(points, dense), rel=1e-4
    )
    agree = (dense == pruned).float().mean()
    assert agree > 0.95, agree  # later picks may differ only after a float near-tie


def test_covering_radius_beats_random_selection():
    points = clustered(n=2000, dim=16, seed=4)
    greedy = greedy_coreset(points, 100, start=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        random = torch.randperm(len(points), generator=g)[:100]
        assert covering_radius(points, greedy) <= covering_radius(points, random)


def test_deterministic_under_seed():
    points = clustered()
    torch.manual_seed(7)
    first = greedy_coreset(random_projection(points, 8), 50)
    torch.manual_seed(7)
    second = greedy_coreset(random_projection(points, 8), 50)
    assert first.tolist() == second.tolist()


def test_projection_keeps_small_features_and_size_rules():
    points = clustered(dim=16)
    assert random_projection(points, 128) is points
    assert random_projection(points, 4).shape == (600, 4)
    assert coreset_size(1000, 0.1) == 100 and coreset_size(5, 0.01) == 1
    with pytest.raises(ValueError):
        coreset_size(10, 0.0)
    with pytest.raises(ValueError):
        greedy_coreset(points, 601)


@pytest.mark.skipif(faiss_module() is None, reason="faiss is not installed")
def test_faiss_and_torch_search_agree():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(3000, 24, generator=g), torch.randn(500, 24, generator=g)
    faiss_d, faiss_i = KnnIndex(bank, "faiss").search(queries, 5)
    torch_d, torch_i = KnnIndex(bank, "torch").search(queries, 5)
    assert torch.equal(faiss_i, torch_i)
    torch.testing.assert_close(faiss_d, torch_d, rtol=1e-4, atol=1e-4)
    exact = torch.cdist(queries.double(), bank.double()).topk(5, largest=False)
    torch.testing.assert_close(torch_d.double(), exact.values, rtol=1e-4, atol=1e-4)


def test_torch_knn_chunks_and_caps_k():
    bank = clustered(n=50)
    distances, indices = torch_knn(bank, bank, 1)
    assert torch.equal(indices[:, 0], torch.arange(50))
    assert float(distances.max()) < 0.05  # |q|^2 - 2 q.b + |b|^2 rounding, under a sqrt
    d, i = KnnIndex(bank, "torch").search(bank[:3], 99)
    assert d.shape == (3, 50)


def test_pruned_when_blocks_are_never_worth_building():
    """Many centres relative to N (N / k < 2 * block_size): the pruned method must fall back
    to full updates rather than fail (regression: 8192 x 176 points, 1024 picks)."""
    torch.manual_seed(3)
    points = torch.randn(2048, 24)
    pruned = greedy_coreset(points, 512, start=0, method="pruned", block_size=32)
    dense = greedy_coreset(points, 512, start=0, method="dense")
    assert len(set(pruned.tolist())) == 512
    assert covering_radius(points, pruned) == pytest.approx(
        covering_radius(points, dense), rel=1e-4
    )


def test_pruned_gives_the_same_selection_on_one_thread_and_two():
    """Block updates spread over threads touch disjoint blocks: the same picks and radii."""
    points = clustered(n=20000, dim=16, seed=6)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(
                greedy_coreset_radii(points, 1500, start=0, method="pruned", block_size=16)
            )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
