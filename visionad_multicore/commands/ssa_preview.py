"""``visionad-multicore ssa-preview OUT.png``: picture and table of the Stratified Synthetic Anomalies.

Draws the mask schema (all masks of several buckets overlaid, one multi-anomaly mask per ``a``, mask area per
bucket) and noised training images with their mask contours, like the paper's figures 3 and 4. Prints the
table of counts per bucket and per ``a`` and saves it beside the picture (``OUT.csv`` and ``OUT.md``).
Without ``--dataset`` the noised images are crops of scikit-image's brick texture. With ``--dataset`` they are
training images of the fusion share (never test images), loaded and resized exactly as the loaders do.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from visionad_multicore.atomic import atomic_path, atomic_write_text
from visionad_multicore.constants import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from visionad_multicore.visionad.loaders import ImageDataset

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "out", type=Path, help="picture to write (.png); the table goes beside it (.csv, .md)"
    )
    parser.add_argument(
        "--dataset", default=None, help="dataset key whose training images get noised (optional)"
    )
    parser.add_argument("--data_root", default=None, help="folder replacing the dataset entry's root")
    parser.add_argument("--registry", default=None, help="extra dataset registry YAML")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks, pairing and noise")
    parser.add_argument("--size", type=int, default=256, help="model input size d (masks and images)")
    parser.add_argument(
        "--mix",
        default="mixed",
        help="content of the example anomalies: paper (noise of --noise_std, the paper's), mixed (default), subtle",
    )
    parser.add_argument(
        "--noise_std", type=float, default=0.5, help="noise std in [0, 1] pixel units (--mix paper)"
    )
    parser.add_argument("--per_channel", action="store_true", help="independent noise per colour channel")
    parser.add_argument(
        "--bank_share", type=float, default=0.8, help="share of training images kept for banks"
    )
    parser.add_argument("--max_images", type=int, default=8, help="most training images to load")


def training_dataset(
    dataset_key: str,
    data_root: str | os.PathLike[str] | None,
    size: int,
    registry_path: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """The training split of a dataset, as the training loader reads it (normalised, Resize(size) NEAREST).

    Only the training split is ever read from it; test folders are listed by the loaders but never opened.

    Args:
        dataset_key: Registry key (e.g. ``dev_mvtec_toothbrush``, or ``mvtec_toothbrush`` with ``data_root``).
        data_root: Folder replacing the entry's root, or None.
        size: Model input size (``identical_transforms`` = Resize(size, NEAREST), VisionAD's default).
        registry_path: Extra registry YAML, or None.

    Returns:
        The loader's dataset: items ``(image (3, size, size) normalised, name, info)``, with ``.mean``, ``.std``.
    """
    from visionad_multicore.visionad.datasets import load_dataset
    from visionad_multicore.visionad.loaders import create_dataloaders, default_identical_transforms

    dataset = load_dataset(dataset_key, data_root=data_root, registry_path=registry_path)
    train, _, _ = create_dataloaders(
        None, None, default_identical_transforms(size), batch_size=1, shuffle=False, **dataset
    )
    return cast("ImageDataset", train.dataset)


def stack_images(dataset: Dataset, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
    """Stack the images of dataset items ``indices`` (all by default) into ``(M, 3, H, W)``."""
    idx = range(len(dataset)) if indices is None else indices  # type: ignore[arg-type]
    return torch.stack([dataset[int(i)][0] for i in idx])


def run(args: argparse.Namespace) -> int:
    """Draw the preview, print and save the counts table; return 0."""
    import matplotlib

    matplotlib.use("Agg")

    from visionad_multicore.synthetic.dataset import SyntheticAnomalySet, split_bank_fusion
    from visionad_multicore.synthetic.masks import SSAConfig, generate_masks
    from visionad_multicore.synthetic.preview import (
        brick_images,
        counts_table,
        preview_figure,
        table_to_csv,
        table_to_markdown,
    )

    config = SSAConfig(size=args.size, noise_std=args.noise_std, per_channel=args.per_channel)
    mask_set = generate_masks(config, seed=args.seed, progress=True)
    if args.dataset:
        train = training_dataset(args.dataset, args.data_root, args.size, args.registry)
        _, fusion_idx = split_bank_fusion(len(train), args.bank_share, args.seed)
        images = stack_images(train, fusion_idx[: args.max_images])
        mean, std = list(train.mean), list(train.std)
        source = f"{args.dataset}, {len(images)} fusion-share training images"
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        images = (brick_images(args.size, count=min(args.max_images, 6)) - m) / s
        source = "scikit-image brick texture crops"
    synthetic = SyntheticAnomalySet(
        images,
        mean,
        std,
        mask_set,
        size=len(mask_set),
        noise_std=args.noise_std,
        per_channel=args.per_channel,
        seed=args.seed,
        mix=None if args.mix == "paper" else args.mix,
    )
    fig = preview_figure(mask_set, synthetic, source=source)
    out = Path(args.out)
    with atomic_path(out, suffix=out.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    rows = counts_table(mask_set)
    markdown = table_to_markdown(rows)
    atomic_write_text(out.with_suffix(".md"), markdown)
    atomic_write_text(out.with_suffix(".csv"), table_to_csv(rows))
    print(markdown)
    areas = np.array([r["median_area_px"] for r in rows if r["kind"] == "single"])
    print(
        f"{len(mask_set)} masks at {args.size} px (seed {args.seed}); median single-mask area "
        f"{areas.max():.0f} px (n = {config.buckets[0]}) .. {areas.min():.0f} px (n = {config.buckets[-1]})"
    )
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0
