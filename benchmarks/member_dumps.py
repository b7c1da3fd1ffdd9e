"""Reading the member-map dumps of ``bench_multicore.py --dump``: shared by the offline fusion studies
(``fusion_rules.py``, ``member_weights.py``, ``image_score_share.py``, ``fusion_ceiling.py``).

A dump holds the members' raw test maps and image scores, the normalisation statistics, the clean fusion-share
maps and the synthetic validation set (both already normalised), so a fusion rule is re-scored in a minute
without re-running anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from visionad_multicore.atomic import atomic_write_text
from visionad_multicore.visionad.metrics import run_metrics

METRICS = ("Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL")
SHORT = ("I-AUC", "P-AUC", "AUPRO", "PL")
SPLITS = ("regular", "novel")


def load_dump(path: Path) -> dict[str, Any]:
    """A dump written by ``bench_multicore.py --dump``."""
    return torch.load(path, weights_only=False)


def ensemble_sizes(dump: dict[str, Any]) -> list[int]:
    """The ensembles one dump scores: all its members (MC4) and its first two (MC2), largest first."""
    return sorted({len(dump["member_keys"]), 2}, reverse=True)


def zscored(dump: dict[str, Any], raw: Tensor, n: int) -> Tensor:
    """``(N, M, H, W)`` raw maps -> the first ``n`` members standardised as MultiCore does, ``(N, n, H, W)``."""
    mean, std = dump["stats_mean"][:n].float(), dump["stats_std"][:n].float()
    return (raw[:, :n].float() - mean[None, :, None, None]) / std[None, :, None, None]


def test_metrics(
    dump: dict[str, Any], heatmaps: dict[str, dict[str, Tensor]], scores: dict[str, dict[str, Tensor]]
) -> dict[str, dict[str, float]]:
    """VisionAD's metrics of the dumped test set: ``{method: {split: maps / scores}}`` -> ``{method: {metric:
    value}}``."""
    heatmap_set = {f"heatmap_set_{s}": {m: v[s] for m, v in heatmaps.items()} for s in SPLITS}
    score_set = {f"image_score_set_{s}": {m: v[s] for m, v in scores.items()} for s in SPLITS}
    targets = {"targets_novel": dump["targets_novel"].float()}
    results = run_metrics(list(METRICS), heatmap_set, score_set, targets, None, progress=False)
    return {m: {metric: float(results[metric]["metric_results"][m]) for metric in METRICS} for m in heatmaps}


def write_report(command: str, lines: list[str], out: Path | None) -> None:
    """Print a markdown report headed by the command that made it; write it atomically to ``out`` if given."""
    text = "\n".join([f"Command: `{command}`", "", *lines])
    print(text)
    if out:
        atomic_write_text(out, text + "\n")
