"""Re-score fusion rules offline on member maps dumped by ``bench_multicore.py --dump`` (issue 11 studies).

A rule is a normalisation of each member's raw map (statistics from the clean fusion-share maps only, never
the test set), a combination of the normalised maps (mean, per-pixel maximum, log-sum-exp), and an image score of
the combined map. Every rule is
scored with the harness's VisionAD metrics on the dumped test maps, for the full ensemble and for its first
two members (MC4 and MC2 from one dump), beside each member alone and the best member in hindsight.

Example::

    python benchmarks/bench_multicore.py --dataset dev_mvtec3d_tire --preset mc4 --subsets mc2:2 \\
        --hfm_threads 1 --dump dumps/mvtec3d_tire.pt
    python benchmarks/fusion_rules.py dumps/*.pt --out benchmark_runs/multicore/fusion_rules.md
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from visionad_multicore.atomic import atomic_write_text
from visionad_multicore.fusion.validation import map_image_scores
from visionad_multicore.visionad.metrics import run_metrics

METRICS = ["Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL"]
SHORT = ["I-AUC", "P-AUC", "AUPRO", "PL"]
QUANTILE_SAMPLE = (
    2_000_000  # clean pixels per member used for quantiles (torch.quantile's input limit is 16M)
)


def clean_raw(dump: dict[str, Any]) -> Tensor:
    """(C, M, H, W) raw member maps of the clean fusion-share images (dumped z-normalised)."""
    mean, std = dump["stats_mean"], dump["stats_std"]
    return dump["clean_maps"].float() * std[None, :, None, None] + mean[None, :, None, None]


def normaliser(kind: str, clean: Tensor) -> Callable[[Tensor], Tensor]:
    """Per-member normalisation fitted on clean maps ``(C, M, H, W)``; returns ``raw (N, M, H, W) -> normalised``."""
    values = clean.transpose(0, 1).flatten(1).double()  # (M, pixels)
    if kind == "zscore":  # what MultiCore does: mean 0, std 1 over clean pixels
        centre, scale = values.mean(dim=1), values.std(dim=1)
    else:  # "quantile": median 0, the clean 99.9th percentile 1 (equal false-positive level per member)
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(values.shape[1], (min(QUANTILE_SAMPLE, values.shape[1]),), generator=g)
        sample = values[:, idx]
        centre = sample.median(dim=1).values
        scale = torch.quantile(sample, 0.999, dim=1) - centre
    centre, scale = centre.float()[None, :, None, None], scale.float().clamp_min(1e-8)[None, :, None, None]
    return lambda raw: (raw.float() - centre) / scale


Combine = Callable[[Tensor], Tensor]


def _mean(x: Tensor) -> Tensor:
    return x.mean(dim=1, keepdim=True)


def _maximum(x: Tensor) -> Tensor:
    return x.amax(dim=1, keepdim=True)


def _log_sum_exp(x: Tensor, temperature: float = 3.0) -> Tensor:
    """A soft maximum over the members: ``T * log(sum(exp(x / T)))``."""
    return temperature * torch.logsumexp(x / temperature, dim=1, keepdim=True)


def rules(clean: Tensor) -> dict[str, tuple[Callable[[Tensor], Tensor], Combine, float]]:
    """Rule name -> (normalisation, combination of the members ``(N, M, H, W) -> (N, 1, H, W)``, image-score top
    share)."""
    z, q = normaliser("zscore", clean), normaliser("quantile", clean)
    return {
        "zscore mean, max": (z, _mean, 0.0),
        "zscore mean, top 0.1 %": (z, _mean, 0.001),
        "zscore mean, top 1 %": (z, _mean, 0.01),
        "quantile mean, max": (q, _mean, 0.0),
        "quantile mean, top 0.1 %": (q, _mean, 0.001),
        "quantile mean, top 1 %": (q, _mean, 0.01),
        "zscore pixel maximum, top 0.1 %": (z, _maximum, 0.001),
        "zscore log-sum-exp T=3, top 0.1 %": (z, _log_sum_exp, 0.001),
    }


def score(dump: dict[str, Any], n_members: int) -> dict[str, dict[str, float]]:
    """Metrics ``{method: {metric: value}}`` of every rule and every member on the first ``n_members``."""
    keys = dump["member_keys"][:n_members]
    heatmaps: dict[str, dict[str, Tensor]] = {"heatmap_set_regular": {}, "heatmap_set_novel": {}}
    scores: dict[str, dict[str, Tensor]] = {"image_score_set_regular": {}, "image_score_set_novel": {}}
    clean = clean_raw(dump)[:, :n_members]
    for split in ("regular", "novel"):
        raw = dump[f"test_maps_{split}"][:, :n_members].float()  # (N, M, H, W)
        for i, key in enumerate(keys):
            heatmaps[f"heatmap_set_{split}"][key] = raw[:, i : i + 1]
            scores[f"image_score_set_{split}"][key] = dump[f"test_scores_{split}"][:, i]
        for name, (normalise, combine, top) in rules(clean).items():
            fused = combine(normalise(raw))  # (N, 1, H, W)
            heatmaps[f"heatmap_set_{split}"][name] = fused
            scores[f"image_score_set_{split}"][name] = map_image_scores(fused, top)
    targets = {"targets_novel": dump["targets_novel"].float()}
    results = run_metrics(METRICS, heatmaps, scores, targets, None, progress=False)
    methods = list(heatmaps["heatmap_set_regular"])
    return {m: {metric: float(results[metric]["metric_results"][m]) for metric in METRICS} for m in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write")
    args = parser.parse_args()
    lines = ["| set | ensemble | method | " + " | ".join(SHORT) + " |", "|---|---|---|" + "---|" * len(SHORT)]
    totals: dict[str, list[list[float]]] = {}
    for path in args.dumps:
        dump = torch.load(path, weights_only=False)
        n_all = len(dump["member_keys"])
        for n in sorted({n_all, 2}, reverse=True):
            table = score(dump, n)
            members = dump["member_keys"][:n]
            best = max(members, key=lambda k: sum(table[k].values()))
            for method, values in table.items():
                if method in members and method != best:
                    continue
                label = f"best member ({method})" if method == best else method
                totals.setdefault("best member" if method == best else method, []).append(
                    [values[m] for m in METRICS]
                )
                row = " | ".join(f"{values[m]:.4f}" for m in METRICS)
                lines.append(f"| {path.stem} | mc{n} | {label} | {row} |")
    lines += ["", "| mean over the rows | " + " | ".join(SHORT) + " |", "|---|" + "---|" * len(SHORT)]
    for method, rows in totals.items():
        mean = torch.tensor(rows).mean(dim=0).tolist()
        lines.append(f"| {method} | " + " | ".join(f"{v:.4f}" for v in mean) + " |")
    command = "python benchmarks/fusion_rules.py " + " ".join(str(p) for p in args.dumps)
    text = "\n".join([f"Command: `{command}`", "", *lines])
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
