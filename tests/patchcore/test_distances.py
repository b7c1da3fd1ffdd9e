"""k-NN search: faiss and torch agree, distances are true distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionad_multicore.patchcore.distances import (
    DISTANCES,
    Backend,
    NearestNeighbourIndex,
    check_distance,
    faiss_available,
    faiss_gpu_available,
    pairwise_distances,
    sort_neighbours,
)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("distance", DISTANCES)
def test_faiss_and_torch_agree(distance: str) -> None:
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 64, generator=gen), torch.randn(100, 64, generator=gen)
    a = NearestNeighbourIndex(bank, distance, "faiss").search(queries, 3)
    b = NearestNeighbourIndex(bank, distance, "torch", chunk_bytes=4 * 500 * 7).search(queries, 3)
    torch.testing.assert_close(a.distances, b.distances, rtol=1e-4, atol=0)
    assert (a.indices == b.indices).float().mean() > 0.99  # ties aside


@pytest.mark.parametrize("distance", DISTANCES)
def test_true_distances(distance: str) -> None:
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    q = torch.tensor([[3.0, 0.0]])
    # nearest is (0, 0) at 3 in every norm; for cosine, (0, 0) has no direction (similarity 0 -> 1) and
    # (3, 4) has cosine similarity 9 / 15 = 0.6 -> distance 0.4
    expected = {"euclidean": 3.0, "manhattan": 3.0, "minkowski3": 3.0, "cosine": 0.4}[distance]
    for backend in ("torch", "faiss") if faiss_available() else ("torch",):
        d = NearestNeighbourIndex(bank, distance, backend).search(q, 1).distances
        assert d.item() == pytest.approx(expected, abs=1e-5)
    assert pairwise_distances(q, bank, distance).min().item() == pytest.approx(expected, abs=1e-5)


def test_unknown_distance_lists_known() -> None:
    with pytest.raises(ValueError, match="euclidean, cosine, minkowski3, manhattan"):
        check_distance("chebyshev")


@pytest.mark.parametrize("backend", ["torch", "faiss"] if faiss_available() else ["torch"])
@pytest.mark.parametrize("distance", ["minkowski3", "manhattan"])
def test_shortlist_equals_exact_when_it_covers_the_bank(backend: Backend, distance: str) -> None:
    gen = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(60, 32, generator=gen), torch.randn(40, 32, generator=gen)
    exact = NearestNeighbourIndex(bank, distance, backend, lp_search="exact").search(queries, 5)
    short = NearestNeighbourIndex(bank, distance, backend, lp_search="shortlist", lp_shortlist=60).search(
        queries, 5
    )
    torch.testing.assert_close(short.distances, exact.distances, rtol=1e-5, atol=1e-6)
    assert torch.equal(short.indices, exact.indices)
    # a shortlist longer than the bank is clipped to it
    longer = NearestNeighbourIndex(bank, distance, backend, "cpu", lp_search="shortlist", lp_shortlist=500)
    assert torch.equal(longer.search(queries, 5).indices, exact.indices)


def test_shortlist_returns_true_distances_of_returned_vectors() -> None:
    gen = torch.Generator().manual_seed(2)
    bank, queries = torch.randn(200, 16, generator=gen), torch.randn(30, 16, generator=gen)
    res = NearestNeighbourIndex(bank, "minkowski3", "torch", lp_shortlist=8).search(queries, 3)
    assert res.distances.shape == res.indices.shape == (30, 3)
    expected = (bank[res.indices] - queries[:, None]).abs().pow(3).sum(dim=2).pow(1 / 3)  # roots taken
    torch.testing.assert_close(res.distances, expected, rtol=1e-5, atol=1e-6)
    assert (res.distances[:, 1:] >= res.distances[:, :-1]).all()
    # never closer than the exact nearest neighbour
    exact = pairwise_distances(queries, bank, "minkowski3").min(dim=1).values
    assert (res.distances[:, 0] >= exact * (1 - 1e-5)).all()
    # a shortlist shorter than k still returns k neighbours
    assert NearestNeighbourIndex(bank, "minkowski3", "torch", lp_shortlist=1).search(
        queries, 4
    ).indices.shape == (
        30,
        4,
    )


@pytest.mark.parametrize("backend", ["torch", "faiss"] if faiss_available() else ["torch"])
def test_shortlist_high_recall_on_structured_data(backend: Backend) -> None:
    # clustered bank and queries (clusters of ~50): the L3 nearest lies among the L2-nearest few dozen
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(20, 128, generator=gen) * 5
    bank = centres[torch.randint(0, 20, (1000,), generator=gen)] + torch.randn(1000, 128, generator=gen)
    queries = centres[torch.randint(0, 20, (300,), generator=gen)] + torch.randn(300, 128, generator=gen)
    exact = pairwise_distances(queries, bank, "minkowski3").min(dim=1).values
    res = NearestNeighbourIndex(bank, "minkowski3", backend).search(queries, 1)
    hit = res.distances[:, 0] <= exact * (1 + 1e-5)
    assert hit.float().mean() >= 0.99
    # without the re-rank (shortlist of 1 = the plain L2 neighbour) the recall is visibly lower
    l2_only = NearestNeighbourIndex(bank, "minkowski3", backend, lp_shortlist=1).search(queries, 1)
    assert (l2_only.distances[:, 0] <= exact * (1 + 1e-5)).float().mean() < hit.float().mean()


def test_lp_search_modes() -> None:
    bank = torch.randn(10, 4, generator=torch.Generator().manual_seed(4))
    assert NearestNeighbourIndex(bank, "minkowski3").shortlist  # the default for minkowski3
    assert not NearestNeighbourIndex(bank, "manhattan").shortlist  # faiss L1 is fast: exact by default
    assert NearestNeighbourIndex(bank, "manhattan", lp_search="shortlist").shortlist
    assert not NearestNeighbourIndex(bank, "minkowski3", lp_search="exact").shortlist
    assert not NearestNeighbourIndex(bank, "euclidean", lp_search="shortlist").shortlist  # L2 is exact anyway


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lp_search": "approx"}, "unknown lp_search 'approx'; known modes: auto, shortlist, exact"),
        ({"lp_shortlist": 0}, "lp_shortlist must be a positive int"),
        ({"lp_shortlist": 8.0}, "lp_shortlist must be a positive int"),
        ({"lp_shortlist": True}, "lp_shortlist must be a positive int"),
    ],
)
def test_lp_search_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NearestNeighbourIndex(torch.zeros(3, 2), "minkowski3", **kwargs)


class _ShuffledPairs:
    """Wraps a faiss index: returns each query's k (distance, index) pairs in a scrambled column order."""

    def __init__(self, index: object) -> None:
        self.index = index

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, i = self.index.search(x, k)  # type: ignore[attr-defined]
        order = np.random.default_rng(0).permutation(k)
        return d[:, order], i[:, order]


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("distance", DISTANCES)
def test_k_above_one_sorted_and_paired_whatever_order_faiss_returns(distance: str) -> None:
    gen = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(300, 16, generator=gen), torch.randn(50, 16, generator=gen)
    index = NearestNeighbourIndex(bank, distance, "faiss", lp_search="exact")
    index._index = _ShuffledPairs(index._index)
    out = index.search(queries, 6)
    assert bool((out.distances[:, 1:] >= out.distances[:, :-1]).all())
    true = torch.stack(
        [pairwise_distances(queries[i : i + 1], bank, distance)[0, out.indices[i]] for i in range(50)]
    )
    torch.testing.assert_close(out.distances, true, rtol=1e-4, atol=1e-5)  # each distance is its index's
    ref = NearestNeighbourIndex(bank, distance, "torch", lp_search="exact").search(queries, 6)
    torch.testing.assert_close(out.distances, ref.distances, rtol=1e-4, atol=1e-5)


def test_sort_neighbours_keeps_pairs() -> None:
    dist = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.5, 0.7]])
    idx = torch.tensor([[30, 10, 20], [0, 5, 7]])
    d, i = sort_neighbours(dist, idx)
    assert torch.equal(d, torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.5, 0.7]]))
    assert torch.equal(i, torch.tensor([[10, 20, 30], [0, 5, 7]]))


def test_exact_euclidean_returns_the_reordered_indices() -> None:
    bank = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    index = NearestNeighbourIndex(bank, "euclidean", "torch")
    dist, idx = index._exact_euclidean(torch.tensor([[0.1]]), torch.tensor([[3, 0, 2, 1]]))
    assert torch.equal(idx, torch.tensor([[0, 1, 2, 3]]))
    torch.testing.assert_close(dist, torch.tensor([[0.1, 0.9, 1.9, 2.9]]))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("backend", ["auto", "torch", "faiss"])
@pytest.mark.parametrize("distance", DISTANCES)
def test_gpu_search_true_sorted_distances(backend: Backend, distance: str) -> None:
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    gen = torch.Generator().manual_seed(4)
    bank, queries = torch.randn(2000, 64, generator=gen), torch.randn(300, 64, generator=gen)
    gpu = NearestNeighbourIndex(bank, distance, backend, "cuda", lp_search="exact").search(queries.cuda(), 5)
    cpu = NearestNeighbourIndex(bank, distance, "torch", "cpu", lp_search="exact").search(queries, 5)
    assert gpu.distances.device.type == "cuda" and gpu.indices.device.type == "cuda"
    torch.testing.assert_close(gpu.distances.cpu(), cpu.distances, rtol=1e-4, atol=1e-4)
    assert (gpu.indices.cpu() == cpu.indices).float().mean() > 0.99
    assert bool((gpu.distances[:, 1:] >= gpu.distances[:, :-1]).all())


@pytest.mark.cuda
@CUDA
def test_gpu_backend_choice() -> None:
    bank = torch.randn(100, 8)
    index = NearestNeighbourIndex(bank, "euclidean", "auto", "cuda")
    assert index.backend == ("faiss" if faiss_gpu_available() else "torch")
