"""Submission export: one record per algorithm with provenance, per-dataset metrics and timings.

The schema is documented in ``docs/submission_schema.md`` (``schema: visionad_multicore.submission``,
``schema_version: 1``). JSON holds the nested form; CSV one row per (algorithm, dataset, method) with the
algorithm's provenance repeated on each row.

Provenance comes from our runner's ``run_config.json`` (in the run folder) when present: ``package_version``,
``config_sha256`` and the ``models`` entry of the algorithm (its ``seed``, ``model_params["preset"]``; the
config hash is computed from that entry), plus ``hardware`` if the runner recorded it. Results without it (a
VisionAD checkout's) get what ``data.json`` allows: seed and preset parsed from ``model_params``, a config
hash computed from ``data.json`` (see the schema doc) and no package version. Hardware not recorded by the
run is that of the machine running the export, marked ``"source": "export machine"``.
"""

from __future__ import annotations

import ast
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import math
import platform
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .leaderboard import Leaderboard
from .results import TIMING_KEYS, EpochResult, find_run_config

logger = logging.getLogger(__name__)

SCHEMA = "visionad_multicore.submission"
SCHEMA_VERSION = 1
# model_params keys that say where a run happened, not what was run: left out of the computed config hash
_NON_CONFIG_KEYS = ("device", "wandb")


def parse_model_params(epoch: EpochResult) -> dict[str, Any] | None:
    """VisionAD's ``model_params`` string (``algo name + str(dict)``) back to a dict, or None if not literal."""
    text = epoch.model_params
    if text.startswith(epoch.algorithm):
        text = text[len(epoch.algorithm) :]
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def config_hash_from_data(epoch: EpochResult) -> str:
    """``sha256:<hex>`` of the canonical JSON of what ``data.json`` says was run.

    Hashed: ``{"algorithm", "model_params" (parsed, minus device / wandb; the raw string when not a Python
    literal), "training_transforms", "batch_size"}`` with sorted keys.
    """
    params: Any = parse_model_params(epoch)
    if params is None:
        params = epoch.model_params
    else:
        params = {k: v for k, v in params.items() if k not in _NON_CONFIG_KEYS}
    doc = {
        "algorithm": epoch.algorithm,
        "model_params": params,
        "training_transforms": epoch.data.get("training_transforms"),
        "batch_size": epoch.data.get("batch_size"),
    }
    return _hash_json(doc)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_hardware() -> dict[str, Any]:
    """CPU model, GPU name (or None), torch / Python versions and platform of this machine."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "gpu": None,
        "torch": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _read_run_config(epoch: EpochResult) -> dict[str, Any]:
    path = find_run_config(epoch)
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable run_config.json (%s); provenance taken from data.json", path, exc)
        return {}
    return {"_path": str(path), **doc} if isinstance(doc, dict) else {}


def _model_entry(run_config: dict[str, Any], epoch: EpochResult) -> dict[str, Any] | None:
    """The ``models`` entry of our runner's ``run_config.json`` that produced ``epoch``, if any."""
    for model in run_config.get("models") or []:
        if not isinstance(model, dict):
            continue
        same_algo = str(model.get("algo_class_name", "")).lower() == epoch.algorithm.lower()
        same_desc = str(model.get("model_description") or "") == epoch.model_description
        datasets = model.get("datasets")
        if same_algo and same_desc and (not datasets or epoch.dataset in datasets):
            return model
    return None


def _hash_json(doc: Any) -> str:
    payload = json.dumps(doc, sort_keys=True, default=repr, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _provenance(epoch: EpochResult, hardware_here: dict[str, Any]) -> dict[str, Any]:
    """Preset, versions, config hash, seed and hardware of the run that produced ``epoch``."""
    run_config = _read_run_config(epoch)
    entry = _model_entry(run_config, epoch) or {}
    raw_params = entry.get("model_params")
    entry_params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    params = parse_model_params(epoch) or {}
    seed = next(
        (v for v in (entry.get("seed"), entry_params.get("seed"), params.get("seed")) if v is not None), None
    )
    if seed is None:
        match = re.search(r"['\"]seed['\"]\s*:\s*(-?\d+)", epoch.model_params)
        seed = int(match.group(1)) if match else None
    hardware = run_config.get("hardware")
    if isinstance(hardware, dict):
        hardware = {**hardware, "source": "run_config.json"}
    else:
        hardware = {**hardware_here, "source": "export machine"}
    if entry:
        config = {k: v for k, v in entry.items() if k not in (*_NON_CONFIG_KEYS, "datasets")}
        config_hash, hash_source = _hash_json(config), "run_config.json"
    else:
        config_hash, hash_source = config_hash_from_data(epoch), "data.json"
    preset = entry_params.get("preset", params.get("preset"))
    return {
        "preset": preset if preset is None or isinstance(preset, str) else json.dumps(preset, sort_keys=True),
        "package_version": run_config.get("package_version"),
        "config_hash": config_hash,
        "config_hash_source": hash_source,
        "config_file_sha256": run_config.get("config_sha256"),
        "seed": seed,
        "hardware": hardware,
        "run_config": run_config.get("_path"),
    }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def build_submission(
    board: Leaderboard, epochs: Sequence[EpochResult], hardware: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The submission document for the rows of ``board``.

    Args:
        board: a leaderboard (its selected rows are exported; published rows never are).
        epochs: the scanned epochs the board was built from (for timings and provenance).
        hardware: this machine's hardware (default :func:`machine_hardware`), used when a run did not record
            its own.

    Returns:
        A JSON-ready dict in the ``visionad_multicore.submission`` v1 schema.
    """
    by_dir = {str(e.epoch_dir): e for e in epochs}
    hardware_here = machine_hardware() if hardware is None else hardware
    grouped: dict[str, list[tuple[Any, EpochResult]]] = defaultdict(list)
    for row in board.rows:
        grouped[row.algorithm].append((row, by_dir[row.source]))
    submissions = []
    for label, items in sorted(grouped.items()):
        first = items[0][1]
        results = []
        for row, epoch in sorted(items, key=lambda x: (x[0].dataset, x[0].method)):
            results.append(
                {
                    "dataset": row.dataset,
                    "method": row.method,
                    "epoch": row.epoch,
                    "metrics": dict(row.metrics),
                    **{k: epoch.timings.get(k) for k in TIMING_KEYS},
                    "batch_size": epoch.data.get("batch_size"),
                    "results_dir": str(epoch.epoch_dir),
                }
            )
        submissions.append(
            {
                "algorithm": first.algorithm,
                "label": label,
                "model_description": first.model_description,
                "model_long_description": first.data.get("model_long_description", ""),
                **_provenance(first, hardware_here),
                "run_time": first.run_time,
                "datasets": sorted({r["dataset"] for r in results}),
                "methods": sorted({r["method"] for r in results}),
                "results": results,
            }
        )
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "exported_with": {"package": "visionad_multicore", "version": __version__},
        "epoch_selection": {"mode": board.epoch_mode, "best_metric": board.best_metric},
        "metrics": list(board.metrics),
        "submissions": submissions,
    }
    return _clean(doc)


CSV_COLUMNS = [
    "algorithm",
    "label",
    "model_description",
    "preset",
    "package_version",
    "config_hash",
    "seed",
    "hardware_cpu",
    "hardware_gpu",
    "hardware_torch",
    "hardware_source",
    "dataset",
    "method",
    "epoch",
]


def submission_to_json(doc: dict[str, Any]) -> str:
    """The submission as indented JSON text."""
    return json.dumps(doc, indent=2) + "\n"


def submission_to_csv(doc: dict[str, Any]) -> str:
    """The submission flattened to CSV: one row per (algorithm, dataset, method).

    Columns: :data:`CSV_COLUMNS`, then one per metric of ``doc["metrics"]``, then the four timings,
    ``batch_size``, ``schema_version``.
    """
    metrics = list(doc["metrics"])
    header = [*CSV_COLUMNS, *metrics, *TIMING_KEYS, "batch_size", "schema_version"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for sub in doc["submissions"]:
        hw = sub.get("hardware") or {}
        for r in sub["results"]:
            writer.writerow(
                [
                    sub["algorithm"],
                    sub["label"],
                    sub["model_description"],
                    sub.get("preset") or "",
                    sub.get("package_version") or "",
                    sub["config_hash"],
                    "" if sub.get("seed") is None else sub["seed"],
                    hw.get("cpu") or "",
                    hw.get("gpu") or "",
                    hw.get("torch") or "",
                    hw.get("source") or "",
                    r["dataset"],
                    r["method"],
                    r["epoch"],
                    *("" if r["metrics"].get(m) is None else repr(r["metrics"][m]) for m in metrics),
                    *("" if r.get(k) is None else repr(r[k]) for k in TIMING_KEYS),
                    "" if r.get("batch_size") is None else r["batch_size"],
                    doc["schema_version"],
                ]
            )
    return buf.getvalue()
