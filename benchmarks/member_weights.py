"""Can the synthetic validation set choose member weights? A study on dumped member maps (issue 11).

For the first two members of each dump (MC2: predictor 1, PatchCore's euclidean p3 s1, and predictor 2) the
fused map is ``w * member1 + (1 - w) * member2`` of the normalised maps, ``w`` on a grid (0.5 is the ensemble
mean). For every ``w`` it prints the validation scores the HFM trainer sees (AUPRO, pixel AP, pixel AUROC, image
AUROC on the synthetic validation set and the clean fusion-share images) beside the real test metrics, then the
``w`` each validation score would pick and what that pick gives on the test set against the mean. The test set
is only scored here, never used to pick anything in the package.

    python benchmarks/bench_multicore.py --dataset KEY --preset mc4 --epochs 1 --dump dumps/KEY.pt
    python benchmarks/member_weights.py dumps/*.pt --out benchmark_runs/multicore/member_weights.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from member_dumps import (  # noqa: E402
    METRICS,
    SHORT,
    SPLITS,
    load_dump,
    test_metrics,
    write_report,
    zscored,
)

from visionad_multicore.fusion.validation import (  # noqa: E402
    ValidationResult,
    evaluate_maps,
    map_image_scores,
)

VALIDATION = ("aupro", "pixel_ap", "pixel_auroc", "image_auroc")
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
IMAGE_SCORE_TOP = 0.001  # the package default


def _weighted(maps: Tensor, w: float) -> Tensor:
    """``(N, 2, H, W)`` normalised maps -> ``(N, 1, H, W)``: ``w`` on the first member."""
    return w * maps[:, :1] + (1.0 - w) * maps[:, 1:2]


def study(dump: dict[str, Any]) -> tuple[dict[float, ValidationResult], dict[float, dict[str, float]]]:
    """Validation scores and test metrics for every weight of the first two members of a dump."""
    test = {split: zscored(dump, dump[f"test_maps_{split}"], 2) for split in SPLITS}
    v_maps, v_masks = dump["validation_maps"][:, :2].float(), dump["validation_masks"]
    clean = dump["clean_maps"][:, :2].float()
    heatmaps = {str(w): {split: _weighted(maps, w) for split, maps in test.items()} for w in WEIGHTS}
    scores = {
        name: {split: map_image_scores(fused, IMAGE_SCORE_TOP) for split, fused in by_split.items()}
        for name, by_split in heatmaps.items()
    }
    validation = {
        w: evaluate_maps(_weighted(v_maps, w), v_masks, _weighted(clean, w), IMAGE_SCORE_TOP) for w in WEIGHTS
    }
    metrics = test_metrics(dump, heatmaps, scores)
    return validation, {w: metrics[str(w)] for w in WEIGHTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()
    grid = [
        "| set | w (member 1) | val AUPRO | val pixel AP | val pixel AUROC | val image AUROC | "
        + " | ".join(f"test {s}" for s in SHORT)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(SHORT),
    ]
    picks = [
        "| set | validation score | picks w | " + " | ".join(f"{s} - mean's" for s in SHORT) + " |",
        "|---|---|---|" + "---|" * len(SHORT),
    ]
    best_test = [
        "| set | " + " | ".join(f"best w on test {s}" for s in SHORT) + " |",
        "|---|" + "---|" * len(SHORT),
    ]
    for path in args.dumps:
        dump = load_dump(path)
        validation, metrics = study(dump)
        for w in WEIGHTS:
            v = validation[w]
            grid.append(
                f"| {path.stem} | {w:.2f} | {v.aupro:.4f} | {v.pixel_ap:.4f} | {v.pixel_auroc:.4f} | "
                f"{v.image_auroc:.4f} | " + " | ".join(f"{metrics[w][m]:.4f}" for m in METRICS) + " |"
            )
        for name in VALIDATION:
            pick = max(WEIGHTS, key=lambda w: (validation[w].value(name), -abs(w - 0.5)))
            gains = " | ".join(f"{metrics[pick][m] - metrics[0.5][m]:+.4f}" for m in METRICS)
            picks.append(f"| {path.stem} | {name} | {pick:.2f} | {gains} |")
        best_test.append(
            f"| {path.stem} | "
            + " | ".join(f"{max(WEIGHTS, key=lambda w: (metrics[w][m], -abs(w - 0.5))):.2f}" for m in METRICS)
            + " |"
        )
        print(f"{path.stem}: done", flush=True)
    write_report(
        "python benchmarks/member_weights.py " + " ".join(str(p) for p in args.dumps),
        [
            "Fused map = w * member 1 + (1 - w) * member 2 (normalised maps; w = 0.5 is the ensemble mean).",
            "",
            *grid,
            "",
            "What each validation score would pick (ties: the w nearest 0.5), and its test metrics minus the mean's:",
            "",
            *picks,
            "",
            "The test set's own best w per metric (hindsight, for reference only):",
            "",
            *best_test,
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
