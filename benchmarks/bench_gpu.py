"""GPU benchmark of MultiCore (issue 14): MC2 / MC4 / MC8 at 256 px with WRN50-sized features, in one call.

For each preset: ``MultiCore.prepare`` on ``--train_images`` procedural images (banks of the bank share with
the paper's coreset of 25,000 and 1024-d patch vectors, normalisation statistics, ``--synthetic_size``
synthetic images scored by every member), ``--hfm_epochs`` HFM epochs, then single-image inference
(batch 1, after warm-up) on ``--test_images`` other images. The backbone is torchvision's WideResNet-50-2
up to layer3 with random weights (``scale_data.register_random_wrn50``: the paper's feature sizes, no weights
file; timing only). Every stage is timed with ``torch.cuda.synchronize()``; the table gives inference s /
image and training minutes per 1,000 training images (prepare + the HFM epochs run, scaled by 1,000 / N),
beside the issue's targets (twice the paper's RTX 3090 speed), and the peak GPU memory.

It prints the table and writes ``bench_gpu.md`` / ``bench_gpu.json`` into ``$OUT`` when that variable is set
(and into ``--out_dir`` if given), after every preset, so a run stopped early still returns what it measured.
It needs no data files and no faiss (``--knn_backend auto`` searches with torch on the GPU without a faiss GPU
build). On the device machine (torch, torchvision, timm, scipy, scikit-image there; ``polygenerator`` and
``pytorch-msssim`` carried as wheels, see ``benchmarks/gpu_wheels.sh``), from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py

Defaults fit one 10-minute call on an H200 (``--time_budget_s`` stops before a preset that would not fit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_data import generated_images, register_random_wrn50  # noqa: E402

from visionad_multicore.ensemble import MultiCore  # noqa: E402
from visionad_multicore.fusion.train import HFMTrainConfig  # noqa: E402
from visionad_multicore.patchcore.backbone import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# issue 14's targets: twice the paper's RTX 3090 speed (0.036 / 0.06 / 0.25 s; 20 / 40 / 80 min per 1,000)
TARGETS = {"mc2": (0.018, 10.0), "mc4": (0.03, 20.0), "mc8": (0.125, 40.0)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_preset(preset: str, args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    """Train and time one preset; returns its record."""
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train = generated_images(args.train_images, args.image_size, seed=args.seed)
    test = generated_images(args.test_images + args.warmup, args.image_size, seed=args.seed + 1)
    hfm = HFMTrainConfig(synthetic_size=args.synthetic_size, batch_size=args.hfm_batch_size)
    model = MultiCore(
        preset,
        backbone=backbone,
        coreset_size=args.coreset_size,
        feature_dim=args.feature_dim,
        feature_aggregation="paper",  # WRN50's pipeline (the random-weight copy has another registry name)
        hfm=hfm,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        knn_backend=args.knn_backend,
        progress=False,
    )
    sync()
    start = time.perf_counter()
    model.prepare(train, IMAGENET_MEAN, IMAGENET_STD)
    sync()
    prepare_s = time.perf_counter() - start
    banks_select_s = sum(m.timings.get("coreset", 0.0) + m.timings.get("index", 0.0) for m in model.members)
    epochs = []
    for _ in range(args.hfm_epochs):
        start = time.perf_counter()
        model.train_epoch()
        sync()
        epochs.append(time.perf_counter() - start)
    model.finalize()
    for i in range(args.warmup):
        model.predict(test[i : i + 1])
    sync()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.test_images):
        model.predict(test[i : i + 1])
    sync()
    infer = (time.perf_counter() - start) / args.test_images
    train_s = prepare_s + sum(epochs)
    record = {
        "preset": preset,
        "members": model.member_keys,
        "train_images": args.train_images,
        "bank_images": len(model.bank_idx_ if model.bank_idx_ is not None else []),
        "bank_patches": [m.n_patches_seen_ for m in model.members],
        "prepare_s": prepare_s,
        "bank_selection_s": banks_select_s,
        "hfm_epoch_s": epochs,
        "train_s": train_s,
        "train_min_per_1000": train_s / 60 * 1000 / args.train_images,
        "inference_s_per_image": infer,
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"),
        "target_inference_s": TARGETS.get(preset, (None, None))[0],
        "target_train_min_per_1000": TARGETS.get(preset, (None, None))[1],
    }
    del model, train, test
    if cuda:
        torch.cuda.empty_cache()
    return record


def table(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| preset | inference s / image (target) | training min / 1000 images (target) | prepare s "
        "(bank selection s) | HFM s / epoch | peak VRAM GB |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        epoch = sum(r["hfm_epoch_s"]) / max(1, len(r["hfm_epoch_s"]))
        lines.append(
            f"| {r['preset']} | {r['inference_s_per_image']:.4f} ({r['target_inference_s']}) | "
            f"{r['train_min_per_1000']:.2f} ({r['target_train_min_per_1000']}) | {r['prepare_s']:.1f} "
            f"({r['bank_selection_s']:.1f}) | {epoch:.2f} | {r['peak_vram_gb']:.1f} |"
        )
    lines.append(
        f"\nTraining = MultiCore.prepare on {args.train_images} images (bank share 80 %: banks with coreset "
        f"{args.coreset_size:,}, {args.feature_dim}-d patch vectors; statistics; {args.synthetic_size} synthetic "
        f"images scored) + {args.hfm_epochs} HFM epochs on them, scaled to 1,000 images. Inference: one image "
        f"per call, {args.test_images} calls after {args.warmup} warm-up. Backbone: WideResNet-50-2 to layer3, "
        "random weights (timing only)."
    )
    return "\n".join(lines)


def write(records: list[dict[str, Any]], args: argparse.Namespace, header: str) -> None:
    text = header + "\n\n" + table(records, args) + "\n"
    payload = json.dumps({"header": header, "args": vars(args), "records": records}, indent=1, default=str)
    for folder in {f for f in (os.environ.get("OUT"), args.out_dir) if f}:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.md").write_text(text)
        (out / "bench_gpu.json").write_text(payload)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["mc2", "mc4", "mc8"])
    p.add_argument("--train_images", type=int, default=1000)
    p.add_argument("--test_images", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--synthetic_size", type=int, default=200, help="synthetic images of the HFM (paper: 4000)"
    )
    p.add_argument("--hfm_epochs", type=int, default=3)
    p.add_argument("--hfm_batch_size", type=int, default=8)
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--coreset_size", type=int, default=25_000)
    p.add_argument("--feature_dim", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=16, help="images per backbone pass while preparing")
    p.add_argument("--knn_backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time_budget_s", type=float, default=540.0, help="skip presets that would not fit")
    p.add_argument("--out_dir", default=None)
    p.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    start = time.perf_counter()
    backbone = register_random_wrn50(args.seed)
    header = (
        f"# MultiCore on {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'} (torch {torch.__version__}, {platform.platform()})\n\n"
        f"Command: `{' '.join(['python3', 'benchmarks/bench_gpu.py', *(argv or sys.argv[1:])])}`"
    )
    records: list[dict[str, Any]] = []
    cost = {"mc2": 1.0, "mc4": 2.0, "mc8": 4.0}  # rough relative cost, to skip what cannot fit
    per_unit = None
    for preset in args.presets:
        elapsed = time.perf_counter() - start
        if per_unit is not None and elapsed + per_unit * cost.get(preset, 4.0) > args.time_budget_s:
            print(
                f"skipping {preset}: {elapsed:.0f} s used, about {per_unit * cost.get(preset, 4.0):.0f} s needed"
            )
            continue
        t0 = time.perf_counter()
        record = run_preset(preset, args, backbone)
        per_unit = (time.perf_counter() - t0) / cost.get(preset, 4.0)
        records.append(record)
        print(json.dumps(record), flush=True)
        write(records, args, header)
    print(header + "\n\n" + table(records, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
