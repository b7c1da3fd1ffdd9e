"""Stratified Synthetic Anomaly (SSA) masks: the paper's bucketed polygon schema (SPEC section 3).

The authors' released code replaced this schema with random polygons of random size; we implement the paper.

Schema at model input size ``d`` (defaults in :class:`SSAConfig`):

* **Single masks.** For each bucket ``n`` in ``1..29`` we draw ``K`` (60) masks. Each is a random simple
  polygon of 3-7 vertices from ``polygenerator`` (which returns it fitted to the unit box), scaled so that its
  bounding box is ``s = d / n`` pixels a side. With probabilities 0.5 / 0.25 / 0.25 it is left unstretched,
  stretched in y or stretched in x: the stretch value ``u ~ U(0.05, 1)`` gives an aspect ratio of ``1 / u``.
  *Our reading of "stretch":* the long side stays ``s`` and the other side becomes ``u * s``, so every mask of
  bucket ``n`` fits in an ``s x s`` box and the bucket keeps its scale. The box is centred on a point of an
  ``n x n`` grid over the image (cell centres ``(i + 0.5) * s``) plus a uniform offset in ``[-s/2, s/2]`` on
  each axis. When ``K >= n * n`` every grid point is used ``K // (n * n)`` times and the remainder is drawn
  without replacement; when ``K < n * n`` the ``K`` points are drawn with replacement (as the paper says).
* **Multi-anomaly masks.** For each ``a`` in ``2..7``, ``m`` (20) masks made of ``a`` single shapes that
  neither overlap nor touch (8-neighbourhood), so each such mask has exactly ``a`` connected components
  under both 4- and 8-connectivity. Each component is drawn like a single mask from a bucket chosen
  uniformly at random; a component that is not one 4-connected piece, or that touches the shapes already
  placed, is redrawn (so multi masks lean towards smaller components, which is what fits ``a`` of them).
* **Empty masks.** ``r`` (200) all-zero masks: nominal samples for the fusion module.

Rasterisation and the resample rule: polygons are filled with :func:`skimage.draw.polygon` (pixel ``(r, c)``
has its centre at ``(r + 0.5, c + 0.5)`` in image coordinates) and clipped to the image. A fill can be
empty when the polygon is thinner than a pixel (high ``n`` with small ``u``): its outline is then drawn
instead (:func:`skimage.draw.polygon_perimeter`, clipped), and if that is empty too (the shape lies outside
the image) the pixel under the box centre is used. Centres always lie inside the image, so a single mask is
never empty and the stretch statistics are not biased by rejection. A thin spike of a polygon can rasterise
into pixels cut off from the body; only the largest 8-connected piece is kept, so every single mask is one
anomaly (one 8-connected component).

Randomness: every draw comes from a ``numpy.random.Generator`` seeded from ``seed``, except the polygon
vertices, which ``polygenerator`` draws from Python's *global* ``random`` module. We save that global state,
seed it from our generator, and restore it in a ``finally``; a run therefore neither disturbs nor depends on
the caller's global RNG (not thread safe while it runs: another thread using ``random`` meanwhile would
interleave with it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polygenerator
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from skimage.draw import polygon_perimeter
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

POLYGON_KINDS = {
    "random": polygenerator.random_polygon,
    "star": polygenerator.random_star_shaped_polygon,
    "convex": polygenerator.random_convex_polygon,
}
STRETCH_NONE, STRETCH_Y, STRETCH_X = 0, 1, 2
NOT_APPLICABLE = -1
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structuring element
_MAX_COMPONENT_TRIES = 200
_MAX_MULTI_RESTARTS = 50


@dataclass(frozen=True)
class SSAConfig:
    """Settings of the Stratified Synthetic Anomalies; validated on construction.

    Attributes:
        size: Mask side ``d`` in pixels (the model input size).
        buckets: Bucket values ``n``; bucket ``n`` has shapes of scale ``size / n`` on an ``n x n`` grid.
        masks_per_bucket: ``K``, single masks per bucket.
        multi_counts: Numbers of components ``a`` for the multi-anomaly masks.
        masks_per_multi: ``m``, multi-anomaly masks per value of ``a``.
        n_empty: ``r``, empty (nominal) masks.
        min_vertices: Fewest polygon vertices (at least 3).
        max_vertices: Most polygon vertices.
        stretch_probs: Probabilities of (unstretched, stretched in y, stretched in x).
        stretch_min: Lower bound of the stretch value ``u ~ U(stretch_min, 1)``.
        polygon_kind: ``polygenerator`` generator: ``random`` (2-opt simple polygon, the paper's),
            ``star`` or ``convex``.
        noise_std: Std of the zero-mean Gaussian noise in [0, 1] pixel units.
        per_channel: Independent noise per colour channel instead of one grey field.
    """

    size: int = 256
    buckets: tuple[int, ...] = tuple(range(1, 30))
    masks_per_bucket: int = 60
    multi_counts: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    masks_per_multi: int = 20
    n_empty: int = 200
    min_vertices: int = 3
    max_vertices: int = 7
    stretch_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)
    stretch_min: float = 0.05
    polygon_kind: str = "random"
    noise_std: float = 0.5
    per_channel: bool = False

    def __post_init__(self) -> None:
        # tuples from YAML / argparse arrive as lists; freeze them
        for name in ("buckets", "multi_counts", "stretch_probs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        errors = []
        if int(self.size) != self.size or self.size < 8:
            errors.append(f"size must be an integer >= 8, got {self.size!r}")
        if not self.buckets or any(int(n) != n or n < 1 or n > self.size for n in self.buckets):
            errors.append(f"buckets must be integers in 1..size, got {self.buckets!r}")
        if any(int(a) != a or a < 2 for a in self.multi_counts):
            errors.append(f"multi_counts must be integers >= 2, got {self.multi_counts!r}")
        for name in ("masks_per_bucket", "masks_per_multi", "n_empty"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                errors.append(f"{name} must be an integer >= 0, got {value!r}")
        if self.min_vertices < 3 or self.max_vertices < self.min_vertices:
            errors.append(
                f"need 3 <= min_vertices <= max_vertices, got {self.min_vertices!r}, {self.max_vertices!r}"
            )
        probs = self.stretch_probs
        if len(probs) != 3 or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            errors.append(f"stretch_probs must be 3 non-negative numbers summing to 1, got {probs!r}")
        if not 0.0 < self.stretch_min <= 1.0:
            errors.append(f"stretch_min must be in (0, 1], got {self.stretch_min!r}")
        if self.polygon_kind not in POLYGON_KINDS:
            errors.append(f"polygon_kind must be one of {sorted(POLYGON_KINDS)}, got {self.polygon_kind!r}")
        if not self.noise_std >= 0.0:
            errors.append(f"noise_std must be >= 0, got {self.noise_std!r}")
        if errors:
            raise ValueError("invalid SSAConfig: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SSAConfig:
        """Build from a mapping (e.g. YAML); unknown keys are an error that lists the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown SSAConfig keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**dict(values))

    @property
    def n_masks(self) -> int:
        """Total number of masks the schema produces (2060 with the defaults)."""
        return (
            len(self.buckets) * self.masks_per_bucket
            + len(self.multi_counts) * self.masks_per_multi
            + self.n_empty
        )


@dataclass(frozen=True)
class MaskSet:
    """Masks of one SSA draw with per-mask metadata (all arrays have length ``N``).

    Attributes:
        masks: ``(N, d, d)`` bool masks.
        bucket: ``(N,)`` bucket ``n`` of single masks; 0 for multi-anomaly and empty masks.
        n_components: ``(N,)`` 8-connected components of each mask (``a`` for multi masks, 0 for empty).
        n_anomalies: ``(N,)`` shapes placed: 1 for single, ``a`` for multi, 0 for empty masks.
        stretch_axis: ``(N,)`` 0 unstretched, 1 stretched in y, 2 in x; -1 for multi / empty masks.
        stretch_u: ``(N,)`` stretch value ``u`` (1.0 when unstretched; NaN for multi / empty masks).
        centre: ``(N, 2)`` float (y, x) of the shape's box centre in pixels; NaN for multi / empty masks.
        grid_cell: ``(N, 2)`` int (row, col) of the grid point used; -1 for multi / empty masks.
        n_vertices: ``(N,)`` polygon vertex count; 0 for multi / empty masks.
        config: The configuration that produced the set.
        seed: The seed that produced the set.
    """

    masks: np.ndarray
    bucket: np.ndarray
    n_components: np.ndarray
    n_anomalies: np.ndarray
    stretch_axis: np.ndarray
    stretch_u: np.ndarray
    centre: np.ndarray
    grid_cell: np.ndarray
    n_vertices: np.ndarray
    config: SSAConfig
    seed: int

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def size(self) -> int:
        """Mask side ``d`` in pixels."""
        return int(self.masks.shape[-1])

    def counts(self) -> dict[str, int]:
        """Masks per kind: ``n=<bucket>`` for singles, ``a=<count>`` for multi, and ``empty``."""
        out: dict[str, int] = {}
        for n in self.config.buckets:
            out[f"n={n}"] = int(np.sum((self.bucket == n) & (self.n_anomalies == 1)))
        for a in self.config.multi_counts:
            out[f"a={a}"] = int(np.sum((self.bucket == 0) & (self.n_anomalies == a)))
        out["empty"] = int(np.sum(self.n_anomalies == 0))
        return out


@dataclass
class _Shape:
    """One rasterised single shape, kept as a crop to stay cheap: ``pixels`` are (rows, cols)."""

    rows: np.ndarray
    cols: np.ndarray
    stretch_axis: int
    stretch_u: float
    centre: tuple[float, float]
    grid_cell: tuple[int, int]
    n_vertices: int


@contextlib.contextmanager
def _isolated_global_random(seed: int) -> Iterator[None]:
    """Seed Python's global ``random`` for ``polygenerator`` and restore the caller's state afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _grid_points(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(k, 2)`` grid indices (row, col) for bucket ``n``: stratified when ``k >= n*n``, else with replacement."""
    n_points = n * n
    if k >= n_points:
        flat = np.concatenate(
            [np.repeat(np.arange(n_points), k // n_points), rng.choice(n_points, k % n_points, replace=False)]
        )
        flat = rng.permutation(flat)
    else:
        flat = rng.integers(0, n_points, size=k)
    return np.stack([flat // n, flat % n], axis=1)


def _draw_shape(config: SSAConfig, n: int, cell: tuple[int, int], rng: np.random.Generator) -> _Shape:
    """Draw and rasterise one single shape of bucket ``n`` at grid ``cell`` (see the module docstring)."""
    d = config.size
    s = d / n
    n_vertices = int(rng.integers(config.min_vertices, config.max_vertices + 1))
    unit = np.asarray(
        POLYGON_KINDS[config.polygon_kind](n_vertices), dtype=np.float64
    )  # (V, 2) x, y in [0, 1]
    axis = int(rng.choice(3, p=config.stretch_probs))
    u = float(rng.uniform(config.stretch_min, 1.0)) if axis != STRETCH_NONE else 1.0
    height = s * (u if axis == STRETCH_X else 1.0)  # stretched in x: y side shrinks to u * s
    width = s * (u if axis == STRETCH_Y else 1.0)  # stretched in y: x side shrinks to u * s
    offset = rng.uniform(-0.5 * s, 0.5 * s, size=2)
    cy = (cell[0] + 0.5) * s + offset[0]
    cx = (cell[1] + 0.5) * s + offset[1]
    # image coordinates -> skimage pixel-centre coordinates (subtract 0.5)
    ys = cy + (unit[:, 1] - 0.5) * height - 0.5
    xs = cx + (unit[:, 0] - 0.5) * width - 0.5
    rows, cols = draw_polygon(ys, xs, shape=(d, d))
    if rows.size == 0:  # thinner than a pixel: use its outline
        rows, cols = polygon_perimeter(ys, xs, shape=(d, d), clip=False)
        keep = (rows >= 0) & (rows < d) & (cols >= 0) & (cols < d)
        rows, cols = rows[keep], cols[keep]
    if rows.size == 0:  # outline outside the image too: the pixel under the centre (always inside)
        rows = np.array([min(int(cy), d - 1)])
        cols = np.array([min(int(cx), d - 1)])
    rows, cols = _largest_component(rows, cols)
    return _Shape(rows, cols, axis, u, (float(cy), float(cx)), (int(cell[0]), int(cell[1])), n_vertices)


def _largest_component(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest 8-connected piece of a rasterised shape (drops slivers cut off by the pixel grid)."""
    r0, c0 = rows.min(), cols.min()
    crop = np.zeros((rows.max() - r0 + 1, cols.max() - c0 + 1), dtype=bool)
    crop[rows - r0, cols - c0] = True
    labels, count = ndimage.label(crop, structure=_EIGHT)
    if count <= 1:
        return rows, cols
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    keep = labels[rows - r0, cols - c0] == largest
    return rows[keep], cols[keep]


def _n_components(mask: np.ndarray, structure: np.ndarray | None = _EIGHT) -> int:
    """Connected components of a bool mask (8-connectivity by default, 4 with ``structure=None``)."""
    return int(ndimage.label(mask, structure=structure)[1])


def _single_component_crop(shape: _Shape) -> bool:
    """Whether a shape is one 4-connected piece (then it is one piece under 8-connectivity too)."""
    r0, c0 = shape.rows.min(), shape.cols.min()
    crop = np.zeros((shape.rows.max() - r0 + 1, shape.cols.max() - c0 + 1), dtype=bool)
    crop[shape.rows - r0, shape.cols - c0] = True
    return _n_components(crop, structure=None) == 1


def _multi_mask(config: SSAConfig, a: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(d, d)`` mask of ``a`` non-overlapping, non-touching single shapes (exactly ``a`` components)."""
    d = config.size
    buckets = np.asarray(config.buckets)
    for _ in range(_MAX_MULTI_RESTARTS):
        mask = np.zeros((d, d), dtype=bool)
        blocked = np.zeros((d, d), dtype=bool)  # placed shapes dilated by one pixel (8-neighbourhood)
        placed = 0
        for _ in range(_MAX_COMPONENT_TRIES):
            n = int(rng.choice(buckets))
            cell = (int(rng.integers(0, n)), int(rng.integers(0, n)))
            shape = _draw_shape(config, n, cell, rng)
            if blocked[shape.rows, shape.cols].any() or not _single_component_crop(shape):
                continue
            mask[shape.rows, shape.cols] = True
            r0, r1 = max(shape.rows.min() - 1, 0), min(shape.rows.max() + 2, d)
            c0, c1 = max(shape.cols.min() - 1, 0), min(shape.cols.max() + 2, d)
            blocked[r0:r1, c0:c1] |= ndimage.binary_dilation(mask[r0:r1, c0:c1], structure=_EIGHT)
            placed += 1
            if placed == a:
                return mask
    raise RuntimeError(
        f"could not place {a} non-touching shapes in a {d}x{d} mask after {_MAX_MULTI_RESTARTS} restarts; "
        "use a larger SSAConfig.size, smaller multi_counts or more / larger buckets"
    )


def generate_masks(config: SSAConfig | None = None, seed: int = 0, progress: bool = False) -> MaskSet:
    """Draw the full stratified mask set (singles per bucket, then multi masks per ``a``, then empty masks).

    Args:
        config: Schema settings; defaults to :class:`SSAConfig` () (2060 masks at 256 px).
        seed: Seed of every random draw; the same ``(config, seed)`` gives identical masks, whatever the
            state of Python's global ``random`` (which is restored afterwards).
        progress: Show a tqdm bar over the buckets.

    Returns:
        A :class:`MaskSet` with ``masks`` of shape ``(N, d, d)`` bool and per-mask metadata, ordered as
        bucket 1 .. bucket 29 (K each), a = 2 .. 7 (m each), then the empty masks.
    """
    config = config or SSAConfig()
    d = config.size
    n_total = config.n_masks
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x55A]))
    masks = np.zeros((n_total, d, d), dtype=bool)
    bucket = np.zeros(n_total, dtype=np.int64)
    n_components = np.zeros(n_total, dtype=np.int64)
    n_anomalies = np.zeros(n_total, dtype=np.int64)
    stretch_axis = np.full(n_total, NOT_APPLICABLE, dtype=np.int64)
    stretch_u = np.full(n_total, np.nan)
    centre = np.full((n_total, 2), np.nan)
    grid_cell = np.full((n_total, 2), NOT_APPLICABLE, dtype=np.int64)
    n_vertices = np.zeros(n_total, dtype=np.int64)

    i = 0
    with _isolated_global_random(int(rng.integers(0, 2**63 - 1))):
        for n in tqdm(config.buckets, desc="SSA buckets", disable=not progress):
            for cell in _grid_points(n, config.masks_per_bucket, rng):
                shape = _draw_shape(config, n, (int(cell[0]), int(cell[1])), rng)
                masks[i, shape.rows, shape.cols] = True
                bucket[i], n_anomalies[i], n_components[i] = n, 1, 1  # one 8-connected piece by construction
                stretch_axis[i], stretch_u[i] = shape.stretch_axis, shape.stretch_u
                centre[i], grid_cell[i], n_vertices[i] = shape.centre, shape.grid_cell, shape.n_vertices
                i += 1
        for a in config.multi_counts:
            for _ in range(config.masks_per_multi):
                masks[i] = _multi_mask(config, a, rng)
                n_anomalies[i] = n_components[i] = a
                i += 1
    # the remaining config.n_empty masks stay all-zero
    log.debug("generated %d SSA masks at %d px (seed %d)", n_total, d, seed)
    return MaskSet(
        masks=masks,
        bucket=bucket,
        n_components=n_components,
        n_anomalies=n_anomalies,
        stretch_axis=stretch_axis,
        stretch_u=stretch_u,
        centre=centre,
        grid_cell=grid_cell,
        n_vertices=n_vertices,
        config=config,
        seed=int(seed),
    )
