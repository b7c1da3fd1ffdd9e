"""Fingerprints of fitted Patchcore+ predictors and MultiCore member banks, to show two code versions agree.

For each dataset key and each setting it fits the predictor on the training split (images resized to 256 px
NEAREST, as VisionAD's loaders do), predicts the test split, and records SHA-256 digests of the coreset
indices, the memory bank, the heatmaps and the image scores, plus I-AUC / P-AUC / AUPRO / PL. On code with
issue 14's ``select_coreset(..., algorithm="pruned")`` it also records the coreset that algorithm (the one
used before issue 14) picks from the same bank, which ``--compare`` checks against the older run's. With
``--multicore`` it also prepares a MultiCore ensemble (bank share, statistics, synthetic cache; no HFM epoch)
and records the digests of every member's bank and the normalisation statistics. Only APIs that existed
before issue 14 are used, so the same script runs against an older checkout (``PYTHONPATH=OLD``).

    PYTHONPATH=. python benchmarks/check_same_results.py --out after.json
    PYTHONPATH=/path/to/old/checkout python benchmarks/check_same_results.py --out before.json
    python benchmarks/check_same_results.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionad_multicore.atomic import atomic_write_text

SETTINGS = {
    # name: (distance, patch size, stride, coreset size)
    "euclidean_p3_s1_c25000": ("euclidean", 3, 1, 25_000),
    "cosine_p3_s1_c25000": ("cosine", 3, 1, 25_000),
    "minkowski3_p1_s1_c25000": ("minkowski3", 1, 1, 25_000),
    "manhattan_p3_s3_c2000": ("manhattan", 3, 3, 2_000),
    "euclidean_p3_s3_c25000": ("euclidean", 3, 3, 25_000),
}
DEFAULT_SETTINGS = [
    "euclidean_p3_s1_c25000",
    "cosine_p3_s1_c25000",
    "minkowski3_p1_s1_c25000",
    "manhattan_p3_s3_c2000",
]


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (CPU, contiguous), prefixed with its shape and dtype."""
    a = t.detach().cpu().contiguous().numpy()
    return f"{a.shape}/{a.dtype}/" + hashlib.sha256(a.tobytes()).hexdigest()[:32]


def loaders(key: str, batch_size: int) -> tuple[Any, Any, Any]:
    from visionad_multicore.visionad.datasets import load_dataset
    from visionad_multicore.visionad.loaders import create_dataloaders, default_identical_transforms

    dataset = load_dataset(key)
    return create_dataloaders(
        None, None, default_identical_transforms(256), batch_size, batch_size, shuffle=False, **dataset
    )


def metrics(regular: Any, novel: Any, masks: np.ndarray) -> dict[str, float]:
    from visionad_multicore.visionad.metrics import aupro, image_auroc, pixel_auroc, proportion_localised

    hm_nov, hm_reg = novel.heatmaps.numpy(), regular.heatmaps.numpy()
    shown = masks.reshape(len(masks), -1).any(axis=1)  # PL needs a defect pixel (small ones vanish at 256 px)
    return {
        "I-AUC": image_auroc(regular.scores.numpy(), novel.scores.numpy()),
        "P-AUC": pixel_auroc(hm_nov, masks, hm_reg),
        "AUPRO": aupro(hm_nov, masks),
        "PL": proportion_localised(hm_nov[shown], masks[shown]),
    }


def pruned_indices(model: Any, train: list[torch.Tensor], distance: str, size: int) -> torch.Tensor | None:
    """The coreset of the same bank chosen by ``algorithm="pruned"`` (issue 14's name for the selection used
    before it), or None on code without that option."""
    try:
        from visionad_multicore.patchcore.coreset import coreset_rows, random_projection, select_coreset
    except ImportError:
        return None
    with torch.no_grad():
        bank = torch.cat([model.embed(model.extractor(b))[0] for b in train])
    rows = coreset_rows(random_projection(bank, model.projection_dim, model.seed), distance)
    del bank
    return select_coreset(rows, size, distance, model.seed, progress=False, algorithm="pruned")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visionad_multicore.patchcore.predictor import PatchCorePlus

    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "results": {}}
    for key in args.datasets:
        train_loader, regular_loader, novel_loader = loaders(key, args.batch_size)
        train = [b[0] for b in train_loader]
        regular = [b[0] for b in regular_loader]
        novel, masks = zip(*[(b[0], b[1]) for b in novel_loader], strict=True)
        masks_np = torch.cat(masks).numpy()
        for name in args.settings:
            distance, patch, stride, coreset = SETTINGS[name]
            start = time.perf_counter()
            model = PatchCorePlus(patch, stride, distance, coreset, progress=False).fit(train)
            pred_regular, pred_novel = model.predict(regular), model.predict(novel)
            entry = {
                "coreset_indices": digest(model.coreset_indices_),
                "memory_bank": digest(model.memory_bank_),
                "heatmaps_regular": digest(pred_regular.heatmaps),
                "heatmaps_novel": digest(pred_novel.heatmaps),
                "scores": digest(torch.cat([pred_regular.scores, pred_novel.scores])),
                "scores_reweighted": digest(
                    torch.cat([pred_regular.scores_reweighted, pred_novel.scores_reweighted])
                ),
                "metrics": metrics(pred_regular, pred_novel, masks_np),
                "seconds": time.perf_counter() - start,
            }
            pruned = pruned_indices(model, train, distance, coreset)
            if pruned is not None:
                entry["coreset_indices_pruned"] = digest(pruned)
            record["results"][f"{key}/{name}"] = entry
            print(f"{key}/{name}: {json.dumps(entry)}", flush=True)
        if args.multicore:
            from visionad_multicore.ensemble import MultiCore
            from visionad_multicore.fusion.train import HFMTrainConfig

            dataset = train_loader.dataset
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
            start = time.perf_counter()
            mc = MultiCore(
                "mc2",
                coreset_size=1000,
                feature_dim=256,
                hfm=HFMTrainConfig(synthetic_size=16),
                progress=False,
            ).prepare(images, dataset.mean, dataset.std)
            raw, _ = mc.member_maps(torch.cat(regular + list(novel)))
            entry = {
                **{f"bank_{k}": digest(m.memory_bank_) for k, m in zip(mc.member_keys, mc.members)},
                "stats_mean": digest(mc.stats_mean_),
                "stats_std": digest(mc.stats_std_),
                "member_maps_test": digest(raw),
                "seconds": time.perf_counter() - start,
            }
            record["results"][f"{key}/multicore_mc2_c1000_f256"] = entry
            print(f"{key}/multicore: {json.dumps(entry)}", flush=True)
    return record


def compare(before: Path, after: Path, out: Path | None = None) -> int:
    """Print (and with ``out`` also write, beside both runs' commands) which fingerprints are identical."""
    lines: list[str] = []
    print_ = lines.append
    a_run, b_run = json.loads(before.read_text()), json.loads(after.read_text())
    a, b = a_run["results"], b_run["results"]
    worst = 0
    for key in sorted(set(a) & set(b)):
        if "coreset_indices_pruned" in b[key]:
            same = b[key]["coreset_indices_pruned"] == a[key]["coreset_indices"]
            print_(
                f"{key} coreset_indices (before) vs after's algorithm='pruned': {'identical' if same else 'DIFFERENT'}"
            )
        for field in sorted(set(a[key]) & set(b[key]) - {"seconds", "coreset_indices_pruned"}):
            x, y = a[key][field], b[key][field]
            if isinstance(x, dict):
                diff = max(abs(x[m] - y[m]) for m in x)
                print_(f"{key} {field}: max |difference| {diff:.2e}")
            else:
                same = x == y
                worst = max(worst, 0 if same else 1)
                print_(f"{key} {field}: {'identical' if same else 'DIFFERENT'}")
    missing = sorted(set(a) ^ set(b))
    if missing:
        print_(f"only in one file: {missing}")
    text = "\n".join(lines)
    print(text)
    if out is not None:
        head = f"Before: `{a_run['command']}`\n\nAfter: `{b_run['command']}`\n\n"
        head += (
            f"Compared: `python benchmarks/check_same_results.py --compare {before.name} {after.name}`\n\n"
        )
        metrics = {k: {f: v for f, v in r.items() if f == "metrics"} for k, r in b.items()}
        atomic_write_text(
            out, head + "```\n" + text + "\n```\n\nAfter's metrics: " + json.dumps(metrics) + "\n"
        )
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["dev_mvtec_toothbrush"])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--multicore", action="store_true", help="also prepare MC2 and fingerprint its banks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = args.compare
        return compare(before, after, out=args.out)
    record = run(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
