"""``visionad-multicore select-predictors --dataset KEY``: greedy coverage search for a predictor set.

Splits the dataset's training images (seeded) into a bank share and a fusion share, makes Stratified
Synthetic Anomalies from the fusion share, scores every candidate predictor on them (cached on disk), and
runs the paper's greedy search from predictor 1 (euclidean, p = 3, s = 1). Writes the chosen set as a YAML
preset (``--out``, the format the multicore configs accept), and beside it the per-step table like the
paper's Table 4 (``.md``, ``.csv``) and a ``.json`` record of the settings. Test images are never read.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from visionad_multicore.atomic import atomic_write_text

log = logging.getLogger(__name__)

METRIC_NAMES = ("Pixelwise_AUC", "Imagewise_AUC", "Pixelwise_AUPRO", "PL")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options (``--a-b`` and ``--a_b`` spellings both work)."""

    def opt(name: str, **kwargs: object) -> None:
        flags = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        parser.add_argument(*flags, **kwargs)  # type: ignore[arg-type]

    opt("dataset", required=True, help="dataset key (training images only are used)")
    opt("data_root", default=None, help="folder replacing the dataset entry's root")
    opt("registry", default=None, help="extra dataset registry YAML")
    opt("candidates", default="all", help="'all' (the 48 paper settings) or a YAML file of predictors")
    opt(
        "metric", default="Pixelwise_AUC", choices=METRIC_NAMES, help="search criterion (default %(default)s)"
    )
    opt("max-predictors", type=int, default=8, help="most predictors in the set (default %(default)s)")
    opt(
        "out",
        type=Path,
        default=Path("preset.yaml"),
        help="preset YAML to write (table and record beside it)",
    )
    opt("name", default=None, help="preset name (default: coverage_<dataset>)")
    opt("backbone", default="efficientnet_lite0", help="backbone (default %(default)s)")
    opt("backbone-weights", default=None, help="local backbone weights file")
    opt(
        "coreset-size",
        type=int,
        default=25_000,
        help="memory-bank size of every candidate (default %(default)s)",
    )
    opt("k", type=int, default=1, help="nearest neighbours per patch score")
    opt("synthetic-size", type=int, default=1000, help="synthetic anomalies scored (default %(default)s)")
    opt(
        "bank-share",
        type=float,
        default=0.8,
        help="share of training images in the banks (default %(default)s)",
    )
    opt("noise-std", type=float, default=0.5, help="synthetic-anomaly noise std in [0, 1] pixels")
    opt("size", type=int, default=256, help="model input size (Resize NEAREST, as the test images)")
    opt("seed", type=int, default=0, help="seed of the split, masks, synthetic set and coresets")
    opt(
        "cache-dir", type=Path, default=None, help="on-disk cache of candidates' maps (default: beside --out)"
    )
    opt("device", default="cpu", help="torch device")
    opt("batch-size", type=int, default=8, help="images per backbone pass")
    opt("no-progress", action="store_true", help="hide progress bars")


def _anomalous(masks: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which items have a non-empty mask."""
    return np.asarray(masks.reshape(masks.shape[0], -1).any(axis=1))


def _resize_for_pl(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PL hard-codes 256 x 256 images: resize maps (bilinear) and masks (nearest) when they differ."""
    from visionad_multicore.visionad.metrics import PL_IMAGE_SIZE

    if maps.shape[-2:] == (PL_IMAGE_SIZE, PL_IMAGE_SIZE):
        return maps, masks
    import torch
    import torch.nn.functional as F

    size = (PL_IMAGE_SIZE, PL_IMAGE_SIZE)
    m = F.interpolate(
        torch.from_numpy(maps)[:, None].float(), size=size, mode="bilinear", align_corners=False
    )
    k = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=size, mode="nearest")
    return m[:, 0].numpy(), k[:, 0].numpy() > 0.5


def synthetic_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """VisionAD's four metrics of heatmaps of a synthetic set (empty-mask items play the regular test images).

    Args:
        maps: ``(N, H, W)`` heatmaps.
        masks: ``(N, H, W)`` bool masks.

    Returns:
        ``{"I-AUC", "P-AUC", "AUPRO", "PL"}``; a metric that the set cannot define (I-AUC without empty
        masks) is NaN. PL runs at 256 x 256 (maps resized bilinear, masks nearest, when smaller).
    """
    from visionad_multicore.visionad import metrics as M

    anom = _anomalous(masks)
    maps = np.asarray(maps, dtype=np.float32)
    scores = maps.reshape(maps.shape[0], -1).max(axis=1)
    out = {"I-AUC": float("nan"), "P-AUC": float("nan"), "AUPRO": float("nan"), "PL": float("nan")}
    if not anom.any():
        return out
    if (~anom).any():
        out["I-AUC"] = M.image_auroc(scores[~anom], scores[anom])
    out["P-AUC"] = M.pixel_auroc(maps[anom], masks[anom], maps[~anom] if (~anom).any() else None)
    out["AUPRO"] = M.aupro(maps[anom], masks[anom])
    out["PL"] = M.proportion_localised(*_resize_for_pl(maps[anom], masks[anom]))
    return out


def criterion_for(metric: str):  # type: ignore[no-untyped-def]
    """Search criterion of a metric name: ``f(maps (N, H, W), masks (N, H, W)) -> float``, higher is better."""
    from visionad_multicore import selection
    from visionad_multicore.visionad import metrics as M

    def image_auc(maps: np.ndarray, masks: np.ndarray) -> float:
        anom = _anomalous(masks)
        if anom.all() or not anom.any():
            raise ValueError("Imagewise_AUC as criterion needs empty and non-empty synthetic masks")
        scores = maps.reshape(maps.shape[0], -1).max(axis=1)
        return M.image_auroc(scores[~anom], scores[anom], flip=False)

    def pixel_aupro(maps: np.ndarray, masks: np.ndarray) -> float:
        anom = _anomalous(masks)
        return M.aupro(maps[anom], masks[anom])

    def pl(maps: np.ndarray, masks: np.ndarray) -> float:
        anom = _anomalous(masks)
        return M.proportion_localised(*_resize_for_pl(maps[anom], masks[anom]))

    table = {
        "Pixelwise_AUC": selection.pixel_auc_criterion,
        "Imagewise_AUC": image_auc,
        "Pixelwise_AUPRO": pixel_aupro,
        "PL": pl,
    }
    if metric not in table:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(table)}")
    return table[metric]


def run(args: argparse.Namespace) -> int:
    """Run the search; print the table; write the preset, table and record. Returns 0."""
    import torch
    import yaml

    from visionad_multicore import selection
    from visionad_multicore.commands.ssa_preview import stack_images, training_dataset
    from visionad_multicore.synthetic.dataset import SyntheticAnomalySet, split_bank_fusion
    from visionad_multicore.synthetic.masks import SSAConfig, generate_masks
    from visionad_multicore.synthetic.preview import table_to_csv, table_to_markdown

    started = time.perf_counter()
    progress = not args.no_progress
    candidates = (
        selection.default_candidates()
        if args.candidates == "all"
        else selection.load_candidates(args.candidates)
    )
    if selection.START not in candidates:
        candidates = [selection.START, *candidates]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir if args.cache_dir is not None else out.parent / f".{out.stem}_cache"

    train = training_dataset(args.dataset, args.data_root, args.size, args.registry)
    bank_idx, fusion_idx = split_bank_fusion(len(train), args.bank_share, args.seed)
    mean, std = list(train.mean), list(train.std)
    bank_images = stack_images(train, bank_idx)
    fusion_images = stack_images(train, fusion_idx)
    log.info(
        "%s: %d training images -> %d bank, %d fusion",
        args.dataset,
        len(train),
        len(bank_idx),
        len(fusion_idx),
    )
    mask_set = generate_masks(
        SSAConfig(size=args.size, noise_std=args.noise_std), seed=args.seed, progress=progress
    )
    synthetic = SyntheticAnomalySet(
        fusion_images, mean, std, mask_set, size=args.synthetic_size, noise_std=args.noise_std, seed=args.seed
    )
    masks = torch.stack([synthetic.masks[synthetic.mask_index[i]] for i in range(len(synthetic))]).numpy()
    settings = selection.ScoringSettings(
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        coreset_size=args.coreset_size,
        k=args.k,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
    )
    t_score = time.perf_counter()
    maps = selection.score_candidates(
        candidates, bank_images, fusion_images, synthetic, mean, std, settings, cache_dir, progress
    )
    t_score = time.perf_counter() - t_score
    t_search = time.perf_counter()
    result = selection.coverage_search(
        maps,
        masks,
        criterion_for(args.metric),
        args.metric,
        args.max_predictors,
        selection.START,
        evaluate=synthetic_metrics,
        progress=progress,
    )
    t_search = time.perf_counter() - t_search

    name = args.name or f"coverage_{args.dataset}"
    preset = result.preset(name)
    header = (
        f"# {name}: {len(preset.predictors)} predictors on {args.dataset}\n"
        f"# greedy coverage search, criterion {args.metric}, {len(candidates)} candidates, backbone {args.backbone},"
        f" coreset {args.coreset_size}, synthetic set {args.synthetic_size} at {args.size} px from "
        f"{len(fusion_idx)} fusion-share images (bank {len(bank_idx)}), seed {args.seed}; stop: {result.stop_reason}\n"
    )
    atomic_write_text(
        out, header + yaml.safe_dump(preset.to_dict(), sort_keys=False, default_flow_style=None)
    )
    rows = result.table_rows()
    for row, step in zip(rows, result.steps):
        row["predictors"] = "; ".join(selection.spec_label(s) for s in step.predictors)
    markdown = table_to_markdown(rows)
    atomic_write_text(out.with_suffix(".md"), header.replace("# ", "") + "\n" + markdown)
    atomic_write_text(out.with_suffix(".csv"), table_to_csv(rows))
    record: Mapping[str, object] = {
        "dataset": args.dataset,
        "preset": preset.to_dict(),
        "metric": args.metric,
        "stop_reason": result.stop_reason,
        "best_rejected_criterion": result.best_rejected,
        "steps": rows,
        "candidates": [c.to_dict() for c in candidates],
        "settings": {**vars(settings)},
        "synthetic_size": args.synthetic_size,
        "image_size": args.size,
        "bank_share": args.bank_share,
        "n_bank": len(bank_idx),
        "n_fusion": len(fusion_idx),
        "noise_std": args.noise_std,
        "seed": args.seed,
        "seconds_scoring": round(t_score, 1),
        "seconds_search": round(t_search, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1, default=str))
    print(header + "\n" + markdown)
    print(f"chosen: {[selection.spec_label(s) for s in preset.predictors]} (stop: {result.stop_reason})")
    print(f"scoring {t_score:.1f} s, search {t_search:.1f} s, total {record['seconds_total']} s")
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.csv')}, {out.with_suffix('.json')}")
    return 0
