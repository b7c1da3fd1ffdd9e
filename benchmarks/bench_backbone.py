"""CPU speed of the backbone pass and of the heatmap smoothing, with and without our two optimisations.

Backbone (EfficientNet-Lite0 or any registry name, random images): milliseconds per image for the network as
built by timm / torchvision (BatchNorm kept, the whole batch in one call), with BatchNorm folded into the
convolutions, and folded + cache-sized micro-batches (what ``build_backbone`` gives). Smoothing: the banded
matrix products of ``gaussian_smooth`` against the separable 33-tap convolution it replaced. Medians of
``--repeats`` interleaved runs, one thread by default; the maps of the three variants are compared too.

Example::

    python benchmarks/bench_backbone.py --threads 1 --batch 16 --size 256
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import visionad_multicore.patchcore.backbone as backbone_module
from visionad_multicore.patchcore import predictor as predictor_module
from visionad_multicore.patchcore.backbone import BACKBONES, build_backbone
from visionad_multicore.patchcore.predictor import gaussian_smooth


def median_ms(fn: Callable[[], object], repeats: int, per: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000 / per)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=list(BACKBONES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    fast = build_backbone(args.backbone)
    # the same weights built once more with folding switched off
    keep = backbone_module.fold_batchnorms
    backbone_module.fold_batchnorms = lambda body, example: 0
    try:
        plain_extractor = build_backbone(args.backbone)
    finally:
        backbone_module.fold_batchnorms = keep
    plain_extractor.cpu_chunk_pixels = None
    folded_whole = copy.deepcopy(fast)
    folded_whole.cpu_chunk_pixels = None
    variants = {
        "as built by timm/torchvision, one call per batch": plain_extractor,
        "BatchNorm folded, one call per batch": folded_whole,
        "BatchNorm folded + micro-batches (default)": fast,
    }
    with torch.no_grad():
        outputs = {name: fe(images) for name, fe in variants.items()}  # warm-up and the maps
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fe in variants.items():
                results[name].append(median_ms(functools.partial(fe, images), 1, args.batch))
    base = outputs["as built by timm/torchvision, one call per batch"]
    print(
        f"{args.backbone}, {args.batch} images of {args.size} px, {args.threads} thread(s), "
        f"median of {args.repeats} runs"
    )
    print("| variant | ms per image | speed-up | max relative map difference |")
    print("|---|---|---|---|")
    first = statistics.median(results[next(iter(results))])
    for name, times in results.items():
        ms = statistics.median(times)
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(outputs[name], base))
        print(f"| {name} | {ms:.1f} | {first / ms:.2f}x | {diff:.1e} |")

    maps = torch.rand(24, args.size, args.size, generator=torch.Generator().manual_seed(1))

    def convolution() -> torch.Tensor:
        kernel = predictor_module.gaussian_kernel1d(4.0)
        r = (kernel.numel() - 1) // 2
        x = maps.unsqueeze(1)
        x = F.conv2d(predictor_module._symmetric_pad(x, r, 3), kernel.view(1, 1, 1, -1))
        x = F.conv2d(predictor_module._symmetric_pad(x, r, 2), kernel.view(1, 1, -1, 1))
        return x.squeeze(1)

    gaussian_smooth(maps)  # builds the cached matrices
    conv_ms = statistics.median(median_ms(convolution, 1, 1) for _ in range(args.repeats))
    matrix_ms = statistics.median(median_ms(lambda: gaussian_smooth(maps), 1, 1) for _ in range(args.repeats))
    diff = float((convolution() - gaussian_smooth(maps)).abs().max())
    print(
        f"\ngaussian smoothing (sigma 4) of 24 maps of {args.size} px: convolution {conv_ms:.0f} ms, "
        f"banded matrix products {matrix_ms:.0f} ms ({conv_ms / matrix_ms:.1f}x), max difference {diff:.1e}"
    )


if __name__ == "__main__":
    main()
