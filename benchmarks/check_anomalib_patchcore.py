"""Does ``anomalib_patchcore`` in our harness agree with anomalib's own PatchCore pipeline?

Both sides use EfficientNet-Lite0 (the packaged ImageNet weights, layers ``blocks.2`` + ``blocks.4``, inputs
normalised with mean = std = 0.5), the same coreset ratio, ``num_neighbors`` and seed, and see the same images:

- ours: ``WrapperAnomalibPatchcore`` through the VisionAD hooks, on the harness's loaders (normalised with the
  dataset's statistics, then resized to 256 x 256 by ``Resize(NEAREST)`` on the tensor, as the runner's configs
  do; re-normalised by the adapter);
- anomalib's: its ``Patchcore`` Lightning model trained and run by its ``Engine`` on its ``MVTecAD`` datamodule,
  with a pre-processor that resizes with the same tensor NEAREST rule and normalises with 0.5 / 0.5; no
  post-processing (raw scores and maps), no evaluator, no visualiser.

The two training orders are made the same (unshuffled, sorted by path) and the coreset is drawn right after
seeding on both sides (anomalib draws its first centre and random projection from torch's global generator).
The script checks that the input tensors are identical, then compares I-AUC and P-AUC computed by our
``visionad_multicore.visionad.metrics`` on both sides' outputs (targets from our loader), and fails if either
differs by more than ``--tolerance`` (1e-3).

    OMP_NUM_THREADS=1 python benchmarks/check_anomalib_patchcore.py --dataset dev_mvtec_toothbrush \
        --out benchmark_runs/anomalib_patchcore_check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionad_multicore.algorithms.anomalib_baselines import WrapperAnomalibPatchcore, seeded
from visionad_multicore.atomic import atomic_write_text
from visionad_multicore.patchcore.backbone import build_efficientnet_lite0_classifier
from visionad_multicore.visionad.datasets import load_dataset
from visionad_multicore.visionad.loaders import create_dataloaders
from visionad_multicore.visionad.metrics import run_metrics

SIZE = 256
LAYERS = ["blocks.2", "blocks.4"]
METRICS = ["Imagewise_AUC", "Pixelwise_AUC"]


def our_loaders(dataset: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The harness's loaders as the runner builds them (``identical_transforms`` act on the normalised tensor),
    but unshuffled (sorted paths)."""
    from PIL import Image
    from torchvision import transforms

    return create_dataloaders(
        transforms.Compose([transforms.Normalize(mean=dataset["mean"], std=dataset["std"])]),
        None,
        transforms.Compose([transforms.Resize((SIZE, SIZE), interpolation=Image.NEAREST)]),
        batch_size=8,
        test_batch_size=8,
        shuffle=False,
        **dataset,
    )


def run_ours(loaders: tuple[Any, Any, Any], ratio: float, neighbours: int, seed: int) -> dict[str, Any]:
    algo = WrapperAnomalibPatchcore(
        options={"coreset_sampling_ratio": ratio, "num_neighbors": neighbours}, seed=seed, progress=False
    )
    algo.enter_dataloaders(*loaders)
    start = time.perf_counter()
    algo.pre_eval_processing()
    heatmaps, scores, targets, paths = algo.test()
    return {
        "heatmaps": heatmaps,
        "scores": scores,
        "targets": targets,
        "paths": paths,
        "seconds": time.perf_counter() - start,
        "bank": tuple(algo.built.model.memory_bank.shape),
    }


def run_anomalib(
    root: Path, category: str, ratio: float, neighbours: int, seed: int, work: Path
) -> dict[str, Any]:
    """anomalib's own pipeline; returns ``{path: (score, map (256, 256))}`` for every test image."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    class SeededPatchcore(Patchcore):
        def fit(self) -> None:  # the coreset draws from torch's global generator: seed it as our adapter does
            with seeded(seed):
                super().fit()

    pre = PreProcessor(
        transform=v2.Compose(
            [
                v2.Resize((SIZE, SIZE), interpolation=v2.InterpolationMode.NEAREST),
                v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
            ]
        )
    )
    model = SeededPatchcore(
        backbone="tf_efficientnet_lite0",
        layers=LAYERS,
        pre_trained=False,
        coreset_sampling_ratio=ratio,
        num_neighbors=neighbours,
        pre_processor=pre,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    timm_net = model.model.feature_extractor.feature_extractor
    lite0 = build_efficientnet_lite0_classifier().state_dict()
    timm_net.load_state_dict({k: v for k, v in lite0.items() if k in timm_net.state_dict()})

    datamodule = MVTecAD(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=0)
    datamodule.setup()
    train_data = datamodule.train_data
    train_data.samples = train_data.samples.sort_values("image_path").reset_index(drop=True)
    test_data = datamodule.test_data
    train = DataLoader(train_data, batch_size=8, shuffle=False, collate_fn=train_data.collate_fn)
    test = DataLoader(test_data, batch_size=8, shuffle=False, collate_fn=test_data.collate_fn)
    engine = Engine(
        accelerator="cpu", devices=1, logger=False, default_root_dir=str(work), enable_progress_bar=False
    )
    start = time.perf_counter()
    engine.fit(model, train_dataloaders=train, val_dataloaders=test)
    batches = engine.predict(model, dataloaders=test)
    out = {}
    for batch in batches or []:
        for path, score, amap in zip(batch.image_path, batch.pred_score, batch.anomaly_map):
            out[str(Path(path).resolve())] = (float(score), amap.reshape(SIZE, SIZE).float().cpu())
    first_train = next(iter(train))
    return {
        "outputs": out,
        "seconds": time.perf_counter() - start,
        "bank": tuple(model.model.memory_bank.shape),
        "train_paths": [str(Path(p).resolve()) for p in train_data.samples.image_path],
        "first_images": model.pre_processor.transform(first_train.image),
    }


def as_visionad_sets(
    loaders: tuple[Any, Any, Any], theirs: dict[str, tuple[float, torch.Tensor]], method: str
) -> tuple[dict, dict]:
    """anomalib's outputs in VisionAD's layout, in the order of our (unshuffled) test loaders' images."""
    heatmaps: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    for split, loader in (("regular", loaders[1]), ("novel", loaders[2])):
        paths = [str(Path(p).resolve()) for p in loader.dataset.image_paths]
        missing = [p for p in paths if p not in theirs]
        if missing:
            raise RuntimeError(f"anomalib scored none of {missing[:3]}")
        heatmaps[f"heatmap_set_{split}"] = {method: torch.stack([theirs[p][1] for p in paths])[:, None]}
        scores[f"image_score_set_{split}"] = {method: torch.tensor([theirs[p][0] for p in paths])}
    return heatmaps, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="dev_mvtec_toothbrush")
    parser.add_argument("--coreset_sampling_ratio", type=float, default=0.01)
    parser.add_argument("--num_neighbors", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    dataset = load_dataset(args.dataset)
    train_folder = Path(dataset["folder_path_regular_train"])  # <root>/<category>/train/good
    root, category = train_folder.parents[2], train_folder.parents[1].name
    loaders = our_loaders(dataset)
    ours = run_ours(loaders, args.coreset_sampling_ratio, args.num_neighbors, args.seed)
    with tempfile.TemporaryDirectory() as work:
        theirs = run_anomalib(
            root, category, args.coreset_sampling_ratio, args.num_neighbors, args.seed, Path(work)
        )

    # same images, same order
    our_train_paths = [str(Path(p).resolve()) for p in loaders[0].dataset.image_paths]
    if our_train_paths != theirs["train_paths"]:
        raise RuntimeError("the two training orders differ")
    first = next(iter(loaders[0]))[0]
    mean, std = torch.tensor(dataset["mean"]).view(1, 3, 1, 1), torch.tensor(dataset["std"]).view(1, 3, 1, 1)
    ours_pixels = first * std + mean
    theirs_pixels = theirs["first_images"] * 0.5 + 0.5
    pixel_diff = float((ours_pixels - theirs_pixels).abs().max())

    method = "anomalib_patchcore"
    targets = ours["targets"]
    our_metrics = run_metrics(
        METRICS, ours["heatmaps"], ours["scores"], targets, ours["paths"], progress=False
    )
    heatmaps, scores = as_visionad_sets(loaders, theirs["outputs"], method)
    their_metrics = run_metrics(METRICS, heatmaps, scores, targets, ours["paths"], progress=False)
    rows = {}
    for name in METRICS:
        a, b = our_metrics[name]["metric_results"][method], their_metrics[name]["metric_results"][method]
        rows[name] = {"harness": a, "anomalib": b, "abs_diff": abs(a - b)}
    our_maps = torch.cat(
        [ours["heatmaps"]["heatmap_set_regular"][method], ours["heatmaps"]["heatmap_set_novel"][method]]
    )
    their_maps = torch.cat([heatmaps["heatmap_set_regular"][method], heatmaps["heatmap_set_novel"][method]])
    report = {
        "dataset": args.dataset,
        "coreset_sampling_ratio": args.coreset_sampling_ratio,
        "num_neighbors": args.num_neighbors,
        "seed": args.seed,
        "memory_bank": {"harness": ours["bank"], "anomalib": theirs["bank"]},
        "max_abs_pixel_difference_first_train_batch": pixel_diff,
        "max_abs_heatmap_difference": float((our_maps - their_maps).abs().max()),
        "max_abs_score_difference": float(
            max(
                (ours["scores"][s][method] - scores[s][method]).abs().max()
                for s in ("image_score_set_regular", "image_score_set_novel")
            )
        ),
        "metrics": rows,
        "seconds": {"harness": ours["seconds"], "anomalib": theirs["seconds"]},
        "tolerance": args.tolerance,
    }
    report["agree"] = bool(all(r["abs_diff"] <= args.tolerance for r in rows.values()))
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    np.set_printoptions(precision=6)
    sys.exit(main())
