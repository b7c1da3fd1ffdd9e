"""VisionAD's ``train_algo`` for one (model, dataset): train, evaluate, write the epoch folders.

Per epoch: ``train_one_epoch`` (timed: train time excludes evaluation), then, when the epoch saves or
evaluates, ``pre_eval_processing``; ``save_model`` every ``save_model_every_n_epochs``; ``test`` + metrics
every ``evaluate_n_epochs``, at the last epoch, whenever heatmaps are saved, and at the epoch in which
``train_time_limit`` (or ``hard_time_limit``) is exceeded, after which the run stops.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from visionad_multicore.visionad.config import RunConfig, option, resolve_num_workers
from visionad_multicore.visionad.run_files import (
    PairResult,
    jsonable,
    write_json_atomic,
    write_marker,
    write_pickle_atomic,
)

logger = logging.getLogger(__name__)


class WandbMissingError(RuntimeError):
    """wandb logging was asked for but wandb is not installed."""


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (VisionAD's baselines draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global generator is what baselines use
    torch.manual_seed(seed)


def import_wandb() -> ModuleType:
    """The ``wandb`` module, or :class:`WandbMissingError` saying how to install it or turn it off."""
    try:
        import wandb
    except ImportError as err:
        raise WandbMissingError(
            "wandb logging was asked for (--wandb 1 or 'wandb': True in the config) but wandb is not installed: "
            "pip install wandb (or visionad_multicore[wandb]), or run with --wandb 0"
        ) from err
    return wandb


def check_wandb(config: RunConfig, wandb: bool | None) -> None:
    """Before any work: import wandb if the ``--wandb`` override or any model asks for it (else nothing)."""
    wanted = bool(wandb) if wandb is not None else any(m.get("wandb", False) for m in config.model_list)
    if wanted:
        import_wandb()


class _WandbRun:
    """The wandb logging VisionAD's train_algo does, or nothing when disabled."""

    def __init__(
        self, enabled: bool, run_description: str, args: Mapping[str, Any], dataset_key: str
    ) -> None:
        self.run = None
        if not enabled:
            return
        wandb = import_wandb()
        description = run_description + "_" if run_description else ""
        name = f"{description}_{args['algo_class_name']}_{dataset_key}"
        config = json.loads(json.dumps({"dataset_key": dataset_key, **args}, default=jsonable))
        self.run = wandb.init(project=name, name=name, config=config, reinit=True)

    def log(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(dict(values))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _evaluation_regime(spec: Mapping[str, Sequence[float]]) -> Callable[[float, int], bool]:
    """VisionAD's ``specific_evaluation_regime``: evaluate at listed epochs, or once inside each listed time window."""
    tested: list[float] = []

    def should_evaluate(train_time: float, epoch: int) -> bool:
        if epoch in spec.get("epochs", []):
            return True
        times = list(spec.get("times", []))
        for start, end in zip(times[:-1], times[1:]):
            if start < train_time < end and start not in tested:
                tested.append(start)
                return True
        return False

    return should_evaluate


def train_and_evaluate(
    algo: Any,
    dataset_key: str,
    dataset: Mapping[str, Any],
    metrics: Sequence[str],
    run_time: str,
    pair: PairResult,
    run_description: str,
    args: Mapping[str, Any],
) -> None:
    """VisionAD's ``train_algo`` for one (model, dataset): train, evaluate, write results into ``pair.path``.

    Args:
        algo: the algorithm instance (a ModelWrapper).
        dataset_key: the dataset's key.
        dataset: its dict from ``load_dataset``.
        metrics: metric names for ``run_metrics``.
        run_time: the run's start time string (``data.json["time"]``).
        pair: receives the evaluated epochs and the last metrics.
        run_description: the run's description.
        args: the model dict resolved by :func:`prepare_model_arguments`.
    """
    from visionad_multicore.visionad.loaders import create_dataloaders
    from visionad_multicore.visionad.metrics import metric_failures, run_metrics

    out_dir = pair.path
    out_dir.mkdir(parents=True, exist_ok=True)
    dataloader_train, dataloader_regular_test, dataloader_novel_test = create_dataloaders(
        pre_pro_transforms=args["pre_pro_transforms"],
        training_transformations=args["training_transformations"],
        identical_transforms=args["identical_transforms"],
        batch_size=args["batch_size"],
        test_batch_size=args["test_batch_size"],
        shuffle=True,
        seed=int(option(args, "seed")),
        num_workers=resolve_num_workers(option(args, "num_workers"), args["model_params"]["device"]),
        device=args["model_params"]["device"],
        image_interpolation=option(args, "image_interpolation"),
        **dataset,
    )
    algo.enter_dataloaders(dataloader_train, dataloader_regular_test, dataloader_novel_test)
    n_train = len(dataloader_train.dataset)  # type: ignore[arg-type]
    n_test = len(dataloader_regular_test.dataset) + len(dataloader_novel_test.dataset)  # type: ignore[arg-type]
    description = {
        "dataset": dict(dataset),
        "run_description": run_description,
        "model_description": args["model_description"],
        "model_long_description": args["model_long_description"],
    }
    regime_spec = option(args, "specific_evaluation_regime")
    regime = _evaluation_regime(regime_spec) if regime_spec else None
    hard_time_limit, train_time_limit = option(args, "hard_time_limit"), option(args, "train_time_limit")
    best_metric, save_best = option(args, "save_best_preds_metric"), option(args, "save_best_preds")
    wandb_run = _WandbRun(bool(args["wandb"]), run_description, args, dataset_key)

    total_train_time = 0.0
    pre_eval_time = 0.0
    best_score = -np.inf
    start_time = time.perf_counter()
    epochs = int(args["epochs"])
    train = epochs > 0  # epochs: 0 evaluates the untrained algorithm once, in epoch folder 0
    try:
        for epoch in tqdm(
            range(max(epochs, 1)), desc=f"{args['algo_class_name']} {dataset_key}", unit="epoch"
        ):
            epoch_dir = out_dir / str(epoch)
            wandb_run.log({"epoch": epoch})
            start = time.perf_counter()
            if train:
                algo.train_one_epoch()
            total_train_time += time.perf_counter() - start

            save_model = _every(args["save_model_every_n_epochs"], epoch)
            evaluate = _every(args["evaluate_n_epochs"], epoch) or epoch + 1 >= epochs or not train
            # VisionAD: save_heatmaps_n_epochs == 0 saves (and so evaluates) every epoch; None never.
            save_heatmaps = args["save_heatmaps_n_epochs"] == 0 or _every(
                args["save_heatmaps_n_epochs"], epoch
            )
            if regime is not None:
                evaluate = regime(total_train_time, epoch)
            end_run = False
            if hard_time_limit is not None and time.perf_counter() - start_time > hard_time_limit:
                end_run = evaluate = True
            if train_time_limit is not None and total_train_time > train_time_limit:
                end_run = evaluate = True

            if save_model or evaluate or save_heatmaps:
                start = time.perf_counter()
                algo.pre_eval_processing()
                pre_eval_time = time.perf_counter() - start
            if save_model:
                algo.save_model(str(epoch_dir / "model"))
                logger.info("Saved model to %s", epoch_dir / "model")
            if evaluate or save_heatmaps:
                start = time.perf_counter()
                heatmap_set, image_score_set, targets_set, paths_set = algo.test()
                inference_time = time.perf_counter() - start
                start = time.perf_counter()
                metric_results = run_metrics(
                    list(metrics),
                    heatmap_set,
                    image_score_set,
                    targets_set,
                    paths_set,
                    include_metric_data=bool(args["save_metric_meta_data"]),
                    pixel_labels=bool(dataset.get("pixel_labels", True)),
                )
                metric_time = time.perf_counter() - start
                predictions = (heatmap_set, image_score_set, targets_set, paths_set)
                write_pickle_atomic(epoch_dir / "metrics.pk", metric_results)
                if save_heatmaps:
                    write_pickle_atomic(epoch_dir / "heatmaps.pk", predictions)
                    write_json_atomic(epoch_dir / "description.json", description)
                train_time = total_train_time + pre_eval_time
                flat = {metric: dict(item["metric_results"]) for metric, item in metric_results.items()}
                data = {
                    "time": run_time,
                    "run_description": run_description,
                    "model_description": args["model_description"],
                    "model_long_description": args["model_long_description"],
                    "epoch": epoch,
                    "training_transforms": args["training_transformation_string"],
                    "model": args["algo_class_name"],
                    "train_time": train_time,
                    "train_time_per_image": train_time / max(n_train, 1),
                    "inference_time": inference_time,
                    "inference_time_per_image": inference_time / max(n_test, 1),
                    "model_params": args["algo_class_name"] + str(args["model_params"]),
                    "dataset": dataset_key,
                    "metrics": flat,
                    "batch_size": args["batch_size"],
                }
                epoch_best = max(_numbers(flat.get(best_metric, {})).values(), default=-np.inf)
                if save_best and epoch_best > best_score:
                    best_score = epoch_best
                    write_pickle_atomic(out_dir / "best.pk", predictions)
                    write_json_atomic(out_dir / "description.json", description)
                    logger.info(
                        "Saved best predictions (%s = %.4f, epoch %d)", best_metric, best_score, epoch
                    )
                write_json_atomic(epoch_dir / "data.json", data)
                wandb_run.log(
                    {
                        f"{metric}_{method}": value
                        for metric, item in flat.items()
                        for method, value in _numbers(item).items()
                    }
                )
                wandb_run.log(
                    {
                        "evaluation_epoch": epoch,
                        "evaluation_time": inference_time,
                        "metric_time": metric_time,
                        "train_time": train_time,
                        "train_time_per_image": data["train_time_per_image"],
                        "inference_time": inference_time,
                        "inference_time_per_image": data["inference_time_per_image"],
                    }
                )
                pair.evaluated_epochs.append(epoch)
                pair.metrics = flat
                pair.metric_failures += [f"epoch {epoch}: {f}" for f in metric_failures(metric_results)]
                logger.info("Epoch %d results written to %s", epoch, epoch_dir)
            if epoch_dir.is_dir():
                write_marker(epoch_dir)  # last: the epoch folder is complete
            if end_run:
                logger.info(
                    "Time limit reached after epoch %d (train time %.1f s): stopping", epoch, total_train_time
                )
                break
    finally:
        wandb_run.finish()


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``{method: value}`` (failed / not computable methods hold strings)."""
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _every(n: int | None, epoch: int) -> bool:
    return bool(n) and (epoch + 1) % int(n) == 0  # type: ignore[arg-type]
