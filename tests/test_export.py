"""Submission export: schema fields, provenance from run_config.json or data.json, JSON and CSV forms."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.test_leaderboard import _m, _merge, write_epoch
from visionad_multicore import __version__
from visionad_multicore.reporting import leaderboard as lb
from visionad_multicore.reporting.export import (
    CSV_COLUMNS,
    SCHEMA,
    build_submission,
    config_hash_from_data,
    machine_hardware,
    submission_to_csv,
    submission_to_json,
)
from visionad_multicore.reporting.results import scan_results

HW = {"cpu": "Test CPU", "gpu": None, "torch": "9.9", "python": "3.x", "platform": "test"}
RUN = "2026_03_04_05_06_07_sub"


def _results(root: Path) -> Path:
    params = "multicore" + str({"preset": "mc2", "seed": 7, "device": "cpu", "wandb": False})
    for dataset in ("ds1", "ds2"):
        for epoch in (0, 1):
            write_epoch(
                root, RUN, "multicore", "MC2", dataset, epoch,
                _merge(_m(0.9, 0.95, 0.8, 0.5 + epoch / 10, "multicore"), _m(0.8, 0.9, 0.7, 0.4, "ensemble_mean")),
                train_per_image=1.5, infer_per_image=0.2, model_params=params,
            )  # fmt: skip
        write_epoch(root, RUN, "patchcore", "", dataset, 0, _m(0.85, 0.9, 0.75, 0.3, "method_1"))
    return root


def _submission(root: Path, **kwargs) -> dict:
    report = scan_results([root])
    board = lb.build_leaderboard(report, **kwargs)
    return build_submission(board, report.epochs, hardware=HW)


def test_schema_fields_without_run_config(tmp_path: Path) -> None:
    doc = _submission(_results(tmp_path / "r"))
    assert doc["schema"] == SCHEMA and doc["schema_version"] == 1
    assert doc["exported_with"] == {"package": "visionad_multicore", "version": __version__}
    assert doc["epoch_selection"] == {"mode": "final", "best_metric": "PL"}
    subs = {s["label"]: s for s in doc["submissions"]}
    assert set(subs) == {"multicore_MC2", "patchcore"}
    mc = subs["multicore_MC2"]
    for key in ("algorithm", "preset", "package_version", "config_hash", "seed", "hardware", "results"):
        assert key in mc
    assert mc["algorithm"] == "multicore" and mc["preset"] == "mc2" and mc["seed"] == 7
    assert mc["package_version"] is None  # not recorded by the run: never guessed from the exporter
    assert mc["config_hash"].startswith("sha256:") and mc["config_hash_source"] == "data.json"
    assert mc["hardware"] == {**HW, "source": "export machine"}
    assert mc["datasets"] == ["ds1", "ds2"] and mc["methods"] == ["ensemble_mean", "multicore"]
    first = mc["results"][0]
    assert (first["dataset"], first["method"], first["epoch"]) == ("ds1", "ensemble_mean", 1)
    assert first["train_time_per_image"] == 1.5 and first["inference_time_per_image"] == pytest.approx(0.2)
    assert first["train_time"] == 15.0 and first["batch_size"] == 4
    assert set(first["metrics"]) == {"Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL"}
    assert subs["patchcore"]["seed"] == 3 and subs["patchcore"]["preset"] is None
    json.loads(submission_to_json(doc))  # strict JSON


def test_provenance_from_run_config(tmp_path: Path) -> None:
    root = _results(tmp_path / "r")
    entry = {
        "algo_class_name": "multicore",
        "model_description": "MC2",
        "model_params": {"preset": "mc4", "seed": 11},
        "seed": 5,
        "epochs": 2,
        "device": "cuda:0",
        "datasets": ["ds1", "ds2"],
    }
    run_config = {
        "package_version": "0.1.0",
        "config_sha256": "abc",
        "hardware": {"cpu": "Run CPU", "gpu": "RTX", "torch": "2.x"},
        "models": [{"algo_class_name": "random", "model_description": "MC2"}, entry],
    }
    (root / RUN / "run_config.json").write_text(json.dumps(run_config))
    mc = next(s for s in _submission(root)["submissions"] if s["label"] == "multicore_MC2")
    assert mc["package_version"] == "0.1.0" and mc["config_file_sha256"] == "abc"
    assert mc["seed"] == 5 and mc["preset"] == "mc4"
    assert mc["config_hash_source"] == "run_config.json"
    assert mc["hardware"] == {"cpu": "Run CPU", "gpu": "RTX", "torch": "2.x", "source": "run_config.json"}
    # the device the run used is not part of the configuration's identity
    (root / RUN / "run_config.json").write_text(
        json.dumps({**run_config, "models": [{**entry, "device": "cpu"}]})
    )
    again = next(s for s in _submission(root)["submissions"] if s["label"] == "multicore_MC2")
    assert again["config_hash"] == mc["config_hash"]
    (root / RUN / "run_config.json").write_text(
        json.dumps({**run_config, "models": [{**entry, "epochs": 3}]})
    )
    changed = next(s for s in _submission(root)["submissions"] if s["label"] == "multicore_MC2")
    assert changed["config_hash"] != mc["config_hash"]


def test_config_hash_from_data_ignores_device_only(tmp_path: Path) -> None:
    def epoch_for(params: dict) -> object:
        root = tmp_path / str(abs(hash(str(params))))
        write_epoch(root, RUN, "a", "", "d", 0, _m(1, 1, 1, 1, "m"), model_params="a" + str(params))
        return scan_results([root]).epochs[0]

    base = config_hash_from_data(epoch_for({"k": 3, "device": "cpu"}))
    assert config_hash_from_data(epoch_for({"k": 3, "device": "cuda:1", "wandb": True})) == base
    assert config_hash_from_data(epoch_for({"k": 4, "device": "cpu"})) != base


def test_csv_form(tmp_path: Path) -> None:
    doc = _submission(_results(tmp_path / "r"), epoch_mode="best")
    rows = list(csv.DictReader(io.StringIO(submission_to_csv(doc))))
    assert len(rows) == sum(len(s["results"]) for s in doc["submissions"]) == 6
    header = list(rows[0])
    assert header[: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert header[len(CSV_COLUMNS) :] == [
        "Imagewise_AUC", "Pixelwise_AUC", "Pixelwise_AUPRO", "PL", "train_time", "train_time_per_image",
        "inference_time", "inference_time_per_image", "batch_size", "schema_version",
    ]  # fmt: skip
    mc = next(
        r
        for r in rows
        if r["label"] == "multicore_MC2" and r["method"] == "multicore" and r["dataset"] == "ds2"
    )
    assert mc["epoch"] == "1" and float(mc["PL"]) == pytest.approx(0.6) and mc["seed"] == "7"
    assert mc["hardware_cpu"] == "Test CPU" and mc["hardware_source"] == "export machine"


def test_machine_hardware_fields() -> None:
    info = machine_hardware()
    assert set(info) == {"cpu", "gpu", "torch", "python", "platform"}
    assert info["cpu"] and info["torch"]
