"""Read VisionAD-layout results directories into typed records.

VisionAD (and our runner) write one folder per evaluated epoch::

    RESULTS_DIR/<run time>_<run description>/<algo>_<model description>/<dataset>/<epoch>/
        data.json      timings, descriptions, model params and metrics {metric: {method: value}}
        metrics.pk     pickle {metric: {"metric_results": {method: value}, ...}}
        heatmaps.pk    optional pickle (heatmap_set, image_score_set, targets_set, paths_set)
        description.json  optional, beside heatmaps.pk: the dataset dict and descriptions
    .../<dataset>/best.pk  heatmaps of the best epoch (VisionAD's ``save_best_preds``)

:func:`scan_results` accepts any folder of such a tree (the results root, one run, one algorithm or one
dataset folder) and returns every readable epoch folder; malformed ones are skipped with a warning that
names the file and what was wrong.

Unfinished folders: our runner writes ``complete.json`` last into every epoch folder and every
``<dataset>`` folder, and records ``"format": 2`` in ``run_config.json``. In such a run an epoch folder or a
dataset folder without its marker was interrupted (or its pair failed) and is skipped with a warning unless
``include_unfinished`` is set. Folders of VisionAD's own runs and of older runs carry no markers and are read.

Metric values that are strings are our runner's reasons for a missing number: ``"failed: ..."`` (named in a
warning) and ``"not computable: ..."`` (image-level-only datasets; skipped silently).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionad_multicore.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from visionad_multicore.constants import MARKER_FILE, RUN_CONFIG_FILE

logger = logging.getLogger(__name__)

# VisionAD metric names in the order tables show them, with their short column titles
METRIC_TITLES: dict[str, str] = {
    "Imagewise_AUC": "I-AUC",
    "Pixelwise_AUC": "P-AUC",
    "Pixelwise_AUPRO": "AUPRO",
    "PL": "PL",
    "Pixelwise_AUC_anom_only": "P-AUC (anom only)",
}
DEFAULT_METRICS: tuple[str, ...] = ("Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL")
TIMING_KEYS: tuple[str, ...] = (
    "train_time",
    "train_time_per_image",
    "inference_time",
    "inference_time_per_image",
)


@dataclass(frozen=True)
class EpochResult:
    """One evaluated epoch of one (algorithm run, dataset): the contents of an epoch folder.

    Attributes:
        epoch_dir: the ``<epoch>`` folder.
        algorithm: VisionAD ``algo_class_name`` (``data.json["model"]``).
        model_description: ``model_description`` of the config entry ("" when none).
        dataset: dataset key.
        epoch: epoch index (0-based, as VisionAD writes it).
        run_time: the run's start time string (``%Y_%m_%d_%H_%M_%S``), "" when unknown.
        metrics: ``{metric: {method: value}}``; values are floats (NaN allowed).
        timings: the subset of ``train_time``, ``train_time_per_image``, ``inference_time``,
            ``inference_time_per_image`` that the file holds, in seconds.
        model_params: VisionAD's ``model_params`` string (algo name + ``str(params)``).
        data: the raw ``data.json`` dict.
    """

    epoch_dir: Path
    algorithm: str
    model_description: str
    dataset: str
    epoch: int
    run_time: str
    metrics: dict[str, dict[str, float]]
    timings: dict[str, float]
    model_params: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        """Row label of the algorithm: ``algo`` or ``algo_<model description>`` (VisionAD's folder name)."""
        return f"{self.algorithm}_{self.model_description}" if self.model_description else self.algorithm

    @property
    def dataset_dir(self) -> Path:
        """The ``<dataset>`` folder holding the epoch folders (and ``best.pk``)."""
        return self.epoch_dir.parent

    @property
    def heatmaps_path(self) -> Path | None:
        """``heatmaps.pk`` of this epoch, or None when it was not saved."""
        path = self.epoch_dir / "heatmaps.pk"
        return path if path.is_file() else None

    @property
    def methods(self) -> list[str]:
        """Every method name that has at least one metric value, sorted."""
        return sorted({m for values in self.metrics.values() for m in values})


@dataclass
class ScanReport:
    """What :func:`scan_results` found: the readable epochs and one message per skipped entry."""

    epochs: list[EpochResult]
    warnings: list[str]


def _warn(warnings: list[str], message: str) -> None:
    logger.warning(message)
    warnings.append(message)


def _as_float(value: Any) -> float | None:
    """A metric value as float (numpy scalars, 0-d arrays and None -> NaN accepted); None if not numeric."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _clean_metrics(raw: Any, source: Path, warnings: list[str]) -> dict[str, dict[str, float]] | None:
    """Normalise ``{metric: {method: v}}`` or ``{metric: {"metric_results": {method: v}}}`` to floats."""
    if not isinstance(raw, Mapping):
        _warn(
            warnings,
            f"{source}: 'metrics' must be a dict {{metric: {{method: value}}}}, got {type(raw).__name__}",
        )
        return None
    out: dict[str, dict[str, float]] = {}
    for metric, per_method in raw.items():
        if isinstance(per_method, Mapping) and "metric_results" in per_method:
            per_method = per_method["metric_results"]
        if not isinstance(per_method, Mapping):
            _warn(warnings, f"{source}: metric {metric!r} is not a dict of method -> value; metric ignored")
            continue
        values: dict[str, float] = {}
        for method, value in per_method.items():
            if isinstance(value, str) and value.startswith(("failed", "not computable")):
                if value.startswith("failed"):
                    _warn(warnings, f"{source}: {metric}/{method} {value}")
                continue
            number = _as_float(value)
            if number is None:
                _warn(warnings, f"{source}: {metric}/{method} value {value!r} is not a number; ignored")
                continue
            values[str(method)] = number
        out[str(metric)] = values
    return out


def _load_metrics_pk(path: Path, warnings: list[str]) -> dict[str, dict[str, float]] | None:
    try:
        with path.open("rb") as f:
            raw = pickle.load(f)  # noqa: S301  (results written by VisionAD / our runner, read by their owner)
    except Exception as exc:  # a truncated or foreign pickle can raise almost anything
        _warn(warnings, f"{path}: unreadable metrics pickle ({type(exc).__name__}: {exc}); entry skipped")
        return None
    return _clean_metrics(raw, path, warnings)


def _model_description(data: dict[str, Any], epoch_dir: Path, algorithm: str) -> str:
    """``data.json``'s model_description, else the tail of VisionAD's ``<algo>_<description>`` folder name."""
    if "model_description" in data:
        return str(data["model_description"] or "")
    folder = epoch_dir.parent.parent.name
    return folder[len(algorithm) + 1 :] if folder.lower().startswith(algorithm.lower() + "_") else ""


def read_epoch_dir(epoch_dir: Path, warnings: list[str]) -> EpochResult | None:
    """Read one ``<epoch>`` folder; return None (after a warning naming the file) when it is malformed.

    ``data.json`` is required (it carries timings and names); its metrics are used, or ``metrics.pk``'s when
    ``data.json`` has none. The dataset and epoch fall back to the folder names when missing from the file.
    """
    data_path = epoch_dir / "data.json"
    if not data_path.is_file():
        _warn(warnings, f"{epoch_dir}: no data.json beside metrics.pk; entry skipped")
        return None
    try:
        data = json.loads(data_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _warn(warnings, f"{data_path}: not valid JSON ({exc}); entry skipped")
        return None
    if not isinstance(data, dict):
        _warn(warnings, f"{data_path}: expected a JSON object, got {type(data).__name__}; entry skipped")
        return None
    algorithm = data.get("model")
    if not isinstance(algorithm, str) or not algorithm:
        _warn(warnings, f"{data_path}: missing key 'model' (the algo_class_name); entry skipped")
        return None

    metrics: dict[str, dict[str, float]] | None = None
    if "metrics" in data and data["metrics"]:
        metrics = _clean_metrics(data["metrics"], data_path, warnings)
    elif (epoch_dir / "metrics.pk").is_file():
        metrics = _load_metrics_pk(epoch_dir / "metrics.pk", warnings)
    else:
        _warn(warnings, f"{data_path}: no 'metrics' and no metrics.pk beside it; entry skipped")
    if not metrics:
        return None

    try:
        epoch = int(data.get("epoch", epoch_dir.name))
    except (TypeError, ValueError):
        _warn(warnings, f"{data_path}: 'epoch' {data.get('epoch')!r} is not an integer; entry skipped")
        return None
    timings: dict[str, float] = {}
    for key in TIMING_KEYS:
        number = _as_float(data.get(key)) if key in data else None
        if number is not None:
            timings[key] = number
    return EpochResult(
        epoch_dir=epoch_dir,
        algorithm=algorithm,
        model_description=_model_description(data, epoch_dir, algorithm),
        dataset=str(data.get("dataset") or epoch_dir.parent.name),
        epoch=epoch,
        run_time=str(data.get("time") or ""),
        metrics=metrics,
        timings=timings,
        model_params=str(data.get("model_params") or ""),
        data=data,
    )


def _marked_run(dataset_dir: Path, cache: dict[Path, bool]) -> bool:
    """True when the run holding ``dataset_dir`` writes completion markers (``run_config.json`` format >= 2)."""
    run_dir = dataset_dir.parent.parent
    if run_dir not in cache:
        marked = False
        path = run_dir / RUN_CONFIG_FILE
        if path.is_file():
            try:
                marked = int(json.loads(path.read_text()).get("format", 1)) >= 2
            except (OSError, ValueError, TypeError, AttributeError):
                marked = False
        cache[run_dir] = marked
    return cache[run_dir]


def scan_results(roots: Iterable[str | os.PathLike[str]], include_unfinished: bool = False) -> ScanReport:
    """Find and read every epoch folder under ``roots``.

    An epoch folder is any folder holding ``data.json`` or ``metrics.pk``. Folders that hold neither are
    ignored silently; ones that are malformed are skipped with a warning naming the file; unfinished ones
    (see the module docstring) are skipped with a warning unless ``include_unfinished``.

    Args:
        roots: results directories (a results root, a run folder, an algorithm folder or a dataset folder).
        include_unfinished: also read epoch folders of our runs that lack their completion markers.

    Returns:
        :class:`ScanReport` with the epochs sorted by (label, dataset, run time, epoch) and the warnings.

    Raises:
        FileNotFoundError: a root does not exist.
    """
    warnings: list[str] = []
    epochs: list[EpochResult] = []
    marked_runs: dict[Path, bool] = {}
    reported: set[Path] = set()
    for root in roots:
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"results directory {root_path} does not exist or is not a folder")
        candidates = {p.parent for name in ("data.json", "metrics.pk") for p in root_path.rglob(name)}
        for epoch_dir in sorted(candidates):
            dataset_dir = epoch_dir.parent
            unfinished = _marked_run(dataset_dir, marked_runs) and not (
                (dataset_dir / MARKER_FILE).is_file() and (epoch_dir / MARKER_FILE).is_file()
            )
            if unfinished and not include_unfinished:
                if dataset_dir not in reported:
                    reported.add(dataset_dir)
                    _warn(
                        warnings,
                        f"{dataset_dir}: unfinished (no {MARKER_FILE}: the run was interrupted or the pair "
                        "failed); ignored (--include-unfinished to show it)",
                    )
                continue
            result = read_epoch_dir(epoch_dir, warnings)
            if result is not None:
                epochs.append(result)
    epochs.sort(key=lambda e: (e.label, e.dataset, e.run_time, str(e.dataset_dir), e.epoch))
    return ScanReport(epochs=epochs, warnings=warnings)


def find_run_config(epoch: EpochResult) -> Path | None:
    """The nearest ``run_config.json`` written by our runner: dataset, algorithm or run folder, else None."""
    for folder in (epoch.dataset_dir, epoch.dataset_dir.parent, epoch.dataset_dir.parent.parent):
        path = folder / "run_config.json"
        if path.is_file():
            return path
    return None


__all__ = ["atomic_savefig", "atomic_write_bytes", "atomic_write_text"]  # re-exported for reporting


def atomic_savefig(figure: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file, then ``os.replace``)."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    return Path(path)
