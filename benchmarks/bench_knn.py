"""Benchmark of the minkowski3 k-NN search: L2 shortlist + exact L3 re-rank against exact L3 search.

Two data sets:
  real    efficientnet_lite0 patch features (feature_dim 1024, p = 1, s = 1) of an MVTec-layout class (default
          ../shared/data/mvtec_toothbrush) at 256 px; bank: the predictor's greedy coreset of the train/good
          patches (``--bank`` vectors); queries: ``--queries`` patches drawn from a few test images (good and
          defective).
  random  standard Gaussian bank and queries of the same sizes, for contrast (no structure).

For each shortlist size it prints the time per 1,000 queries (faiss and torch backends), recall@1 of the exact
L3 nearest neighbour (a hit when the returned distance equals the exact nearest distance, so duplicate bank
vectors count as hits) and the max / median relative error of the returned distance against the exact nearest
distance. Exact search is timed with faiss METRIC_Lp (on ``--faiss-queries`` queries, it is slow) and
torch.cdist (all queries, also the ground truth). One torch thread.

    PYTHONPATH=. python benchmarks/bench_knn.py
    PYTHONPATH=. python benchmarks/bench_knn.py --bank 5000 --shortlists 1 2 4 8 16 32 64 128 --skip-random
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionad_multicore.patchcore.backbone import IMAGENET_MEAN, IMAGENET_STD
from visionad_multicore.patchcore.distances import Backend, NearestNeighbourIndex, faiss_available
from visionad_multicore.patchcore.predictor import PatchCorePlus

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_toothbrush"


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) ImageNet-normalised images."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((x - mean) / std)
    return torch.stack(out)


def real_features(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank (M, 1024), queries (Q, 1024)) of efficientnet_lite0 patch features."""
    root = Path(args.data)
    train = sorted((root / "train" / "good").glob("*.png"))
    good = sorted((root / "test" / "good").glob("*.png"))
    defects = sorted(p for d in (root / "test").iterdir() if d.name != "good" for p in d.glob("*.png"))
    if not train or not good or not defects:
        raise FileNotFoundError(f"{root}: expected PNGs in train/good, test/good and test/<defect>")
    model = PatchCorePlus(
        patch_size=1,
        stride=1,
        distance="minkowski3",
        coreset_size=args.bank,
        feature_dim=1024,
        progress=False,
    )
    t0 = time.perf_counter()
    model.fit(load_images(train[i : i + 8], args.size) for i in range(0, len(train), 8))
    print(
        f"real: bank {tuple(model.memory_bank_.shape)} (coreset of {model.n_patches_seen_} patches of "
        f"{len(train)} train images) in {time.perf_counter() - t0:.1f} s"
    )
    test = load_images(good[:2] + defects[:3], args.size)
    feats, _ = model.embed(model.extractor(test))  # (5 * h * w, 1024)
    gen = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(feats.shape[0], generator=gen)[: args.queries]
    return model.memory_bank_, feats[pick].contiguous()


def timed(index: NearestNeighbourIndex, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(distances (Q,), indices (Q,), seconds per 1,000 queries) of a k = 1 search."""
    t0 = time.perf_counter()
    res = index.search(queries, 1)
    per_1000 = (time.perf_counter() - t0) / queries.shape[0] * 1000
    return res.distances[:, 0], res.indices[:, 0], per_1000


def bench(name: str, bank: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace) -> None:
    print(f"\n== {name}: bank {tuple(bank.shape)}, {queries.shape[0]} queries, load {os.getloadavg()[0]:.2f}")
    backends: list[Backend] = ["faiss", "torch"] if faiss_available() else ["torch"]
    exact_d, _, t_torch = timed(
        NearestNeighbourIndex(bank, "minkowski3", "torch", lp_search="exact"), queries
    )
    print(f"exact L3 torch.cdist: {t_torch:8.3f} s / 1000 queries")
    if "faiss" in backends:
        nq = min(args.faiss_queries, queries.shape[0])
        fd, _, t_faiss = timed(
            NearestNeighbourIndex(bank, "minkowski3", "faiss", lp_search="exact"), queries[:nq]
        )
        agree = torch.allclose(fd, exact_d[:nq], rtol=1e-4)
        print(f"exact L3 faiss Lp:    {t_faiss:8.3f} s / 1000 queries (timed on {nq}; agrees: {agree})")
        _, _, t_l2 = timed(NearestNeighbourIndex(bank, "euclidean", "faiss"), queries)
        print(f"(reference) exact L2 faiss: {t_l2:.3f} s / 1000 queries")
    floor = exact_d.clamp_min(1e-12)
    print(
        f"{'shortlist':>9} "
        + " ".join(f"{b + ' s/1000':>13}" for b in backends)
        + "  recall@1  max rel err  median rel err"
    )
    for s in args.shortlists:
        times = []
        d = torch.empty(0)
        for b in backends:
            index = NearestNeighbourIndex(bank, "minkowski3", b, lp_search="shortlist", lp_shortlist=s)
            d, _, t = timed(index, queries)
            times.append(t)
        rel = (d - exact_d) / floor  # >= 0 up to rounding: the shortlist cannot beat the exact nearest
        recall = (rel <= 1e-5).float().mean().item()
        print(
            f"{s:>9} "
            + " ".join(f"{t:13.3f}" for t in times)
            + f"  {recall:8.4f}  {rel.max().item():11.2e}  {rel.median().item():14.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bank", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--faiss-queries", type=int, default=100)
    parser.add_argument("--shortlists", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-random", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    if not args.skip_real:
        bench("real (efficientnet_lite0, toothbrush)", *real_features(args), args)
    if args.skip_random:
        return
    gen = torch.Generator().manual_seed(args.seed)
    bank = torch.randn(args.bank, 1024, generator=gen)
    queries = torch.randn(args.queries, 1024, generator=gen)
    bench("random Gaussian", bank, queries, args)


if __name__ == "__main__":
    main()
