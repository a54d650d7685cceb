"""The incremental nearest-row search: across banks that change by keeping some rows and adding
new ones, the same answers as a search of the whole bank, at the cost of what changed."""

from __future__ import annotations

import pytest
import torch

from clad.models.components.knn import (
    CellIndex,
    IncrementalSearch,
    KnnIndex,
    RowSet,
    row_keys,
    torch_knn,
)

BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.filterwarnings("ignore"))]


def brute(queries: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    distances, indices = torch_knn(queries, bank, 1)
    return distances[:, 0], indices[:, 0]


def banks(seed: int, steps: int, size: int = 300, dim: int = 16):
    """Banks that each keep a random part of the one before and add new rows, as ``cl`` does."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(size, dim, generator=g)
    yield bank
    for step in range(steps):
        kept = bank[torch.randperm(len(bank), generator=g)[: int(0.6 * len(bank))]]
        new = torch.randn(size // 2, dim, generator=g) + 0.5 * step
        bank = torch.cat([kept, new])[torch.randperm(len(kept) + size // 2, generator=g)]
        yield bank


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_nearest_rows_as_a_search_of_the_whole_bank(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    search = IncrementalSearch(listed=3)
    g = torch.Generator().manual_seed(1)
    batches = {name: torch.randn(200, 16, generator=g) * 1.5 for name in ("a", "b")}
    for bank in banks(0, steps=6):
        index = KnnIndex(bank, backend)
        for name, queries in batches.items():
            distances, positions = search.nearest(index, queries, name)
            expected_distances, expected_positions = brute(queries, bank)
            assert torch.equal(positions, expected_positions)
            torch.testing.assert_close(distances, expected_distances, rtol=1e-6, atol=1e-6)
    stats = search.stats
    # after the first bank only the new rows were searched for every query, and the whole
    # bank only for the few queries whose listed rows were all dropped
    assert stats["full"] == 2 * 200 + stats["researched"]
    assert stats["new_rows"] == 6 * 2 * 200
    assert 0 < stats["researched"] < 0.25 * stats["new_rows"]


def test_a_batch_whose_listed_rows_are_all_dropped_is_searched_again():
    search = IncrementalSearch(listed=2)
    bank = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [6.0, 5.0]])
    queries = torch.tensor([[0.05, 0.0]])
    assert search.nearest(KnnIndex(bank, "torch"), queries, "q")[1].tolist() == [0]
    smaller = bank[2:]  # both listed rows gone, nothing new
    distances, positions = search.nearest(KnnIndex(smaller, "torch"), queries, "q")
    assert positions.tolist() == [0] and search.stats["researched"] == 1
    torch.testing.assert_close(distances, brute(queries, smaller)[0])


def test_new_rows_beyond_the_radius_never_replace_the_listed_nearest():
    search = IncrementalSearch(listed=1)
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [9.0, 0.0]])
    search.nearest(KnnIndex(bank, "torch"), queries, "q")
    grown = torch.cat([bank[[1, 0]], torch.tensor([[8.5, 0.0], [30.0, 0.0]])])
    distances, positions = search.nearest(KnnIndex(grown, "torch"), queries, "q")
    assert positions.tolist() == [1, 2] and distances.tolist() == [1.0, 0.5]
    assert search.stats["researched"] == 0


def test_small_banks_and_equal_rows():
    search = IncrementalSearch(listed=4)
    bank = torch.tensor([[1.0, 1.0], [1.0, 1.0], [3.0, 0.0]])  # fewer rows than listed, a twin
    assert torch.equal(row_keys(bank)[0], row_keys(bank)[1])
    queries = torch.tensor([[1.0, 0.9], [3.0, 0.1]])
    for step in range(3):
        index = KnnIndex(bank, "torch")
        distances, positions = search.nearest(index, queries, "q")
        expected, _ = brute(queries, bank)
        torch.testing.assert_close(distances, expected)
        assert torch.equal(bank[positions], bank[brute(queries, bank)[1]])
        bank = torch.cat([bank[1:], torch.tensor([[float(step), 5.0]])])


def test_disjoint_banks_keep_lineages_of_their_own():
    search = IncrementalSearch(listed=2)
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(50, 8, generator=g), torch.randn(60, 8, generator=g) + 3
    queries = torch.randn(30, 8, generator=g)
    indexes = [KnnIndex(first, "torch"), KnnIndex(second, "torch")]
    for index in indexes:
        search.nearest(index, queries, "q")
    assert search.stats["full"] == 60 and len(search.entries) == 2
    # each bank shrinks (per_task): both lineages continue, nothing is searched in full again
    shrunk = [KnnIndex(first[:40], "torch"), KnnIndex(second[10:], "torch")]
    for index, bank in zip(shrunk, (first[:40], second[10:])):
        distances, _ = search.nearest(index, queries, "q")
        torch.testing.assert_close(distances, brute(queries, bank)[0])
    assert search.stats["full"] == 60 + search.stats["researched"]
    assert len(search.entries) == 2


def test_the_same_bank_again_is_answered_from_the_entry():
    search = IncrementalSearch()
    bank, queries = torch.randn(40, 4), torch.randn(10, 4)
    index = KnnIndex(bank, "torch")
    first = search.nearest(index, queries, "q")
    second = search.nearest(index, queries, "q")
    assert search.stats["reused"] == 10 and search.stats["full"] == 10
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_entries_stay_within_their_budget():
    entry = 1000 * (2 * 8 + 2 * 4 + 4)  # bytes: keys, distances, radius of 1000 queries
    search = IncrementalSearch(listed=2, capacity_mb=2.5 * entry / 2**20)  # two entries
    index = KnnIndex(torch.randn(20, 4), "torch")
    for name in "abc":
        search.nearest(index, torch.randn(1000, 4), name)
    assert list(key for _, key in search.entries) == ["b", "c"]
    assert search.bytes <= search.capacity_bytes


def test_row_sets_find_rows_by_content():
    bank = torch.randn(25, 3)
    rows = RowSet(bank)
    keys = rows.keys()
    assert torch.equal(keys, row_keys(bank))
    shuffled = torch.randperm(25)
    assert torch.equal(rows.positions(keys[shuffled]), shuffled)
    assert rows.contains(row_keys(bank[:5] + 1)).sum() == 0


def products(n_products: int, rows: int = 600, dim: int = 24, seed: int = 0):
    """Rows of several 'products': clusters far apart, each with its own spread."""
    g = torch.Generator().manual_seed(seed)
    return [
        20.0 * torch.randn(dim, generator=g) + (0.5 + p) * torch.randn(rows, dim, generator=g)
        for p in range(n_products)
    ]


@pytest.mark.parametrize("dense_share", [0.0, 0.1, 1.1])  # all dense, mixed, all by cells
@pytest.mark.parametrize("bounded", [True, False])
def test_cell_index_finds_the_nearest_rows_within_the_bound(dense_share, bounded):
    rows = torch.cat(products(3))
    g = torch.Generator().manual_seed(5)
    queries = torch.cat(
        [rows[::7] + 0.3 * torch.randn(rows[::7].shape, generator=g), rows[:50] + 30]
    )
    full_distances, full_positions = torch_knn(queries, rows, 4)
    bound = full_distances[:, 2] * 1.01 if bounded else torch.full((len(queries),), float("inf"))
    index = CellIndex(rows, cell_size=32, backend="torch", dense_share=dense_share)
    distances, positions = index.search(queries, 4, bound)
    within = full_distances < bound[:, None]
    # every row closer than the bound is found, in order (exact ties in either order);
    # nothing beyond it is needed
    # (both from the norm expansion, whose rounding grows with the rows' norms, here ~100)
    torch.testing.assert_close(distances[within], full_distances[within], rtol=1e-3, atol=5e-3)
    found, expected = positions[within], full_positions[within]
    owners = queries[:, None].expand(-1, 4, -1)[within]
    direct = [(rows[p] - owners).norm(dim=1) for p in (found, expected)]  # no cancellation
    torch.testing.assert_close(direct[0], direct[1], rtol=1e-4, atol=1e-4)  # near-ties
    assert (found == expected).float().mean() > 0.99
    assert bool((positions[~within & torch.isinf(distances)] == -1).all())
    if dense_share > 1 and bounded:  # a tight bound prunes most cells
        assert index.stats["dense"] == 0 and index.stats["pairs"] < 0.5 * len(queries) * len(rows)


def test_test_sets_of_other_products_cost_little_against_new_rows():
    """The protocol's case: a learnt product's test patches against another product's new
    rows open few cells; answers equal a search of the whole bank at every step."""
    parts = products(4, rows=500)
    g = torch.Generator().manual_seed(3)
    tests = {
        p: part[::5] + 0.2 * torch.randn(part[::5].shape, generator=g)
        for p, part in enumerate(parts)
    }
    search = IncrementalSearch(listed=4)
    bank = parts[0]
    for step in range(1, 4):
        index = KnnIndex(bank, "torch")
        for name, queries in tests.items():
            distances, positions = search.nearest(index, queries, name)
            expected_distances, expected_positions = brute(queries, bank)
            assert torch.equal(positions, expected_positions)
            torch.testing.assert_close(distances, expected_distances, rtol=1e-5, atol=1e-5)
        bank = torch.cat([bank[: 400 * step // (step + 1)], parts[step]])
    sub = next(iter(search.deltas.values()))[2]
    # the last new rows (product 2): the learnt products' patches (0, 1) opened few cells
    assert sub.stats["pairs"] < 0.3 * sum(len(t) for t in tests.values()) * len(sub)


def test_the_cells_centres_are_search_time_not_coreset_time():
    """A profile's ``coreset`` row holds the detectors' coresets only: the cell centres of
    ``CellIndex`` are part of the search."""
    from clad import profiling

    rows = torch.cat(products(2, rows=200))
    with profiling.profiled() as totals:
        index = CellIndex(rows, cell_size=32, backend="torch")
        index.search(rows[:10], 2, torch.full((10,), float("inf")))
    assert "coreset" not in totals and totals["search"] > 0
