"""Benchmark MultiCore (``multicore``, ``ensemble_mean`` and every member) on the development data.

Runs the VisionAD flow with the ``multicore`` algorithm exactly as the runner does (enter_dataloaders, one
``train_one_epoch`` per HFM epoch, ``pre_eval_processing``, ``test()``, VisionAD's metrics), times each stage,
and writes a JSON record (settings, timings, HFM validation curve, metrics per method, machine load).

Honest evaluation: the test split is read only by ``test()`` after training; the HFM checkpoint is picked on
the synthetic validation split; nothing here is tuned on test figures.

Example (the figures in the report)::

    python benchmarks/bench_multicore.py --dataset dev_mvtec_toothbrush --preset mc4 --subsets mc2:2 \\
        --out benchmark_runs/multicore/toothbrush.json --check_reload

``--check_reload`` saves the model, loads it in a new Python process, evaluates again and checks that every
metric is identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from visionad_multicore.algorithms.multicore import WrapperMultiCore
from visionad_multicore.ensemble import MultiCore
from visionad_multicore.visionad.datasets import load_dataset
from visionad_multicore.visionad.loaders import create_dataloaders, default_identical_transforms
from visionad_multicore.visionad.metrics import run_metrics

METRICS = ["Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL"]
SHORT = {"Imagewise_AUC": "I-AUC", "Pixelwise_AUC": "P-AUC", "Pixelwise_AUPRO": "AUPRO", "PL": "PL"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset", default="dev_mvtec_toothbrush", help="dataset key (algorithm_configs/datasets.yaml)"
    )
    p.add_argument("--data_root", default=None)
    p.add_argument("--preset", default="mc2")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10, help="HFM epochs")
    p.add_argument("--coreset_size", type=int, default=2000)
    p.add_argument("--feature_dim", type=int, default=1024, help="patch-feature dimension (SPEC: 1024)")
    p.add_argument("--synthetic_size", type=int, default=400)
    p.add_argument("--masks_per_bucket", type=int, default=60, help="SSA K (paper: 60)")
    p.add_argument("--anomaly_mix", default="mixed", help="training anomalies: paper, mixed, subtle")
    p.add_argument("--validation_mix", default="subtle", help="validation anomalies: paper, mixed, subtle")
    p.add_argument("--optimizer", default="adam", choices=("adam", "rmsprop"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=1e-5)
    p.add_argument("--cldice_weight", type=float, default=0.25)
    p.add_argument("--bce_weight", type=float, default=0.0)
    p.add_argument("--unet_width", type=int, default=16)
    p.add_argument("--unet_depth", type=int, default=3)
    p.add_argument("--work_size", type=int, default=64, help="HFM resolution (0: full size)")
    p.add_argument("--hfm_batch_size", type=int, default=8)
    p.add_argument(
        "--calibration_steps",
        type=int,
        default=0,
        help="fit the HFM output's scale and offset first (0: off)",
    )
    p.add_argument("--validation_fraction", type=float, default=0.25)
    p.add_argument("--train_limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test_skip", type=int, default=1, help="keep every k-th test image (both test splits)")
    p.add_argument(
        "--subsets",
        nargs="*",
        default=[],
        help="NAME:N, e.g. mc2:2 -- also train an HFM for the first N members (sharing banks, statistics and "
        "synthetic cache) and evaluate it from the same test pass",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="JSON record to write")
    p.add_argument(
        "--check_reload", action="store_true", help="save, reload in a new process, compare metrics"
    )
    p.add_argument("--no_progress", action="store_true")
    p.add_argument(
        "--dump",
        type=Path,
        default=None,
        help="also save the members' raw test maps and scores, the normalisation statistics and the validation "
        "set (float16, .pt) for offline studies of fusion rules (e.g. benchmarks/fusion_rules.py)",
    )
    p.add_argument(
        "--hfm_threads",
        type=int,
        default=0,
        help="torch threads while training HFMs (0: unchanged); 1 avoids OpenMP thrashing on a shared CPU",
    )
    # internal: evaluate a saved model (used by --check_reload in the child process)
    p.add_argument("--_evaluate_saved", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def loaders_for(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    dataset = load_dataset(args.dataset, data_root=args.data_root)
    if args.train_limit:
        dataset["regular_train_end"] = args.train_limit
    if args.test_skip > 1:
        dataset["skip_test_regular"] = args.test_skip
        dataset["skip_test_novel"] = args.test_skip
    return create_dataloaders(
        None,
        None,
        default_identical_transforms(args.image_size),
        batch_size=args.batch_size,
        test_batch_size=args.batch_size,
        seed=args.seed,
        **dataset,
    )


def evaluate(algo: WrapperMultiCore) -> tuple[dict[str, dict[str, float]], float, tuple]:
    """VisionAD's test() + metrics; returns ({metric: {method: value}}, evaluation seconds, test() outputs)."""
    start = time.perf_counter()
    outputs = algo.test()
    seconds = time.perf_counter() - start
    results = run_metrics(METRICS, *outputs, progress=False)
    return {m: dict(r["metric_results"]) for m, r in results.items()}, seconds, outputs


def evaluate_subset(sub: MultiCore, outputs: tuple) -> dict[str, dict[str, float]]:
    """Metrics of a sub-ensemble from the member maps of the full ensemble's test() outputs (no new test pass)."""
    heatmap_set, score_set, targets_set, paths_set = outputs
    new_heatmaps: dict[str, dict[str, torch.Tensor]] = {}
    new_scores: dict[str, dict[str, torch.Tensor]] = {}
    for split in ("regular", "novel"):
        maps = heatmap_set[f"heatmap_set_{split}"]
        scores = score_set[f"image_score_set_{split}"]
        raw = torch.stack(
            [torch.as_tensor(maps[k]).flatten(0, -3) for k in sub.member_keys], dim=1
        )  # (N, M, H, W)
        parts = [
            sub.fuse(
                raw[i : i + 8], [torch.as_tensor(scores[k])[i : i + 8] for k in sub.member_keys]
            ).methods()
            for i in range(0, raw.shape[0], 8)
        ]
        new_heatmaps[f"heatmap_set_{split}"] = {
            m: torch.cat([p[0][m] for p in parts])[:, None] for m in parts[0][0]
        }
        new_scores[f"image_score_set_{split}"] = {m: torch.cat([p[1][m] for p in parts]) for m in parts[0][1]}
    results = run_metrics(METRICS, new_heatmaps, new_scores, targets_set, paths_set, progress=False)
    return {m: dict(r["metric_results"]) for m, r in results.items()}


def dump_member_maps(model: MultiCore, outputs: tuple, path: Path) -> None:
    """Write what a fusion rule needs to be re-scored offline: raw member maps and scores of the test images,
    the clean fusion-share maps and the synthetic validation set (both normalised), the statistics."""
    heatmap_set, score_set, targets_set, _ = outputs
    assert model._data is not None and model.stats_mean_ is not None
    record: dict[str, Any] = {
        "member_keys": model.member_keys,
        "stats_mean": model.stats_mean_,
        "stats_std": model.stats_std_,
        "targets_novel": torch.as_tensor(targets_set["targets_novel"]).bool(),
        "validation_maps": model._data.validation.maps.half(),
        "validation_masks": model._data.validation.masks,
        "clean_maps": model._data.validation.nominal.half(),
    }
    for split in ("regular", "novel"):
        maps = heatmap_set[f"heatmap_set_{split}"]
        scores = score_set[f"image_score_set_{split}"]
        record[f"test_maps_{split}"] = torch.stack(
            [torch.as_tensor(maps[k]).flatten(0, -3) for k in model.member_keys], dim=1
        )  # (N, M, H, W) raw member maps, float32
        record[f"test_scores_{split}"] = torch.stack(
            [torch.as_tensor(scores[k]).float() for k in model.member_keys], dim=1
        )  # (N, M)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    print(f"member maps written to {path}")


def history_of(model: MultiCore) -> dict[str, Any]:
    return model.history_summary()


def print_history(history: dict[str, Any]) -> None:
    metric = history["selection_metric"]
    base = history["validation_before_training"]
    members = {k: round(v[metric], 4) for k, v in base["members"].items()}
    print(f"validation {metric}: ensemble mean {base['ensemble_mean'][metric]:.4f}; members {members}")
    for h in history["epochs"]:
        v = h["validation"]
        print(
            f"HFM epoch {h['epoch']}: train {h['train_loss']:.4f}; validation {metric} {v[metric]:.4f}, "
            f"image AUROC {v['image_auroc']:.4f}{'' if h['is_candidate'] else ' (guard)'}; "
            f"multicore = {h['multicore_is']}"
        )
    print(history["explanation"])


def table(metrics: dict[str, dict[str, float]]) -> str:
    methods = list(next(iter(metrics.values())))
    lines = [f"{'method':<24}" + "".join(f"{SHORT[m]:>8}" for m in METRICS)]
    for method in methods:
        lines.append(
            f"{method:<24}" + "".join(f"{metrics[m].get(method, float('nan')):>8.4f}" for m in METRICS)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    loaders = loaders_for(args)

    if args._evaluate_saved is not None:  # child process of --check_reload
        algo = WrapperMultiCore()
        algo.load_model(args._evaluate_saved)
        algo.enter_dataloaders(*loaders)
        metrics, _, _ = evaluate(algo)
        print("RELOADED_METRICS " + json.dumps(metrics))
        return 0

    algo = WrapperMultiCore(
        preset=args.preset,
        backbone=args.backbone,
        coreset_size=args.coreset_size,
        feature_dim=args.feature_dim,
        synthetic_size=args.synthetic_size,
        ssa={"masks_per_bucket": args.masks_per_bucket},
        anomaly_mix=args.anomaly_mix,
        validation_mix=args.validation_mix,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        cldice_weight=args.cldice_weight,
        bce_weight=args.bce_weight,
        unet_width=args.unet_width,
        unet_depth=args.unet_depth,
        work_size=args.work_size or None,
        hfm_batch_size=args.hfm_batch_size,
        calibration_steps=args.calibration_steps,
        validation_fraction=args.validation_fraction,
        feature_batch_size=args.batch_size,
        seed=args.seed,
        device="cpu",
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    algo.enter_dataloaders(*loaders)
    start = time.perf_counter()
    algo._ensure_prepared()  # what the first train_one_epoch does first; timed on its own here
    preparation = time.perf_counter() - start
    threads = torch.get_num_threads()
    if args.hfm_threads:
        torch.set_num_threads(args.hfm_threads)
    epoch_times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        algo.train_one_epoch()
        epoch_times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    algo.pre_eval_processing()
    pre_eval = time.perf_counter() - start
    metrics, eval_seconds, outputs = evaluate(algo)
    total = time.perf_counter() - t0
    history = history_of(algo.model)
    record: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "dataset": args.dataset,
        "n_train": len(loaders[0].dataset),
        "n_test_regular": len(loaders[1].dataset),
        "n_test_anomalous": len(loaders[2].dataset),
        "model_params": algo.params,
        "epochs": args.epochs,
        "hfm_best_epoch": algo.model.hfm_best_epoch_,
        "multicore_is": history["multicore_is"],
        "seconds": {
            "preparation": preparation,
            "hfm_epochs": sum(epoch_times),
            "pre_eval_processing": pre_eval,
            "evaluation": eval_seconds,
            "end_to_end_incl_metrics": total,
        },
        "hfm_history": history,
        "metrics": metrics,
        "subsets": {},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
        },
    }
    print(f"== {args.preset} on {args.dataset}")
    print(table(metrics))
    print(
        f"end to end {total:.0f} s (preparation {preparation:.0f} s, {args.epochs} HFM epochs {sum(epoch_times):.0f} s, "
        f"evaluation {eval_seconds:.0f} s); load average {os.getloadavg()}"
    )
    print_history(history)
    if args.dump is not None:
        dump_member_maps(algo.model, outputs, args.dump)

    # sub-ensembles (e.g. MC2 inside MC4): their own HFM, trained before their outputs are computed from the
    # member maps of the test pass above (the HFM never sees those maps while training)
    for spec in args.subsets:
        name, n = spec.split(":")
        start = time.perf_counter()
        sub = algo.model.subset(int(n), name)
        if args.hfm_threads:
            torch.set_num_threads(args.hfm_threads)
        for _ in range(args.epochs):
            sub.train_epoch()
        torch.set_num_threads(threads)
        sub.finalize()
        seconds = time.perf_counter() - start
        sub_metrics = evaluate_subset(sub, outputs)
        record["subsets"][name] = {
            "members": sub.member_keys,
            "hfm_training_seconds": seconds,
            "hfm_best_epoch": sub.hfm_best_epoch_,
            "hfm_history": history_of(sub),
            "multicore_is": history_of(sub)["multicore_is"],
            "metrics": sub_metrics,
        }
        print(f"== {name} (first {n} members, own HFM) on {args.dataset}")
        print(table(sub_metrics))
        print_history(record["subsets"][name]["hfm_history"])

    if args.check_reload:
        with tempfile.TemporaryDirectory() as tmp:
            location = Path(tmp) / "model"
            algo.save_model(location)
            child = [
                sys.executable,
                __file__,
                "--dataset",
                args.dataset,
                "--image_size",
                str(args.image_size),
            ]
            child += ["--batch_size", str(args.batch_size), "--test_skip", str(args.test_skip)]
            child += ["--_evaluate_saved", str(location)]
            if args.data_root:
                child += ["--data_root", args.data_root]
            if args.train_limit:
                child += ["--train_limit", str(args.train_limit)]
            out = subprocess.run(child, check=True, capture_output=True, text=True, env=os.environ.copy())
            line = [x for x in out.stdout.splitlines() if x.startswith("RELOADED_METRICS ")][-1]
            reloaded = json.loads(line.split(" ", 1)[1])
        identical = reloaded == json.loads(json.dumps(metrics))
        record["reload_identical_metrics"] = identical
        record["reloaded_metrics"] = reloaded
        record["reload_max_abs_metric_difference"] = max(
            abs(reloaded[m][k] - metrics[m][k])
            for m in metrics
            for k in metrics[m]
            if k in reloaded.get(m, {})
        )
        print(
            f"save -> load in a new process -> evaluate: metrics identical = {identical} "
            f"(max abs difference {record['reload_max_abs_metric_difference']:.3g})"
        )

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.out.with_name(args.out.name + ".tmp")
        tmp_path.write_text(json.dumps(record, indent=1, default=float))
        os.replace(tmp_path, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
