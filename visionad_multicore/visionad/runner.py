"""Run VisionAD config files: VisionAD's train / evaluate loop and results layout, without a VisionAD clone.

A config file is a Python module defining ``dataset_list`` (dataset keys), ``metrics`` (``["all"]`` or metric
names) and ``model_list`` (dicts, keys in :data:`MODEL_KEYS`). For every model and every dataset the runner
does what VisionAD's ``run.py`` + ``wrapper/wrapper.py::train_algo`` do:

1. load the dataset dict; build the loaders with ``Normalize(mean, std)`` as ``pre_pro_transforms``;
2. build ``AlgoClass(**model_params)`` (``model_params`` receives ``device`` and ``wandb``);
   ``enter_dataloaders``; ``epochs == 0`` runs one epoch;
3. per epoch: ``train_one_epoch`` (timed: train time excludes evaluation), then, when the epoch saves or
   evaluates, ``pre_eval_processing``; ``save_model`` every ``save_model_every_n_epochs``; ``test`` +
   metrics every ``evaluate_n_epochs``, at the last epoch, whenever heatmaps are saved, and at the epoch in
   which ``train_time_limit`` (or ``hard_time_limit``) is exceeded, after which the run stops.

Results (every file written atomically: a ``.tmp`` sibling, then ``os.replace``)::

    <results_dir>/<run time>_<run description[:20], spaces -> _>/
        run_config.json, run_config_source.py          the resolved config and the file it came from
        <algo>_<model description>/<dataset>/
            best.pk, description.json                  predictions of the best epoch by save_best_preds_metric (PL)
            <epoch>/metrics.pk, data.json              {metric: {"metric_results": {method: value}}}; VisionAD's data.json
            <epoch>/heatmaps.pk, description.json      when heatmaps are saved that epoch
            <epoch>/model/                             when the model is saved that epoch

With ``visionad_root`` the same config runs through a user's VisionAD checkout instead (its ``train_algo``,
loaders, metrics and dataset registry); see :func:`run_config`.

The work is split by job: :mod:`.config` (config files, model arguments), :mod:`.run_files` (run folder,
provenance, atomic writers), :mod:`.loop` (one pair: VisionAD's ``train_algo``), :mod:`.checkout` (a VisionAD
checkout). This module runs every pair and re-exports the public names of those modules, so
``from visionad_multicore.visionad.runner import ...`` keeps working.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from visionad_multicore.visionad.checkout import (
    VISIONAD_CHECKOUT_FILES,
    VisionADCheckoutError,
    check_visionad_checkout,
    run_through_visionad,
    visionad_checkout,
)
from visionad_multicore.visionad.config import (
    CONFIG_ATTRIBUTES,
    MODEL_KEYS,
    OPTIONAL_MODEL_KEYS,
    REQUIRED_MODEL_KEYS,
    VISIONAD_DEFAULTS,
    AlgorithmResolver,
    ConfigError,
    RunConfig,
    dataset_keys,
    load_config,
    option,
    prepare_model_arguments,
    resolve_classes,
)
from visionad_multicore.visionad.loop import (
    WandbMissingError,
    check_wandb,
    seed_everything,
    train_and_evaluate,
)
from visionad_multicore.visionad.run_files import (
    DEFAULT_RESULTS_DIR,
    RESULTS_DIR_ENV,
    RUN_CONFIG_FILE,
    RUN_CONFIG_SOURCE_FILE,
    PairResult,
    RunSummary,
    hardware_info,
    log_summary,
    pair_result,
    resolve_results_dir,
    run_dir_name,
    write_json_atomic,
    write_pickle_atomic,
    write_run_config,
)

__all__ = [
    "CONFIG_ATTRIBUTES",
    "DEFAULT_RESULTS_DIR",
    "MODEL_KEYS",
    "OPTIONAL_MODEL_KEYS",
    "REQUIRED_MODEL_KEYS",
    "RESULTS_DIR_ENV",
    "RUN_CONFIG_FILE",
    "RUN_CONFIG_SOURCE_FILE",
    "VISIONAD_CHECKOUT_FILES",
    "VISIONAD_DEFAULTS",
    "AlgorithmResolver",
    "ConfigError",
    "PairResult",
    "RunConfig",
    "RunSummary",
    "VisionADCheckoutError",
    "WandbMissingError",
    "check_visionad_checkout",
    "hardware_info",
    "load_config",
    "option",
    "prepare_model_arguments",
    "resolve_results_dir",
    "run_config",
    "run_dir_name",
    "seed_everything",
    "train_and_evaluate",
    "visionad_checkout",
    "write_json_atomic",
    "write_pickle_atomic",
]

logger = logging.getLogger(__name__)


def run_config(
    config_file: str | os.PathLike[str],
    run_description: str = "",
    device: str | None = None,
    wandb: bool | None = None,
    data_root: str | os.PathLike[str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    resolve_algorithm: AlgorithmResolver | None = None,
    visionad_root: str | os.PathLike[str] | None = None,
    registry_path: str | os.PathLike[str] | None = None,
    on_result: Callable[[PairResult], None] | None = None,
) -> RunSummary:
    """Run every (model, dataset) pair of a VisionAD config file and write VisionAD's results layout.

    ``dataset_list_override`` in a model dict replaces ``dataset_list`` for that model. (VisionAD's ``run.py``
    prints the override but then loops over ``config.dataset_list`` anyway, a bug; we honour the override.)

    A pair that fails is logged with its traceback and recorded in the summary; the other pairs still run.

    Args:
        config_file: path of the config module.
        run_description: appended (first 20 characters, spaces -> ``_``) to the run folder's name.
        device: overrides every model's ``device`` (e.g. ``"cpu"``, ``"cuda:0"``).
        wandb: overrides every model's ``wandb`` flag; wandb is imported only when some model logs to it.
        data_root: root folder for the dataset registry (native runs only).
        results_dir: parent of the run folder; default ``$VISIONAD_RESULTS_DIR`` or ``./results``. With
            ``visionad_root`` the default is the checkout's ``RESULTS_DIRECTORY`` instead.
        resolve_algorithm: ``name -> ModelWrapper subclass`` (the harness never imports algorithms itself;
            pass ``visionad_multicore.algorithms.get_algorithm``). It should raise ``LookupError`` for names
            it does not know, so that ``visionad_root`` runs fall back to VisionAD's ``get_algo``.
        visionad_root: a VisionAD checkout. The config then runs through the checkout's own ``train_algo``,
            loaders, metrics and dataset registry (``data/configure_dataset.py``): the checkout goes on
            ``sys.path``, the working directory is the checkout during the run (as with its ``run.py``), and
            the arguments are prepared as its ``run.py`` prepares them. Names known to ``resolve_algorithm``
            use our classes, other names the checkout's ``algos/algo_class_list.get_algo``.
        registry_path: extra dataset registry YAML file (native runs only).
        on_result: called with each :class:`PairResult` as soon as its pair finishes (or fails).

    Returns:
        A :class:`RunSummary` (``summary.ok`` is False if any pair failed).

    Raises:
        ConfigError: the config file is unusable, or names an algorithm nobody provides.
        VisionADCheckoutError: ``visionad_root`` lacks a required file or module.
        WandbMissingError: wandb was asked for but is not installed.
    """
    if resolve_algorithm is None:
        raise ValueError(
            "run_config needs resolve_algorithm (e.g. visionad_multicore.algorithms.get_algorithm)"
        )
    config_path = Path(config_file).expanduser()
    if visionad_root is not None:
        return run_through_visionad(
            config_path, run_description, device, wandb, data_root, results_dir, resolve_algorithm,
            Path(visionad_root).expanduser().resolve(), registry_path, on_result,
        )  # fmt: skip
    config = load_config(config_path)
    classes = resolve_classes(config, resolve_algorithm, fallback=None, device=device)
    check_wandb(config, wandb)
    run_time = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
    run_dir = resolve_results_dir(results_dir) / run_dir_name(run_time, run_description)
    write_run_config(
        run_dir, config, run_time, run_description, "native", device, wandb, data_root, registry_path, None
    )
    logger.info("Results directory: %s", run_dir)

    from visionad_multicore.visionad.datasets import load_dataset

    summary = RunSummary(run_dir)
    for index, model in enumerate(config.model_list):
        for dataset_key in dataset_keys(model, config):
            pair = pair_result(model, run_dir, dataset_key)
            logger.info(
                "Running model %s %s, dataset %s",
                model["algo_class_name"],
                pair.model_description,
                dataset_key,
            )
            try:
                dataset = load_dataset(dataset_key, data_root=data_root, registry_path=registry_path)
                args = prepare_model_arguments(model, dataset, device, wandb)
                seed_everything(int(option(args, "seed")))
                algo = classes[index](**args["model_params"])
                train_and_evaluate(
                    algo, dataset_key, dataset, config.metrics, run_time, pair, run_description, args
                )
            except Exception:
                pair.error = traceback.format_exc()
                logger.error(
                    "Error on run %s, dataset %s:\n%s", model["algo_class_name"], dataset_key, pair.error
                )
            summary.results.append(pair)
            if on_result is not None:
                on_result(pair)
    log_summary(summary)
    return summary
