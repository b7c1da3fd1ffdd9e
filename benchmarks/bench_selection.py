"""Benchmark: the 48-candidate greedy coverage search on MVTec toothbrush with the offline backbone.

Target: under 30 minutes on the development machine (2 shared CPU cores). Runs
``visionad-multicore select-predictors`` end to end (training images only) and prints the wall time, the
time of each stage and the chosen predictor list. The candidates' maps are cached in ``--cache-dir``; delete
it (or pass a fresh one) to time a cold run: a second run with the same settings only re-runs the search.
``--exclude-distances minkowski3`` leaves a distance out (faiss's METRIC_Lp search is about 400 times slower
than its L2 search on CPU, which puts the 12 minkowski3 candidates far beyond the target).

Run: ``PYTHONPATH=. python benchmarks/bench_selection.py [--synthetic-size 200] [--coreset-size 2000]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from visionad_multicore.cli import main as cli_main
from visionad_multicore.selection import default_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dev_mvtec_toothbrush")
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--synthetic-size", type=int, default=200)
    parser.add_argument("--coreset-size", type=int, default=2000)
    parser.add_argument("--max-predictors", type=int, default=8)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--out", type=Path, default=None, help="preset to write (default: a temp folder)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    parser.add_argument(
        "--exclude-distances",
        nargs="*",
        default=[],
        help="leave these distances out of the 48 (e.g. minkowski3)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_selection_")) / "toothbrush_coverage.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    candidates = [c for c in default_candidates() if c.distance not in set(args.exclude_distances)]
    candidates_file = out.with_name(f"{out.stem}_candidates.yaml")
    candidates_file.write_text(yaml.safe_dump([c.to_dict() for c in candidates], default_flow_style=None))
    argv = [
        "select-predictors",
        "--dataset",
        args.dataset,
        "--candidates",
        str(candidates_file),
        "--backbone",
        args.backbone,
        "--coreset-size",
        str(args.coreset_size),
        "--synthetic-size",
        str(args.synthetic_size),
        "--max-predictors",
        str(args.max_predictors),
        "--out",
        str(out),
        "--no-progress",
    ]
    if args.data_root:
        argv += ["--data_root", args.data_root]
    if args.cache_dir:
        argv += ["--cache-dir", str(args.cache_dir)]
    start = time.perf_counter()
    code = cli_main(argv)
    wall = time.perf_counter() - start
    record = json.loads(out.with_suffix(".json").read_text())
    chosen = [f"{p['distance']} p{p['patch_size']} s{p['stride']}" for p in record["preset"]["predictors"]]
    excluded = ", ".join(args.exclude_distances) or "none"
    print(
        f"exit code {code}; {len(candidates)} candidates (excluded distances: {excluded}), synthetic set "
        f"{args.synthetic_size}, coreset {args.coreset_size}, backbone {args.backbone}, torch threads {args.threads}"
    )
    print(
        f"scoring {record['seconds_scoring']} s, search {record['seconds_search']} s, wall {wall:.1f} s "
        f"({wall / 60:.1f} min; target < 30 min: {'PASS' if wall < 1800 else 'FAIL'})"
    )
    print(f"chosen ({record['stop_reason']}): {chosen}")


if __name__ == "__main__":
    main()
