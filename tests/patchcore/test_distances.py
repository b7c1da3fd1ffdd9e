"""k-NN search: faiss and torch agree, distances are true distances."""

from __future__ import annotations

import pytest
import torch

from visionad_multicore.patchcore.distances import (
    DISTANCES,
    NearestNeighbourIndex,
    check_distance,
    faiss_available,
    pairwise_distances,
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
        d = NearestNeighbourIndex(bank, distance, backend).search(q, 1).distances  # type: ignore[arg-type]
        assert d.item() == pytest.approx(expected, abs=1e-5)
    assert pairwise_distances(q, bank, distance).min().item() == pytest.approx(expected, abs=1e-5)


def test_unknown_distance_lists_known() -> None:
    with pytest.raises(ValueError, match="euclidean, cosine, minkowski3, manhattan"):
        check_distance("chebyshev")
