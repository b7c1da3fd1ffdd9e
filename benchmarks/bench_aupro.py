"""Time our vectorised AUPRO against a VisionAD-style per-threshold pandas loop.

Usage::

    python benchmarks/bench_aupro.py [--n_images 100] [--size 256] [--repeats 3] [--visionad_root PATH]

Both are run on the same seeded maps (smoothed noise plus a blurred copy of the mask) and masks (1-3 random
rectangles or ellipses each). The baseline is, by default, a loop written here that follows VisionAD's
``compute_pro``: for each of the 200 thresholds, threshold all maps, take the overlap of every region, count
the false positives, and append a row to a pandas DataFrame. With ``--visionad_root`` VisionAD's own
``wrapper/metrics.py:compute_pro`` is timed instead. Prints the median time of each and the speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc

from visionad_multicore.visionad.metrics import aupro


def make_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded maps ``(n, size, size)`` float32 and binary masks ``(n, size, size)`` int32."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            h, w = rng.integers(size // 32, size // 4, size=2)
            cy, cx = rng.integers(0, size, size=2)
            if rng.random() < 0.5:
                masks[i, max(cy - h // 2, 0) : cy + h // 2 + 1, max(cx - w // 2, 0) : cx + w // 2 + 1] = 1
            else:
                masks[i][((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1] = 1
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    maps = noise / noise.std() + 2.0 * ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 3, 3))
    return maps.astype(np.float32), masks


def pandas_loop_aupro(
    maps: np.ndarray, masks: np.ndarray, num_th: int = 200, fpr_limit: float = 0.3
) -> float:
    """The slow baseline: VisionAD's AUPRO computed one threshold at a time into a pandas DataFrame."""
    regions = [[r.coords for r in measure.regionprops(measure.label(mask))] for mask in masks]
    step = (maps.max() - maps.min()) / num_th
    regular = masks == 0
    n_regular = regular.sum()
    rows = pd.DataFrame(columns=["pro", "fpr"], dtype=float)
    for th in np.arange(maps.min(), maps.max(), step)[1:]:
        predicted = maps >= th
        overlaps = [
            predicted[i][c[:, 0], c[:, 1]].mean()
            for i, image_regions in enumerate(regions)
            for c in image_regions
        ]
        fpr = np.logical_and(predicted, regular).sum() / n_regular
        row = pd.DataFrame({"pro": [float(np.mean(overlaps))], "fpr": [fpr]})
        rows = row if rows.empty else pd.concat([rows, row], ignore_index=True)
    areas = []
    for fpr_col, pro_col in ((rows["fpr"], rows["pro"]), (1 - rows["fpr"], 1 - rows["pro"])):
        keep = fpr_col < fpr_limit
        x, y = fpr_col[keep], pro_col[keep]
        try:
            areas.append(float(auc(x / x.max(), y)))
        except (ValueError, ZeroDivisionError):
            areas.append(0.0)
    return max(areas)


def time_it(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median wall time of ``repeats`` calls and the last result."""
    times = []
    result = float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n_images", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--visionad_root", type=Path, default=None, help="time VisionAD's own compute_pro")
    args = parser.parse_args(argv)

    maps, masks = make_data(args.n_images, args.size, args.seed)
    if args.visionad_root is not None:
        sys.path.insert(0, str(args.visionad_root))
        compute_pro = importlib.import_module("wrapper.metrics").compute_pro
        baseline_name = f"VisionAD compute_pro ({args.visionad_root})"

        def baseline() -> float:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                return float(compute_pro(masks[:, None], maps[:, None])[0])
    else:
        baseline_name = "VisionAD-style pandas loop (inline)"

        def baseline() -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pandas_loop_aupro(maps, masks)

    print(f"data: {args.n_images} maps of {args.size}x{args.size}, seed {args.seed}, {args.repeats} repeats")
    t_ours, score_ours = time_it(lambda: aupro(maps, masks), args.repeats)
    t_base, score_base = time_it(baseline, args.repeats)
    print(f"{baseline_name}: median {t_base:.3f} s, AUPRO {score_base:.15f}")
    print(f"ours (vectorised):   median {t_ours:.3f} s, AUPRO {score_ours:.15f}")
    print(f"abs difference {abs(score_ours - score_base):.2e}; speed-up x{t_base / t_ours:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
