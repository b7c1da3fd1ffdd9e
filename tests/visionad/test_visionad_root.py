"""``--visionad_root``: running a config through a (fake) VisionAD checkout's own train loop."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.fake_visionad import read_calls, write_fake_visionad, write_visionad_config
from visionad_multicore import cli
from visionad_multicore.algorithms import get_algorithm
from visionad_multicore.visionad.runner import (
    ConfigError,
    PreflightError,
    VisionADCheckoutError,
    check_config,
    run_config,
    visionad_checkout,
)


@pytest.fixture()
def checkout(tiny_mvtec: Path, tmp_path: Path) -> Path:
    """A fake VisionAD checkout whose MVTEC_PATH holds a copy of the tiny class as ``mvtec_tiny``."""
    mvtec = tmp_path / "mvtec_copy"
    shutil.copytree(tiny_mvtec, mvtec / "tiny")
    return write_fake_visionad(tmp_path / "VisionAD", mvtec_path=mvtec, mvtec_classes=["tiny"])


def test_ours_and_visionad_baselines_run_through_its_train_algo(checkout, tmp_path):
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"model_params": {"seed": 2}, "model_description": "ours"},
                {"algo_class_name": "PatchCore", "model_description": "theirs", "wandb": False, "seed": 5}],
        dataset_list=["mvtec_tiny"],
        metrics=["Imagewise_AUC"],
    )  # fmt: skip
    cwd, path = os.getcwd(), list(sys.path)
    summary = run_config(config, run_description="via vad", device="cpu", resolve_algorithm=get_algorithm,
                         visionad_root=checkout)  # fmt: skip
    assert summary.ok, [r.error for r in summary.failed]
    assert os.getcwd() == cwd and sys.path == path
    assert not any(name.split(".")[0] in ("wrapper", "algos", "data") for name in sys.modules)

    ours, theirs = read_calls(checkout)
    assert ours["algo_class"] == "visionad_multicore.algorithms.random.WrapperRandom"
    assert theirs["algo_class"] == "algos.patchcore.algo_class.WrapperPatchCore"
    # results go under the checkout's RESULTS_DIRECTORY, named as its run.py names them
    assert summary.run_dir.parent == checkout / "results"
    assert summary.run_dir.name.endswith("_via_vad")
    assert ours["model_dataset_path"] == str(summary.run_dir / "random_ours" / "mvtec_tiny")
    assert theirs["model_dataset_path"] == str(summary.run_dir / "PatchCore_theirs" / "mvtec_tiny")
    assert ours["cwd"] == str(checkout)
    assert ours["run_time"] == summary.run_dir.name[: len("YYYY_mm_dd_HH_MM_SS")]
    assert (ours["run_description"], ours["metrics"], ours["dataset_key"]) == (
        "via vad",
        ["Imagewise_AUC"],
        "mvtec_tiny",
    )
    args = ours["model_arguments"]
    assert args["model_params"] == {"seed": 2, "device": "cpu", "wandb": False}
    assert (args["device"], args["wandb"], args["save_metric_meta_data"]) == ("cpu", False, False)
    assert "train_time_limit" not in args  # VisionAD's train_algo tests optional keys with `in`
    assert "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])" in ours["pre_pro_transforms"]
    assert ours["hooks"] == ["enter_dataloaders", "train_one_epoch", "pre_eval_processing", "test"]
    assert ours["n_paths"] == [4, 4] and ours["methods"] == ["random"]
    assert theirs["methods"] == ["distance"]

    for pair in summary.results:
        assert pair.evaluated_epochs == [0]
        assert 0.0 <= pair.metrics["Imagewise_AUC"][next(iter(pair.metrics["Imagewise_AUC"]))] <= 1.0
        assert json.loads((pair.path / "0" / "data.json").read_text())["dataset"] == "mvtec_tiny"
        # VisionAD's loop writes no markers: ours are added once its train_algo has returned
        assert (pair.path / "0" / "complete.json").is_file() and (pair.path / "complete.json").is_file()
    saved = json.loads((summary.run_dir / "run_config.json").read_text())
    assert saved["mode"] == "visionad" and saved["visionad_root"] == str(checkout)


def test_results_dir_overrides_results_directory_and_cli(checkout, tmp_path, capsys):
    config = write_visionad_config(
        tmp_path / "cfg.py", dataset_list=["mvtec_tiny"], metrics=["Imagewise_AUC"]
    )
    code = cli.main(["run", "--config_file", str(config), "--visionad_root", str(checkout),
                     "--results_dir", str(tmp_path / "mine"), "--device", "cpu"])  # fmt: skip
    assert code == 0
    (call,) = read_calls(checkout)
    assert call["model_dataset_path"].startswith(str(tmp_path / "mine"))
    assert "1/1 (model, dataset) runs succeeded" in capsys.readouterr().out


def test_config_relative_to_the_checkout_and_unknown_key_checked_first(checkout, tmp_path):
    write_visionad_config(checkout / "configs" / "mine.py", dataset_list=["mvtec_nope", "mvtec_tiny"],
                          metrics=["Imagewise_AUC"])  # fmt: skip
    with pytest.raises(PreflightError, match=r"ERROR \[mvtec_nope\] KeyError: 'mvtec_nope'") as err:
        run_config(Path("configs/mine.py"), resolve_algorithm=get_algorithm, visionad_root=checkout)
    assert err.value.report.datasets == ["mvtec_nope", "mvtec_tiny"]
    assert read_calls(checkout) == [] and not (checkout / "results").exists()  # nothing ran
    write_visionad_config(
        checkout / "configs" / "mine.py", dataset_list=["mvtec_tiny"], metrics=["Imagewise_AUC"]
    )
    summary = run_config(Path("configs/mine.py"), resolve_algorithm=get_algorithm, visionad_root=checkout)
    assert [r.ok for r in summary.results] == [True]


def test_unknown_everywhere(checkout, tmp_path):
    config = write_visionad_config(tmp_path / "cfg.py", models=[{"algo_class_name": "nonesuch"}],
                                   dataset_list=["mvtec_tiny"])  # fmt: skip
    with pytest.raises(
        ConfigError,
        match="neither ours .* nor found by the VisionAD checkout's get_algo.*Algorithm not found",
    ):
        run_config(config, resolve_algorithm=get_algorithm, visionad_root=checkout)
    assert os.getcwd() != str(checkout)


def test_missing_module_is_named(checkout, tmp_path):
    (checkout / "wrapper" / "wrapper.py").unlink()
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["mvtec_tiny"])
    with pytest.raises(VisionADCheckoutError, match="wrapper/wrapper.py is missing"):
        run_config(config, resolve_algorithm=get_algorithm, visionad_root=checkout)
    with pytest.raises(VisionADCheckoutError, match="not a directory"):
        run_config(config, resolve_algorithm=get_algorithm, visionad_root=tmp_path / "nowhere")


def test_missing_wandb_in_checkout_is_explained(checkout):
    text = (checkout / "wrapper" / "wrapper.py").read_text()
    (checkout / "wrapper" / "wrapper.py").write_text("import wandb_not_installed_here as wandb\n" + text)
    with pytest.raises(VisionADCheckoutError, match="importing wrapper.wrapper from the VisionAD checkout"):
        with visionad_checkout(checkout):
            pass
    assert "wrapper" not in sys.modules


def test_two_checkouts_one_after_the_other(checkout, tmp_path):
    other = write_fake_visionad(
        tmp_path / "OtherVisionAD", mvtec_path=tmp_path / "mvtec_copy", mvtec_classes=["tiny"]
    )
    with visionad_checkout(checkout) as first:
        assert Path(first.results_directory) == checkout / "results"
    with visionad_checkout(other) as second:
        assert Path(second.results_directory) == other / "results"
        assert sys.modules["wrapper.wrapper"].__file__ == str(other / "wrapper" / "wrapper.py")


def test_check_through_the_checkout_reads_its_registry_strictly(checkout, tmp_path):
    config = write_visionad_config(
        tmp_path / "cfg.py", dataset_list=["mvtec_tiny"], metrics=["Imagewise_AUC"]
    )
    report = check_config(config, visionad_root=checkout, resolve_algorithm=get_algorithm, progress=False)
    assert report.ok and report.datasets == ["mvtec_tiny"] and report.n_images == 20
    grouped = tmp_path / "mvtec_copy" / "tiny" / "anomaly_test_grouped"  # the checkout's own flattened copy
    (grouped / "notes.txt").write_text("VisionAD's loader would try to open this")
    report = check_config(config, visionad_root=checkout, resolve_algorithm=get_algorithm, progress=False)
    (error,) = report.errors
    assert "novel_test: 1 file(s) that are not images" in error.message and "notes.txt" in error.message
    assert read_calls(checkout) == []  # checking runs nothing
