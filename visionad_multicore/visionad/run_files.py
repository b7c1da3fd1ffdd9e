"""The files a run writes and the records of what it did: run folder, provenance, markers, atomic writers.

Every file is written atomically through :mod:`visionad_multicore.atomic` (a temporary sibling, then
``os.replace``), so a reader never sees half a file. Completion markers (:data:`MARKER_FILE`) are written
last: one in each epoch folder once everything of that epoch is written, one in each ``<dataset>`` folder once
the (model, dataset) pair has finished. A folder without its marker is unfinished: ``run --resume`` redoes
it and the leaderboard ignores it. A pair that failed gets its traceback in :data:`ERROR_FILE`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionad_multicore.atomic import atomic_path
from visionad_multicore.constants import ERROR_FILE, MARKER_FILE, RUN_CONFIG_FILE
from visionad_multicore.visionad.config import MODEL_KEYS, OPTIONAL_MODEL_KEYS, RunConfig, dataset_keys

logger = logging.getLogger(__name__)

RESULTS_DIR_ENV = "VISIONAD_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "results"
RUN_CONFIG_SOURCE_FILE = "run_config_source.py"
RUN_FORMAT = 2  # run_config.json "format": 2 = completion markers are written (runs that can be resumed)


@dataclass
class PairResult:
    """Outcome of one (model, dataset) run.

    Attributes:
        algo: ``algo_class_name`` as written in the config.
        model_description: the model's description.
        dataset: dataset key.
        path: ``<run dir>/<algo>_<model description>/<dataset>``.
        evaluated_epochs: epochs whose results were written.
        metrics: ``{metric: {method: value}}`` of the last evaluated epoch (empty if none); a value is a
            string for a method that could not be scored (``"failed: ..."``, ``"not computable: ..."``).
        error: the formatted traceback if the run failed, else None (also written to ``path / ERROR_FILE``).
        metric_failures: ``"<metric>/<method>: failed: ..."`` for every failed metric of any evaluated epoch.
        resumed: the pair had finished in an earlier, interrupted run and was not run again.
    """

    algo: str
    model_description: str
    dataset: str
    path: Path
    evaluated_epochs: list[int] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    metric_failures: list[str] = field(default_factory=list)
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """No traceback and no failed metric."""
        return self.error is None and not self.metric_failures


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
        return {(r.algo, r.model_description, r.dataset): r.path for r in self.results if r.error is None}


def jsonable(value: Any) -> Any:
    """``json.dump``'s ``default``: numpy / one-element tensor scalars -> numbers, paths -> str, else repr."""
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
    _write_atomic(path, lambda f: json.dump(obj, f, indent=1, default=jsonable), binary=False)


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


def pair_result(model: Mapping[str, Any], run_dir: Path, dataset_key: str) -> PairResult:
    """An empty :class:`PairResult` for ``model`` on ``dataset_key``, its folder named as VisionAD names it."""
    description = model.get("model_description", "")
    return PairResult(
        algo=model["algo_class_name"],
        model_description=description,
        dataset=dataset_key,
        path=run_dir / f"{model['algo_class_name']}_{description}" / dataset_key,
    )


def write_run_config(
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
        resolved["datasets"] = dataset_keys(model, config)
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
            "format": RUN_FORMAT,
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


def log_summary(summary: RunSummary) -> None:
    """Log one line per pair (ok / FAILED) and the run folder; at ERROR level when a pair failed."""
    lines = [
        f"Run finished: {len(summary.results) - len(summary.failed)}/{len(summary.results)} (model, dataset) pairs ok"
    ]
    for r in summary.results:
        status = "ok    " if r.ok else "FAILED"
        note = " (finished in an earlier run)" if r.resumed else ""
        lines.append(f"  {status} {r.algo} {r.model_description!r} {r.dataset} -> {r.path}{note}")
        lines += [f"         {failure}" for failure in r.metric_failures]
        if r.error is not None:
            lines.append(f"         traceback in {r.path / ERROR_FILE}")
    lines.append(f"Results directory: {summary.run_dir}")
    (logger.info if summary.ok else logger.error)("\n".join(lines))


def read_written_results(pair: PairResult) -> None:
    """Fill ``pair`` from the ``<epoch>/data.json`` files written for it (by our loop or VisionAD's)."""
    from visionad_multicore.visionad.metrics import metric_failures

    epochs = sorted(int(p.parent.name) for p in pair.path.glob("*/data.json") if p.parent.name.isdigit())
    pair.evaluated_epochs = epochs
    pair.metric_failures = []
    for epoch in epochs:
        data = json.loads((pair.path / str(epoch) / "data.json").read_text())
        metrics = {k: dict(v) for k, v in data.get("metrics", {}).items() if isinstance(v, Mapping)}
        pair.metric_failures += [f"epoch {epoch}: {failure}" for failure in metric_failures(metrics)]
        pair.metrics = metrics


def write_marker(folder: Path, **extra: Any) -> None:
    """Mark ``folder`` complete: :data:`MARKER_FILE` (written last, atomically) lists the files it holds."""
    files = sorted(p.name for p in folder.iterdir() if p.name != MARKER_FILE and not p.name.startswith("."))
    write_json_atomic(
        folder / MARKER_FILE,
        {"finished": datetime.now().isoformat(timespec="seconds"), "files": files, **extra},
    )


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds its completion marker."""
    return (folder / MARKER_FILE).is_file()


def write_error(pair: PairResult) -> None:
    """Write the pair's traceback to ``pair.path / ERROR_FILE`` (best effort: the folder may be unwritable)."""
    if pair.error is None:
        return
    try:
        _write_atomic(pair.path / ERROR_FILE, lambda f: f.write(pair.error), binary=False)
    except OSError as err:
        logger.error("could not write %s: %s", pair.path / ERROR_FILE, err)


@dataclass(frozen=True)
class RecordedRun:
    """What ``run_config.json`` of an earlier run says, to resume it with the same settings."""

    run_dir: Path
    config_path: Path
    run_time: str
    run_description: str
    device: str | None
    wandb: bool | None
    data_root: str | None
    registry_path: str | None
    visionad_root: str | None


def read_recorded_run(run_dir: str | os.PathLike[str]) -> RecordedRun:
    """Read an earlier run's settings; the config is its file if unchanged, else the copy saved in the run.

    Raises:
        FileNotFoundError: ``run_dir`` or its ``run_config.json`` is missing.
        ValueError: the file is unreadable, or was written without completion markers (cannot be resumed).
    """
    folder = Path(run_dir).expanduser().resolve()
    path = folder / RUN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume {folder}: no {RUN_CONFIG_FILE} there; expected a run folder of ours"
        )
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--resume {folder}: {path} is unreadable ({err})") from err
    if recorded.get("format", 1) < RUN_FORMAT:
        raise ValueError(
            f"--resume {folder}: this run was written by an older version without completion markers, so "
            "finished pairs cannot be told from unfinished ones; start a new run"
        )
    original = Path(recorded["config_file"])
    source = folder / RUN_CONFIG_SOURCE_FILE
    same = (  # hashed as write_run_config hashes it: the text, newlines normalised
        original.is_file()
        and hashlib.sha256(original.read_text().encode()).hexdigest() == recorded["config_sha256"]
    )
    if not same:
        if not source.is_file():
            raise FileNotFoundError(
                f"--resume {folder}: {original} changed or is gone and {source} is missing"
            )
        logger.warning(
            "%s changed or is gone since the run started: resuming with the copy %s", original, source
        )
    return RecordedRun(
        run_dir=folder,
        config_path=original if same else source,
        run_time=str(recorded["run_time"]),
        run_description=str(recorded.get("run_description", "")),
        device=recorded.get("device"),
        wandb=recorded.get("wandb"),
        data_root=recorded.get("data_root"),
        registry_path=recorded.get("registry_path"),
        visionad_root=recorded.get("visionad_root"),
    )
