"""Is the coverage search's binned pixel AUROC needed? Exact vs binned AUROC on search-sized inputs (issue 12).

The greedy search evaluates its criterion once per candidate per step (48 candidates x a few steps) on the
mean of normalised synthetic heatmaps: ``S`` maps of 256 x 256 pixels. This times the package's exact AUROC
(:func:`visionad_multicore.auroc.binary_auroc`, a sort of every pixel) against
:func:`binned_pixel_auroc` (one histogram pass; removed from the package after this measurement, kept here as the
alternative measured) on such maps, and reports the largest difference between them.

    python benchmarks/bench_selection_auroc.py --maps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from visionad_multicore.auroc import binary_auroc


def binned_pixel_auroc(maps: np.ndarray, masks: np.ndarray, bins: int = 1 << 16) -> float:
    """Pixel AUROC from a ``bins``-bin histogram (pixels in one bin count as ties): the approximation measured."""
    values = np.asarray(maps, dtype=np.float32).ravel()
    labels = np.asarray(masks, dtype=bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return 0.5
    idx = ((values - lo) * ((bins - 1) / (hi - lo))).astype(np.int64)  # (P,) in [0, bins - 1]
    counts = np.bincount(idx + bins * labels, minlength=2 * bins)
    neg, pos = counts[:bins].astype(np.float64), counts[bins:].astype(np.float64)
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--maps", type=int, default=200, help="synthetic maps (the search's default set size)"
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    masks = np.zeros((args.maps, args.size, args.size), dtype=bool)
    for i in range(args.maps - args.maps // 10):  # a tenth are nominal, as in SSA (200 of 2060)
        y, x = rng.integers(0, args.size - 40, 2)
        h, w = rng.integers(2, 40, 2)
        masks[i, y : y + h, x : x + w] = True
    # smooth-ish z-scored heatmaps stored as float16, like the search's cache
    maps = (rng.normal(size=masks.shape) + 2.5 * masks).astype(np.float16)
    times: dict[str, list[float]] = {"exact": [], "binned": []}
    values: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in (("exact", binary_auroc), ("binned", binned_pixel_auroc)):
            start = time.perf_counter()
            values[name] = fn(maps, masks)
            times[name].append(time.perf_counter() - start)
    exact, binned = (float(np.median(times[k])) for k in ("exact", "binned"))
    print(
        f"{args.maps} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f} M pixels), load average "
        f"{os.getloadavg()[0]:.2f}: exact AUROC {exact:.2f} s, binned {binned:.3f} s (median of {args.repeats}); "
        f"ratio {exact / binned:.0f}x; |difference| {abs(values['exact'] - values['binned']):.2e}"
    )
    evaluations = 48 * 3
    print(
        f"a search of 48 candidates over 3 steps ({evaluations} evaluations): exact {evaluations * exact / 60:.1f} min, "
        f"binned {evaluations * binned / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
