"""Compare our metrics with VisionAD's own ``wrapper/metrics.py`` on seeded random inputs.

Usage::

    python benchmarks/check_metrics_vs_visionad.py --visionad_root /path/to/VisionAD

VisionAD's file is imported from the user's checkout (``--visionad_root`` is put on ``sys.path``); it needs
pandas, scikit-image, scikit-learn and proportion-localised. Every metric (Imagewise_AUC, Pixelwise_AUC,
Pixelwise_AUC_anom_only, Pixelwise_AUPRO, PL) is run by both implementations on several kinds of input:
random maps, maps correlated with the masks, inverted maps (VisionAD's AUROC flip and reversed PRO curve),
masks with several regions, quantised maps with many ties, float64 maps, maps barely related to the masks,
binary maps equal to the masks, and a constant map that both must skip. The script prints the largest absolute difference per metric and exits with status 1 if any
difference exceeds ``--tolerance`` (1e-9) or the two disagree on which methods could be scored.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from scipy import ndimage

from visionad_multicore.visionad.metrics import METRICS

SIZE = 256  # proportion_localised hard-codes 256 x 256 images


def load_visionad_metrics(root: Path) -> ModuleType:
    """Import ``wrapper.metrics`` from a VisionAD checkout."""
    path = root / "wrapper" / "metrics.py"
    if not path.is_file():
        raise FileNotFoundError(f"--visionad_root {root}: expected VisionAD's wrapper/metrics.py at {path}")
    sys.path.insert(0, str(root))
    return importlib.import_module("wrapper.metrics")


def random_masks(rng: np.random.Generator, n: int, max_regions: int) -> np.ndarray:
    """Masks ``(n, SIZE, SIZE)`` float32 with 1..max_regions rectangles or ellipses each (they may touch)."""
    masks = np.zeros((n, SIZE, SIZE), dtype=np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        for _ in range(int(rng.integers(1, max_regions + 1))):
            h, w = rng.integers(4, 60, size=2)
            cy, cx = rng.integers(0, SIZE, size=2)
            if rng.random() < 0.5:
                masks[i, max(cy - h // 2, 0) : cy + h // 2 + 1, max(cx - w // 2, 0) : cx + w // 2 + 1] = 1
            else:
                masks[i][((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1] = 1
    return masks


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed noise ``(n, SIZE, SIZE)`` float64 scaled to unit std."""
    noise = ndimage.gaussian_filter(rng.normal(size=(n, SIZE, SIZE)), sigma=(0, sigma, sigma))
    return noise / noise.std()


def make_case(
    rng: np.random.Generator, kind: str, n_novel: int, n_regular: int
) -> tuple[dict, dict, dict, dict]:
    """One VisionAD-shaped input set of the given kind, as torch tensors like ``ModelWrapper.test()`` gives."""
    max_regions = 6 if kind == "multi_region" else 2
    masks = random_masks(rng, n_novel, max_regions)
    novel = smooth_noise(rng, n_novel, 2.0)
    regular = smooth_noise(rng, n_regular, 2.0)
    if kind == "random":
        novel, regular = rng.random(novel.shape), rng.random(regular.shape)
    elif kind in ("correlated", "multi_region", "ties", "float64"):
        novel = novel + 2.5 * ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 3, 3))
    elif kind == "inverted":
        novel = -(novel + 2.5 * ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 3, 3)))
        regular = -regular
    elif kind == "weak":
        novel = novel + 0.05 * masks
    elif kind == "perfect":
        # Binary maps equal to the masks: every fpr below the limit is 0, so VisionAD's AUPRO gives 0.
        novel, regular = masks.astype(np.float64), np.zeros_like(regular)
    if kind == "ties":
        novel, regular = np.round(novel * 4) / 4, np.round(regular * 4) / 4
    dtype = np.float64 if kind == "float64" else np.float32

    novel_scores = novel.reshape(n_novel, -1).max(axis=1)
    regular_scores = regular.reshape(n_regular, -1).max(axis=1)
    if kind == "ties":
        novel_scores, regular_scores = np.round(novel_scores), np.round(regular_scores)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))

    methods_novel = {"main": tensor(novel[:, None])}
    methods_regular = {"main": tensor(regular[:, None])}
    scores_novel = {"main": tensor(novel_scores)}
    scores_regular = {"main": tensor(regular_scores)}
    # A second method: the same maps negated (hits the AUROC flip and the reversed PRO curve).
    methods_novel["negated"] = -methods_novel["main"]
    methods_regular["negated"] = -methods_regular["main"]
    scores_novel["negated"] = -scores_novel["main"]
    scores_regular["negated"] = -scores_regular["main"]
    if kind == "random":
        # A constant map: AUPRO cannot be computed (both implementations skip it).
        methods_novel["constant"] = torch.zeros_like(methods_novel["main"])
        methods_regular["constant"] = torch.zeros_like(methods_regular["main"])
        scores_novel["constant"] = torch.zeros_like(scores_novel["main"])
        scores_regular["constant"] = torch.zeros_like(scores_regular["main"])

    heatmap_set = {"heatmap_set_regular": methods_regular, "heatmap_set_novel": methods_novel}
    image_score_set = {"image_score_set_regular": scores_regular, "image_score_set_novel": scores_novel}
    targets_set = {"targets_novel": torch.from_numpy(masks[:, None])}
    paths_set = {"paths_novel": [f"novel_{i}.png" for i in range(n_novel)]}
    return heatmap_set, image_score_set, targets_set, paths_set


def run_reference(reference: ModuleType, name: str, inputs: tuple) -> dict[str, float]:
    """VisionAD's metric, quietly (it prints failures and pandas warns); its PL cache is reset first."""
    reference.reset_all()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        results, _ = reference.metric_list[name](*inputs)
    return {key: float(value) for key, value in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--visionad_root", type=Path, required=True, help="VisionAD checkout (has wrapper/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_novel", type=int, default=6, help="anomalous images per case")
    parser.add_argument("--n_regular", type=int, default=4, help="regular images per case")
    parser.add_argument("--tolerance", type=float, default=1e-9)
    parser.add_argument("--verbose", action="store_true", help="show our metrics' warnings (flips, skips)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)

    reference = load_visionad_metrics(args.visionad_root)
    rng = np.random.default_rng(args.seed)
    kinds = ["random", "correlated", "inverted", "multi_region", "ties", "float64", "weak", "perfect"]
    worst: dict[str, float] = dict.fromkeys(METRICS, 0.0)
    failures: list[str] = []
    print(f"{'case':<14}{'metric':<26}{'method':<10}{'VisionAD':>20}{'ours':>20}{'abs diff':>11}")
    for kind in kinds:
        inputs = make_case(rng, kind, args.n_novel, args.n_regular)
        for name, ours_fn in METRICS.items():
            theirs = run_reference(reference, name, inputs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours, _ = ours_fn(*inputs)
            if set(theirs) != set(ours):
                failures.append(
                    f"{kind}/{name}: methods scored differ: VisionAD {sorted(theirs)}, ours {sorted(ours)}"
                )
            for method in sorted(set(theirs) | set(ours)):
                a, b = theirs.get(method, float("nan")), ours.get(method, float("nan"))
                diff = abs(a - b)
                if method in theirs and method in ours:
                    worst[name] = max(worst[name], diff)
                print(f"{kind:<14}{name:<26}{method:<10}{a:>20.15f}{b:>20.15f}{diff:>11.2e}")
    print("\nmax abs difference per metric:")
    for name, diff in worst.items():
        flag = "" if diff <= args.tolerance else f"  > {args.tolerance:g}"
        print(f"  {name:<26}{diff:.3e}{flag}")
        if diff > args.tolerance:
            failures.append(f"{name}: max abs difference {diff:.3e} > {args.tolerance:g}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
