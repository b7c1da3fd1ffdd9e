"""The HFM with and without output calibration (``calibration_steps``), side by side, from MC2 records of
``bench_multicore.py`` (issue 11 study).

For each record pair (same set, same settings but ``--calibration_steps``) the table gives the training loss of
the first and last epoch, what ``multicore`` is, and the test metrics of ``multicore_hfm`` (the best trained
epoch on validation) beside ``ensemble_mean``. A record of an MC4 run with ``--subsets mc2:2`` counts as its MC2
subset.

Example::

    python benchmarks/bench_multicore.py --dataset dev_mvtec3d_tire --preset mc2 --hfm_threads 1 \\
        --calibration_steps 200 --out benchmark_runs/multicore/calibration/mvtec3d_tire.json
    python benchmarks/calibration_table.py --without benchmark_runs/multicore/mvtec3d_tire.json \\
        --with benchmark_runs/multicore/calibration/mvtec3d_tire.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from member_dumps import METRICS, SHORT, write_report  # noqa: E402


def mc2_part(record: dict[str, Any]) -> dict[str, Any]:
    """The MC2 part of a record: the record itself for an MC2 run, its ``mc2`` subset for an MC4 run."""
    if record["model_params"]["preset"] == "mc2":
        return record
    if "mc2" not in record.get("subsets", {}):
        raise ValueError(f"record of {record['dataset']} has neither preset mc2 nor an mc2 subset")
    return record["subsets"]["mc2"]


def row(label: str, part: dict[str, Any], method: str) -> str:
    """A table row; the training losses are the HFM's (none for ``ensemble_mean``)."""
    losses = [epoch["train_loss"] for epoch in part["hfm_history"]["epochs"]]
    loss = "-" if method == "ensemble_mean" else f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    values = " | ".join(f"{part['metrics'][metric][method]:.4f}" for metric in METRICS)
    return f"| {label} | {loss} | {part['multicore_is']} | {method} | {values} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", nargs="+", type=Path, required=True, help="records without calibration")
    parser.add_argument("--with", dest="with_", nargs="+", type=Path, required=True, help="with calibration")
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write")
    args = parser.parse_args()
    if len(args.without) != len(args.with_):
        parser.error("--without and --with need the same number of records, in the same order")
    lines = [
        "| set | training loss, first -> last epoch | multicore is | method | " + " | ".join(SHORT) + " |",
        "|---|---|---|---|" + "---|" * len(SHORT),
    ]
    sums: dict[str, list[list[float]]] = {}
    for before_path, after_path in zip(args.without, args.with_):
        before = json.loads(before_path.read_text())
        after = json.loads(after_path.read_text())
        if before["dataset"] != after["dataset"]:
            raise ValueError(f"{before_path} and {after_path} are records of different sets")
        steps = (
            before["model_params"].get("calibration_steps", 0),
            after["model_params"]["calibration_steps"],
        )
        name = before["dataset"]
        lines.append(row(f"{name}, calibration {steps[0]}", mc2_part(before), "multicore_hfm"))
        lines.append(row(f"{name}, calibration {steps[1]}", mc2_part(after), "multicore_hfm"))
        lines.append(row(f"{name}", mc2_part(after), "ensemble_mean"))
        for key, part, method in (
            (f"multicore_hfm, calibration {steps[0]}", mc2_part(before), "multicore_hfm"),
            (f"multicore_hfm, calibration {steps[1]}", mc2_part(after), "multicore_hfm"),
            ("ensemble_mean", mc2_part(after), "ensemble_mean"),
        ):
            sums.setdefault(key, []).append([part["metrics"][metric][method] for metric in METRICS])
    lines += ["", "| mean over the sets | " + " | ".join(SHORT) + " |", "|---|" + "---|" * len(SHORT)]
    for key, values in sums.items():
        means = [sum(column) / len(column) for column in zip(*values)]
        lines.append(f"| {key} | " + " | ".join(f"{v:.4f}" for v in means) + " |")
    command = "python benchmarks/calibration_table.py --without " + " ".join(map(str, args.without))
    command += " --with " + " ".join(map(str, args.with_))
    write_report(command, lines, args.out)


if __name__ == "__main__":
    main()
