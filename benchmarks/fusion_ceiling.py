"""How high can a fused image score go? An I-AUC ceiling study on dumped member maps (issue 11).

Issue 11's second target asks the fused ``multicore`` output to be no worse than the best single member on the
mean over the development rows, I-AUC included. This study asks whether any fusion of the members' maps or
image scores could get there, by letting the *test labels* choose, per row, what no method may choose with
them (hindsight ceilings, for reference only; nothing in the package is picked this way):

- ``ceiling, weighted maps``: the fused map ``sum_i w_i * z_i`` of the normalised member maps (weights on a
  grid over the simplex, step 0.05 for two members, 0.125 for four) scored by its maximum, the mean of its top
  0.1 % (the package default) or its top 1 %; the best of all of these on the row's test set.
- ``ceiling, weighted scores``: ``sum_i w_i * s_i`` of the members' own image scores, each standardised with the
  mean and std of that member's scores on the clean fusion-share images (held out of the memory banks).

Beside them, the rules a method may use (nothing chosen on the test set): the ensemble mean's top 0.1 % (what
``multicore`` outputs when the mean is selected), and two fixed combinations of the standardised member scores:
their mean (Stouffer) and their maximum (Tippett). Predictor 1 and the per-row best member are scored as every
table scores a member: by its own image score (the maximum of its map).

    python benchmarks/bench_multicore.py --dataset dev_KEY --preset mc4 --epochs 0 --dump dumps/KEY.pt
    python benchmarks/bench_multicore.py --dataset demo_KEY --data_root demo_data --preset mc2 \
        --coreset_size 1000 --synthetic_size 160 --epochs 0 --dump dumps/demo_KEY.pt   # the demo config's
    python benchmarks/fusion_ceiling.py dumps/*.pt --out benchmark_runs/multicore/fusion_ceiling.md

The members' maps do not depend on the HFM, so ``--epochs 0`` dumps give the same member, mean and ceiling
figures as the committed fusion table's runs (predictor 1, the best member and the mean reproduce it exactly).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from member_dumps import ensemble_sizes, load_dump, write_report, zscored  # noqa: E402

from visionad_multicore.fusion.validation import map_image_scores  # noqa: E402
from visionad_multicore.visionad.metric_functions import image_auroc  # noqa: E402

SHARES = (0.0, 0.001, 0.01)  # image score: maximum, top 0.1 %, top 1 %
PACKAGE_SHARE = 0.001
COLUMNS = (
    "predictor 1",
    "best member",
    "ensemble mean",
    "Stouffer",
    "Tippett",
    "ceiling, weighted maps",
    "ceiling, weighted scores",
)


def simplex_grid(n: int, step: float) -> Iterator[np.ndarray]:
    """Every weight vector of ``n`` non-negative multiples of ``step`` that sum to 1."""
    ticks = round(1.0 / step)
    for counts in itertools.product(range(ticks + 1), repeat=n):
        if sum(counts) == ticks:
            yield np.asarray(counts, dtype=np.float64) / ticks


def standardised_scores(dump: dict[str, Any], n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Members' own image scores (max of each map), raw and standardised by their clean fusion-share scores.

    Returns:
        ``(raw, standardised)``: ``{split: (N, n)}`` each.
    """
    clean = dump["clean_maps"][:, :n].float()  # (F, n, H, W), already normalised
    # the clean maps are affine images of the raw ones: undo the normalisation to compare with raw test scores
    mean, std = dump["stats_mean"][:n].float(), dump["stats_std"][:n].float()
    clean_scores = clean.flatten(2).amax(dim=2) * std + mean  # (F, n)
    centre, spread = clean_scores.mean(dim=0), clean_scores.std(dim=0).clamp_min(1e-12)
    raw = {split: dump[f"test_scores_{split}"][:, :n].float() for split in ("regular", "novel")}
    return (
        {split: v.numpy() for split, v in raw.items()},
        {split: ((v - centre) / spread).numpy() for split, v in raw.items()},
    )


def study_row(dump: dict[str, Any], n: int) -> tuple[dict[str, float], str]:
    """Every column of one (dump, ensemble size) row, and a note of the ceilings' choices."""
    maps = {split: zscored(dump, dump[f"test_maps_{split}"], n) for split in ("regular", "novel")}
    raw, std = standardised_scores(dump, n)
    members = [image_auroc(raw["regular"][:, i], raw["novel"][:, i]) for i in range(n)]
    row = {"predictor 1": members[0], "best member": max(members)}
    mean = {split: map_image_scores(m.mean(dim=1), PACKAGE_SHARE) for split, m in maps.items()}
    row["ensemble mean"] = image_auroc(mean["regular"], mean["novel"])
    row["Stouffer"] = image_auroc(std["regular"].mean(axis=1), std["novel"].mean(axis=1))
    row["Tippett"] = image_auroc(std["regular"].max(axis=1), std["novel"].max(axis=1))

    best_maps, best_scores = (-1.0, None, 0.0), (-1.0, None)
    for w in simplex_grid(n, 0.05 if n == 2 else 0.125):
        weights = torch.as_tensor(w, dtype=torch.float32)[None, :, None, None]
        fused = {split: (m * weights).sum(dim=1) for split, m in maps.items()}  # (N, H, W)
        for share in SHARES:
            value = image_auroc(
                map_image_scores(fused["regular"], share), map_image_scores(fused["novel"], share)
            )
            if value > best_maps[0]:
                best_maps = (value, w, share)
        value = image_auroc(std["regular"] @ w, std["novel"] @ w)
        if value > best_scores[0]:
            best_scores = (value, w)
    row["ceiling, weighted maps"] = best_maps[0]
    row["ceiling, weighted scores"] = best_scores[0]
    share = {0.0: "max", 0.001: "top 0.1 %", 0.01: "top 1 %"}[best_maps[2]]
    note = f"maps w = {np.round(best_maps[1], 3).tolist()} ({share}); scores w = {np.round(best_scores[1], 3).tolist()}"
    return row, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()
    lines = [
        "| set | ensemble | " + " | ".join(COLUMNS) + " | the ceilings' choices |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    rows = []
    for path in args.dumps:
        dump = load_dump(path)
        for n in ensemble_sizes(dump):
            row, note = study_row(dump, n)
            rows.append(row)
            lines.append(
                f"| {path.stem} | mc{n} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS) + f" | {note} |"
            )
            print(f"{path.stem} mc{n}: done", flush=True)
    lines.append(
        f"| mean over the {len(rows)} rows | | "
        + " | ".join(f"{float(np.mean([r[c] for r in rows])):.4f}" for c in COLUMNS)
        + " | |"
    )
    write_report(
        "python benchmarks/fusion_ceiling.py " + " ".join(str(p) for p in args.dumps),
        [
            "Test I-AUC (VisionAD's Imagewise_AUC). The two ceiling columns are chosen per row with the test labels "
            "(hindsight, for reference only); every other column is a fixed rule.",
            "",
            *lines,
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
