"""Running a config through a user's VisionAD checkout: importing its modules, then its own loop.

:func:`visionad_checkout` imports the checkout's ``train_algo``, ``get_algo``, ``load_dataset`` and
``RESULTS_DIRECTORY`` with the checkout on ``sys.path`` and as working directory, and restores both (and
``sys.modules``) on exit. :func:`run_through_visionad` is ``run_config`` with ``visionad_root``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from visionad_multicore.visionad.config import (
    AlgorithmResolver,
    ConfigError,
    dataset_keys,
    load_config,
    option,
    prepare_model_arguments,
    resolve_classes,
)
from visionad_multicore.visionad.loop import check_wandb, seed_everything
from visionad_multicore.visionad.run_files import (
    PairResult,
    RunSummary,
    log_summary,
    pair_result,
    read_written_results,
    run_dir_name,
    write_run_config,
)

logger = logging.getLogger(__name__)

# Files a VisionAD checkout must have for visionad_root runs.
VISIONAD_CHECKOUT_FILES = (
    "algos/model_wrapper.py",
    "algos/algo_class_list.py",
    "wrapper/wrapper.py",
    "data/configure_dataset.py",
    "data/load_image_data.py",
)
_VISIONAD_TOP_MODULES = ("algos", "data", "wrapper", "configs")


class VisionADCheckoutError(RuntimeError):
    """``visionad_root`` is not a usable VisionAD checkout."""


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


def run_through_visionad(
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
                    f"config file {config_path}: 'image_interpolation' is ours, VisionAD's loaders do not know "
                    "it; remove it (or resize in identical_transforms) to run through --visionad_root"
                )
        classes = resolve_classes(config, resolve_algorithm, fallback=vad.get_algo, device=device)
        check_wandb(config, wandb)
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
        write_run_config(
            run_dir, config, run_time, run_description, "visionad", device, wandb, None, None, root
        )
        logger.info("VisionAD checkout %s; results directory %s", root, run_dir)
        summary = RunSummary(run_dir)
        for index, model in enumerate(config.model_list):
            for dataset_key in dataset_keys(model, config):
                pair = pair_result(model, run_dir, dataset_key)
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
                    read_written_results(pair)
                except Exception:
                    pair.error = traceback.format_exc()
                    logger.error("Error on run %s, dataset %s:\n%s", pair.algo, dataset_key, pair.error)
                summary.results.append(pair)
                if on_result is not None:
                    on_result(pair)
    log_summary(summary)
    return summary
