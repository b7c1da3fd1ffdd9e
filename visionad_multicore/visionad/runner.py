"""Run VisionAD config files: VisionAD's train / evaluate loop and results layout, without a VisionAD clone.

A config file is a Python module defining ``dataset_list`` (dataset keys), ``metrics`` (``["all"]`` or metric
names) and ``model_list`` (dicts, keys in :data:`MODEL_KEYS`). For every model and every dataset the runner
does what VisionAD's ``run.py`` + ``wrapper/wrapper.py::train_algo`` do:

1. load the dataset dict; build the loaders with ``Normalize(mean, std)`` as ``pre_pro_transforms``;
2. build ``AlgoClass(**model_params)`` (``model_params`` receives ``device`` and ``wandb``);
   ``enter_dataloaders``; ``epochs == 0`` evaluates once without training (VisionAD's run.py makes it 1);
3. per epoch: ``train_one_epoch`` (timed: train time excludes evaluation), then, when the epoch saves or
   evaluates, ``pre_eval_processing``; ``save_model`` every ``save_model_every_n_epochs``; ``test`` +
   metrics every ``evaluate_n_epochs``, at the last epoch, whenever heatmaps are saved, and at the epoch in
   which ``train_time_limit`` (or ``hard_time_limit``) is exceeded, after which the run stops.

Before any work the runner checks the devices, the results folder and every file of every dataset
(:mod:`.preflight`); errors stop the run with a report (:class:`PreflightError`), ``check_config`` runs only
these checks (``visionad-multicore run --check``).

Results (every file written atomically: a temporary sibling, then ``os.replace``)::

    <results_dir>/<run time>_<run description[:20], spaces -> _>/
        run_config.json, run_config_source.py          the resolved config and the file it came from
        <algo>_<model description>/<dataset>/
            best.pk, description.json                  predictions of the best epoch by save_best_preds_metric (PL)
            <epoch>/metrics.pk, data.json              {metric: {"metric_results": {method: value}}}; VisionAD's data.json
            <epoch>/heatmaps.pk, description.json      when heatmaps are saved that epoch
            <epoch>/model/                             when the model is saved that epoch
            <epoch>/complete.json                      written last: the epoch folder is complete
            complete.json                              written last: the pair is complete
            error.txt                                  the traceback, when the pair failed

A pair whose folder has no ``complete.json`` is unfinished: ``run_config(resume=RUN_DIR)`` (``run --resume``)
keeps the finished pairs of an interrupted run and redoes the others from a clean folder, and the leaderboard
ignores unfinished folders.
With ``visionad_root`` the same config runs through a user's VisionAD checkout instead (its ``train_algo``,
loaders, metrics and dataset registry); see :func:`run_config`.

The work is split by job: :mod:`.config` (config files, model arguments), :mod:`.preflight` (checks before
work), :mod:`.run_files` (run folder, provenance, markers, atomic writers), :mod:`.pairs` (the pair loop:
failures contained, resume, signals), :mod:`.loop` (one pair: VisionAD's ``train_algo``), :mod:`.checkout`
(a VisionAD checkout). This module puts them together and re-exports their public names, so
``from visionad_multicore.visionad.runner import ...`` keeps working.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionad_multicore.visionad.checkout import (
    VISIONAD_CHECKOUT_FILES,
    VisionADCheckoutError,
    check_through_visionad,
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
    RunRequest,
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
from visionad_multicore.visionad.pairs import RunInterrupted, open_run, run_pairs
from visionad_multicore.visionad.preflight import CheckReport, PreflightError, check_run
from visionad_multicore.visionad.run_files import (
    DEFAULT_RESULTS_DIR,
    ERROR_FILE,
    MARKER_FILE,
    RESULTS_DIR_ENV,
    RUN_CONFIG_FILE,
    RUN_CONFIG_SOURCE_FILE,
    PairResult,
    RunSummary,
    hardware_info,
    read_recorded_run,
    resolve_results_dir,
    run_dir_name,
    write_json_atomic,
    write_pickle_atomic,
)

__all__ = [
    "CONFIG_ATTRIBUTES",
    "DEFAULT_RESULTS_DIR",
    "ERROR_FILE",
    "MARKER_FILE",
    "MODEL_KEYS",
    "OPTIONAL_MODEL_KEYS",
    "REQUIRED_MODEL_KEYS",
    "RESULTS_DIR_ENV",
    "RUN_CONFIG_FILE",
    "RUN_CONFIG_SOURCE_FILE",
    "VISIONAD_CHECKOUT_FILES",
    "VISIONAD_DEFAULTS",
    "AlgorithmResolver",
    "CheckReport",
    "ConfigError",
    "PairResult",
    "PreflightError",
    "RunConfig",
    "RunInterrupted",
    "RunSummary",
    "VisionADCheckoutError",
    "WandbMissingError",
    "check_config",
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

PathArg = str | os.PathLike[str]


@dataclass
class _NativeBackend:
    """Pairs run by our loop on datasets of our registry."""

    metrics: list[str]
    run_time: str
    run_description: str
    data_root: PathArg | None
    registry_path: PathArg | None
    label: str = ""

    def load_dataset(self, key: str) -> Mapping[str, Any]:
        from visionad_multicore.visionad.datasets import load_dataset

        return load_dataset(key, data_root=self.data_root, registry_path=self.registry_path)

    def run_pair(
        self, algo: Any, pair: PairResult, dataset: Mapping[str, Any], args: Mapping[str, Any]
    ) -> None:
        train_and_evaluate(
            algo, pair.dataset, dataset, self.metrics, self.run_time, pair, self.run_description, args
        )


def _request(
    config_file: PathArg | None,
    resume: PathArg | None,
    **given: Any,
) -> tuple[RunRequest, str | None]:
    """The run request, and the VisionAD checkout to run through (None: native). A resumed run takes its
    settings from its ``run_config.json``; only ``device`` may be given again."""
    if resume is None:
        if config_file is None:
            raise ConfigError("run_config needs config_file (or resume=RUN_DIR to finish an interrupted run)")
        root = given.pop("visionad_root")
        return RunRequest(Path(config_file).expanduser(), **given), None if root is None else str(root)
    if config_file is not None:
        raise ConfigError(
            "give either a config file or resume=RUN_DIR (the run's own config is used), not both"
        )
    fixed = [
        name
        for name, value in given.items()
        if name not in ("device", "progress") and value not in (None, "")
    ]
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} cannot be changed when resuming: they come from the run's {RUN_CONFIG_FILE}"
        )
    try:
        recorded = read_recorded_run(resume)
    except (OSError, ValueError) as err:
        raise ConfigError(str(err)) from err
    logger.info("Resuming %s (config %s)", recorded.run_dir, recorded.config_path)
    request = RunRequest(
        recorded.config_path,
        run_description=recorded.run_description,
        device=given.get("device") or recorded.device,
        wandb=recorded.wandb,
        data_root=recorded.data_root,
        registry_path=recorded.registry_path,
        resume_dir=recorded.run_dir,
        run_time=recorded.run_time,
        progress=given.get("progress", True),
    )
    return request, recorded.visionad_root


def _prepare(
    request: RunRequest, resolve_algorithm: AlgorithmResolver
) -> tuple[RunConfig, list[type], Path, CheckReport]:
    """Load and check the config, resolve every algorithm and run the checks before work (native runs)."""
    from visionad_multicore.visionad.datasets import load_dataset

    config = load_config(request.config_path)
    classes = resolve_classes(config, resolve_algorithm, fallback=None, device=request.device)
    check_wandb(config, request.wandb)
    parent = request.resume_dir.parent if request.resume_dir else resolve_results_dir(request.results_dir)
    report = check_run(
        config,
        request.device,
        lambda key: load_dataset(key, data_root=request.data_root, registry_path=request.registry_path),
        parent,
        progress=request.progress,
    )
    return config, classes, parent, report


def check_config(
    config_file: PathArg | None = None,
    device: str | None = None,
    data_root: PathArg | None = None,
    results_dir: PathArg | None = None,
    resolve_algorithm: AlgorithmResolver | None = None,
    visionad_root: PathArg | None = None,
    registry_path: PathArg | None = None,
    resume: PathArg | None = None,
    progress: bool = True,
) -> CheckReport:
    """Only the checks ``run_config`` does before any work: config, algorithms, devices, results folder and
    every file of every dataset. Nothing is trained or written.

    Args: as :func:`run_config`.

    Returns:
        The :class:`CheckReport` (``report.ok`` is False when the run would not start).

    Raises:
        ConfigError: the config file itself is unusable or names an unknown algorithm.
        VisionADCheckoutError: ``visionad_root`` is not a usable checkout.
    """
    if resolve_algorithm is None:
        raise ValueError(
            "check_config needs resolve_algorithm (e.g. visionad_multicore.algorithms.get_algorithm)"
        )
    request, root = _request(
        config_file, resume, device=device, data_root=data_root, results_dir=results_dir,
        visionad_root=visionad_root, registry_path=registry_path, progress=progress,
    )  # fmt: skip
    if root is not None:
        return check_through_visionad(request, resolve_algorithm, Path(root).expanduser().resolve())
    return _prepare(request, resolve_algorithm)[3]


def run_config(
    config_file: PathArg | None = None,
    run_description: str = "",
    device: str | None = None,
    wandb: bool | None = None,
    data_root: PathArg | None = None,
    results_dir: PathArg | None = None,
    resolve_algorithm: AlgorithmResolver | None = None,
    visionad_root: PathArg | None = None,
    registry_path: PathArg | None = None,
    on_result: Callable[[PairResult], None] | None = None,
    resume: PathArg | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run every (model, dataset) pair of a VisionAD config file and write VisionAD's results layout.

    ``dataset_list_override`` in a model dict replaces ``dataset_list`` for that model. (VisionAD's ``run.py``
    prints the override but then loops over ``config.dataset_list`` anyway, a bug; we honour the override.)

    Before any work the config, the algorithms, the devices, the results folder and every dataset file are
    checked (see :mod:`.preflight`). A pair that fails is logged, its traceback written to its folder's
    ``error.txt`` and recorded in the summary; the other pairs still run.

    Args:
        config_file: path of the config module (None when resuming).
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
        resume: the folder of an interrupted run: its finished pairs are kept, the others run again from a
            clean folder, with the run's recorded config and settings (only ``device`` may be given).
        progress: progress bars while checking files.

    Returns:
        A :class:`RunSummary` (``summary.ok`` is False if any pair failed or any metric failed).

    Raises:
        ConfigError: the config file is unusable, names an algorithm nobody provides, or a resume is asked
            with settings that would change the run.
        PreflightError: the checks before any work found errors (a :class:`ConfigError`; nothing was run).
        VisionADCheckoutError: ``visionad_root`` lacks a required file or module.
        WandbMissingError: wandb was asked for but is not installed.
        RunInterrupted: SIGINT or SIGTERM arrived; finished pairs are kept (resume the run to finish it).
    """
    if resolve_algorithm is None:
        raise ValueError(
            "run_config needs resolve_algorithm (e.g. visionad_multicore.algorithms.get_algorithm)"
        )
    request, root = _request(
        config_file, resume, run_description=run_description, device=device, wandb=wandb, data_root=data_root,
        results_dir=results_dir, visionad_root=visionad_root, registry_path=registry_path, progress=progress,
    )  # fmt: skip
    if root is not None:
        return run_through_visionad(request, resolve_algorithm, Path(root).expanduser().resolve(), on_result)
    config, classes, parent, report = _prepare(request, resolve_algorithm)
    run_time, run_dir = open_run(config, request, parent, report, "native")
    backend = _NativeBackend(
        list(config.metrics), run_time, request.run_description, request.data_root, request.registry_path
    )
    return run_pairs(
        config,
        classes,
        backend,
        run_dir,
        request.device,
        request.wandb,
        request.resume_dir is not None,
        on_result,
    )
