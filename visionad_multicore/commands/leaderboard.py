"""``visionad-multicore leaderboard``: tables, a bar chart, a heatmap gallery and a submission export.

Reads any VisionAD-layout results directories (ours or a VisionAD checkout's, any algorithm).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

_EPILOG = """\
outputs:
  --format md|csv|json   the leaderboard itself (per-dataset tables, mean over datasets, ranks); to --out or
                         stdout. json schema "visionad_multicore.leaderboard" v1.
  --plot FILE.png        grouped bar chart, one panel per metric.
  --gallery FILE.png     heatmap gallery (input when findable, ground truth, every method's heatmap) for the
                         images of --gallery-images, from saved heatmaps.pk / best.pk. With several datasets,
                         one file per dataset: FILE_<dataset>.png (or pick one with --gallery-dataset).
  --export FILE.json|FILE.csv
                         submission export (algorithm, preset, package version, config hash, seed, hardware,
                         per-dataset metrics and timings); schema in docs/submission_schema.md.
  --published            add the published reference rows (benchmark_runs/published/*.yaml, or
                         --published-dir), marked "published, not reproduced" and never ranked.
Every file is written atomically (temporary file, then rename).

examples:
  visionad-multicore leaderboard results/ --plot board.png --out board.md --published
  visionad-multicore leaderboard results/ ~/VisionAD/results --epoch best --best-metric PL --format csv
  visionad-multicore leaderboard results/ --gallery g.png --gallery-images 3 --methods 'multicore*'
  visionad-multicore leaderboard results/ --export submission.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's arguments."""
    from visionad_multicore.reporting.results import DEFAULT_METRICS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument(
        "results_dirs", nargs="+", metavar="RESULTS_DIR", help="VisionAD-layout results folders"
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(DEFAULT_METRICS),
        metavar="METRIC",
        help="VisionAD metric names to show, in order (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch",
        choices=("final", "best"),
        default="final",
        help="epoch per (algorithm, method, dataset): the final one, or the best by --best-metric "
        "(chosen on the test set; default: %(default)s)",
    )
    parser.add_argument("--best-metric", default="PL", help="metric maximised by --epoch best (default: PL)")
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also read (model, dataset) folders of our runs that have no completion marker (interrupted or "
        "failed pairs); by default they are ignored, with a warning",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="PATTERN",
        help="keep only rows whose 'algorithm/method' or 'method' matches one of these fnmatch patterns",
    )
    parser.add_argument("--format", choices=("md", "csv", "json"), default="md", help="leaderboard format")
    parser.add_argument("--out", type=Path, help="write the leaderboard here instead of stdout")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a bar chart PNG")
    parser.add_argument("--gallery", type=Path, metavar="FILE.png", help="write a heatmap gallery PNG")
    parser.add_argument(
        "--gallery-images",
        nargs="+",
        default=["4"],
        metavar="N|NAME",
        help="a number of anomalous test images (evenly spaced) or image names / paths (default: 4)",
    )
    parser.add_argument("--gallery-dataset", help="draw the gallery for this dataset only")
    parser.add_argument(
        "--data_root", type=Path, help="data root for finding gallery input images via the registry"
    )
    parser.add_argument(
        "--published",
        action="store_true",
        help="show the published reference rows, marked 'published, not reproduced' and never ranked",
    )
    parser.add_argument(
        "--published-dir",
        type=Path,
        metavar="DIR",
        help="folder of published *.yaml files (default: benchmark_runs/published of this checkout)",
    )
    parser.add_argument(
        "--export", type=Path, metavar="FILE", help="submission export; .json or .csv by suffix"
    )


def _gallery_images(values: list[str]) -> int | list[str]:
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return values


def _write_galleries(args: argparse.Namespace, board: object, epochs: list) -> list[Path]:
    from visionad_multicore.reporting.gallery import make_gallery, prediction_file_for

    sources: dict[str, dict[str, Path]] = defaultdict(dict)
    for row in board.rows:  # type: ignore[attr-defined]
        if args.gallery_dataset and row.dataset != args.gallery_dataset:
            continue
        if row.algorithm in sources[row.dataset]:
            continue
        found = prediction_file_for(row.source, prefer_best=args.epoch == "best")
        if found is not None:
            sources[row.dataset][row.algorithm] = found
    sources = {d: s for d, s in sources.items() if s}
    if not sources:
        wanted = f" for dataset {args.gallery_dataset!r}" if args.gallery_dataset else ""
        raise FileNotFoundError(
            f"no saved heatmaps (heatmaps.pk or best.pk){wanted} under the results folders; "
            "run with save_heatmaps_n_epochs / save_best_preds enabled"
        )
    written = []
    for dataset, per_algo in sorted(sources.items()):
        out = args.gallery
        if len(sources) > 1:
            out = args.gallery.with_name(f"{args.gallery.stem}_{dataset}{args.gallery.suffix or '.png'}")
        for label, path in per_algo.items():
            logger.info("gallery %s: %s from %s", dataset, label, path)
        written.append(
            make_gallery(
                sorted(per_algo.items()),
                out,
                images=_gallery_images(args.gallery_images),
                dataset_key=dataset,
                methods=args.methods,
                data_root=args.data_root,
            )
        )
    return written


def run(args: argparse.Namespace) -> int:
    """Build the leaderboard and write the requested outputs; 0 on success, 1 on a reported error.

    The leaderboard goes to stdout unless ``--out`` is given; the names of written files go to stderr, so
    stdout stays machine-readable.
    """
    from visionad_multicore.reporting import leaderboard as lb
    from visionad_multicore.reporting.export import build_submission, submission_to_csv, submission_to_json
    from visionad_multicore.reporting.plots import plot_leaderboard
    from visionad_multicore.reporting.results import atomic_write_text, scan_results

    try:
        report = scan_results(args.results_dirs, include_unfinished=args.include_unfinished)
        published = []
        if args.published or args.published_dir:
            published = lb.load_published(args.published_dir or lb.DEFAULT_PUBLISHED_DIR)
        board = lb.build_leaderboard(
            report,
            metrics=args.metrics,
            epoch_mode=args.epoch,
            best_metric=args.best_metric,
            published=published,
            methods=args.methods,
        )
        text = lb.render(board, args.format)
        if args.out:
            print(f"leaderboard ({args.format}) -> {atomic_write_text(args.out, text)}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        if args.plot:
            print(f"bar chart -> {plot_leaderboard(board, args.plot)}", file=sys.stderr)
        if args.gallery:
            for path in _write_galleries(args, board, report.epochs):
                print(f"heatmap gallery -> {path}", file=sys.stderr)
        if args.export:
            doc = build_submission(board, report.epochs)
            suffix = args.export.suffix.lower()
            if suffix not in (".json", ".csv"):
                raise ValueError(f"--export {args.export}: the file name must end in .json or .csv")
            payload = submission_to_json(doc) if suffix == ".json" else submission_to_csv(doc)
            print(f"submission export -> {atomic_write_text(args.export, payload)}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if board.warnings:
        print(
            f"{len(board.warnings)} warning(s): skipped or ambiguous entries (listed above)", file=sys.stderr
        )
    return 0
