"""``visionad-multicore demo-data OUT``: write the embedded MVTec-layout demo dataset."""

from __future__ import annotations

import argparse

from visionad_multicore.visionad.demo_data import TEXTURES, DemoConfig, write_demo_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the demo-data command."""
    parser.add_argument("out", help="folder to write the classes demo_<texture> into (the demo data root)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--n_train", type=int, default=24, help="training images per class (default 24)")
    parser.add_argument("--n_good", type=int, default=8, help="good test images per class (default 8)")
    parser.add_argument(
        "--n_defective",
        type=int,
        default=12,
        help="defective test images per class, split over scratch/hole/foreign (default 12)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed writes identical files")
    parser.add_argument(
        "--textures",
        nargs="+",
        default=list(TEXTURES),
        choices=TEXTURES,
        help="classes to write (default: all three)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace classes that already exist")


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print how to use it."""
    config = DemoConfig(
        size=args.size,
        n_train=args.n_train,
        n_good=args.n_good,
        n_defective=args.n_defective,
        seed=args.seed,
        textures=tuple(args.textures),
    )
    try:
        folders = write_demo_dataset(args.out, config, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}")
        return 1
    for folder in folders:
        print(f"wrote {folder}")
    keys = " ".join(f.name for f in folders)
    print(f"dataset keys: {keys}; use them with --data_root {args.out} or VISIONAD_DEMO_ROOT={args.out}")
    return 0
