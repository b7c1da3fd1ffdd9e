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
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import pickle
import platform
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch
from torchvision import transforms
from tqdm import tqdm

from visionad_multicore.atomic import atomic_path
from visionad_multicore.visionad.loaders import check_image_interpolation

logger = logging.getLogger(__name__)

RESULTS_DIR_ENV = "VISIONAD_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "results"
RUN_CONFIG_FILE = "run_config.json"
RUN_CONFIG_SOURCE_FILE = "run_config_source.py"

CONFIG_ATTRIBUTES = ("dataset_list", "metrics", "model_list")
# Keys every model dict must have. "device" may be left out when a device is given to run_config.
REQUIRED_MODEL_KEYS = (
    "algo_class_name",
    "model_params",
    "epochs",
    "training_transformations",
    "training_transformation_string",
    "identical_transforms",
    "batch_size",
    "test_batch_size",
    "save_model_every_n_epochs",
    "save_heatmaps_n_epochs",
    "evaluate_n_epochs",
    "device",
)
# Defaults VisionAD's run.py fills in (and wandb, which it sets to False when absent).
VISIONAD_DEFAULTS: dict[str, Any] = {
    "model_description": "",
    "model_long_description": "",
    "save_metric_meta_data": False,
    "wandb": False,
}
# Optional keys and their defaults. Only VISIONAD_DEFAULTS are written into the resolved dict: VisionAD's
# train_algo tests the others with ``key in model_arguments``, so a None default would break it.
OPTIONAL_MODEL_KEYS: dict[str, Any] = {
    "model_description": "",
    "model_long_description": "",
    "save_metric_meta_data": False,
    "wandb": False,
    "input_size": None,
    "seed": 0,
    "save_best_preds": True,
    "save_best_preds_metric": "PL",
    "train_time_limit": None,
    "hard_time_limit": None,
    "dataset_list_override": None,
    "specific_evaluation_regime": None,
    "pre_pro_transforms": None,  # set by the runner, as VisionAD's run.py does
    "image_interpolation": None,  # ours: resize filter of images (masks stay as identical_transforms)
}
MODEL_KEYS = (*REQUIRED_MODEL_KEYS, *OPTIONAL_MODEL_KEYS)

# Files a VisionAD checkout must have for visionad_root runs.
VISIONAD_CHECKOUT_FILES = (
    "algos/model_wrapper.py",
    "algos/algo_class_list.py",
    "wrapper/wrapper.py",
    "data/configure_dataset.py",
    "data/load_image_data.py",
)
_VISIONAD_TOP_MODULES = ("algos", "data", "wrapper", "configs")

AlgorithmResolver = Callable[[str], type]


class ConfigError(ValueError):
    """A config file is missing, malformed, or names something that does not exist."""


class VisionADCheckoutError(RuntimeError):
    """``visionad_root`` is not a usable VisionAD checkout."""


class WandbMissingError(RuntimeError):
    """wandb logging was asked for but wandb is not installed."""


# ---------------------------------------------------------------------------------------------- config files
@dataclass(frozen=True)
class RunConfig:
    """A loaded VisionAD config file.

    Attributes:
        path: absolute path of the file.
        dataset_list: dataset keys.
        metrics: metric names (``["all"]`` for all).
        model_list: the model dicts as written in the file (not yet resolved).
        source: the file's text.
    """

    path: Path
    dataset_list: list[str]
    metrics: list[str]
    model_list: list[dict[str, Any]]
    source: str


def load_config(config_file: str | os.PathLike[str]) -> RunConfig:
    """Import a VisionAD config file by path and check its contents.

    The file is loaded with ``importlib.util.spec_from_file_location`` (not by module name), with the current
    directory and the file's folder on ``sys.path`` while it runs, so it may import sibling modules.

    Raises:
        ConfigError: the file is missing or fails to import, an attribute of :data:`CONFIG_ATTRIBUTES` is
            missing, a model dict lacks a required key or has an unknown one (the message names the key, the
            model and the file, and lists the valid keys).
    """
    path = Path(config_file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    module_name = "_visionad_config_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    extra_paths = [p for p in (os.getcwd(), str(path.parent)) if p not in sys.path]
    sys.path.extend(extra_paths)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ConfigError(f"config file {path} failed to import: {type(err).__name__}: {err}") from err
    finally:
        for p in extra_paths:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)
    missing = [name for name in CONFIG_ATTRIBUTES if not hasattr(module, name)]
    if missing:
        raise ConfigError(
            f"config file {path} does not define {', '.join(missing)} (needs {', '.join(CONFIG_ATTRIBUTES)})"
        )
    dataset_list, metrics, model_list = (getattr(module, name) for name in CONFIG_ATTRIBUTES)
    if isinstance(dataset_list, str) or not isinstance(dataset_list, Sequence):
        raise ConfigError(
            f"config file {path}: dataset_list must be a list of dataset keys, got {dataset_list!r}"
        )
    if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
        raise ConfigError(
            f"config file {path}: metrics must be a non-empty list (e.g. ['all']), got {metrics!r}"
        )
    if not isinstance(model_list, Sequence) or not model_list:
        raise ConfigError(f"config file {path}: model_list must be a non-empty list of dicts")
    for index, model in enumerate(model_list):
        _check_model_keys(model, index, path, device_given=True)
    return RunConfig(path, list(dataset_list), list(metrics), list(model_list), path.read_text())


def _check_model_keys(model: Any, index: int, path: Path, device_given: bool) -> None:
    where = f"config file {path}, model_list[{index}]"
    if not isinstance(model, Mapping):
        raise ConfigError(f"{where} must be a dict, got {type(model).__name__}")
    if "algo_class_name" in model:
        where += f" ({model['algo_class_name']})"
    for key in REQUIRED_MODEL_KEYS:
        if key not in model and not (key == "device" and device_given):
            raise ConfigError(
                f"{where} is missing the key {key!r}"
                + (" (or pass --device)" if key == "device" else "")
                + f"; required keys: {', '.join(REQUIRED_MODEL_KEYS)}"
            )
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; valid keys: {', '.join(MODEL_KEYS)}")
    if not isinstance(model["model_params"], Mapping):
        raise ConfigError(f"{where}: model_params must be a dict, got {type(model['model_params']).__name__}")
    try:
        check_image_interpolation(model.get("image_interpolation"))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err


def prepare_model_arguments(
    model: Mapping[str, Any], dataset: Mapping[str, Any], device: str | None = None, wandb: bool | None = None
) -> dict[str, Any]:
    """Resolve one model dict for one dataset exactly as VisionAD's ``run.py`` does, on a copy.

    Fills :data:`VISIONAD_DEFAULTS`; ``device`` (if given) overrides the dict's ``device`` and is copied into
    ``model_params["device"]``; ``wandb`` (if given) overrides the dict's ``wandb`` (default False) and is
    copied into ``model_params["wandb"]``; sets ``pre_pro_transforms = Compose([Normalize(mean, std)])`` from
    the dataset; ``epochs == 0`` becomes 1.
    """
    args = dict(model)
    args["model_params"] = dict(model["model_params"])
    for key, default in VISIONAD_DEFAULTS.items():
        args.setdefault(key, default)
    if device:
        args["device"] = str(device)
    args["model_params"]["device"] = args["device"]
    if wandb is not None:
        args["wandb"] = bool(wandb)
    args["model_params"]["wandb"] = bool(args["wandb"])
    args["pre_pro_transforms"] = transforms.Compose(
        [transforms.Normalize(mean=dataset["mean"], std=dataset["std"])]
    )
    if args["epochs"] == 0:
        args["epochs"] = 1
    return args


def option(args: Mapping[str, Any], key: str) -> Any:
    """``args[key]``, or the default of the optional key ``key`` when the dict lacks it."""
    return args[key] if key in args else copy.deepcopy(OPTIONAL_MODEL_KEYS[key])


# ---------------------------------------------------------------------------------------------- results
@dataclass
class PairResult:
    """Outcome of one (model, dataset) run.

    Attributes:
        algo: ``algo_class_name`` as written in the config.
        model_description: the model's description.
        dataset: dataset key.
        path: ``<run dir>/<algo>_<model description>/<dataset>``.
        evaluated_epochs: epochs whose results were written.
        metrics: ``{metric: {method: value}}`` of the last evaluated epoch (empty if none).
        error: the formatted traceback if the run failed, else None.
    """

    algo: str
    model_description: str
    dataset: str
    path: Path
    evaluated_epochs: list[int] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunSummary:
    """What :func:`run_config` did: the run directory and one :class:`PairResult` per (model, dataset)."""

    run_dir: Path
    results: list[PairResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PairResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def paths(self) -> dict[tuple[str, str, str], Path]:
        """``(algo, model description, dataset) -> results folder`` of the pairs that finished."""
        return {(r.algo, r.model_description, r.dataset): r.path for r in self.results if r.ok}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _write_atomic(path: Path, write: Callable[[Any], None], binary: bool) -> None:
    """Write ``path`` atomically through ``write(file)`` (see :func:`visionad_multicore.atomic.atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON-dump ``obj`` to ``path`` atomically (numpy scalars -> numbers, other objects -> repr)."""
    _write_atomic(path, lambda f: json.dump(obj, f, indent=1, default=_jsonable), binary=False)


def write_pickle_atomic(path: Path, obj: Any) -> None:
    """Pickle ``obj`` to ``path`` atomically."""
    _write_atomic(path, lambda f: pickle.dump(obj, f), binary=True)


def resolve_results_dir(results_dir: str | os.PathLike[str] | None) -> Path:
    """``results_dir`` if given, else ``$VISIONAD_RESULTS_DIR``, else ``./results`` (made absolute)."""
    chosen = results_dir or os.environ.get(RESULTS_DIR_ENV) or DEFAULT_RESULTS_DIR
    return Path(chosen).expanduser().resolve()


def run_dir_name(run_time: str, run_description: str) -> str:
    """VisionAD's run folder name: ``<run time>_<run description[:20] with spaces replaced by _>``."""
    return run_time + "_" + run_description[:20].replace(" ", "_")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (VisionAD's baselines draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global generator is what baselines use
    torch.manual_seed(seed)


def _import_wandb() -> ModuleType:
    try:
        import wandb
    except ImportError as err:
        raise WandbMissingError(
            "wandb logging was asked for (--wandb 1 or 'wandb': True in the config) but wandb is not installed: "
            "pip install wandb (or visionad_multicore[wandb]), or run with --wandb 0"
        ) from err
    return wandb


# ---------------------------------------------------------------------------------------------- the run
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
        return _run_through_visionad(
            config_path, run_description, device, wandb, data_root, results_dir, resolve_algorithm,
            Path(visionad_root).expanduser().resolve(), registry_path, on_result,
        )  # fmt: skip
    config = load_config(config_path)
    classes = _resolve_classes(config, resolve_algorithm, fallback=None, device=device)
    _check_wandb(config, wandb)
    run_time = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
    run_dir = resolve_results_dir(results_dir) / run_dir_name(run_time, run_description)
    _write_run_config(
        run_dir, config, run_time, run_description, "native", device, wandb, data_root, registry_path, None
    )
    logger.info("Results directory: %s", run_dir)

    from visionad_multicore.visionad.datasets import load_dataset

    summary = RunSummary(run_dir)
    for index, model in enumerate(config.model_list):
        for dataset_key in _dataset_keys(model, config):
            pair = _pair_result(model, run_dir, dataset_key)
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
    _log_summary(summary)
    return summary


def _dataset_keys(model: Mapping[str, Any], config: RunConfig) -> list[str]:
    override = model.get("dataset_list_override")
    if override is not None:
        logger.info("Model %s uses dataset_list_override: %s", model["algo_class_name"], list(override))
        return list(override)
    return list(config.dataset_list)


def _pair_result(model: Mapping[str, Any], run_dir: Path, dataset_key: str) -> PairResult:
    description = model.get("model_description", "")
    return PairResult(
        algo=model["algo_class_name"],
        model_description=description,
        dataset=dataset_key,
        path=run_dir / f"{model['algo_class_name']}_{description}" / dataset_key,
    )


def _resolve_classes(
    config: RunConfig, resolve: AlgorithmResolver, fallback: Callable[[str], type] | None, device: str | None
) -> list[type]:
    """Check the model dicts (now that the device override is known) and resolve every algorithm up front."""
    classes = []
    for index, model in enumerate(config.model_list):
        _check_model_keys(model, index, config.path, device_given=bool(device))
        name = str(model["algo_class_name"])
        try:
            classes.append(resolve(name))
        except LookupError as err:
            if fallback is None:
                raise ConfigError(f"config file {config.path}, model_list[{index}]: {err}") from err
            try:
                classes.append(fallback(name.lower()))
            except Exception as vad_err:
                raise ConfigError(
                    f"config file {config.path}, model_list[{index}]: algorithm {name!r} is neither ours ({err}) "
                    f"nor found by the VisionAD checkout's get_algo ({type(vad_err).__name__}: {vad_err})"
                ) from vad_err
    return classes


def _check_wandb(config: RunConfig, wandb: bool | None) -> None:
    wanted = bool(wandb) if wandb is not None else any(m.get("wandb", False) for m in config.model_list)
    if wanted:
        _import_wandb()


def _write_run_config(
    run_dir: Path,
    config: RunConfig,
    run_time: str,
    run_description: str,
    mode: str,
    device: str | None,
    wandb: bool | None,
    data_root: Any,
    registry_path: Any,
    visionad_root: Path | None,
) -> None:
    """Save the resolved config (JSON) and the config file's text beside the results."""
    from visionad_multicore import __version__ as package_version

    models = []
    for model in config.model_list:
        resolved = {
            key: model.get(key, OPTIONAL_MODEL_KEYS.get(key))
            for key in MODEL_KEYS
            if key != "pre_pro_transforms"
        }
        if device:
            resolved["device"] = str(device)
        if wandb is not None:
            resolved["wandb"] = bool(wandb)
        resolved["datasets"] = _dataset_keys(model, config)
        models.append(resolved)
    write_json_atomic(
        run_dir / RUN_CONFIG_FILE,
        {
            "config_file": str(config.path),
            "config_sha256": hashlib.sha256(config.source.encode()).hexdigest(),
            "run_time": run_time,
            "run_description": run_description,
            "mode": mode,
            "visionad_root": str(visionad_root) if visionad_root else None,
            "device": device,
            "wandb": wandb,
            "data_root": str(data_root) if data_root else None,
            "registry_path": str(registry_path) if registry_path else None,
            "package_version": package_version,
            "hardware": hardware_info(device or next((m["device"] for m in models if m.get("device")), None)),
            "dataset_list": config.dataset_list,
            "metrics": config.metrics,
            "models": models,
        },
    )
    _write_atomic(run_dir / RUN_CONFIG_SOURCE_FILE, lambda f: f.write(config.source), binary=False)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_info(device: str | None) -> dict[str, Any]:
    """CPU model, GPU name of ``device`` (None on CPU), torch / Python versions and platform of this machine."""
    gpu = None
    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpu": _cpu_model(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _log_summary(summary: RunSummary) -> None:
    lines = [
        f"Run finished: {len(summary.results) - len(summary.failed)}/{len(summary.results)} (model, dataset) pairs ok"
    ]
    for r in summary.results:
        lines.append(
            f"  {'ok    ' if r.ok else 'FAILED'} {r.algo} {r.model_description!r} {r.dataset} -> {r.path}"
        )
    lines.append(f"Results directory: {summary.run_dir}")
    (logger.info if summary.ok else logger.error)("\n".join(lines))


# ---------------------------------------------------------------------------------------------- one pair
class _WandbRun:
    """The wandb logging VisionAD's train_algo does, or nothing when disabled."""

    def __init__(
        self, enabled: bool, run_description: str, args: Mapping[str, Any], dataset_key: str
    ) -> None:
        self.run = None
        if not enabled:
            return
        wandb = _import_wandb()
        description = run_description + "_" if run_description else ""
        name = f"{description}_{args['algo_class_name']}_{dataset_key}"
        config = json.loads(json.dumps({"dataset_key": dataset_key, **args}, default=_jsonable))
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
    from visionad_multicore.visionad.metrics import run_metrics

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
        num_workers=0,
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
    try:
        for epoch in tqdm(range(epochs), desc=f"{args['algo_class_name']} {dataset_key}", unit="epoch"):
            epoch_dir = out_dir / str(epoch)
            wandb_run.log({"epoch": epoch})
            start = time.perf_counter()
            algo.train_one_epoch()
            total_train_time += time.perf_counter() - start

            save_model = _every(args["save_model_every_n_epochs"], epoch)
            evaluate = _every(args["evaluate_n_epochs"], epoch) or epoch + 1 >= epochs
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
                epoch_best = max(flat.get(best_metric, {}).values(), default=-np.inf)
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
                        for method, value in item.items()
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
                logger.info("Epoch %d results written to %s", epoch, epoch_dir)
            if end_run:
                logger.info(
                    "Time limit reached after epoch %d (train time %.1f s): stopping", epoch, total_train_time
                )
                break
    finally:
        wandb_run.finish()


def _every(n: int | None, epoch: int) -> bool:
    return bool(n) and (epoch + 1) % int(n) == 0  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- VisionAD checkout
def check_visionad_checkout(root: Path) -> None:
    """Raise :class:`VisionADCheckoutError` naming the first file of :data:`VISIONAD_CHECKOUT_FILES` missing."""
    if not root.is_dir():
        raise VisionADCheckoutError(f"--visionad_root {root} is not a directory")
    for rel in VISIONAD_CHECKOUT_FILES:
        if not (root / rel).is_file():
            raise VisionADCheckoutError(
                f"--visionad_root {root} is not a VisionAD checkout: {rel} is missing "
                f"(expected {', '.join(VISIONAD_CHECKOUT_FILES)})"
            )


def _under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def visionad_checkout(root: Path) -> Iterator[SimpleNamespace]:
    """Import a VisionAD checkout's ``train_algo``, ``get_algo``, ``load_dataset`` and ``RESULTS_DIRECTORY``.

    While the context is open the checkout is first on ``sys.path`` and the working directory (VisionAD's
    modules use relative paths, and its ``run.py`` is run from there). On exit the working directory,
    ``sys.path`` and ``sys.modules`` are restored, so another checkout can be used afterwards.

    Raises:
        VisionADCheckoutError: a file is missing, a module fails to import (wandb missing is named), or
            the modules imported do not come from ``root``.
    """
    check_visionad_checkout(root)
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    shadowed = {n: m for n, m in sys.modules.items() if n.split(".")[0] in _VISIONAD_TOP_MODULES}
    for name in shadowed:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    os.chdir(root)
    importlib.invalidate_caches()  # the checkout may have been written moments ago
    try:
        modules = {}
        for name in ("data.configure_dataset", "algos.algo_class_list", "wrapper.wrapper"):
            try:
                modules[name] = importlib.import_module(name)
            except ModuleNotFoundError as err:
                hint = (
                    " (VisionAD's wrapper/wrapper.py imports wandb: pip install wandb)"
                    if err.name == "wandb"
                    else ""
                )
                raise VisionADCheckoutError(
                    f"importing {name} from the VisionAD checkout {root} failed: {err}{hint}"
                ) from err
            except Exception as err:
                raise VisionADCheckoutError(
                    f"importing {name} from the VisionAD checkout {root} failed: {type(err).__name__}: {err}"
                ) from err
            if not _under(getattr(modules[name], "__file__", None), root):
                raise VisionADCheckoutError(
                    f"module {name} was imported from {modules[name].__file__}, not from {root}"
                )
        needed = {
            "data.configure_dataset": ("load_dataset", "RESULTS_DIRECTORY"),
            "algos.algo_class_list": ("get_algo",),
            "wrapper.wrapper": ("train_algo",),
        }
        for name, attributes in needed.items():
            for attribute in attributes:
                if not hasattr(modules[name], attribute):
                    raise VisionADCheckoutError(
                        f"{root / (name.replace('.', '/') + '.py')} does not define {attribute}"
                    )
        yield SimpleNamespace(
            root=root,
            train_algo=modules["wrapper.wrapper"].train_algo,
            get_algo=modules["algos.algo_class_list"].get_algo,
            load_dataset=modules["data.configure_dataset"].load_dataset,
            results_directory=modules["data.configure_dataset"].RESULTS_DIRECTORY,
        )
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        # Everything under these names was imported from the checkout during the context (modules of the same
        # names imported before were set aside above and are put back).
        for name in [n for n in sys.modules if n.split(".")[0] in _VISIONAD_TOP_MODULES]:
            del sys.modules[name]
        sys.modules.update(shadowed)


def _run_through_visionad(
    config_path: Path,
    run_description: str,
    device: str | None,
    wandb: bool | None,
    data_root: Any,
    results_dir: Any,
    resolve_algorithm: AlgorithmResolver,
    root: Path,
    registry_path: Any,
    on_result: Callable[[PairResult], None] | None,
) -> RunSummary:
    """``run_config`` with a VisionAD checkout: the checkout's run.py argument preparation and train_algo."""
    if data_root or registry_path:
        logger.warning(
            "--data_root / --registry are ignored with --visionad_root: datasets come from the checkout's "
            "data/configure_dataset.py"
        )
    # Paths given relative to the caller's directory must survive the chdir into the checkout; a config
    # path that only exists relative to the checkout (configs/patchcore/patchcore_mvtec.py) is accepted too.
    if not config_path.is_absolute() and not config_path.exists() and (root / config_path).exists():
        config_path = root / config_path
    config_path = config_path.resolve()
    explicit_results = Path(results_dir).expanduser().resolve() if results_dir else None

    with visionad_checkout(root) as vad:
        config = load_config(config_path)
        for model in config.model_list:
            if model.get("image_interpolation") is not None:
                raise ConfigError(
                    f"config file {config_path}: 'image_interpolation' is ours, VisionAD's loaders do not know it; "
                    "remove it (or resize in identical_transforms) to run through --visionad_root"
                )
        classes = _resolve_classes(config, resolve_algorithm, fallback=vad.get_algo, device=device)
        _check_wandb(config, wandb)
        if explicit_results is not None:
            parent = explicit_results
        else:
            if not str(vad.results_directory):
                raise VisionADCheckoutError(
                    f"RESULTS_DIRECTORY is empty in {root / 'data/configure_dataset.py'}"
                )
            parent = (root / vad.results_directory).resolve()
        run_time = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
        run_dir = parent / run_dir_name(run_time, run_description)
        _write_run_config(
            run_dir, config, run_time, run_description, "visionad", device, wandb, None, None, root
        )
        logger.info("VisionAD checkout %s; results directory %s", root, run_dir)
        summary = RunSummary(run_dir)
        for index, model in enumerate(config.model_list):
            for dataset_key in _dataset_keys(model, config):
                pair = _pair_result(model, run_dir, dataset_key)
                logger.info(
                    "Running model %s %s, dataset %s (VisionAD)",
                    pair.algo,
                    pair.model_description,
                    dataset_key,
                )
                try:
                    dataset = vad.load_dataset(dataset_key)
                    args = prepare_model_arguments(model, dataset, device, wandb)
                    seed_everything(int(option(args, "seed")))
                    algo = classes[index](**args["model_params"])
                    vad.train_algo(
                        algo,
                        dataset_key,
                        config.metrics,
                        run_time=run_time,
                        model_dataset_path=str(pair.path),
                        run_description=run_description,
                        model_arguments=args,
                    )
                    _read_written_results(pair)
                except Exception:
                    pair.error = traceback.format_exc()
                    logger.error("Error on run %s, dataset %s:\n%s", pair.algo, dataset_key, pair.error)
                summary.results.append(pair)
                if on_result is not None:
                    on_result(pair)
    _log_summary(summary)
    return summary


def _read_written_results(pair: PairResult) -> None:
    """Fill ``pair`` from the ``<epoch>/data.json`` files VisionAD's train_algo wrote."""
    epochs = sorted(int(p.parent.name) for p in pair.path.glob("*/data.json") if p.parent.name.isdigit())
    pair.evaluated_epochs = epochs
    if epochs:
        data = json.loads((pair.path / str(epochs[-1]) / "data.json").read_text())
        pair.metrics = {k: dict(v) for k, v in data.get("metrics", {}).items() if isinstance(v, Mapping)}
