"""Fixed-size coreset of a memory bank: greedy k-center selection on a seeded random projection.

The selection is Gonzalez' farthest-point greedy k-center algorithm, run on the bank projected to 128
dimensions by a seeded Gaussian matrix (PatchCore's "approximate greedy coreset"), in the predictor's own
distance. It keeps a running vector of each point's distance to its nearest selected centre and, per
selected point, updates it from one distance computation against the new centre. The triangle inequality
lets most points skip that computation: a point x assigned to centre j can only move to the new centre c if
d(x, j) > d(c, j) / 2, and since c is the farthest point (d(c, j) >= R, its distance R to its own nearest
centre), every point with d(x, j) <= R / 2 is skipped without computing anything. The result is the exact
greedy selection, far cheaper per step than a full (N x 128) pass once the centres cover the bank.

Memory: the (N, 128) projected bank plus a few (N,) vectors; never an N x N matrix. Projection is chunked.
Cosine distance is not a metric, but on unit vectors 1 - cos = ||a - b||^2 / 2, a monotone function of the
euclidean distance, so greedy farthest-point selection in cosine distance equals selection in euclidean
distance on the L2-normalised projected vectors, which is what is run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from visionad_multicore.patchcore.distances import check_distance, distances_to_point

logger = logging.getLogger(__name__)


def random_projection(
    features: torch.Tensor,
    dim: int = 128,
    seed: int = 0,
    chunk_rows: int = 65_536,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Project ``features`` to ``dim`` dimensions with a seeded Gaussian matrix (chunked).

    Args:
        features: (N, D) float tensor (any device; a CPU bank may be larger than device memory).
        dim: target dimension; if ``D <= dim`` the features are returned as float32 unchanged.
        seed: seed of the projection matrix (a private ``torch.Generator``).
        chunk_rows: rows projected at a time.
        device: where the projected bank lives; default ``features.device``.

    Returns:
        (N, min(D, dim)) float32 tensor.
    """
    device = torch.device(device) if device is not None else features.device
    n, d = features.shape
    if d <= dim:
        return features.to(device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    matrix = (torch.randn(d, dim, generator=gen) / dim**0.5).to(device)  # (D, dim)
    out = torch.empty(n, dim, dtype=torch.float32, device=device)
    for start in range(0, n, chunk_rows):
        out[start : start + chunk_rows] = (
            features[start : start + chunk_rows].to(device, torch.float32) @ matrix
        )
    return out


def greedy_coreset_indices(
    features: torch.Tensor,
    size: int,
    distance: str = "euclidean",
    projection_dim: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Indices of a fixed-size coreset chosen by greedy k-center selection on projected features.

    Args:
        features: (N, D) float tensor, the full memory bank.
        size: number of points to keep. If ``N <= size`` all N indices are returned (no duplicates).
        distance: the predictor's distance, one of ``euclidean``, ``cosine``, ``minkowski3``, ``manhattan``.
        projection_dim: dimension of the seeded random projection (128 in PatchCore).
        seed: seeds the projection and the first centre.
        device: device of the selection; default ``features.device``.
        progress: show a tqdm bar.

    Returns:
        (min(N, size),) int64 tensor of distinct indices into ``features``, in selection order.
    """
    check_distance(distance)
    if size < 1:
        raise ValueError(f"coreset size must be >= 1, got {size}")
    n = features.shape[0]
    if n <= size:
        return torch.arange(n, dtype=torch.long)
    proj = random_projection(features, projection_dim, seed=seed, device=device)  # (N, 128)
    metric = distance
    if distance == "cosine":
        proj = torch.nn.functional.normalize(proj, dim=1)
        metric = "euclidean"  # monotone in cosine distance on unit vectors (see module docstring)
    with _one_cpu_thread(proj.device):
        return _greedy_k_center(proj, size, metric, seed, progress)


class _Metric:
    """Distances from points to one centre; ``euclidean`` is kept squared (same order, no root).

    For ``euclidean`` each row is stored augmented as (x, |x|^2), so that one gathered matrix-vector product
    with (-2c, 1) plus |c|^2 gives squared distances: a single gather per step instead of two.
    """

    def __init__(self, points: torch.Tensor, metric: str) -> None:
        self.metric = metric
        self.squared = metric == "euclidean"
        if self.squared:
            self.points = torch.cat([points, points.square().sum(dim=1, keepdim=True)], dim=1)  # (N, d + 1)
        else:
            self.points = points

    def query(self, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vector to multiply rows with, and the constant to add (euclidean only)."""
        sq = centre.square().sum()
        return torch.cat([-2.0 * centre, centre.new_ones(1)]), sq

    def to_rows(self, rows: torch.Tensor | None, centre: torch.Tensor) -> torch.Tensor:
        """(Squared) distances of ``points[rows]`` (all points if ``rows`` is None) to ``centre`` (d,)."""
        block = self.points if rows is None else torch.index_select(self.points, 0, rows)  # (C, d [+ 1])
        if self.squared:
            vec, const = self.query(centre)
            return (block @ vec + const).clamp_min_(0.0)
        return distances_to_point(block, centre, self.metric)

    def to_rows_of(self, block: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """(Squared) distances of the rows of a block stored like ``self.points`` (e.g. centres) to ``centre``."""
        if self.squared:
            vec, const = self.query(centre)
            return (block @ vec + const).clamp_min_(0.0)
        return distances_to_point(block, centre, self.metric)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the selection loop on one CPU thread, then restore the setting.

    Each step is a handful of small kernels; with several threads their synchronisation costs more than it
    saves, and on a loaded machine spinning threads make the loop several times slower (measured: 14 s with
    one thread, 99 s with two, for 49k -> 4.9k on a shared 2-core machine).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _greedy_k_center(points: torch.Tensor, size: int, metric: str, seed: int, progress: bool) -> torch.Tensor:
    """Exact greedy k-center (farthest point) with triangle-inequality pruning; ``points`` is (N, d).

    For ``euclidean`` the running vector holds squared distances (halving a distance quarters its square).
    Per step: an argmax and a threshold over the (N,) vector, distances to the earlier centres of the few
    points that pass, and distances to the new centre of the points that survive the triangle bound.
    """
    n = points.shape[0]
    device = points.device
    dist = _Metric(points, metric)
    half = 0.25 if dist.squared else 0.5
    gen = torch.Generator().manual_seed(seed + 1)
    first = int(torch.randint(n, (1,), generator=gen).item())

    selected = torch.empty(size, dtype=torch.long, device=device)
    centres = torch.empty(size, dist.points.shape[1], dtype=points.dtype, device=device)  # (size, d [+ 1])
    selected[0] = first
    centres[0] = dist.points[first]
    min_dist = dist.to_rows(None, points[first])  # (N,) (squared) distance to the nearest centre
    assign = torch.zeros(n, dtype=torch.long, device=device)  # (N,) index (into centres) of that centre
    min_dist[first] = -1.0  # selected points are marked -1 so they can never be chosen again
    evaluated = 0
    for k in tqdm(range(1, size), desc="coreset", disable=not progress, mininterval=1.0):
        radius, idx_t = torch.max(min_dist, dim=0)
        centre = points[idx_t]
        selected[k] = idx_t
        centres[k] = dist.points[idx_t]
        # x (nearest centre j) can only move to the new centre c if d(x, j) > d(c, j) / 2 (triangle
        # inequality), and d(c, j) >= radius for every j, so points within radius / 2 are skipped first.
        far = torch.nonzero(min_dist > radius * half).squeeze(1)  # (F,)
        owners = torch.index_select(assign, 0, far)  # (F,)
        gap = dist.to_rows_of(centres[:k], centre)  # (k,) d(c, j) for every earlier centre
        keep = torch.index_select(min_dist, 0, far) > torch.index_select(gap, 0, owners) * half
        cand = far[keep]  # (C,)
        evaluated += cand.numel()
        if 2 * cand.numel() > n:  # most points: one contiguous pass beats gathering their rows
            new_all = dist.to_rows(None, centre)  # (N,)
            closer_all = new_all < min_dist  # selected points hold -1 and never move
            min_dist[closer_all] = new_all[closer_all]
            assign[closer_all] = k
        else:
            new_dist = dist.to_rows(cand, centre)  # (C,)
            closer = new_dist < torch.index_select(min_dist, 0, cand)
            moved = cand[closer]
            min_dist[moved] = new_dist[closer]
            assign[moved] = k
        min_dist[idx_t] = -1.0
    if size > 1:
        logger.debug(
            "coreset: %.2f%% of point-centre distances computed", 100.0 * evaluated / (n * (size - 1))
        )
    return selected.cpu()
