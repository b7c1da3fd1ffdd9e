"""Issue 11's table: ``multicore`` against ``multicore_hfm``, ``ensemble_mean`` and the best member, per set.

Reads the JSON records of ``bench_multicore.py`` (``benchmark_runs/multicore/*.json``: MC4 and its MC2 subset
per development set) and, optionally, runner results folders (e.g. the README's demo command), and prints:

- per set and ensemble: I-AUC / P-AUC / AUPRO / PL of ``multicore``, ``multicore_hfm``, ``ensemble_mean`` and the
  best single member (best on the mean of the four metrics), and what ``multicore`` was (the mean, a member
  subset's mean, or an HFM epoch);
- the checks: ``multicore >= ensemble_mean`` on P-AUC, AUPRO and PL on every set, I-AUC not lower than the mean's
  by more than 0.01, and ``multicore`` against the best member on the mean over the sets, two ways: the best
  member of each row (hindsight, a different predictor per set) and the best single predictor (the same one on
  every row, the member with the best mean over the rows).

    python benchmarks/fusion_table.py [--records benchmark_runs/multicore] [--results RUN_DIR ...] [--out F.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from visionad_multicore.atomic import atomic_write_text
from visionad_multicore.reporting.results import EpochResult, scan_results

REPO = Path(__file__).resolve().parents[1]
METRICS = ("Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL")
SHORT = ("I-AUC", "P-AUC", "AUPRO", "PL")
FIXED = ("multicore", "multicore_hfm", "ensemble_mean")


def _rows_from_records(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        rows.append(
            {
                "set": record["dataset"],
                "ensemble": record["model_params"]["preset"],
                "metrics": record["metrics"],
                "multicore_is": record.get("multicore_is", "?"),
                "score": _share(record["model_params"].get("image_score_top", 0.0)),
            }
        )
        for name, sub in record.get("subsets", {}).items():
            rows.append(
                {
                    "set": record["dataset"],
                    "ensemble": name,
                    "metrics": sub["metrics"],
                    "multicore_is": sub.get("multicore_is", "?"),
                    "score": _share(record["model_params"].get("image_score_top", 0.0)),
                }
            )
    return rows


def _share(value: float | None) -> str:
    """How the fused maps were scored: ``max`` or ``top X %`` (``image_score_top``)."""
    return "max" if not value else f"top {100 * float(value):g} %"


def _rows_from_results(run_dir: Path) -> list[dict[str, Any]]:
    """Rows from a runner results folder: the last evaluated epoch of every multicore (model, dataset) pair."""
    last: dict[Path, EpochResult] = {}
    for epoch in scan_results([run_dir]).epochs:
        if epoch.algorithm == "multicore" and epoch.epoch >= last.get(epoch.dataset_dir, epoch).epoch:
            last[epoch.dataset_dir] = epoch
    rows = []
    for pair, epoch in sorted(last.items()):
        history = next(pair.glob("*/model/hfm_history.json"), None)
        metrics = {m: epoch.metrics[m] for m in METRICS if m in epoch.metrics}
        if history:
            multicore_is = json.loads(history.read_text())["multicore_is"]
        elif all(metrics[m]["multicore"] == metrics[m]["ensemble_mean"] for m in metrics):
            multicore_is = "ensemble_mean (same metrics; model not saved)"
        else:
            multicore_is = "see the run log (model not saved)"
        params = epoch.model_params
        preset = params.split("'preset': '")[1].split("'")[0] if "'preset': '" in params else "?"
        share = None
        saved_params = next(pair.glob("*/model/model_params.json"), None)
        if saved_params:  # the model's own record of its settings
            share = json.loads(saved_params.read_text()).get("image_score_top")
        rows.append(
            {
                "set": epoch.dataset,
                "ensemble": preset,
                "metrics": metrics,
                "multicore_is": multicore_is,
                "score": "?" if share is None else _share(share),
            }
        )
    return rows


def _best_member(metrics: dict[str, dict[str, float]]) -> str:
    members = [m for m in metrics[METRICS[0]] if m not in FIXED]
    return max(members, key=lambda m: sum(metrics[k][m] for k in METRICS) / len(METRICS))


def build(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| set | ensemble | image score | multicore is | method | " + " | ".join(SHORT) + " |",
        "|---|---|---|---|---|" + "---|" * len(SHORT),
    ]
    failures: list[str] = []
    sums = {k: {m: 0.0 for m in METRICS} for k in ("multicore", "best member of each row", "ensemble_mean")}
    mean_chosen = 0
    for row in rows:
        metrics = row["metrics"]
        best = _best_member(metrics)
        for method in (*FIXED, best):
            label = method if method in FIXED else f"best member ({method})"
            values = " | ".join(f"{metrics[m][method]:.4f}" for m in METRICS)
            lines.append(
                f"| {row['set']} | {row['ensemble']} | {row['score']} | {row['multicore_is']} | {label} | {values} |"
            )
        for metric in METRICS[1:]:
            if metrics[metric]["multicore"] < metrics[metric]["ensemble_mean"]:
                failures.append(f"{row['set']} {row['ensemble']}: {metric} below the mean")
        if metrics[METRICS[0]]["multicore"] < metrics[METRICS[0]]["ensemble_mean"] - 0.01:
            failures.append(f"{row['set']} {row['ensemble']}: I-AUC more than 0.01 below the mean")
        mean_chosen += row["multicore_is"].startswith("ensemble_mean")
        for m in METRICS:
            sums["multicore"][m] += metrics[m]["multicore"] / len(rows)
            sums["ensemble_mean"][m] += metrics[m]["ensemble_mean"] / len(rows)
            sums["best member of each row"][m] += metrics[m][best] / len(rows)
    fixed = _best_fixed_member(rows)
    if fixed is not None:
        sums[f"member {fixed} on every row"] = {
            m: sum(row["metrics"][m][fixed] for row in rows) / len(rows) for m in METRICS
        }
    lines.append("")
    lines.append("| mean over the rows | " + " | ".join(SHORT) + " |")
    lines.append("|---|" + "---|" * len(SHORT))
    for name, averages in sums.items():
        lines.append(f"| {name} | " + " | ".join(f"{averages[m]:.4f}" for m in METRICS) + " |")
    lines.append("")
    lines.append(f"multicore was the plain ensemble mean in {mean_chosen} of {len(rows)} rows.")
    lines.append(
        "multicore >= ensemble_mean on P-AUC, AUPRO, PL and I-AUC within 0.01 everywhere: "
        + ("yes" if not failures else "NO: " + "; ".join(failures))
    )
    beats = {m: sums["multicore"][m] >= sums["best member of each row"][m] for m in METRICS}
    lines.append(
        "multicore >= the best member of each row (hindsight, per row) on the mean over the rows: "
        + ", ".join(f"{s} {'yes' if beats[m] else 'no'}" for s, m in zip(SHORT, METRICS))
    )
    if fixed is not None:
        key = f"member {fixed} on every row"
        beats = {m: sums["multicore"][m] >= sums[key][m] for m in METRICS}
        lines.append(
            f"multicore >= the best single member over the rows ({fixed}, the same predictor on every row): "
            + ", ".join(f"{s} {'yes' if beats[m] else 'no'}" for s, m in zip(SHORT, METRICS))
        )
    return "\n".join(lines)


def _best_fixed_member(rows: list[dict[str, Any]]) -> str | None:
    """The member present in every row with the best mean of the four metrics over the rows (None if none)."""
    common = (
        set.intersection(*(set(row["metrics"][METRICS[0]]) - set(FIXED) for row in rows)) if rows else set()
    )
    if not common:
        return None

    def overall(member: str) -> float:
        return sum(row["metrics"][m][member] for row in rows for m in METRICS)

    return max(sorted(common), key=overall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=REPO / "benchmark_runs" / "multicore")
    parser.add_argument("--results", type=Path, nargs="*", default=[], help="runner results folders to add")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [r for folder in args.results for r in _rows_from_results(folder)] + _rows_from_records(
        args.records
    )
    text = build(rows)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
