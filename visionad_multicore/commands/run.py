"""``visionad-multicore run``: run a VisionAD config file (train, evaluate, write VisionAD's results layout).

Examples::

    visionad-multicore run --config_file algorithm_configs/random_demo.py --data_root demo_data --device cpu
    visionad-multicore run --config_file my_config.py --visionad_root ~/VisionAD --device cuda:0 --wandb 1
"""

from __future__ import annotations

import argparse
import logging

from visionad_multicore.visionad.runner import (
    RESULTS_DIR_ENV,
    ConfigError,
    PairResult,
    VisionADCheckoutError,
    WandbMissingError,
    run_config,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` options (VisionAD's run.py options plus ours)."""
    parser.add_argument(
        "--config_file", required=True, help="VisionAD config file (a .py defining model_list, ...)"
    )
    parser.add_argument("--run_description", default="", help="appended to the run folder's name (20 chars)")
    parser.add_argument("--device", default=None, help="cpu or cuda:N; overrides every model's device")
    parser.add_argument(
        "--wandb",
        type=int,
        choices=(0, 1),
        default=None,
        help="1/0: log / don't log to wandb (default: config)",
    )
    parser.add_argument(
        "--data_root", default=None, help="root folder of the datasets (e.g. the MVTec AD folder)"
    )
    parser.add_argument(
        "--results_dir",
        default=None,
        help=f"parent of the run folder (default: ${RESULTS_DIR_ENV} or ./results)",
    )
    parser.add_argument(
        "--visionad_root",
        default=None,
        help="a VisionAD checkout: run through its train loop, loaders, metrics and dataset registry "
        "(needed for VisionAD's baselines; results default to its RESULTS_DIRECTORY)",
    )
    parser.add_argument(
        "--registry", default=None, help="extra dataset registry YAML (your own dataset keys)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). Results are bit-identical across runs for the same "
        "config, seed and thread count; a different thread count changes float summation order. On a busy "
        "machine 1 thread is often fastest.",
    )


def format_metrics_table(pair: PairResult) -> str:
    """A small text table of ``pair.metrics``: one row per method, one column per metric."""
    title = f"{pair.algo} {pair.model_description} | {pair.dataset}".strip()
    if not pair.ok:
        return f"{title}: FAILED (see the log above)"
    if not pair.metrics:
        return f"{title}: no evaluation results"
    metrics = list(pair.metrics)
    methods: list[str] = []
    for values in pair.metrics.values():
        methods += [m for m in values if m not in methods]
    width = max(len("method"), *(len(m) for m in methods))
    columns = [max(len(m), 7) for m in metrics]
    lines = [
        f"{title} (epoch {pair.evaluated_epochs[-1]})",
        "  ".join(["method".ljust(width)] + [m.rjust(c) for m, c in zip(metrics, columns)]),
    ]
    for method in methods:
        cells = []
        for metric, column in zip(metrics, columns):
            value = pair.metrics[metric].get(method)
            cells.append(("-" if value is None else f"{value:.4f}").rjust(column))
        lines.append("  ".join([method.ljust(width)] + cells))
    lines.append(f"results: {pair.path}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the config; 0 if every (model, dataset) pair succeeded, 1 if any failed, 2 on a usage error."""
    from visionad_multicore.algorithms import get_algorithm

    def show(pair: PairResult) -> None:
        print("\n" + format_metrics_table(pair) + "\n", flush=True)

    if args.threads is not None:
        if args.threads < 1:
            logger.error("--threads must be >= 1, got %d", args.threads)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        summary = run_config(
            args.config_file,
            run_description=args.run_description,
            device=args.device,
            wandb=None if args.wandb is None else bool(args.wandb),
            data_root=args.data_root,
            results_dir=args.results_dir,
            resolve_algorithm=get_algorithm,
            visionad_root=args.visionad_root,
            registry_path=args.registry,
            on_result=show,
        )
    except (ConfigError, VisionADCheckoutError, WandbMissingError) as err:
        logger.error("%s", err)
        return 2
    n_failed = len(summary.failed)
    print(
        f"{len(summary.results) - n_failed}/{len(summary.results)} (model, dataset) runs succeeded; results in {summary.run_dir}"
    )
    for pair in summary.failed:
        print(f"  FAILED: {pair.algo} {pair.model_description!r} on {pair.dataset}")
    return 1 if n_failed else 0
