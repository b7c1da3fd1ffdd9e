"""VisionAD config files: loading, validation, and the model arguments VisionAD's ``run.py`` prepares.

A config file is a Python module defining ``dataset_list`` (dataset keys), ``metrics`` (``["all"]`` or metric
names) and ``model_list`` (dicts, keys in :data:`MODEL_KEYS`). :func:`load_config` imports it by path and
checks it; :func:`resolve_classes` checks the model dicts once the ``--device`` override is known and resolves
every algorithm before any work; :func:`prepare_model_arguments` resolves one model dict for one dataset.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchvision import transforms

from visionad_multicore.visionad.loaders import check_image_interpolation

logger = logging.getLogger(__name__)

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
    "num_workers": None,  # ours (VisionAD's loaders have none): data-loader worker processes, None = auto
    "pre_pro_transforms": None,  # set by the runner, as VisionAD's run.py does
    "image_interpolation": None,  # ours: resize filter of images (masks stay as identical_transforms)
}
MODEL_KEYS = (*REQUIRED_MODEL_KEYS, *OPTIONAL_MODEL_KEYS)

AlgorithmResolver = Callable[[str], type]


class ConfigError(ValueError):
    """A config file is missing, malformed, or names something that does not exist."""


@dataclass(frozen=True)
class RunRequest:
    """What a caller of ``run_config`` / ``check_config`` asked for (see ``runner.run_config``).

    Attributes:
        config_path: the config file (as given; resolved by the runner).
        run_description, device, wandb, data_root, registry_path, results_dir: as ``run_config``'s arguments.
        resume_dir: the run folder of an interrupted run to finish, else None.
        run_time: that run's start time (``data.json["time"]``), else None (a new run gets the current time).
        progress: progress bars while checking files.
    """

    config_path: Path
    run_description: str = ""
    device: str | None = None
    wandb: bool | None = None
    data_root: str | os.PathLike[str] | None = None
    registry_path: str | os.PathLike[str] | None = None
    results_dir: str | os.PathLike[str] | None = None
    resume_dir: Path | None = None
    run_time: str | None = None
    progress: bool = True


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
        check_model_keys(model, index, path, device_given=True)
    return RunConfig(path, list(dataset_list), list(metrics), list(model_list), path.read_text())


def check_model_keys(model: Any, index: int, path: Path, device_given: bool) -> None:
    """Raise :class:`ConfigError` naming the file and model if a required key is missing or a key unknown."""
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
    if model.get("num_workers") is not None:
        try:
            resolve_num_workers(model["num_workers"], None)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
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
    the dataset. ``epochs == 0`` stays 0: our loop then evaluates the untrained algorithm once (epoch folder
    ``0``) without calling ``train_one_epoch``; a VisionAD checkout's loop gets 1, as its ``run.py`` makes it.
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
    return args


def option(args: Mapping[str, Any], key: str) -> Any:
    """``args[key]``, or the default of the optional key ``key`` when the dict lacks it."""
    return args[key] if key in args else copy.deepcopy(OPTIONAL_MODEL_KEYS[key])


def resolve_num_workers(value: Any, device: str | None) -> int:
    """Data-loader worker processes for a model dict's ``num_workers`` (VisionAD's loaders use none).

    ``None`` (the default) chooses: 0 on a CPU device, where workers would compete with the model for the
    same cores; ``min(4, CPU cores - 1)`` on a GPU, where decoding images in parallel keeps the GPU busy.

    Raises:
        ConfigError: not None and not an integer >= 0.
    """
    if value is None:
        if device is None or str(device).startswith("cpu"):
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"num_workers must be an integer >= 0 or None (automatic), got {value!r}")
    return value


def dataset_keys(model: Mapping[str, Any], config: RunConfig) -> list[str]:
    """The model's ``dataset_list_override`` if it has one, else the config's ``dataset_list``."""
    override = model.get("dataset_list_override")
    if override is not None:
        logger.info("Model %s uses dataset_list_override: %s", model["algo_class_name"], list(override))
        return list(override)
    return list(config.dataset_list)


def resolve_classes(
    config: RunConfig, resolve: AlgorithmResolver, fallback: Callable[[str], type] | None, device: str | None
) -> list[type]:
    """Check the model dicts (now that the device override is known) and resolve every algorithm up front."""
    classes = []
    for index, model in enumerate(config.model_list):
        check_model_keys(model, index, config.path, device_given=bool(device))
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
