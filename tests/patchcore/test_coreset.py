"""Greedy k-center coreset: size, distinctness, small banks, determinism, coverage, exactness."""

from __future__ import annotations

import pytest
import torch

from visionad_multicore.patchcore.coreset import (
    coreset_rows,
    coreset_width,
    greedy_coreset_indices,
    random_projection,
    select_coreset,
)
from visionad_multicore.patchcore.distances import DISTANCES, distances_to_point, pairwise_distances


def _bank(n: int = 600, d: int = 200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, d, generator=gen) * 3
    return centres[torch.randint(20, (n,), generator=gen)] + torch.randn(n, d, generator=gen)


def _naive(features: torch.Tensor, size: int, distance: str, seed: int = 0) -> torch.Tensor:
    proj = random_projection(features, 128, seed)
    if distance == "cosine":
        proj = torch.nn.functional.normalize(proj, dim=1)
        distance = "euclidean"
    first = int(torch.randint(len(proj), (1,), generator=torch.Generator().manual_seed(seed + 1)).item())
    sel, md = [first], distances_to_point(proj, proj[first], distance)
    md[first] = -1
    for _ in range(size - 1):
        i = int(md.argmax())
        sel.append(i)
        md = torch.minimum(md, distances_to_point(proj, proj[i], distance))
        md[sel] = -1
    return torch.tensor(sel)


@pytest.mark.parametrize("distance", DISTANCES)
def test_size_distinct_and_exact_greedy(distance: str) -> None:
    bank = _bank()
    idx = greedy_coreset_indices(bank, 50, distance, progress=False)
    assert idx.shape == (50,)
    assert len(set(idx.tolist())) == 50
    assert torch.equal(idx, _naive(bank, 50, distance))  # pruning changes nothing


def test_small_bank_kept_whole_without_duplicates() -> None:
    bank = _bank(40)
    idx = greedy_coreset_indices(bank, 100, progress=False)
    assert sorted(idx.tolist()) == list(range(40))


def test_duplicate_vectors_never_reselected() -> None:
    bank = torch.cat([torch.zeros(30, 8), torch.ones(30, 8)])
    idx = greedy_coreset_indices(bank, 10, progress=False)
    assert len(set(idx.tolist())) == 10


def test_seeded_determinism() -> None:
    bank = _bank()
    a = greedy_coreset_indices(bank, 40, seed=3, progress=False)
    b = greedy_coreset_indices(bank, 40, seed=3, progress=False)
    c = greedy_coreset_indices(bank, 40, seed=4, progress=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_k_center_covers_better_than_random() -> None:
    bank = _bank(1000)
    proj = random_projection(bank, 128, 0)
    idx = greedy_coreset_indices(bank, 30, progress=False)
    rand = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:30]
    radius = pairwise_distances(proj, proj[idx], "euclidean").min(1).values.max()
    radius_random = pairwise_distances(proj, proj[rand], "euclidean").min(1).values.max()
    assert radius < radius_random


@pytest.mark.parametrize("distance", DISTANCES)
def test_lazy_blocks_equal_plain_greedy_over_many_blocks(distance: str) -> None:
    # 3,000 points = 12 lazily refreshed blocks of 256 (p-norms: the pruned passes) against the plain loop
    bank = _bank(3000, 64, seed=5)
    idx = greedy_coreset_indices(bank, 300, distance, progress=False)
    assert torch.equal(idx, _naive(bank, 300, distance))


def test_same_selection_with_one_or_two_threads() -> None:
    bank = _bank(4000, 64, seed=6)
    one = greedy_coreset_indices(bank, 400, progress=False, threads=1)
    two = greedy_coreset_indices(bank, 400, progress=False, threads=2)
    assert torch.equal(one, two)


@pytest.mark.parametrize("distance", DISTANCES)
def test_select_coreset_on_prepared_rows(distance: str) -> None:
    bank = _bank(700, 200, seed=7)
    rows = coreset_rows(random_projection(bank, 128, 0), distance)
    assert rows.shape[1] == coreset_width(128, distance)
    assert torch.equal(
        select_coreset(rows, 60, distance, progress=False),
        greedy_coreset_indices(bank, 60, distance, progress=False),
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("distance", DISTANCES)
def test_gpu_selection_equals_plain_greedy(distance: str) -> None:
    bank = _bank(3000, 64, seed=5)
    idx = greedy_coreset_indices(bank.cuda(), 300, distance, progress=False)
    assert idx.device.type == "cpu"
    assert torch.equal(idx, _naive(bank, 300, distance))


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("algorithm", ["pruned", "dense"])
def test_every_algorithm_equals_plain_greedy(distance: str, algorithm: str) -> None:
    # "dense" is the GPU's algorithm; it runs on the CPU too, so its logic is checked here without a GPU
    bank = _bank(1500, 64, seed=8)
    rows = coreset_rows(random_projection(bank, 128, 0), distance)
    idx = select_coreset(rows, 150, distance, progress=False, algorithm=algorithm)
    assert torch.equal(idx, _naive(bank, 150, distance))


def test_algorithm_errors() -> None:
    rows = coreset_rows(torch.randn(50, 8), "manhattan")
    with pytest.raises(ValueError, match="known: auto, lazy, pruned, dense"):
        select_coreset(rows, 5, "manhattan", algorithm="fast")
    with pytest.raises(ValueError, match="lazy coreset algorithm needs euclidean or cosine"):
        select_coreset(rows, 5, "manhattan", algorithm="lazy")
