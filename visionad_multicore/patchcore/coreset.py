"""Fixed-size coreset of a memory bank: greedy k-center selection on a seeded random projection.

The selection is Gonzalez' farthest-point greedy k-center algorithm, run on the bank projected to 128
dimensions by a seeded Gaussian matrix (PatchCore's "approximate greedy coreset"), in the predictor's own
distance. It keeps each point's distance to its nearest selected centre (``min_dist``); every step picks the
point with the largest ``min_dist`` (the first on ties) as the new centre and lowers the ``min_dist`` of the
points closer to it. Every algorithm below returns that greedy selection; they differ in how much work a step
costs and in how they compute the same distances (a matrix product, a matrix-vector product, a difference),
so two points whose distances tie to the last bits may come out in the other order (a plain loop does the
same: on 20,000 clustered points to 2,000 the three agree on the set and swap one such pair, at step 464 or
600).

**Euclidean and cosine on the CPU: lazily refreshed blocks** (``algorithm="lazy"``). Triangle-inequality
pruning (skip x when d(x, own centre) <= d(c, own centre) / 2) saves little on real patch features: on
100,000 projected EfficientNet-Lite0 patch features about half the points stay candidates at every step up
to 2,000 centres, so each step is a memory-bound pass over the (N, 129) rows. Instead the points are cut
into blocks of 256; ``min_dist`` of a block is exact for the centres it has seen, and ``block_max``, its
largest value, bounds its members' true distances from above. A step refreshes the block with the largest
bound against all the centres it has not seen, in one matrix product (compute-bound), until that block is
fresh; its farthest point is then the farthest point of all. Blocks far from the new centres are refreshed
rarely and in large batches. ``benchmarks/bench_scale.py --compare_coreset`` times it against the pruned
passes; the README quotes the figures. One thread by default: on the shared 2-core machine two threads were
slower (thread hand-offs on an oversubscribed CPU); ``threads`` gives more.

**p-norms on the CPU: per-step passes with triangle-inequality pruning** (``algorithm="pruned"``, the only
algorithm before issue 14, kept bit for bit): a p-norm has no matrix-product form, so batching buys nothing.
**GPU: one pass per step** (``algorithm="dense"``) over the rows on the device (a matrix-vector product for
euclidean / cosine, chunked for the p-norms), with no host synchronisation in the loop; 25,000 steps over
4.2 M x 129 float32 values read about 54 TB, seconds of a data-centre GPU's bandwidth.

Cosine distance is not a metric, but on unit vectors 1 - cos = ||a - b||^2 / 2, a monotone function of the
euclidean distance, so greedy farthest-point selection in cosine distance equals selection in euclidean
distance on the L2-normalised projected vectors, which is what is run. For euclidean and cosine each
projected row is stored augmented as (x, |x|^2), so that a product with (-2c, 1) plus |c|^2 gives squared
distances (same order, no root): :func:`coreset_rows` makes those rows block by block, so a streaming bank
builder never holds a second copy of the projection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from visionad_multicore.patchcore.distances import check_distance, distances_to_point

logger = logging.getLogger(__name__)

PROJECTION_CHUNK_ROWS = 65_536  # rows projected at a time (the streaming builder keeps the same blocks)
_BLOCK_ROWS = 256  # points per lazily refreshed block of the CPU selection
_CENTRES_PER_PRODUCT = 4096  # centres per (block x centres) product: bounded temporaries
_LP_CHUNK_ROWS = 65_536  # rows of one p-norm distance pass on the CPU (a (rows, d) temporary)
_LP_CHUNK_ROWS_GPU = 1_048_576  # on a GPU: fewer kernel launches per step (a 0.5 GB temporary at d = 128)


def projection_matrix(in_dim: int, dim: int = 128, seed: int = 0) -> torch.Tensor:
    """The seeded Gaussian projection matrix, (in_dim, dim), scaled by 1 / sqrt(dim) (a private generator)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, dim, generator=gen) / dim**0.5


def random_projection(
    features: torch.Tensor,
    dim: int = 128,
    seed: int = 0,
    chunk_rows: int = PROJECTION_CHUNK_ROWS,
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
    matrix = projection_matrix(d, dim, seed).to(device)  # (D, dim)
    out = torch.empty(n, dim, dtype=torch.float32, device=device)
    for start in range(0, n, chunk_rows):
        out[start : start + chunk_rows] = (
            features[start : start + chunk_rows].to(device, torch.float32) @ matrix
        )
    return out


def coreset_width(projected_dim: int, distance: str) -> int:
    """Columns of a :func:`coreset_rows` row: the projection, plus |x|^2 for euclidean and cosine."""
    return projected_dim + (1 if check_distance(distance) in ("euclidean", "cosine") else 0)


def coreset_rows(projected: torch.Tensor, distance: str) -> torch.Tensor:
    """Rows the selection works on, from projected rows (row by row, so any blocking gives the same values).

    Args:
        projected: (R, d) float32 projected features.
        distance: the predictor's distance.

    Returns:
        (R, :func:`coreset_width`) float32: cosine rows L2-normalised; euclidean / cosine rows with their
        squared norm appended.
    """
    if check_distance(distance) == "cosine":
        projected = torch.nn.functional.normalize(projected, dim=1)
    if distance in ("euclidean", "cosine"):
        return torch.cat([projected, projected.square().sum(dim=1, keepdim=True)], dim=1)
    return projected


def greedy_coreset_indices(
    features: torch.Tensor,
    size: int,
    distance: str = "euclidean",
    projection_dim: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = None,
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
        threads: CPU threads of the selection (default 1, see :func:`select_coreset`).

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
    rows = torch.empty(n, coreset_width(proj.shape[1], distance), dtype=torch.float32, device=proj.device)
    for start in range(0, n, PROJECTION_CHUNK_ROWS):
        rows[start : start + PROJECTION_CHUNK_ROWS] = coreset_rows(
            proj[start : start + PROJECTION_CHUNK_ROWS], distance
        )
    del proj
    return select_coreset(rows, size, distance, seed, progress, threads)


CORESET_ALGORITHMS: tuple[str, ...] = ("auto", "lazy", "pruned", "dense")


def select_coreset(
    rows: torch.Tensor,
    size: int,
    distance: str,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
    algorithm: str = "auto",
) -> torch.Tensor:
    """Greedy k-center selection on prepared rows (:func:`coreset_rows` of the projected bank).

    Args:
        rows: (N, d [+ 1]) float32 on the selection's device (CPU: pruning and cells; CUDA: dense passes).
        size: number of points to keep; ``N <= size`` keeps them all.
        distance: the predictor's distance.
        seed: the first centre is drawn with ``seed + 1``.
        progress: show a tqdm bar.
        threads: CPU threads (default 1: on the shared 2-core machine this was measured on, two threads made
            the 4.2 M-point selection slower, not faster; give more on an idle many-core machine); ignored on
            a GPU.
        algorithm: ``auto`` (the module docstring's choice), or ``lazy`` (euclidean / cosine, CPU),
            ``pruned`` (CPU) or ``dense`` (any device) to compare them.

    Returns:
        (min(N, size),) int64 CPU tensor of distinct indices, in selection order.
    """
    check_distance(distance)
    if algorithm not in CORESET_ALGORITHMS:
        raise ValueError(f"unknown coreset algorithm {algorithm!r}; known: {', '.join(CORESET_ALGORITHMS)}")
    if size < 1:
        raise ValueError(f"coreset size must be >= 1, got {size}")
    n = rows.shape[0]
    if n <= size:
        return torch.arange(n, dtype=torch.long)
    metric = "euclidean" if distance == "cosine" else distance  # see the module docstring
    if algorithm == "auto":
        cpu = rows.device.type == "cpu"
        algorithm = "dense" if not cpu else "lazy" if metric == "euclidean" else "pruned"
    if algorithm == "lazy" and metric != "euclidean":
        raise ValueError(f"the lazy coreset algorithm needs euclidean or cosine, not {distance}")
    if algorithm != "dense" and rows.device.type != "cpu":
        raise ValueError(f"the {algorithm} coreset algorithm runs on the CPU; rows are on {rows.device}")
    with _cpu_threads(1 if threads is None else threads):
        if algorithm == "lazy":
            return _lazy_greedy(rows, size, seed, progress)
        if algorithm == "pruned":
            return _pruned_greedy(rows, size, metric, seed, progress)
        return _greedy_dense_device(rows, size, metric, seed, progress)


def _first_centre(n: int, seed: int) -> int:
    return int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed + 1)).item())


@contextlib.contextmanager
def _cpu_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Metric:
    """Distances between prepared rows (see :func:`coreset_rows`) and centres.

    ``euclidean`` rows are augmented (x, |x|^2): a centre c becomes the column (-2c, 1) and the constant
    |c|^2, so squared distances to one or many centres are a matrix product (same order as the distances,
    no root). The p-norms use :func:`~visionad_multicore.patchcore.distances.distances_to_point` (true
    distances) in blocks of bounded memory.
    """

    def __init__(self, rows: torch.Tensor, metric: str) -> None:
        self.rows = rows
        self.metric = metric
        self.squared = metric == "euclidean"
        self.dim = rows.shape[1] - 1 if self.squared else rows.shape[1]  # the projected dimension
        self.chunk = _LP_CHUNK_ROWS if rows.device.type == "cpu" else _LP_CHUNK_ROWS_GPU

    def query(self, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(column (d + 1,), constant)`` of a centre row: squared distances are ``rows @ column + constant``."""
        c = centre[: self.dim]
        return torch.cat([-2.0 * c, c.new_ones(1)]), c.square().sum()

    def to_centre(self, block: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """(R,) (squared) distances of the rows of ``block`` (stored like ``self.rows``) to one centre row."""
        if self.squared:
            vec, const = self.query(centre)
            return (block @ vec + const).clamp_min_(0.0)
        if block.shape[0] <= self.chunk:
            return distances_to_point(block, centre, self.metric)
        return torch.cat(
            [
                distances_to_point(block[s : s + self.chunk], centre, self.metric)
                for s in range(0, block.shape[0], self.chunk)
            ]
        )

    def to_rows(self, idx: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """(C,) (squared) distances of ``rows[idx]`` to ``centre``, gathered in bounded blocks."""
        if idx.numel() <= self.chunk or self.squared:
            return self.to_centre(torch.index_select(self.rows, 0, idx), centre)
        return torch.cat(
            [
                self.to_centre(torch.index_select(self.rows, 0, idx[s : s + self.chunk]), centre)
                for s in range(0, idx.numel(), self.chunk)
            ]
        )


def _lazy_greedy(rows: torch.Tensor, size: int, seed: int, progress: bool) -> torch.Tensor:
    """Greedy k-center (euclidean) on the CPU with lazily refreshed blocks (see the module docstring).

    The points are cut into blocks of :data:`_BLOCK_ROWS` consecutive rows. ``min_dist`` of a block is exact
    for the centres before ``stamp[block]``; ``block_max`` holds each block's largest ``min_dist``, an upper
    bound of its members' true distances. Each step refreshes the block with the largest bound (the first
    one on ties) against the centres it has not seen, in one matrix product, until that block is fresh; its
    farthest point (the first on ties) is then the farthest point of the whole bank.

    Args:
        rows: (N, d + 1) augmented rows; size: centres to pick; seed: the first centre is drawn with
        ``seed + 1``; progress: tqdm bar.

    Returns:
        (size,) int64 indices in selection order.
    """
    n = rows.shape[0]
    dist = _Metric(rows, "euclidean")
    block = _BLOCK_ROWS
    n_blocks = -(-n // block)
    first = _first_centre(n, seed)
    selected = torch.empty(size, dtype=torch.long)
    columns = torch.empty(dist.dim + 1, size, dtype=rows.dtype)  # (d + 1, size) query columns
    consts = torch.empty(size, dtype=rows.dtype)  # (size,) |c|^2

    def add_centre(k: int, index: int) -> None:
        selected[k] = index
        columns[:, k], consts[k] = dist.query(rows[index])

    add_centre(0, first)
    min_dist = dist.to_centre(rows, rows[first])  # (N,)
    min_dist[first] = -1.0  # selected points hold -1 and are never chosen again
    block_max = torch.full((n_blocks,), -float("inf"), dtype=rows.dtype)
    full = n // block
    block_max[:full] = min_dist[: full * block].view(full, block).amax(dim=1)
    if full < n_blocks:
        block_max[full] = min_dist[full * block :].max()
    stamp = torch.ones(n_blocks, dtype=torch.long)  # centres each block's min_dist has seen
    refreshed = 0
    for k in tqdm(range(1, size), desc="coreset", disable=not progress, mininterval=1.0):
        while True:
            b = int(torch.argmax(block_max))
            seen = int(stamp[b])
            if seen == k:
                break
            lo, hi = b * block, min(n, (b + 1) * block)
            part = min_dist[lo:hi]
            for s in range(seen, k, _CENTRES_PER_PRODUCT):  # bounded (rows x centres) products
                e = min(k, s + _CENTRES_PER_PRODUCT)
                sq = torch.addmm(consts[s:e], rows[lo:hi], columns[:, s:e])  # (rows, centres) squared
                torch.minimum(part, sq.amin(dim=1).clamp_min_(0.0), out=part)
            refreshed += (hi - lo) * (k - seen)
            block_max[b] = part.max()
            stamp[b] = k
        lo = b * block
        index = lo + int(torch.argmax(min_dist[lo : lo + block]))
        add_centre(k, index)
        min_dist[index] = -1.0
        block_max[b] = min_dist[lo : lo + block].max()
    logger.debug("coreset: %.1f%% of the point-centre distances computed", 100.0 * refreshed / (n * size))
    return selected


def _pruned_greedy(rows: torch.Tensor, size: int, metric: str, seed: int, progress: bool) -> torch.Tensor:
    """Greedy k-center on the CPU: one pass per step with triangle-inequality pruning.

    Per step: an argmax and a threshold over the (N,) ``min_dist``, distances to the earlier centres of the
    points that pass, and distances to the new centre of the points that survive the bound. For
    ``euclidean`` ``min_dist`` holds squared distances (halving a distance quarters its square).

    Args:
        rows: (N, w) prepared rows; size: centres to pick; metric: ``euclidean`` (augmented rows),
        ``minkowski3`` or ``manhattan``; seed: the first centre is drawn with ``seed + 1``; progress: tqdm bar.

    Returns:
        (size,) int64 indices in selection order.
    """
    n = rows.shape[0]
    dist = _Metric(rows, metric)
    half = 0.25 if dist.squared else 0.5
    first = _first_centre(n, seed)
    selected = torch.empty(size, dtype=torch.long)
    centres = torch.empty(size, rows.shape[1], dtype=rows.dtype)  # (size, w)
    selected[0] = first
    centres[0] = rows[first]
    min_dist = dist.to_centre(rows, rows[first])  # (N,) distance to the nearest centre
    assign = torch.zeros(n, dtype=torch.long)  # (N,) index (into centres) of that centre
    min_dist[first] = -1.0  # selected points hold -1 and are never chosen again
    evaluated = 0
    for k in tqdm(range(1, size), desc="coreset", disable=not progress, mininterval=1.0):
        radius, idx_t = torch.max(min_dist, dim=0)
        centre = rows[idx_t]
        selected[k] = idx_t
        centres[k] = centre
        # x (nearest centre j) can only move to the new centre c if d(x, j) > d(c, j) / 2 (triangle
        # inequality), and d(c, j) >= radius for every j, so points within radius / 2 are skipped first.
        far = torch.nonzero(min_dist > radius * half).squeeze(1)  # (F,)
        owners = torch.index_select(assign, 0, far)  # (F,)
        gap = dist.to_centre(centres[:k], centre)  # (k,) d(c, j) for every earlier centre
        keep = torch.index_select(min_dist, 0, far) > torch.index_select(gap, 0, owners) * half
        cand = far[keep]  # (C,)
        evaluated += cand.numel()
        if 2 * cand.numel() > n:  # most points: one contiguous pass beats gathering their rows
            new_all = dist.to_centre(rows, centre)  # (N,)
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
    logger.debug(
        "coreset: %.2f%% of point-centre distances computed", 100.0 * evaluated / (n * max(1, size - 1))
    )
    return selected


def _greedy_dense_device(
    rows: torch.Tensor, size: int, metric: str, seed: int, progress: bool
) -> torch.Tensor:
    """Exact greedy k-center on an accelerator: one pass per step, no host synchronisation in the loop."""
    n = rows.shape[0]
    device = rows.device
    dist = _Metric(rows, metric)
    first = torch.tensor([_first_centre(n, seed)], device=device)
    selected = torch.empty(size, dtype=torch.long, device=device)
    selected[0:1] = first
    min_dist = dist.to_centre(rows, torch.index_select(rows, 0, first)[0])  # (N,)
    min_dist.index_fill_(0, first, -1.0)
    for k in tqdm(range(1, size), desc="coreset", disable=not progress, mininterval=1.0):
        idx = torch.argmax(min_dist).view(1)  # first index of the largest distance, stays on the device
        selected[k : k + 1] = idx
        new = dist.to_centre(rows, torch.index_select(rows, 0, idx)[0])  # (N,)
        torch.minimum(min_dist, new, out=min_dist)  # selected points keep -1
        min_dist.index_fill_(0, idx, -1.0)
    return selected.cpu()
