"""The runner end to end with ``random`` on the tiny MVTec fixture: VisionAD's flow and results layout."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from tests.fake_visionad import write_visionad_config
from visionad_multicore import cli
from visionad_multicore.algorithms import VisionADBaselineError, get_algorithm
from visionad_multicore.algorithms.random import WrapperRandom
from visionad_multicore.visionad import runner
from visionad_multicore.visionad.runner import ConfigError, run_config

DATA_JSON_KEYS = [
    "time", "run_description", "model_description", "model_long_description", "epoch", "training_transforms",
    "model", "train_time", "train_time_per_image", "inference_time", "inference_time_per_image", "model_params",
    "dataset", "metrics", "batch_size",
]  # fmt: skip
LIGHT_METRICS = ["Imagewise_AUC", "Pixelwise_AUC", "PL"]


@pytest.fixture()
def registry(tiny_mvtec: Path, tmp_path: Path) -> Path:
    """A user registry file with the key ``tiny`` -> the tiny MVTec fixture."""
    path = tmp_path / "datasets.yaml"
    path.write_text(f"datasets:\n  tiny:\n    path: {tiny_mvtec}\n")
    return path


class Recording(WrapperRandom):
    """WrapperRandom that logs its hook calls, optionally slowly."""

    log: list[str] = []
    train_seconds = 0.0
    eval_seconds = 0.0

    def train_one_epoch(self) -> None:
        time.sleep(self.train_seconds)
        self.log.append("train")
        super().train_one_epoch()

    def pre_eval_processing(self) -> None:
        self.log.append("pre_eval")
        super().pre_eval_processing()

    def eval_outputs_dataloader(self, dataloader, len_dataloader):
        time.sleep(self.eval_seconds)
        self.log.append("eval")
        return super().eval_outputs_dataloader(dataloader, len_dataloader)

    def save_model(self, location) -> None:
        self.log.append("save")
        super().save_model(location)


def recording_resolver(train_seconds: float = 0.0, eval_seconds: float = 0.0):
    cls = type(
        "RecordingRun",
        (Recording,),
        {"log": [], "train_seconds": train_seconds, "eval_seconds": eval_seconds},
    )

    def resolve(name: str) -> type:
        return cls if name.lower() == "recording" else get_algorithm(name)

    return cls, resolve


def run(config: Path, registry: Path, results: Path, resolve=get_algorithm, **kwargs) -> runner.RunSummary:
    return run_config(
        config, registry_path=registry, results_dir=results, resolve_algorithm=resolve, **kwargs
    )


def test_results_layout_and_files(tmp_path, registry):
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"model_params": {"seed": 1}, "epochs": 2, "save_model_every_n_epochs": 1, "save_heatmaps_n_epochs": 2,
                 "model_description": "tiny test", "batch_size": 3}],
        dataset_list=["tiny"],
        metrics=LIGHT_METRICS,
    )  # fmt: skip
    summary = run(config, registry, tmp_path / "results", run_description="my run description longer")
    assert summary.ok, summary.failed[0].error
    run_dir = summary.run_dir
    assert run_dir.parent == tmp_path / "results"
    match = re.fullmatch(r"(\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d)_my_run_description_l", run_dir.name)
    assert match, run_dir.name
    out = run_dir / "random_tiny test" / "tiny"
    assert summary.paths == {("random", "tiny test", "tiny"): out}
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "best.pk", "complete.json", "description.json"]
    assert sorted(p.name for p in (out / "0").iterdir()) == [
        "complete.json",
        "data.json",
        "metrics.pk",
        "model",
    ]
    assert sorted(p.name for p in (out / "1").iterdir()) == [
        "complete.json", "data.json", "description.json", "heatmaps.pk", "metrics.pk", "model"]  # fmt: skip
    # the markers are written last and list what the folder held then
    assert json.loads((out / "1" / "complete.json").read_text())["files"] == [
        "data.json", "description.json", "heatmaps.pk", "metrics.pk", "model"]  # fmt: skip
    assert json.loads((out / "complete.json").read_text())["files"] == [
        "0",
        "1",
        "best.pk",
        "description.json",
    ]
    assert (out / "1" / "model" / "model_params.json").is_file()
    assert not list(tmp_path.rglob("*.tmp"))

    data = json.loads((out / "1" / "data.json").read_text())
    assert list(data) == DATA_JSON_KEYS
    assert data["time"] == match.group(1)
    assert data["run_description"] == "my run description longer"
    assert (data["model_description"], data["model_long_description"]) == ("tiny test", "written by a test")
    assert (data["epoch"], data["model"], data["dataset"], data["batch_size"]) == (1, "random", "tiny", 3)
    assert data["training_transforms"] == "transforms.Compose([])"
    assert data["model_params"] == "random" + str({"seed": 1, "device": "cpu", "wandb": False})
    assert data["train_time"] >= 0 and data["inference_time"] > 0
    assert data["train_time_per_image"] == pytest.approx(data["train_time"] / 8)
    assert data["inference_time_per_image"] == pytest.approx(data["inference_time"] / 8)

    with open(out / "1" / "metrics.pk", "rb") as f:
        metrics = pickle.load(f)
    assert set(metrics) == set(LIGHT_METRICS)
    assert data["metrics"] == {m: item["metric_results"] for m, item in metrics.items()}
    assert set(data["metrics"]["Imagewise_AUC"]) == {"random"}
    with open(out / "1" / "heatmaps.pk", "rb") as f:
        heatmaps, scores, targets, paths = pickle.load(f)
    assert heatmaps["heatmap_set_novel"]["random"].shape == (4, 1, 256, 256)
    assert sorted(paths["paths_regular"]) == [f"{i:03d}.png" for i in range(4)]
    # metrics.pk holds the metrics of the predictions in heatmaps.pk, recomputed here with scikit-learn
    novel_s, regular_s = (
        scores["image_score_set_novel"]["random"],
        scores["image_score_set_regular"]["random"],
    )
    i_auc = roc_auc_score(
        [1] * len(novel_s) + [0] * len(regular_s), np.r_[novel_s.numpy(), regular_s.numpy()]
    )
    assert metrics["Imagewise_AUC"]["metric_results"]["random"] == pytest.approx(
        max(i_auc, 1 - i_auc), abs=1e-12
    )
    maps_n, maps_r = heatmaps["heatmap_set_novel"]["random"], heatmaps["heatmap_set_regular"]["random"]
    labels = np.r_[targets["targets_novel"].numpy().ravel(), np.zeros(maps_r.numel())]
    p_auc = roc_auc_score(labels, np.r_[maps_n.numpy().ravel(), maps_r.numpy().ravel()])
    assert metrics["Pixelwise_AUC"]["metric_results"]["random"] == pytest.approx(
        max(p_auc, 1 - p_auc), abs=1e-12
    )
    description = json.loads((out / "1" / "description.json").read_text())
    assert description["dataset"]["dataset_key"] == "tiny" and description["model_description"] == "tiny test"

    # best.pk: the predictions of the best epoch by PL (random gives the same predictions every evaluation)
    with open(out / "best.pk", "rb") as f:
        best = pickle.load(f)
    assert best[0]["heatmap_set_novel"]["random"].equal(heatmaps["heatmap_set_novel"]["random"])

    saved = json.loads((run_dir / "run_config.json").read_text())
    assert saved["config_file"] == str(config.resolve()) and saved["mode"] == "native"
    assert saved["models"][0]["epochs"] == 2 and saved["models"][0]["datasets"] == ["tiny"]
    assert saved["registry_path"] == str(registry)
    assert saved["hardware"]["gpu"] is None and saved["hardware"]["torch"]
    assert (run_dir / "run_config_source.py").read_text() == config.read_text()


class Failing(WrapperRandom):
    """Raises in its first training epoch."""

    def train_one_epoch(self) -> None:
        raise RuntimeError("boom on purpose")


def test_failing_pair_is_contained_with_traceback_and_exit_1(tmp_path, registry, capsys, monkeypatch):
    import visionad_multicore.algorithms as algorithms

    def resolve(name: str) -> type:
        return Failing if name == "failing" else get_algorithm(name)

    monkeypatch.setattr(algorithms, "get_algorithm", resolve)  # the CLI resolves names through this
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"algo_class_name": "failing"}, {}],
        dataset_list=["tiny"],
        metrics=["Imagewise_AUC"],
    )
    code = cli.main(["run", "--config_file", str(config), "--registry", str(registry),
                     "--results_dir", str(tmp_path / "res"), "--device", "cpu"])  # fmt: skip
    assert code == 1
    printed = capsys.readouterr().out
    assert "FAILED: failing 'test' on tiny (see error.txt in its folder)" in printed
    assert "1/2 (model, dataset) runs succeeded" in printed
    assert re.search(r"random\s+0\.\d{4}", printed)  # the per-method table of the pair that ran
    (run_dir,) = (tmp_path / "res").iterdir()
    failed = run_dir / "failing_test" / "tiny"
    assert "RuntimeError: boom on purpose" in (failed / "error.txt").read_text()
    assert not (failed / "complete.json").exists()  # never counted as finished
    assert (run_dir / "random_test" / "tiny" / "complete.json").is_file()


def test_unknown_dataset_key_stops_the_run_before_any_work(tmp_path, registry, capsys):
    config = write_visionad_config(
        tmp_path / "cfg.py", dataset_list=["tiny", "no_such_key"], metrics=["Imagewise_AUC"]
    )
    code = cli.main(["run", "--config_file", str(config), "--registry", str(registry),
                     "--results_dir", str(tmp_path / "res"), "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert (
        "ERROR [no_such_key] UnknownDatasetError: unknown dataset key 'no_such_key'"
        in capsys.readouterr().out
    )
    assert not (tmp_path / "res").exists()  # nothing ran, nothing was written


def test_evaluate_n_epochs_and_hook_order(tmp_path, registry):
    cls, resolve = recording_resolver()
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[
            {
                "algo_class_name": "recording",
                "epochs": 5,
                "evaluate_n_epochs": 2,
                "save_model_every_n_epochs": 4,
            }
        ],
        dataset_list=["tiny"],
        metrics=["Imagewise_AUC"],
    )
    summary = run(config, registry, tmp_path / "res", resolve=resolve)
    (pair,) = summary.results
    assert pair.ok, pair.error
    assert pair.evaluated_epochs == [1, 3, 4]  # every 2nd epoch and the last
    assert sorted(p.name for p in pair.path.iterdir() if p.is_dir()) == ["1", "3", "4"]
    assert (pair.path / "3" / "model").is_dir() and not (pair.path / "1" / "model").exists()
    # pre_eval_processing comes before any save or evaluation, only in epochs that save or evaluate
    assert cls.log == ["train", "train", "pre_eval", "eval", "eval", "train", "train", "pre_eval", "save", "eval",
                       "eval", "train", "pre_eval", "eval", "eval"]  # fmt: skip


def test_train_time_limit_stops_after_the_epoch_and_excludes_evaluation(tmp_path, registry):
    _, resolve = recording_resolver(train_seconds=0.1, eval_seconds=0.3)
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[
            {
                "algo_class_name": "recording",
                "epochs": 10,
                "evaluate_n_epochs": None,
                "train_time_limit": 0.25,
            }
        ],
        dataset_list=["tiny"],
        metrics=["Imagewise_AUC"],
    )
    (pair,) = run(config, registry, tmp_path / "res", resolve=resolve).results
    assert pair.ok, pair.error
    assert pair.evaluated_epochs == [2]  # the limit is exceeded in epoch 2 (3 x 0.1 s): evaluate, then stop
    data = json.loads((pair.path / "2" / "data.json").read_text())
    assert 0.3 <= data["train_time"] < 0.55  # three training epochs, no evaluation time
    assert data["inference_time"] >= 0.6  # two test sets x 0.3 s


def test_heatmaps_every_epoch_and_evaluation_regime(tmp_path, registry):
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"model_description": "zero", "epochs": 3, "evaluate_n_epochs": None, "save_heatmaps_n_epochs": 0},
                {"model_description": "regime", "epochs": 4, "specific_evaluation_regime": {"epochs": [0, 2]}}],
        dataset_list=["tiny"],
        metrics=["Imagewise_AUC"],
    )  # fmt: skip
    zero, regime = run(config, registry, tmp_path / "res").results
    # VisionAD: save_heatmaps_n_epochs == 0 saves heatmaps (and so evaluates) every epoch
    assert zero.evaluated_epochs == [0, 1, 2] and (zero.path / "1" / "heatmaps.pk").is_file()
    # VisionAD: a specific_evaluation_regime replaces the other evaluation rules, the last epoch included
    assert regime.evaluated_epochs == [0, 2]


def test_dataset_list_override_and_zero_epochs(tmp_path, registry):
    cls, resolve = recording_resolver()
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"algo_class_name": "recording", "dataset_list_override": ["tiny"], "epochs": 0}],
        dataset_list=["no_such_key"],
        metrics=["Imagewise_AUC"],
    )
    summary = run(config, registry, tmp_path / "res", resolve=resolve)
    assert summary.ok and [r.dataset for r in summary.results] == ["tiny"]
    # epochs 0 evaluates the untrained algorithm once, in epoch folder 0, without a training epoch
    assert summary.results[0].evaluated_epochs == [0]
    assert cls.log == ["pre_eval", "eval", "eval"]


def test_same_seed_same_results_and_env_results_dir(tmp_path, registry, monkeypatch):
    monkeypatch.setenv(runner.RESULTS_DIR_ENV, str(tmp_path / "env_results"))
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny"], metrics=["Imagewise_AUC"])
    first = run_config(config, registry_path=registry, resolve_algorithm=get_algorithm, run_description="a")
    second = run_config(config, registry_path=registry, resolve_algorithm=get_algorithm, run_description="b")
    assert first.run_dir.parent == tmp_path / "env_results"
    assert first.results[0].metrics == second.results[0].metrics


def test_missing_config_key_names_key_and_file(tmp_path, registry):
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny"], drop={0: ["batch_size"]})
    with pytest.raises(
        ConfigError, match=r"cfg\.py, model_list\[0\] \(random\) is missing the key 'batch_size'"
    ):
        run(config, registry, tmp_path / "res")
    no_device = write_visionad_config(tmp_path / "nodev.py", dataset_list=["tiny"], drop={0: ["device"]})
    with pytest.raises(ConfigError, match="missing the key 'device' \\(or pass --device\\)"):
        run(no_device, registry, tmp_path / "res")
    assert not (tmp_path / "res").exists()  # nothing ran


def test_unknown_key_and_missing_attribute(tmp_path, registry):
    typo = write_visionad_config(tmp_path / "typo.py", models=[{"train_time_limt": 5}], dataset_list=["tiny"])
    with pytest.raises(
        ConfigError, match="unknown key\\(s\\) \\['train_time_limt'\\]; valid keys: .*train_time_limit"
    ):
        run(typo, registry, tmp_path / "res")
    bare = tmp_path / "bare.py"
    bare.write_text("model_list = []\n")
    with pytest.raises(ConfigError, match="does not define dataset_list, metrics"):
        run(bare, registry, tmp_path / "res")


def test_unknown_algorithm_lists_ours(tmp_path, registry, capsys):
    config = write_visionad_config(
        tmp_path / "cfg.py", models=[{"algo_class_name": "nonesuch"}], dataset_list=["tiny"]
    )
    with pytest.raises(
        ConfigError,
        match="unknown algorithm 'nonesuch'; this package provides: anomalib_cflow, .*, multicore, patchcore_plus, random",
    ):
        run(config, registry, tmp_path / "res")
    assert cli.main(["run", "--config_file", str(config), "--results_dir", str(tmp_path / "res")]) == 2


def test_baseline_without_visionad_root(tmp_path, registry):
    config = write_visionad_config(
        tmp_path / "cfg.py", models=[{"algo_class_name": "EfficientAD"}], dataset_list=["tiny"]
    )
    with pytest.raises(ConfigError, match="one of VisionAD's baselines .*pass --visionad_root"):
        run(config, registry, tmp_path / "res")
    with pytest.raises(VisionADBaselineError):
        get_algorithm("PatchCore")
    assert get_algorithm("RANDOM") is WrapperRandom


def test_wandb_missing_is_a_clear_error(tmp_path, registry, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny"])
    with pytest.raises(runner.WandbMissingError, match="pip install wandb"):
        run(config, registry, tmp_path / "res", wandb=True)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[2] / "algorithm_configs"
    for name in ("random_demo.py", "random_dev.py"):
        config = runner.load_config(root / name)
        assert config.model_list[0]["algo_class_name"] == "random"
    assert runner.load_config(root / "random_demo.py").dataset_list == [
        "demo_brick",
        "demo_grass",
        "demo_gravel",
    ]


def test_wandb_logging_when_asked(tmp_path, registry, monkeypatch):
    import sys
    import types

    calls: list[tuple] = []

    class FakeRun:
        def log(self, values):
            calls.append(("log", dict(values)))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny"], metrics=["Imagewise_AUC"])
    summary = run(config, registry, tmp_path / "res", wandb=True, run_description="wb")
    assert summary.ok
    assert calls[0][0] == "init" and calls[0][1]["project"] == "wb__random_tiny"
    assert calls[0][1]["config"]["model_params"]["wandb"] is True
    logged = {k for call in calls if call[0] == "log" for k in call[1]}
    assert {"epoch", "Imagewise_AUC_random", "train_time", "inference_time"} <= logged
    assert calls[-1] == ("finish",)


class Broken(WrapperRandom):
    """WrapperRandom plus a method ``broken`` with one NaN pixel per test set and an infinite score."""

    def __init__(self, **params) -> None:
        super().__init__(**{**params, "methods": ["random", "broken"]})

    def eval_outputs_dataloader(self, dataloader, len_dataloader):
        heatmaps, scores = super().eval_outputs_dataloader(dataloader, len_dataloader)
        heatmaps["broken"][0, 0, 0] = float("nan")
        scores["broken"][-1] = float("inf")
        return heatmaps, scores


def test_non_finite_maps_fail_loudly(tmp_path, registry, capsys, monkeypatch):
    import visionad_multicore.algorithms as algorithms

    monkeypatch.setattr(
        algorithms, "get_algorithm", lambda name: Broken if name == "broken" else get_algorithm(name)
    )
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"algo_class_name": "broken"}],
        dataset_list=["tiny"],
        metrics=LIGHT_METRICS,
    )
    code = cli.main(["run", "--config_file", str(config), "--registry", str(registry),
                     "--results_dir", str(tmp_path / "res"), "--device", "cpu"])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert (
        "FAILED: broken 'test' on tiny (epoch 0: Imagewise_AUC/broken: failed: non-finite values in 2 scores"
        in out
    )
    (data_json,) = (tmp_path / "res").glob("*/broken_test/tiny/0/data.json")
    metrics = json.loads(data_json.read_text())["metrics"]
    # one NaN pixel in the first map of each test set: 2 maps; one inf score in each: 2 scores
    assert metrics["Pixelwise_AUC"]["broken"] == "failed: non-finite values in 2 maps"
    assert metrics["PL"]["broken"] == "failed: non-finite values in 2 maps"
    assert metrics["Imagewise_AUC"]["broken"] == "failed: non-finite values in 2 scores"
    assert isinstance(metrics["Imagewise_AUC"]["random"], float)  # the other method is scored as usual
    assert (data_json.parent.parent / "complete.json").is_file()  # the pair finished; its metric failed


def test_image_level_only_dataset_reports_pixel_metrics_as_not_computable(tmp_path, tiny_mvtec):
    from visionad_multicore.reporting import leaderboard as lb

    registry = tmp_path / "reg.yaml"
    registry.write_text(f"datasets:\n  labels_only:\n    path: {tiny_mvtec}\n    pixel_labels: false\n")
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["labels_only"], metrics=["all"])
    (pair,) = run(config, registry, tmp_path / "res").results
    assert pair.ok, pair.error or pair.metric_failures
    i_auc = pair.metrics["Imagewise_AUC"]["random"]
    assert isinstance(i_auc, float) and 0.5 <= i_auc <= 1.0
    for metric in ("Pixelwise_AUC", "Pixelwise_AUC_anom_only", "Pixelwise_AUPRO", "PL"):
        assert pair.metrics[metric] == {
            "random": "not computable: image-level labels only (pixel_labels: false)"
        }
    board = lb.build_leaderboard([tmp_path / "res"])
    (row,) = board.rows
    assert row.metrics == {"Imagewise_AUC": i_auc} and board.warnings == []  # shown as '-', no alarm


def test_num_workers_from_the_config(tmp_path, registry):
    cls, resolve = recording_resolver()
    seen: list[int] = []
    original = cls.enter_dataloaders

    def enter(self, train, regular, novel):
        seen.append(train.num_workers)
        original(self, train, regular, novel)

    cls.enter_dataloaders = enter
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"algo_class_name": "recording", "num_workers": 1}, {"algo_class_name": "recording"}],
        dataset_list=["tiny"],
        metrics=["Imagewise_AUC"],
    )
    summary = run(config, registry, tmp_path / "res", resolve=resolve)
    assert summary.ok and seen == [1, 0]  # as configured; automatic on a CPU device: 0
    bad = write_visionad_config(tmp_path / "bad.py", models=[{"num_workers": "two"}], dataset_list=["tiny"])
    with pytest.raises(ConfigError, match=r"model_list\[0\] \(random\): num_workers must be an integer >= 0"):
        run(bad, registry, tmp_path / "res")


def test_all_empty_masks_run_with_pixel_metrics_left_out(tmp_path, tiny_mvtec):
    cls = tmp_path / "empty_masks"
    shutil.copytree(tiny_mvtec, cls)
    for mask in (cls / "ground_truth" / "defect").iterdir():
        Image.new("L", (64, 64)).save(mask)  # every mask empty
    registry = tmp_path / "reg.yaml"
    registry.write_text(f"datasets:\n  empty:\n    path: {cls}\n")
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["empty"], metrics=["all"])
    (pair,) = run(config, registry, tmp_path / "res").results
    assert pair.ok and isinstance(pair.metrics["Imagewise_AUC"]["random"], float)
    assert all(pair.metrics[m] == {} for m in ("Pixelwise_AUC", "Pixelwise_AUPRO", "PL"))


def test_num_workers_default_depends_on_the_device(monkeypatch):
    from visionad_multicore.visionad.config import resolve_num_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert resolve_num_workers(None, "cpu") == 0 and resolve_num_workers(None, None) == 0
    assert resolve_num_workers(None, "cuda:0") == 4  # min(4, cores - 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert resolve_num_workers(None, "cuda") == 1
    assert resolve_num_workers(3, "cpu") == 3
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="num_workers must be an integer >= 0"):
            resolve_num_workers(bad, "cpu")
