"""Completion markers, ``run --resume`` and interruption: a killed run finishes with identical results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_visionad import write_visionad_config
from tests.slow_random import SlowRandom
from visionad_multicore import algorithms, cli
from visionad_multicore.algorithms import get_algorithm
from visionad_multicore.reporting import leaderboard as lb
from visionad_multicore.visionad.pairs import RunInterrupted, interrupt_on_signals
from visionad_multicore.visionad.runner import ConfigError, run_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLI = (
    "import sys\n"
    "from visionad_multicore import algorithms\n"
    "algorithms.ALGORITHMS['slow_random'] = 'tests.slow_random:SlowRandom'\n"
    "from visionad_multicore.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture()
def registry(tiny_mvtec: Path, tmp_path: Path) -> Path:
    """Two dataset keys on the tiny fixture."""
    path = tmp_path / "datasets.yaml"
    path.write_text(f"datasets:\n  tiny_a:\n    path: {tiny_mvtec}\n  tiny_b:\n    path: {tiny_mvtec}\n")
    return path


def resolve(name: str) -> type:
    return SlowRandom if name == "slow_random" else get_algorithm(name)


def epoch_metrics(run_dir: Path) -> dict[tuple[str, str], dict]:
    """``(dataset, epoch) -> data.json metrics`` of every epoch folder of a run."""
    return {
        (p.parent.parent.name, p.parent.name): json.loads(p.read_text())["metrics"]
        for p in sorted(run_dir.glob("*/*/*/data.json"))
    }


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {path} appeared")
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def test_sigterm_mid_dataset_then_resume_gives_identical_results(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[
            {"algo_class_name": "slow_random", "model_params": {"seconds": 0.25, "seed": 4}, "epochs": 3}
        ],
        dataset_list=["tiny_a", "tiny_b"],
        metrics=["Imagewise_AUC", "Pixelwise_AUC"],
        size=64,
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    results = tmp_path / "res"
    argv = [sys.executable, "-c", CLI, "run", "--config_file", str(config), "--registry", str(registry),
            "--results_dir", str(results), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pair_a = results.glob("*/slow_random_test/tiny_a")
        wait_for(results, proc)
        while not (found := list(pair_a)):
            time.sleep(0.02)
            pair_a = results.glob("*/slow_random_test/tiny_a")
        run_dir = found[0].parent.parent
        wait_for(run_dir / "slow_random_test" / "tiny_b" / "0" / "complete.json", proc)  # dataset b, epoch 0
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert f"Finish with: visionad-multicore run --resume {run_dir}" in output
    pair_b = run_dir / "slow_random_test" / "tiny_b"
    assert (run_dir / "slow_random_test" / "tiny_a" / "complete.json").is_file()
    assert pair_b.is_dir() and not (pair_b / "complete.json").exists()  # interrupted mid-dataset
    assert not (pair_b / "2").exists()
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    marker_a = (run_dir / "slow_random_test" / "tiny_a" / "complete.json").stat().st_mtime_ns
    assert lb.scan_results([results]).epochs[-1].dataset == "tiny_a"  # the unfinished pair is not shown

    # resume through the same command line, in this process (one interpreter start is enough for the test)
    monkeypatch.setitem(algorithms.ALGORITHMS, "slow_random", "tests.slow_random:SlowRandom")
    assert cli.main(["run", "--resume", str(run_dir)]) == 0
    assert "(finished in an earlier run)" in capsys.readouterr().out
    assert (run_dir / "slow_random_test" / "tiny_a" / "complete.json").stat().st_mtime_ns == marker_a  # kept
    assert (pair_b / "complete.json").is_file()

    reference = run_config(config, registry_path=registry, results_dir=tmp_path / "ref",
                           resolve_algorithm=resolve, progress=False)  # fmt: skip
    assert reference.ok
    assert epoch_metrics(run_dir) == epoch_metrics(reference.run_dir)
    assert len(epoch_metrics(run_dir)) == 6  # 2 datasets x 3 epochs
    times = {json.loads(p.read_text())["time"] for p in run_dir.glob("*/*/*/data.json")}
    assert times == {run_dir.name[:19]}  # the resumed pair is recorded under the run's own start time


def test_resume_keeps_finished_pairs_and_redoes_the_rest_from_clean(tmp_path: Path, registry: Path) -> None:
    config = write_visionad_config(
        tmp_path / "cfg.py",
        models=[{"epochs": 2}],
        dataset_list=["tiny_a", "tiny_b"],
        metrics=["Imagewise_AUC"],
    )
    first = run_config(config, registry_path=registry, results_dir=tmp_path / "res",
                       resolve_algorithm=get_algorithm, progress=False)  # fmt: skip
    before = epoch_metrics(first.run_dir)
    pair_a, pair_b = (first.run_dir / "random_test" / key for key in ("tiny_a", "tiny_b"))
    marker_a = (pair_a / "complete.json").stat().st_mtime_ns
    (pair_b / "complete.json").unlink()  # as if interrupted in its last moments
    (pair_b / "1" / ".data.json.leftover.tmp").write_text("half")  # a temporary file a SIGKILL left behind
    again = run_config(resume=first.run_dir, resolve_algorithm=get_algorithm, progress=False)
    assert again.ok and again.run_dir == first.run_dir
    assert [r.resumed for r in again.results] == [True, False]
    assert (pair_a / "complete.json").stat().st_mtime_ns == marker_a
    assert not (pair_b / "1" / ".data.json.leftover.tmp").exists()  # started from a clean folder
    assert epoch_metrics(first.run_dir) == before
    assert again.results[0].metrics == first.results[0].metrics  # read back from its files


def test_resume_refuses_changed_settings_and_old_runs(tmp_path: Path, registry: Path) -> None:
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny_a"], metrics=["Imagewise_AUC"])
    run = run_config(config, registry_path=registry, results_dir=tmp_path / "res",
                     resolve_algorithm=get_algorithm, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="either a config file or resume"):
        run_config(config, resume=run.run_dir, resolve_algorithm=get_algorithm)
    with pytest.raises(ConfigError, match="run_description cannot be changed when resuming"):
        run_config(resume=run.run_dir, run_description="other", resolve_algorithm=get_algorithm)
    with pytest.raises(ConfigError, match="no run_config.json there"):
        run_config(resume=tmp_path, resolve_algorithm=get_algorithm)
    recorded = json.loads((run.run_dir / "run_config.json").read_text())
    del recorded["format"]  # written before completion markers existed
    (run.run_dir / "run_config.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match="older version without completion markers"):
        run_config(resume=run.run_dir, resolve_algorithm=get_algorithm)


def test_resume_uses_the_saved_config_when_the_file_changed(tmp_path: Path, registry: Path) -> None:
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny_a"], metrics=["Imagewise_AUC"])
    run = run_config(config, registry_path=registry, results_dir=tmp_path / "res",
                     resolve_algorithm=get_algorithm, progress=False)  # fmt: skip
    (run.run_dir / "random_test" / "tiny_a" / "complete.json").unlink()
    write_visionad_config(config, dataset_list=["tiny_b"], metrics=["Imagewise_AUC"])  # edited after the run
    again = run_config(resume=run.run_dir, resolve_algorithm=get_algorithm, progress=False)
    assert [r.dataset for r in again.results] == ["tiny_a"]  # the run's own config, not the edited file


def test_leaderboard_ignores_a_newer_unfinished_run(tmp_path: Path, registry: Path) -> None:
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["tiny_a"], metrics=["Imagewise_AUC"])
    finished = run_config(config, registry_path=registry, results_dir=tmp_path / "res",
                          resolve_algorithm=get_algorithm, progress=False)  # fmt: skip
    time.sleep(1.05)  # run folders are named by the second
    newer = run_config(config, registry_path=registry, results_dir=tmp_path / "res",
                       resolve_algorithm=get_algorithm, progress=False)  # fmt: skip
    (newer.run_dir / "random_test" / "tiny_a" / "complete.json").unlink()  # the newer run never finished
    board = lb.build_leaderboard([tmp_path / "res"], metrics=["Imagewise_AUC"])
    assert [r.source for r in board.rows] == [str(finished.run_dir / "random_test" / "tiny_a" / "0")]
    assert any("unfinished" in w and str(newer.run_dir) in w for w in board.warnings)
    report = lb.scan_results([tmp_path / "res"], include_unfinished=True)
    board = lb.build_leaderboard(report, metrics=["Imagewise_AUC"])
    assert board.rows[0].source.startswith(str(newer.run_dir))  # asked for: the newest run again
    out = tmp_path / "board.json"
    assert cli.main(["leaderboard", str(tmp_path / "res"), "--format", "json", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["datasets"]["tiny_a"][0]["source"].startswith(str(finished.run_dir))
    assert cli.main(["leaderboard", str(tmp_path / "res"), "--include-unfinished", "--format", "json",
                     "--out", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["datasets"]["tiny_a"][0]["source"].startswith(str(newer.run_dir))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_raise_run_interrupted_and_handlers_come_back(signum: int) -> None:
    before = signal.getsignal(signum)
    with pytest.raises(RunInterrupted) as err, interrupt_on_signals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
    assert err.value.signum == signum and str(err.value) == f"interrupted by {signal.Signals(signum).name}"
    assert not isinstance(err.value, Exception)  # `except Exception` in a pair cannot swallow it
    assert signal.getsignal(signum) == before
