"""Benchmark: the default SSA schema (2060 masks) at 256 px; target under 10 s on the development machine.

Run: ``PYTHONPATH=. python benchmarks/bench_ssa.py [--size 256] [--seed 0] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

from visionad_multicore.synthetic.masks import SSAConfig, generate_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = SSAConfig(size=args.size)
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        mask_set = generate_masks(config, seed=args.seed + r)
        times.append(time.perf_counter() - start)
        print(f"run {r}: {len(mask_set)} masks at {args.size} px in {times[-1]:.2f} s")
    best, worst = min(times), max(times)
    verdict = "PASS" if worst < 10.0 else "FAIL"
    print(
        f"SSA masks: best {best:.2f} s, worst {worst:.2f} s over {args.repeats} runs (target < 10 s): {verdict}"
    )


if __name__ == "__main__":
    main()
