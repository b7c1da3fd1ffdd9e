"""Image AUROC of the ensemble-mean map scored by the mean of its top share of pixels, for several shares.

The figures behind ``image_score_top`` (issue 11). Two kinds of input, both made from training data only:

- a dump of ``bench_multicore.py --dump`` (MC4 and its first two members): the test I-AUC of each share and,
  beside it, the validation image AUROC the HFM trainer would see (synthetic validation set + clean images);
- a runner results folder whose epoch folders hold ``heatmaps.pk`` (the ``ensemble_mean`` maps as scored).

    python benchmarks/image_score_share.py --dumps dumps/*.pt --runs results/2026_12_02_03_13_39_
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from member_dumps import ensemble_sizes, load_dump, zscored  # noqa: E402

from visionad_multicore.auroc import binary_auroc  # noqa: E402
from visionad_multicore.fusion.validation import evaluate_maps, map_image_scores  # noqa: E402

SHARES = (0.0, 0.001, 0.003, 0.01, 0.03)


def test_auroc(regular: Tensor, novel: Tensor, share: float) -> float:
    scores = torch.cat([map_image_scores(regular, share), map_image_scores(novel, share)])
    labels = torch.cat([torch.zeros(len(regular)), torch.ones(len(novel))])
    return binary_auroc(scores, labels)


def fused_mean(dump: dict, raw: Tensor, n: int) -> Tensor:
    """(N, 1, H, W) mean of the first ``n`` members' normalised maps (the ``ensemble_mean`` method)."""
    return zscored(dump, raw, n).mean(1, keepdim=True)


def from_dump(path: Path) -> list[str]:
    dump = load_dump(path)
    rows = []
    for n in ensemble_sizes(dump):
        regular, novel = (fused_mean(dump, dump[f"test_maps_{split}"], n) for split in ("regular", "novel"))
        validation = dump["validation_maps"][:, :n].float().mean(1, keepdim=True)
        clean = dump["clean_maps"][:, :n].float().mean(1, keepdim=True)
        cells = []
        for share in SHARES:
            val = evaluate_maps(validation, dump["validation_masks"], clean, share).image_auroc
            cells.append(f"{test_auroc(regular, novel, share):.3f} ({val:.3f})")
        rows.append(f"| {path.stem} | mc{n} | " + " | ".join(cells) + " |")
    return rows


def from_run(folder: Path) -> list[str]:
    rows = []
    for epoch_dir in sorted(p.parent for p in folder.glob("*/*/*/heatmaps.pk")):
        with open(epoch_dir / "heatmaps.pk", "rb") as handle:
            heatmaps = pickle.load(handle)[0]
        regular = torch.as_tensor(np.asarray(heatmaps["heatmap_set_regular"]["ensemble_mean"])).float()
        novel = torch.as_tensor(np.asarray(heatmaps["heatmap_set_novel"]["ensemble_mean"])).float()
        cells = [f"{test_auroc(regular, novel, share):.3f}" for share in SHARES]
        rows.append(
            f"| {epoch_dir.parent.name} | {epoch_dir.parent.parent.name} | " + " | ".join(cells) + " |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dumps", nargs="*", type=Path, default=[])
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    args = parser.parse_args()
    head = (
        "| set | ensemble | " + " | ".join("max" if s == 0 else f"top {100 * s:g} %" for s in SHARES) + " |"
    )
    print("test I-AUC of the ensemble mean (validation image AUROC in brackets, dumps only)\n")
    print(head + "\n|---|---|" + "---|" * len(SHARES))
    for path in args.dumps:
        print("\n".join(from_dump(path)))
    for folder in args.runs:
        print("\n".join(from_run(folder)))


if __name__ == "__main__":
    main()
