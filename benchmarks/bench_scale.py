"""Scale benchmark (issue 14): fit a Patchcore+ bank on N images, time and peak memory per stage.

For every N the fit runs in a fresh process (so peak RSS is that run's own): N images of S px from
``scale_data.ScaleImages`` (the real development training images, cycled with seeded crops, flips and
turns), streamed batch by batch into ``PatchCorePlus.fit`` with ``n_images`` known, then ``--n_test`` other
images of the same kind are scored. It reports the bank size, where the bank was held (memory / disk), the
time of the feature pass (backbone + patch vectors + projection + storage; image decoding timed apart), of
the coreset (selection + gathering the kept vectors) and of inference, and the peak RSS after fitting and
after inference (and the peak GPU memory on CUDA). A markdown table and a JSON record go to ``--out``.

    PYTHONPATH=. nice -n 10 python benchmarks/bench_scale.py --sizes 500 1000 2000 4140 \\
        --out benchmark_runs/scale/cpu_lite0_f1024.md

``--compare_coreset N SIZE`` instead times the coreset selection alone on the coreset rows of N images (no
bank kept): ``--algorithms`` (``lazy:1`` = lazily refreshed blocks on 1 thread, ``pruned:1`` = the per-step
pruned passes used before issue 14, ...), and says whether each picks the same points as the first:

    PYTHONPATH=. nice -n 10 python benchmarks/bench_scale.py --compare_coreset 400 5000 \
        --algorithms lazy:1 lazy:2 pruned:1 --out benchmark_runs/scale/coreset_compare.md

Defaults are the issue's setting: ``patchcore_plus`` with 1024-d patch vectors (the paper's aggregation, which
pools every backbone to ``--feature_dim``), p 3, s 1, euclidean, coreset 25,000, 256 px. ``--backbone wideresnet50_random_benchmark`` (benchmark only) builds torchvision's
WideResNet-50-2 (layer2 512 + layer3 1024 channels) with random weights, for WRN50-sized features without
the ImageNet file (``scale_data.register_random_wrn50``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_data import RANDOM_WRN50, ScaleImages, register_random_wrn50  # noqa: E402

from visionad_multicore.atomic import atomic_write_text  # noqa: E402
from visionad_multicore.patchcore.predictor import PatchCorePlus  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class Timed:
    """Wraps an iterable and adds the time spent producing its items (image decoding) to ``seconds``."""

    def __init__(self, items: Any) -> None:
        self.items, self.seconds = items, 0.0

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Any:
        it = iter(self.items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - start
            yield item


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One fit + inference at ``args.n``; returns the record (printed as JSON by the caller)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = PatchCorePlus(
        patch_size=args.patch_size,
        stride=args.stride,
        distance=args.distance,
        coreset_size=args.coreset_size,
        feature_dim=args.feature_dim,
        feature_aggregation=args.feature_aggregation,
        backbone=register_random_wrn50() if args.backbone == RANDOM_WRN50 else args.backbone,
        device=args.device,
        progress=False,
        bank_dtype=args.bank_dtype,
        bank_storage=args.bank_storage,
        bank_dir=args.bank_dir,
        memory_limit_gb=args.memory_limit_gb,
    )
    _ = model.extractor  # built outside the timings
    cuda = args.device.startswith("cuda")
    from visionad_multicore.patchcore.bank import available_memory_bytes

    available = available_memory_bytes() / 1e9
    base_rss = peak_rss_gb()
    train = Timed(ScaleImages(args.n, args.image_size, args.batch_size, seed=args.seed))
    start = time.perf_counter()
    model.fit(train, n_images=args.n)
    if cuda:
        torch.cuda.synchronize()
    fit_seconds = time.perf_counter() - start
    fit_rss = peak_rss_gb()
    fit_vram = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    test = Timed(ScaleImages(args.n_test, args.image_size, args.batch_size, seed=args.seed + 1))
    start = time.perf_counter()
    pred = model.predict(test)
    if cuda:
        torch.cuda.synchronize()
    infer_seconds = time.perf_counter() - start
    t = model.timings
    return {
        "n_images": args.n,
        "n_patches": model.n_patches_seen_,
        "width": int(model.memory_bank_.shape[1]),
        "bank_kept": int(model.memory_bank_.shape[0]),
        "bank_storage": model.bank_storage_,
        "decode_s": train.seconds,
        "features_s": t["features"] - train.seconds,
        "coreset_s": t["coreset"],
        "index_s": t["index"],
        "fit_s": fit_seconds - train.seconds,
        "inference_s_per_image": (infer_seconds - test.seconds) / args.n_test,
        "n_test": args.n_test,
        "score_mean": float(pred.scores.mean()),
        "rss_before_fit_gb": base_rss,
        "available_gb_at_start": available,
        "peak_rss_fit_gb": fit_rss,
        "peak_rss_gb": peak_rss_gb(),
        "peak_vram_fit_gb": fit_vram,
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "threads": torch.get_num_threads(),
        "loadavg_end": os.getloadavg(),
    }


def compare_coreset(args: argparse.Namespace) -> str:
    """Time ``select_coreset`` per algorithm / thread count on the coreset rows of N images; a markdown table."""
    from visionad_multicore.patchcore.coreset import coreset_rows, projection_matrix, select_coreset

    n_images, size = args.compare_coreset
    model = PatchCorePlus(
        patch_size=args.patch_size,
        stride=args.stride,
        distance=args.distance,
        feature_dim=args.feature_dim,
        feature_aggregation=args.feature_aggregation,
        backbone=register_random_wrn50() if args.backbone == RANDOM_WRN50 else args.backbone,
        progress=False,
    )
    parts, matrix = [], None
    with torch.no_grad():
        for batch in ScaleImages(n_images, args.image_size, args.batch_size, seed=args.seed):
            feats, _ = model.embed(model.extractor(batch))
            if matrix is None:
                matrix = projection_matrix(feats.shape[1], 128, 0)
            parts.append(coreset_rows(feats @ matrix, args.distance))
    rows = torch.cat(parts)
    del parts
    lines = [
        f"{rows.shape[0]:,} coreset rows ({n_images} images) -> {size:,}, {args.distance}",
        "",
        "| algorithm | threads | seconds | same points as the first | same order |",
        "|---|---|---|---|---|",
    ]
    first = None
    for spec in args.algorithms:
        algorithm, threads = spec.split(":")
        start = time.perf_counter()
        idx = select_coreset(
            rows, size, args.distance, progress=False, threads=int(threads), algorithm=algorithm
        )
        seconds = time.perf_counter() - start
        first = idx if first is None else first
        same_set = len(set(idx.tolist()) & set(first.tolist())) == size
        lines.append(
            f"| {algorithm} | {threads} | {seconds:.0f} | {same_set} | {bool(torch.equal(idx, first))} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def table(records: list[dict[str, Any]], cuda: bool) -> str:
    head = (
        "| images | patches | fit s (features + coreset + index) | s / 1000 images | coreset s | "
        "inference s / image | bank held in | peak RSS fit GB | peak RSS GB |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|"
    if cuda:
        head += " peak VRAM GB |"
        sep += "---|"
    lines = [head, sep]
    for r in records:
        line = (
            f"| {r['n_images']:,} | {r['n_patches']:,} | {r['fit_s']:.0f} ({r['features_s']:.0f} + "
            f"{r['coreset_s']:.0f} + {r['index_s']:.1f}) | {1000 * r['fit_s'] / r['n_images']:.0f} | "
            f"{r['coreset_s']:.0f} | {r['inference_s_per_image']:.3f} | {r['bank_storage']} | "
            f"{r['peak_rss_fit_gb']:.2f} | "
            f"{r['peak_rss_gb']:.2f} |"
        )
        if cuda:
            line += f" {r['peak_vram_gb']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4140], help="numbers of images N"
    )
    p.add_argument("--n_test", type=int, default=40, help="images scored for the inference time")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite0", help=f"a registry name or {RANDOM_WRN50}")
    p.add_argument("--feature_dim", type=int, default=1024)
    p.add_argument(
        "--feature_aggregation",
        default="paper",
        help="patch pipeline; 'paper' pools to the full --feature_dim for any backbone (the issue's 1024-d "
        "setting); 'auto' would give Lite0 its 152-d local_mean_equal vectors",
    )
    p.add_argument("--patch_size", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--distance", default="euclidean")
    p.add_argument("--coreset_size", type=int, default=25_000)
    p.add_argument("--bank_dtype", default="float32")
    p.add_argument("--bank_storage", default="auto")
    p.add_argument("--bank_dir", default=None)
    p.add_argument("--memory_limit_gb", type=float, default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=None, help="markdown table (a .json record is written beside it)"
    )
    p.add_argument("--compare_coreset", type=int, nargs=2, default=None, metavar=("N", "SIZE"))
    p.add_argument("--algorithms", nargs="+", default=["lazy:1", "pruned:1"], help="ALGORITHM:THREADS")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        args.n = args.child
        print("RECORD " + json.dumps(child(args)), flush=True)
        return 0
    command = "PYTHONPATH=. python " + " ".join(["benchmarks/bench_scale.py", *(argv or sys.argv[1:])])
    if args.compare_coreset is not None:
        text = compare_coreset(args)
        print(text)
        if args.out is not None:
            meta = f"Command: `{command}`\n\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
            meta += f"at the end {os.getloadavg()[0]:.1f}; backbone {args.backbone}, {args.feature_dim}-d ({args.feature_aggregation} aggregation).\n"
            atomic_write_text(args.out, f"{meta}\n{text}\n")
        return 0
    records = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, *(argv or sys.argv[1:]), "--child", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."})
        if out.returncode != 0:
            print(out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the run with {n} images failed (exit {out.returncode})")
        record = json.loads([x for x in out.stdout.splitlines() if x.startswith("RECORD ")][-1][7:])
        records.append(record)
        print(json.dumps(record), flush=True)
        write_table(records, args, command)
    return 0


def write_table(records: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    """Print the table of the runs so far and write it (and the JSON records) to ``--out``."""
    cuda = args.device.startswith("cuda")
    text = table(records, cuda)
    print(text)
    if args.out is not None:
        meta = (
            f"Command: `{command}`\n\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, torch "
            f"{torch.__version__}; {'GPU ' + torch.cuda.get_device_name() if cuda else 'CPU only'}; load "
            f"average at the end {os.getloadavg()[0]:.1f}. Settings: backbone {args.backbone}, {args.feature_dim}-d ({args.feature_aggregation}), "
            f"p {args.patch_size}, s {args.stride}, {args.distance}, coreset {args.coreset_size:,}, "
            f"{args.image_size} px, bank {args.bank_dtype} / {args.bank_storage}. Times exclude image decoding.\n"
        )
        atomic_write_text(args.out, f"{meta}\n{text}\n")
        atomic_write_text(
            args.out.with_suffix(".json"), json.dumps({"command": command, "records": records}, indent=1)
        )


if __name__ == "__main__":
    raise SystemExit(main())
