"""``patchcore_plus`` against anomalib's PatchCore, side by side, on any dataset key (issue 10).

Both get the same images (our loaders: the dataset's Normalize, then the config-style resize to 256 px,
NEAREST unless ``--image_interpolation`` says otherwise), the same EfficientNet-Lite0 ImageNet weights (timm
``tf_efficientnet_lite0``, layers ``blocks.2`` + ``blocks.4``), the same coreset size (``--coreset_ratio`` of the
training patches, as anomalib counts it: ``int(n_patches * ratio)``), the same seed and one thread each. The
metrics of both come from our VisionAD metric code (I-AUC, P-AUC, AUPRO, PL); wall times exclude image
decoding and building the models (fit = features + coreset + index, inference = every test image).

anomalib is never a dependency of ours: its side runs in another interpreter (``--anomalib_python``, a venv
with ``pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0``) through
``benchmarks/anomalib_patchcore_side.py``. anomalib's result does not change with our code, so it is stored
(``--store``, one JSON per dataset) and reused while ours is rerun.

    # measure anomalib once per dataset, then ours
    python benchmarks/bench_vs_anomalib.py --dataset dev_mvtec_toothbrush --anomalib_python /path/venv/bin/python
    # ours only, against the stored anomalib result
    python benchmarks/bench_vs_anomalib.py --dataset dev_mvtec_toothbrush
    # an experiment: override any patchcore_plus model_params key
    python benchmarks/bench_vs_anomalib.py --dataset demo_grass --data_root demo_data --set feature_aggregation=paper

anomalib's default pre-processing normalises every backbone's input with ImageNet statistics, so that is what
its side is given (``--anomalib_input imagenet``); ``model`` gives it Lite0's own mean = std = 0.5 instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionad_multicore.atomic import atomic_write_text
from visionad_multicore.patchcore.backbone import build_efficientnet_lite0_classifier
from visionad_multicore.visionad.datasets import load_dataset
from visionad_multicore.visionad.loaders import create_dataloaders, default_identical_transforms
from visionad_multicore.visionad.metrics import run_metrics

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO / "benchmark_runs" / "vs_anomalib"
METRICS = ("Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL")
SHORT = {"Imagewise_AUC": "I-AUC", "Pixelwise_AUC": "P-AUC", "Pixelwise_AUPRO": "AUPRO", "PL": "PL"}


def load_tensors(
    key: str, data_root: str | None, image_interpolation: str, size: int, cache: Path | None
) -> dict[str, torch.Tensor]:
    """Every image of a dataset through our loaders: ``train``, ``regular``, ``novel``, ``masks``, ``mean``/``std``."""
    dataset = load_dataset(key, data_root=data_root)
    tag = hashlib.sha1(
        json.dumps([key, dataset, image_interpolation, size], default=str).encode()
    ).hexdigest()
    path = None if cache is None else cache / f"{key}_{image_interpolation}_{size}_{tag[:10]}.pt"
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    loaders = create_dataloaders(
        None,
        None,
        default_identical_transforms(size),
        batch_size=16,
        shuffle=False,
        image_interpolation=None if image_interpolation == "nearest" else image_interpolation,
        **dataset,
    )
    train, regular, novel = loaders
    out = {
        "train": torch.cat([b[0] for b in train]),
        "regular": torch.cat([b[0] for b in regular]),
        "novel": torch.cat([b[0] for b in novel]),
        "masks": torch.cat([b[1] for b in novel]),
        "mean": torch.tensor(dataset["mean"]),
        "std": torch.tensor(dataset["std"]),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def metrics_of(maps: torch.Tensor, scores: torch.Tensor, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """The four metrics of (regular + novel) maps ``(M, H, W)`` and scores ``(M,)`` by our VisionAD code."""
    n_reg = len(data["regular"])
    result = run_metrics(
        list(METRICS),
        {
            "heatmap_set_regular": {"m": maps[:n_reg, None]},
            "heatmap_set_novel": {"m": maps[n_reg:, None]},
        },
        {"image_score_set_regular": {"m": scores[:n_reg]}, "image_score_set_novel": {"m": scores[n_reg:]}},
        {"targets_novel": data["masks"]},
        None,
        progress=False,
    )
    return {name: float(result[name]["metric_results"].get("m", float("nan"))) for name in METRICS}


def coreset_size_for(n_train: int, grid: int, ratio: float) -> int:
    """anomalib's coreset size: ``int(n_patches * ratio)`` with ``grid x grid`` patches per image."""
    return max(1, int(n_train * grid * grid * ratio))


def run_ours(
    data: dict[str, torch.Tensor], overrides: dict[str, Any], ratio: float, seed: int, batch_size: int
) -> dict[str, Any]:
    """patchcore_plus with its wrapper defaults (plus ``overrides``): fit, predict, metrics and wall times."""
    from visionad_multicore.algorithms.patchcore_plus import WrapperPatchCorePlus
    from visionad_multicore.patchcore.distances import faiss_available

    size = data["train"].shape[-1]
    params = {"seed": seed, "progress": False, **overrides}
    probe = WrapperPatchCorePlus(**params, coreset_size=1).predictor
    grid = probe.patch_grid_size(size)
    params["coreset_size"] = coreset_size_for(len(data["train"]), grid, ratio)
    wrapper = WrapperPatchCorePlus(**params)
    model = wrapper._make_predictor(data["mean"].tolist(), data["std"].tolist())
    test = torch.cat([data["regular"], data["novel"]])
    _ = model.extractor  # built (weights loaded) before the clock starts, as anomalib's side builds its model
    faiss_available()  # the optional k-NN library imported before the clock, as anomalib's side imports its own
    start = time.perf_counter()
    model.fit(data["train"][s : s + batch_size] for s in range(0, len(data["train"]), batch_size))
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict(test[s : s + batch_size] for s in range(0, len(test), batch_size))
    inference_s = time.perf_counter() - start
    scores = {"reweighted": pred.scores_reweighted, "max": pred.scores}
    chosen = wrapper.params["image_score"]
    other = next(kind for kind in scores if kind != chosen)
    return {
        "params": {k: v for k, v in wrapper.params.items() if k not in ("progress", "wandb")},
        "coreset_size": int(model.memory_bank_.shape[0]),
        "feature_dim": int(model.memory_bank_.shape[1]),
        "metrics": metrics_of(pred.heatmaps, scores[chosen], data),
        "other_image_score": other,
        "metrics_other_image_score": metrics_of(pred.heatmaps, scores[other], data),
        "timings": {"fit_s": fit_s, "inference_s": inference_s, "total_s": fit_s + inference_s},
    }


def run_anomalib(
    data: dict[str, torch.Tensor], python: str, ratio: float, seed: int, threads: int, model_input: str
) -> dict[str, Any]:
    """anomalib's PatchCore in ``python`` (a venv with anomalib) on the same tensors."""
    net = build_efficientnet_lite0_classifier()
    train, test = data["train"], torch.cat([data["regular"], data["novel"]])
    if model_input == "model":  # re-normalise from the dataset's statistics to Lite0's mean = std = 0.5
        mean, std = data["mean"].view(1, 3, 1, 1), data["std"].view(1, 3, 1, 1)
        train, test = ((x * std + mean - 0.5) / 0.5 for x in (train, test))
    with tempfile.TemporaryDirectory() as tmp:
        inputs, output = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save({"train": train, "test": test, "backbone_state": net.state_dict()}, inputs)
        side = REPO / "benchmarks" / "anomalib_patchcore_side.py"
        cmd = [python, str(side), str(inputs), str(output), "--coreset_ratio", str(ratio)]
        cmd += ["--seed", str(seed), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env)
        out = torch.load(output, weights_only=True)
    return {
        "coreset_size": out["memory_bank_size"],
        "feature_dim": out["feature_dim"],
        "input_normalisation": model_input,
        "metrics": metrics_of(out["anomaly_maps"], out["pred_scores"], data),
        "timings": {
            "fit_s": out["timings"]["fit_s"],
            "inference_s": out["timings"]["inference_s"],
            "total_s": out["timings"]["fit_s"] + out["timings"]["inference_s"],
        },
        "versions": out["versions"],
    }


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs of one side: metrics of the first run (every run must give the same
    metrics: both sides are seeded), each timing the median over the runs, every run's timings kept."""
    first = runs[0]
    for run in runs[1:]:
        if run["metrics"] != first["metrics"]:
            raise RuntimeError(
                f"repeated runs gave different metrics: {first['metrics']} vs {run['metrics']}"
            )
    out = dict(first)
    out["timings"] = {key: statistics.median(r["timings"][key] for r in runs) for key in first["timings"]}
    out["timings_runs"] = [r["timings"] for r in runs]
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they parse (numbers, null, true), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = "| method | " + " | ".join(SHORT[m] for m in METRICS) + " | fit s | inference s | total s |"
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for name, res in rows:
        vals = " | ".join(f"{res['metrics'][m]:.4f}" for m in METRICS)
        t = res["timings"]
        lines.append(f"| {name} | {vals} | {t['fit_s']:.1f} | {t['inference_s']:.1f} | {t['total_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, help="dataset key (e.g. dev_mvtec_toothbrush, demo_grass)"
    )
    parser.add_argument(
        "--data_root", default=None, help="root for registry keys without a default (demo data)"
    )
    parser.add_argument("--coreset_ratio", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--image_interpolation", default="nearest")
    parser.add_argument("--anomalib_python", default=None, help="Python of a venv with anomalib: measure it")
    parser.add_argument("--anomalib_input", choices=("imagenet", "model"), default="imagenet")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="patchcore_plus overrides")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="folder of the stored JSON results")
    parser.add_argument("--no_save", action="store_true", help="do not write our result into the store")
    parser.add_argument("--cache", type=Path, default=None, help="cache the loaded tensors in this folder")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run each side this many times (alternating); median timings"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    data = load_tensors(args.dataset, args.data_root, args.image_interpolation, args.image_size, args.cache)
    print(
        f"{args.dataset}: {len(data['train'])} train, {len(data['regular'])} good, {len(data['novel'])} defective; "
        f"{args.threads} thread(s), load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    suffix = "" if args.image_interpolation == "nearest" else f"_{args.image_interpolation}"
    store = args.store / f"{args.dataset}{suffix}.json"
    stored = json.loads(store.read_text()) if store.is_file() else {}
    command = " ".join([Path(sys.executable).name, *sys.argv])
    anomalib_runs, our_runs = [], []
    for _ in range(args.repeats):  # the two sides alternate, so both see the same machine load
        if args.anomalib_python:
            anomalib_runs.append(
                run_anomalib(
                    data,
                    args.anomalib_python,
                    args.coreset_ratio,
                    args.seed,
                    args.threads,
                    args.anomalib_input,
                )
            )
        our_runs.append(run_ours(data, overrides, args.coreset_ratio, args.seed, args.batch_size))
    if anomalib_runs:
        stored["anomalib"] = median_of_runs(anomalib_runs)
        stored["anomalib"]["command"] = command
    ours = median_of_runs(our_runs)
    ours["command"] = command
    ours["load_average"] = list(os.getloadavg())
    rows = [("patchcore_plus" + (f" {overrides}" if overrides else ""), ours)]
    rows.append(
        (
            f"patchcore_plus ({ours['other_image_score']} score)",
            {**ours, "metrics": ours["metrics_other_image_score"]},
        )
    )
    if "anomalib" in stored:
        rows.append(("anomalib PatchCore", stored["anomalib"]))
    print(table(rows))
    if "anomalib" in stored:
        a, o = stored["anomalib"], ours
        gaps = {SHORT[m]: round(o["metrics"][m] - a["metrics"][m], 4) for m in METRICS}
        ratio = o["timings"]["total_s"] / a["timings"]["total_s"]
        print(f"ours - anomalib: {gaps}; time ratio ours / anomalib {ratio:.3f}")
    if not args.no_save and not overrides:
        stored.update({"dataset": args.dataset, "coreset_ratio": args.coreset_ratio, "seed": args.seed})
        stored["patchcore_plus"] = ours
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(stored, indent=1, default=float))
    elif args.anomalib_python:
        stored.update({"dataset": args.dataset, "coreset_ratio": args.coreset_ratio, "seed": args.seed})
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(stored, indent=1, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
