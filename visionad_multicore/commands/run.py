"""``visionad-multicore run``: run a VisionAD config file (train, evaluate, write VisionAD's results layout).

Examples::

    visionad-multicore run --config_file algorithm_configs/random_demo.py --data_root demo_data --device cpu
    visionad-multicore run --config_file my_config.py --visionad_root ~/VisionAD --device cuda:0 --wandb 1
    visionad-multicore run --config_file my_config.py --check        # only the checks before work
    visionad-multicore run --resume results/2026_01_02_03_04_05_sweep  # finish an interrupted run

Exit codes: 0 every pair ran and every metric was computed; 1 a pair failed (traceback in its folder's
error.txt) or a metric failed (non-finite maps); 2 the config or the checks before work found an error
(nothing was run); 130 / 143 interrupted by SIGINT / SIGTERM (finish with --resume).
"""

from __future__ import annotations

import argparse
import logging

from visionad_multicore.visionad.runner import (
    RESULTS_DIR_ENV,
    ConfigError,
    PairResult,
    PreflightError,
    RunInterrupted,
    VisionADCheckoutError,
    WandbMissingError,
    check_config,
    run_config,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` options (VisionAD's run.py options plus ours)."""
    parser.add_argument(
        "--config_file", default=None, help="VisionAD config file (a .py defining model_list, ...)"
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="finish an interrupted run: keep its finished (model, dataset) pairs, redo the others, with the "
        "run's recorded config and settings (only --device and --threads may be given)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check before work: config, algorithms, device, results folder, and every image and mask of "
        "every dataset (decodes, sizes, masks, train/test overlap); exit 0 if the run could start, else 2",
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
    if pair.error is not None:
        return f"{title}: FAILED (traceback in {pair.path / 'error.txt'})"
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
            cells.append(_cell(value).rjust(column))
        lines.append("  ".join([method.ljust(width)] + cells))
    lines += [f"  {failure}" for failure in pair.metric_failures]
    lines.append(f"results: {pair.path}" + (" (finished in an earlier run)" if pair.resumed else ""))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "failed: ..." or "not computable: ..."
        return "FAILED" if value.startswith("failed") else "n/c"
    return f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    """Run (or only check) the config; the exit codes are in the module docstring."""
    from visionad_multicore.algorithms import get_algorithm

    def show(pair: PairResult) -> None:
        print("\n" + format_metrics_table(pair) + "\n", flush=True)

    if args.threads is not None:
        if args.threads < 1:
            logger.error("--threads must be >= 1, got %d", args.threads)
            return EXIT_USAGE
        import torch

        torch.set_num_threads(args.threads)
    if (args.config_file is None) == (args.resume is None):
        logger.error("give --config_file, or --resume RUN_DIR to finish an interrupted run")
        return EXIT_USAGE
    common = {
        "device": args.device,
        "data_root": args.data_root,
        "results_dir": args.results_dir,
        "resolve_algorithm": get_algorithm,
        "visionad_root": args.visionad_root,
        "registry_path": args.registry,
        "resume": args.resume,
    }
    try:
        if args.check:
            report = check_config(args.config_file, **common)
            print(report.format())
            print("OK: the run can start" if report.ok else "The run cannot start: fix the errors above")
            return EXIT_OK if report.ok else EXIT_USAGE
        summary = run_config(
            args.config_file,
            run_description=args.run_description,
            wandb=None if args.wandb is None else bool(args.wandb),
            on_result=show,
            **common,
        )
    except PreflightError as err:
        print(err.report.format())
        logger.error("The run cannot start: fix the errors above (nothing was run)")
        return EXIT_USAGE
    except (ConfigError, VisionADCheckoutError, WandbMissingError) as err:
        logger.error("%s", err)
        return EXIT_USAGE
    except RunInterrupted as err:
        where = err.run_dir or "RUN_DIR"
        print(
            f"Interrupted ({err}); finished pairs are kept. Finish with: visionad-multicore run --resume {where}"
        )
        return 128 + err.signum
    n_failed = len(summary.failed)
    print(
        f"{len(summary.results) - n_failed}/{len(summary.results)} (model, dataset) runs succeeded; results in {summary.run_dir}"
    )
    for pair in summary.failed:
        reason = "see error.txt in its folder" if pair.error is not None else "; ".join(pair.metric_failures)
        print(f"  FAILED: {pair.algo} {pair.model_description!r} on {pair.dataset} ({reason})")
    return EXIT_FAILED if n_failed else EXIT_OK
