"""Running a config through a user's VisionAD checkout: importing its modules, then its own loop.

:func:`visionad_checkout` imports the checkout's ``train_algo``, ``get_algo``, ``load_dataset`` and
``RESULTS_DIRECTORY`` with the checkout on ``sys.path`` and as working directory, and restores both (and
``sys.modules``) on exit. :func:`run_through_visionad` is ``run_config`` with ``visionad_root`` (the same
checks before work and the same pair loop, resume included; the checkout's ``train_algo`` runs each pair),
:func:`check_through_visionad` is ``check_config`` with it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from visionad_multicore.visionad.config import (
    AlgorithmResolver,
    ConfigError,
    RunConfig,
    RunRequest,
    load_config,
    option,
    resolve_classes,
)
from visionad_multicore.visionad.loop import check_wandb
from visionad_multicore.visionad.pairs import open_run, run_pairs
from visionad_multicore.visionad.preflight import CheckReport, check_run
from visionad_multicore.visionad.run_files import (
    PairResult,
    RunSummary,
    read_written_results,
    write_marker,
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


@dataclass
class _VisionADBackend:
    """Pairs run by the checkout's own ``train_algo`` (its loaders, metrics and files)."""

    vad: SimpleNamespace
    metrics: list[str]
    run_time: str
    run_description: str
    label: str = " (VisionAD)"

    def load_dataset(self, key: str) -> Mapping[str, Any]:
        return self.vad.load_dataset(key)

    def run_pair(
        self, algo: Any, pair: PairResult, dataset: Mapping[str, Any], args: Mapping[str, Any]
    ) -> None:
        if option(args, "num_workers") is not None:
            logger.info(
                "num_workers is not used by a VisionAD checkout's loaders (they decode in one process)"
            )
        self.vad.train_algo(
            algo,
            pair.dataset,
            self.metrics,
            run_time=self.run_time,
            model_dataset_path=str(pair.path),
            run_description=self.run_description,
            model_arguments={**args, "epochs": max(1, int(args["epochs"]))},  # run.py turns 0 into 1
        )
        read_written_results(pair)
        for epoch_dir in sorted(p for p in pair.path.iterdir() if p.is_dir() and p.name.isdigit()):
            write_marker(
                epoch_dir
            )  # VisionAD's loop writes none; the epoch is complete once train_algo returns


def _prepare(
    vad: SimpleNamespace, request: RunRequest, resolve_algorithm: AlgorithmResolver, root: Path
) -> tuple[RunConfig, list[type], Path, CheckReport]:
    """Inside the checkout: load and check the config, resolve the algorithms, run the checks before work."""
    config = load_config(request.config_path)  # already resolved before the chdir into the checkout
    for model in config.model_list:
        if model.get("image_interpolation") is not None:
            raise ConfigError(
                f"config file {request.config_path}: 'image_interpolation' is ours, VisionAD's loaders do not "
                "know it; remove it (or resize in identical_transforms) to run through --visionad_root"
            )
    classes = resolve_classes(config, resolve_algorithm, fallback=vad.get_algo, device=request.device)
    check_wandb(config, request.wandb)
    if request.resume_dir is not None:
        parent = request.resume_dir.parent
    elif request.results_dir:
        parent = Path(request.results_dir).expanduser().resolve()
    else:
        if not str(vad.results_directory):
            raise VisionADCheckoutError(f"RESULTS_DIRECTORY is empty in {root / 'data/configure_dataset.py'}")
        parent = (root / vad.results_directory).resolve()
    report = check_run(
        config, request.device, vad.load_dataset, parent, strict_listing=True, progress=request.progress
    )
    return config, classes, parent, report


def _config_path(config_path: Path, root: Path) -> Path:
    """The config file: as given (relative to the caller's folder), else relative to the checkout."""
    # Paths given relative to the caller's directory must survive the chdir into the checkout; a config
    # path that only exists relative to the checkout (configs/patchcore/patchcore_mvtec.py) is accepted too.
    if not config_path.is_absolute() and not config_path.exists() and (root / config_path).exists():
        return (root / config_path).resolve()
    return config_path.resolve()


def _ignored_options(request: RunRequest) -> None:
    if request.data_root or request.registry_path:
        logger.warning(
            "--data_root / --registry are ignored with --visionad_root: datasets come from the checkout's "
            "data/configure_dataset.py"
        )


def check_through_visionad(
    request: RunRequest, resolve_algorithm: AlgorithmResolver, root: Path
) -> CheckReport:
    """``check_config`` with a VisionAD checkout: its dataset registry, our checks (nothing is run)."""
    _ignored_options(request)
    request = replace(request, config_path=_config_path(Path(request.config_path).expanduser(), root))
    with visionad_checkout(root) as vad:
        return _prepare(vad, request, resolve_algorithm, root)[3]


def run_through_visionad(
    request: RunRequest,
    resolve_algorithm: AlgorithmResolver,
    root: Path,
    on_result: Callable[[PairResult], None] | None = None,
) -> RunSummary:
    """``run_config`` with a VisionAD checkout: the checkout's run.py argument preparation and train_algo.

    Raises:
        PreflightError: the checks before any work found errors (nothing was run).
    """
    _ignored_options(request)
    request = replace(request, config_path=_config_path(Path(request.config_path).expanduser(), root))
    with visionad_checkout(root) as vad:
        config, classes, parent, report = _prepare(vad, request, resolve_algorithm, root)
        run_time, run_dir = open_run(config, request, parent, report, "visionad", root)
        logger.info("VisionAD checkout %s", root)
        backend = _VisionADBackend(vad, list(config.metrics), run_time, request.run_description)
        return run_pairs(
            config, classes, backend, run_dir, request.device, request.wandb, request.resume_dir is not None,
            on_result,
        )  # fmt: skip
