"""One table from the stored side-by-side results of ``bench_vs_anomalib.py`` (benchmark_runs/vs_anomalib/).

For every dataset with both results: our ``patchcore_plus`` (defaults) and anomalib's PatchCore, I-AUC / P-AUC /
AUPRO / PL, the gap (ours - anomalib), whether ours is within 0.005 or better on all four, and the wall times
(fit + inference, one thread each) with their ratio. With ``--interpolation`` also our metrics with images
resized by that filter (``<dataset>_<filter>.json``) beside VisionAD's NEAREST.

    python benchmarks/vs_anomalib_table.py [--store benchmark_runs/vs_anomalib] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visionad_multicore.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
METRICS = ("Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL")
SHORT = ("I-AUC", "P-AUC", "AUPRO", "PL")
ORDER = (
    "demo_brick",
    "demo_grass",
    "demo_gravel",
    "dev_mvtec_toothbrush",
    "dev_magnetic_tile",
    "dev_mvtec3d_tire",
    "dev_kolektor_sdd",
)
TOLERANCE = 0.005


def _fmt(values: dict[str, float]) -> str:
    return " / ".join(f"{values[m]:.4f}" for m in METRICS)


def comparison(store: Path) -> str:
    rows = []
    files = {p.stem: p for p in store.glob("*.json")}
    others = sorted(k for k in files if k not in ORDER and k.split("_")[-1] not in ("bilinear", "bicubic"))
    keys = [k for k in ORDER if k in files] + others
    head = (
        "| dataset | patchcore_plus "
        + " / ".join(SHORT)
        + " | anomalib PatchCore | ours - anomalib | within 0.005 "
        "| ours s | anomalib s | time ratio |"
    )
    rows += [head, "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        record = json.loads(files[key].read_text())
        if "patchcore_plus" not in record:
            continue
        if "anomalib" not in record:  # ours measured, anomalib's side not (yet): say so rather than drop it
            ours = record["patchcore_plus"]
            rows.append(
                f"| {key} | {_fmt(ours['metrics'])} | not measured | - | - | "
                f"{ours['timings']['total_s']:.1f} | - | - |"
            )
            continue
        ours, theirs = record["patchcore_plus"], record["anomalib"]
        gaps = {m: ours["metrics"][m] - theirs["metrics"][m] for m in METRICS}
        ok = all(g >= -TOLERANCE for g in gaps.values())
        t_ours, t_theirs = ours["timings"]["total_s"], theirs["timings"]["total_s"]
        rows.append(
            f"| {key} | {_fmt(ours['metrics'])} | {_fmt(theirs['metrics'])} | "
            + " / ".join(f"{gaps[m]:+.4f}" for m in METRICS)
            + f" | {'yes' if ok else 'NO'} | {t_ours:.1f} | {t_theirs:.1f} | {t_ours / t_theirs:.2f} |"
        )
    return "\n".join(rows)


def interpolation(store: Path, name: str) -> str:
    rows = [
        f"| dataset | NEAREST (VisionAD) {' / '.join(SHORT)} | {name} {' / '.join(SHORT)} | difference |",
        "|---|---|---|---|",
    ]
    for key in ORDER:
        base, other = store / f"{key}.json", store / f"{key}_{name}.json"
        if not (base.is_file() and other.is_file()):
            continue
        a = json.loads(base.read_text())["patchcore_plus"]["metrics"]
        b = json.loads(other.read_text())["patchcore_plus"]["metrics"]
        rows.append(
            f"| {key} | {_fmt(a)} | {_fmt(b)} | " + " / ".join(f"{b[m] - a[m]:+.4f}" for m in METRICS) + " |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=REPO / "benchmark_runs" / "vs_anomalib")
    parser.add_argument("--interpolation", default="bilinear", help="image filter to compare with NEAREST")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    text = comparison(args.store) + "\n\n" + interpolation(args.store, args.interpolation) + "\n"
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
