"""install-plugin: registry entries and shim in a (fake) VisionAD checkout; idempotent; clean uninstall."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_visionad import read_calls, write_fake_visionad, write_visionad_config
from visionad_multicore import plugin
from visionad_multicore.algorithms import ALGORITHMS
from visionad_multicore.cli import main
from visionad_multicore.reporting import leaderboard as lb

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    return write_fake_visionad(tmp_path / "VisionAD")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _resolve_in_subprocess(root: Path, names: list[str]) -> dict[str, str]:
    """Import the checkout's get_algo the way its run.py does (cwd on sys.path) and resolve ``names``."""
    code = (
        "import json, sys\n"
        "sys.path.insert(0, '.')\n"
        "from algos.algo_class_list import get_algo\n"
        "out = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        cls = get_algo(name)\n"
        "        out[name] = cls.__module__ + ':' + cls.__name__\n"
        "    except Exception as exc:\n"
        "        out[name] = 'error: ' + type(exc).__name__\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(names)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_install_makes_get_algo_resolve_our_algorithms(checkout: Path) -> None:
    original = (checkout / plugin.ALGO_LIST).read_bytes()
    report = plugin.install(checkout)
    assert report.changed
    text = str(report)
    assert (
        str(checkout / plugin.SHIM) in text
        and "backed up" in text
        and "added multicore, patchcore_plus" in text
    )
    assert (checkout / (plugin.ALGO_LIST + plugin.BACKUP_SUFFIX)).read_bytes() == original
    new = (checkout / plugin.ALGO_LIST).read_text()
    assert plugin.BEGIN_MARKER in new and plugin.END_MARKER in new
    # every original line is still there, in order, untouched
    assert new.replace("".join(plugin._block("    ", "\n", "algo_name")), "") == original.decode()

    resolved = _resolve_in_subprocess(checkout, ["multicore", "PatchCore_Plus", "patchcore", "nope"])
    assert resolved["multicore"] == ALGORITHMS["multicore"]
    assert resolved["PatchCore_Plus"] == ALGORITHMS["patchcore_plus"]
    assert resolved["patchcore"] == "algos.patchcore.algo_class:WrapperPatchCore"  # VisionAD's own still work
    assert resolved["nope"] == "error: NotImplementedError"


def test_install_is_idempotent(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-plugin", str(checkout)]) == 0
    after_first = _snapshot(checkout)
    capsys.readouterr()
    assert main(["install-plugin", str(checkout)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert _snapshot(checkout) == after_first


def test_uninstall_restores_original_bytes(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(checkout)
    plugin.install(checkout)
    assert _snapshot(checkout) != before
    assert main(["install-plugin", str(checkout), "--uninstall"]) == 0
    out = capsys.readouterr().out
    assert "byte-identical" in out and "removed" in out
    assert _snapshot(checkout) == before
    # a second uninstall has nothing to do
    report = plugin.uninstall(checkout)
    assert not report.changed and "not installed" in str(report)


def test_uninstall_keeps_later_user_edits(checkout: Path) -> None:
    plugin.install(checkout)
    algo_list = checkout / plugin.ALGO_LIST
    algo_list.write_text(algo_list.read_text() + "# user comment\n")
    report = plugin.uninstall(checkout)
    assert "differs from the backup" in str(report)
    text = algo_list.read_text()
    assert text.endswith("# user comment\n") and plugin.BEGIN_MARKER not in text
    assert (checkout / (plugin.ALGO_LIST + plugin.BACKUP_SUFFIX)).exists()


def test_crlf_docstring_and_other_argument_name(tmp_path: Path) -> None:
    root = write_fake_visionad(tmp_path / "v")
    source = (
        'def get_algo(name):\r\n    """Pick an algorithm."""\r\n    if name.lower()=="random":\r\n'
        "        return 1\r\n    else:\r\n        raise NotImplementedError()\r\n"
    )
    (root / plugin.ALGO_LIST).write_bytes(source.encode())
    plugin.install(root)
    new = (root / plugin.ALGO_LIST).read_bytes().decode()
    assert "\n" not in new.replace("\r\n", "")  # CRLF kept throughout
    lines = new.split("\r\n")
    assert (
        lines[1].strip().startswith('"""') and lines[2].strip() == plugin.BEGIN_MARKER
    )  # after the docstring
    assert "if name.lower() in ('multicore', 'patchcore_plus'):" in new
    compile(new, "algo_class_list.py", "exec")
    plugin.uninstall(root)
    assert (root / plugin.ALGO_LIST).read_bytes() == source.encode()


def test_not_a_checkout_names_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "algos").mkdir()
    (tmp_path / "algos" / "model_wrapper.py").write_text("")
    with pytest.raises(plugin.NotAVisionADCheckoutError) as err:
        plugin.install(tmp_path)
    assert str(tmp_path / "run.py") in str(err.value) and str(tmp_path / "algos/algo_class_list.py") in str(
        err.value
    )
    assert "model_wrapper" not in str(err.value)
    assert main(["install-plugin", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_conflicts_are_refused(checkout: Path) -> None:
    (checkout / plugin.SHIM).write_text("# somebody else's module\n")
    with pytest.raises(plugin.PluginConflictError, match="not written by visionad_multicore"):
        plugin.install(checkout)
    (checkout / plugin.SHIM).unlink()
    (checkout / plugin.ALGO_LIST).write_text("ALGOS = {}\n")
    with pytest.raises(plugin.PluginConflictError, match="no top-level function get_algo"):
        plugin.install(checkout)
    (checkout / plugin.ALGO_LIST).write_text(f"def get_algo(a):\n    {plugin.BEGIN_MARKER}\n    return 1\n")
    with pytest.raises(plugin.PluginConflictError, match="marker comments are damaged"):
        plugin.install(checkout)


@pytest.mark.slow
def test_checkout_run_py_trains_multicore_after_install(tiny_mvtec: Path, tmp_path: Path) -> None:
    """The checkout's own run.py, unchanged, runs `multicore` once the plugin is installed; the leaderboard
    then reads the checkout's results."""
    mvtec = tmp_path / "mvtec_copy"
    shutil.copytree(tiny_mvtec, mvtec / "tiny")
    root = write_fake_visionad(tmp_path / "VisionAD", mvtec_path=mvtec, mvtec_classes=["tiny"])
    params = {
        "preset": "mc2",
        "coreset_size": 64,
        "synthetic_size": 8,
        "ssa": {
            "buckets": [1, 2, 4],
            "masks_per_bucket": 2,
            "multi_counts": [2],
            "masks_per_multi": 2,
            "n_empty": 2,
        },
        "hfm_batch_size": 4,
        "unet_depth": 2,
        "unet_width": 4,
        "validation_fraction": 0.25,
        "progress": False,
    }
    write_visionad_config(
        root / "configs" / "mc.py",
        models=[{"algo_class_name": "multicore", "model_params": params, "model_description": "MC2"}],
        dataset_list=["mvtec_tiny"],
        metrics=["Imagewise_AUC"],
        size=64,
    )
    plugin.install(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "run.py", "--config_file", os.path.join("configs", "mc.py"), "--run_description", "plug"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (call,) = read_calls(root)
    assert call["algo_class"] == "visionad_multicore.algorithms.multicore.WrapperMultiCore"
    assert call["hooks"] == ["enter_dataloaders", "train_one_epoch", "pre_eval_processing", "test"]
    assert {"multicore", "ensemble_mean"} <= set(call["methods"])

    board = lb.build_leaderboard([root / "results"], metrics=["Imagewise_AUC"])
    assert {(r.algorithm, r.method) for r in board.rows} >= {("multicore_MC2", "multicore")}
