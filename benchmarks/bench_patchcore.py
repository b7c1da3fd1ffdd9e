"""Benchmark of the Patchcore+ predictor (issue 3): quality and speed on mvtec_toothbrush, coreset at scale.

Modes:
  toothbrush  fit on train/good, evaluate on test (good + defective) of an MVTec-layout class (default
              ../shared/data/mvtec_toothbrush) with efficientnet_lite0, p = 3, s = 1, euclidean, coreset =
              10% of the training patches, images normalised (ImageNet) then resized to 256 px NEAREST as
              VisionAD's loaders do. Prints stage timings, peak RSS and I-AUC, P-AUC, AUPRO, PL.
  coreset1m   greedy coreset of 1,000,000 random 1024-d float32 vectors down to 25,000; prints the time and
              the peak RSS beyond the vectors themselves.

    PYTHONPATH=. python benchmarks/bench_patchcore.py --mode toothbrush
    PYTHONPATH=. python benchmarks/bench_patchcore.py --mode coreset1m

The machine's load is printed with the figures: on a shared CPU wall times scale with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from visionad_multicore.patchcore.coreset import greedy_coreset_indices
from visionad_multicore.patchcore.patches import grid_size
from visionad_multicore.patchcore.predictor import PatchCorePlus

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_toothbrush"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_toothbrush(args: argparse.Namespace) -> None:
    from visionad_multicore.visionad.loaders import create_dataloaders, default_identical_transforms
    from visionad_multicore.visionad.metrics import aupro, image_auroc, pixel_auroc, proportion_localised

    root = Path(args.data)
    defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    train_loader, regular_loader, novel_loader = create_dataloaders(
        None,
        None,
        default_identical_transforms(256),
        batch_size=args.batch_size,
        test_batch_size=args.batch_size,
        shuffle=False,
        folder_path_regular_train=str(root / "train" / "good"),
        folder_path_regular_test=str(root / "test" / "good"),
        folder_path_novel_test=[str(root / "test" / d) for d in defects],
        folder_path_novel_masks=[str(root / "ground_truth" / d) for d in defects],
    )
    # Read every image first so that the timings below are the algorithm's, not PNG decoding's.
    t0 = time.perf_counter()
    train = [b[0] for b in train_loader]
    regular = [b[0] for b in regular_loader]
    novel, masks = zip(*[(b[0], b[1]) for b in novel_loader], strict=True)
    t_load = time.perf_counter() - t0
    n_train = sum(len(b) for b in train)
    side = grid_size(256 // 8, args.patch_size, args.stride)
    coreset = max(1, int(args.coreset_fraction * n_train * side * side))
    print(f"data: {root} ({n_train} train, {sum(map(len, regular))} good, {sum(map(len, novel))} defective)")
    print(f"load: {t_load:.2f} s; torch threads {torch.get_num_threads()}; load average {load_avg()}")

    model = PatchCorePlus(
        patch_size=args.patch_size,
        stride=args.stride,
        distance=args.distance,
        coreset_size=coreset,
        backbone=args.backbone,
        knn_backend=args.knn_backend,
        progress=False,
    )
    _ = model.extractor  # build the backbone outside the timings
    t0 = time.perf_counter()
    model.fit(train)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred_regular = model.predict(regular)
    pred_novel = model.predict(novel)
    t_pred = time.perf_counter() - t0
    n_test = len(pred_regular.scores) + len(pred_novel.scores)
    tm = model.timings
    print(
        f"fit: {t_fit:.2f} s = features {tm['features']:.2f} (backbone + patches) + coreset {tm['coreset']:.2f} "
        f"({model.n_patches_seen_} -> {model.memory_bank_.shape[0]}) + index {tm['index']:.2f}"
    )
    print(
        f"inference: {t_pred:.2f} s for {n_test} images ({t_pred / n_test:.3f} s/image) = backbone "
        f"{tm['backbone']:.2f} + patches {tm['embed']:.2f} + search {tm['search']:.2f} + heatmap {tm['heatmap']:.2f}"
    )
    print(
        f"fit + inference: {t_fit + t_pred:.2f} s; peak RSS {peak_rss_mb():.0f} MiB; load average {load_avg()}"
    )

    masks_np = torch.cat(masks).numpy()
    hm_nov, hm_reg = pred_novel.heatmaps.numpy(), pred_regular.heatmaps.numpy()
    results = {
        "I-AUC": image_auroc(pred_regular.scores.numpy(), pred_novel.scores.numpy()),
        "I-AUC (reweighted)": image_auroc(
            pred_regular.scores_reweighted.numpy(), pred_novel.scores_reweighted.numpy()
        ),
        "P-AUC": pixel_auroc(hm_nov, masks_np, hm_reg),
        "AUPRO": aupro(hm_nov, masks_np),
        "PL": proportion_localised(hm_nov, masks_np),
    }
    print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))


def run_coreset1m(args: argparse.Namespace) -> None:
    n, d = args.n_vectors, 1024
    gen = torch.Generator().manual_seed(0)
    vectors = torch.empty(n, d)
    for start in range(0, n, 65_536):  # filled in place: no second copy
        vectors[start : start + 65_536] = torch.randn(min(65_536, n - start), d, generator=gen)
    base = peak_rss_mb()
    print(f"{n} x {d} float32 vectors: {vectors.numel() * 4 / 2**30:.2f} GiB; RSS with them {base:.0f} MiB")
    print(f"torch threads {torch.get_num_threads()}; load average {load_avg()}")
    t0 = time.perf_counter()
    idx = greedy_coreset_indices(vectors, args.coreset_size, "euclidean", progress=True)
    elapsed = time.perf_counter() - t0
    extra = peak_rss_mb() - base
    print(
        f"coreset {n} -> {len(idx)} ({len(set(idx.tolist()))} distinct): {elapsed:.1f} s; "
        f"peak RSS beyond the vectors {extra:.0f} MiB; load average {load_avg()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("toothbrush", "coreset1m"), default="toothbrush")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="MVTec-layout class folder")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--patch_size", type=int, default=3)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--distance", default="euclidean")
    parser.add_argument(
        "--coreset_fraction", type=float, default=0.1, help="toothbrush mode: share of patches"
    )
    parser.add_argument("--knn_backend", default="auto")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--n_vectors", type=int, default=1_000_000, help="coreset1m mode")
    parser.add_argument("--coreset_size", type=int, default=25_000, help="coreset1m mode")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    np.set_printoptions(precision=4)
    if args.mode == "toothbrush":
        run_toothbrush(args)
    else:
        run_coreset1m(args)


if __name__ == "__main__":
    main()
