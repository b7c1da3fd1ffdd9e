"""Compare the metrics of two runner results folders: every (model, dataset, epoch) ``data.json`` they share.

Prints one line per shared pair and the largest absolute difference over every numeric metric value; exits 1
if it exceeds ``--tolerance`` (default 1e-9) or if the folders share no pair. Used to show that a rerun of a
committed config reproduces its numbers, e.g. after a refactor:

    visionad-multicore run --config_file CONFIG --results_dir /tmp/rerun ...
    python benchmarks/compare_runs.py benchmark_runs/results/<committed run> /tmp/rerun/<new run>
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from visionad_multicore.reporting.results import read_epoch_dir


def numeric_metrics(epoch_dir: Path) -> dict[tuple[str, str], float]:
    """``(metric, method) -> value`` of an epoch folder, read as the leaderboard reads it
    (:func:`~visionad_multicore.reporting.results.read_epoch_dir`: values that are not numbers left out)."""
    warnings: list[str] = []
    epoch = read_epoch_dir(epoch_dir, warnings)
    if epoch is None:
        raise SystemExit(f"{epoch_dir}: unreadable ({'; '.join(warnings)})")
    return {(metric, method): v for metric, values in epoch.metrics.items() for method, v in values.items()}


def compare(first: Path, second: Path) -> tuple[list[str], float]:
    """Lines describing each shared pair, and the largest absolute difference (NaN equal to NaN)."""
    lines, worst = [], 0.0
    for a in sorted(first.glob("*/*/*/data.json")):
        rel = a.relative_to(first)
        b = second / rel
        if not b.is_file():
            continue
        va, vb = numeric_metrics(a.parent), numeric_metrics(b.parent)
        shared = sorted(set(va) & set(vb))
        diffs = [0.0 if math.isnan(va[k]) and math.isnan(vb[k]) else abs(va[k] - vb[k]) for k in shared]
        pair_worst = max(diffs, default=0.0)
        worst = max(worst, pair_worst)
        missing = sorted(set(va) ^ set(vb))
        lines.append(
            f"{rel.parent}: {len(shared)} values, max abs difference {pair_worst:.3g}"
            + (f"; only in one run: {missing}" if missing else "")
        )
    return lines, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a run folder (<results>/<run time>_<description>)")
    parser.add_argument("second", type=Path, help="another run folder")
    parser.add_argument("--tolerance", type=float, default=1e-9)
    args = parser.parse_args(argv)
    lines, worst = compare(args.first, args.second)
    if not lines:
        print(f"no (model, dataset, epoch) folder is in both {args.first} and {args.second}")
        return 1
    print("\n".join(lines))
    print(f"largest absolute difference: {worst:.3g} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
