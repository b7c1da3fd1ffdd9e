"""Re-score fusion rules offline on member maps dumped by ``bench_multicore.py --dump`` (issue 11 studies).

A rule is a normalisation of each member's raw map (statistics from the clean fusion-share maps only, never
the test set), a combination of the normalised maps (mean, per-pixel maximum or minimum, log-sum-exp), and an image
score of the combined map. Normalisations: MultiCore's z-score; clean median / 99.9th percentile; the clean tail
probability (``-log10`` of the share of clean pixels at or above the value, an exponential tail beyond the 99th
percentile: a mean of these is Fisher's way to combine tests); and the z-scored mean minus the clean fused maps'
mean at each position (smoothed), for defects on aligned objects. Every rule is
scored with the harness's VisionAD metrics on the dumped test maps, for the full ensemble and for its first
two members (MC4 and MC2 from one dump), beside each member alone and the best member in hindsight.

Example::

    python benchmarks/bench_multicore.py --dataset dev_mvtec3d_tire --preset mc4 --subsets mc2:2 \\
        --hfm_threads 1 --dump dumps/mvtec3d_tire.pt
    python benchmarks/fusion_rules.py dumps/*.pt --out benchmark_runs/multicore/fusion_rules.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from member_dumps import (  # noqa: E402
    METRICS,
    SHORT,
    ensemble_sizes,
    load_dump,
    test_metrics,
    write_report,
    zscored,
)

from visionad_multicore.fusion.validation import map_image_scores  # noqa: E402
from visionad_multicore.patchcore.predictor import gaussian_smooth  # noqa: E402

QUANTILE_SAMPLE = (
    2_000_000  # clean pixels per member used for quantiles (torch.quantile's input limit is 16M)
)


def clean_raw(dump: dict[str, Any]) -> Tensor:
    """(C, M, H, W) raw member maps of the clean fusion-share images (dumped z-normalised)."""
    mean, std = dump["stats_mean"], dump["stats_std"]
    return dump["clean_maps"].float() * std[None, :, None, None] + mean[None, :, None, None]


def clean_sample(clean: Tensor) -> Tensor:
    """A seeded sample of ``QUANTILE_SAMPLE`` clean pixels per member (with replacement): ``(C, M, H, W)`` ->
    ``(M, samples)``, the same pixels for every member."""
    values = clean.transpose(0, 1).flatten(1)  # (M, pixels)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(values.shape[1], (min(QUANTILE_SAMPLE, values.shape[1]),), generator=g)
    return values[:, idx]


def quantile_normaliser(clean: Tensor) -> Callable[[Tensor], Tensor]:
    """Median 0 and the clean 99.9th percentile 1 per member (an equal false-positive level per member), fitted
    on clean maps ``(C, M, H, W)``; returns ``raw (N, M, H, W) -> normalised``."""
    sample = clean_sample(clean).double()
    centre = sample.median(dim=1).values
    scale = torch.quantile(sample, 0.999, dim=1) - centre
    centre, scale = centre.float()[None, :, None, None], scale.float().clamp_min(1e-8)[None, :, None, None]
    return lambda raw: (raw.float() - centre) / scale


def tail_normaliser(clean: Tensor) -> Callable[[Tensor], Tensor]:
    """``-log10`` of the clean tail probability per member, fitted on clean maps ``(C, M, H, W)``: the empirical
    share of clean pixels at or above a value up to the 99th percentile (2 decades), then one decade more per
    (99.9th - 99th percentile) beyond it, an exponential tail, so values above every clean pixel stay ordered."""
    ordered = clean_sample(clean).float().sort(dim=1).values.contiguous()
    q99, q999 = torch.quantile(
        ordered.double(), torch.tensor([0.99, 0.999], dtype=torch.float64), dim=1
    ).float()
    decades = 2.0  # -log10(1 - 0.99)

    def normalise(raw: Tensor) -> Tensor:
        out = []
        for i in range(raw.shape[1]):
            x = raw[:, i].float().contiguous()
            share_below = torch.searchsorted(ordered[i], x.flatten()).view_as(x).float() / ordered.shape[1]
            body = -torch.log10((1 - share_below).clamp_min(10**-decades))
            tail = decades + (x - q99[i]) / (q999[i] - q99[i]).clamp_min(1e-8)
            out.append(torch.where(x > q99[i], tail, body))
        return torch.stack(out, dim=1)

    return normalise


def position_offset(clean_fused: Tensor, sigma: float = 16.0) -> Tensor:
    """The clean fused maps' mean at each position ``(1, 1, H, W)``, gaussian-smoothed by ``sigma`` pixels (the
    members' own smoothing)."""
    return gaussian_smooth(clean_fused.mean(dim=0), sigma)[None]


Combine = Callable[[Tensor], Tensor]


def _mean(x: Tensor) -> Tensor:
    return x.mean(dim=1, keepdim=True)


def _maximum(x: Tensor) -> Tensor:
    return x.amax(dim=1, keepdim=True)


def _minimum(x: Tensor) -> Tensor:
    return x.amin(dim=1, keepdim=True)


def _log_sum_exp(x: Tensor, temperature: float = 3.0) -> Tensor:
    """A soft maximum over the members: ``T * log(sum(exp(x / T)))``."""
    return temperature * torch.logsumexp(x / temperature, dim=1, keepdim=True)


def rules(dump: dict[str, Any], n: int) -> dict[str, tuple[Callable[[Tensor], Tensor], Combine, float]]:
    """Rule name -> (normalisation of the first ``n`` members' raw maps, combination ``(N, n, H, W) -> (N, 1, H,
    W)``, image-score top share). ``zscore`` is MultiCore's own normalisation (the dump's statistics)."""

    def z(raw: Tensor) -> Tensor:
        return zscored(dump, raw, n)

    clean = clean_raw(dump)[:, :n]
    q = quantile_normaliser(clean)
    offset = position_offset(z(clean).mean(dim=1, keepdim=True))

    def z_minus_position(raw: Tensor) -> Tensor:  # the offset is per pixel, the same for every member
        return z(raw) - offset

    return {
        "zscore mean, max": (z, _mean, 0.0),
        "zscore mean, top 0.1 %": (z, _mean, 0.001),
        "zscore mean, top 1 %": (z, _mean, 0.01),
        "quantile mean, max": (q, _mean, 0.0),
        "quantile mean, top 0.1 %": (q, _mean, 0.001),
        "quantile mean, top 1 %": (q, _mean, 0.01),
        "zscore pixel maximum, top 0.1 %": (z, _maximum, 0.001),
        "zscore log-sum-exp T=3, top 0.1 %": (z, _log_sum_exp, 0.001),
        "zscore pixel minimum, top 0.1 %": (z, _minimum, 0.001),
        "tail probability mean, top 0.1 %": (tail_normaliser(clean), _mean, 0.001),
        "zscore mean - clean mean at each position, top 0.1 %": (z_minus_position, _mean, 0.001),
    }


def score(dump: dict[str, Any], n_members: int) -> dict[str, dict[str, float]]:
    """Metrics ``{method: {metric: value}}`` of every rule and every member on the first ``n_members``."""
    raw = {split: dump[f"test_maps_{split}"][:, :n_members].float() for split in ("regular", "novel")}
    heatmaps: dict[str, dict[str, Tensor]] = {}
    scores: dict[str, dict[str, Tensor]] = {}
    for i, key in enumerate(dump["member_keys"][:n_members]):
        heatmaps[key] = {split: maps[:, i : i + 1] for split, maps in raw.items()}
        scores[key] = {split: dump[f"test_scores_{split}"][:, i] for split in raw}
    for name, (normalise, combine, top) in rules(dump, n_members).items():
        heatmaps[name] = {split: combine(normalise(maps)) for split, maps in raw.items()}  # (N, 1, H, W)
        scores[name] = {split: map_image_scores(fused, top) for split, fused in heatmaps[name].items()}
    return test_metrics(dump, heatmaps, scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write")
    args = parser.parse_args()
    lines = ["| set | ensemble | method | " + " | ".join(SHORT) + " |", "|---|---|---|" + "---|" * len(SHORT)]
    totals: dict[str, list[list[float]]] = {}
    for path in args.dumps:
        dump = load_dump(path)
        for n in ensemble_sizes(dump):
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
    write_report("python benchmarks/fusion_rules.py " + " ".join(str(p) for p in args.dumps), lines, args.out)


if __name__ == "__main__":
    main()
