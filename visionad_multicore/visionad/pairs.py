"""The loop over (model, dataset) pairs, shared by native runs and runs through a VisionAD checkout.

For each pair: skip it if an earlier run of the same folder finished it (``--resume``), otherwise start it
clean (an unfinished folder is removed), seed everything, build the algorithm, train and evaluate through the
backend, then write the pair's completion marker. A pair that raises is contained: its traceback goes to
``<pair folder>/error.txt`` and the summary, and the other pairs still run.

SIGINT and SIGTERM raise :class:`RunInterrupted` (a ``BaseException``, so no ``except Exception`` swallows
it): ``finally`` blocks run, temporary files of atomic writes are removed, the unfinished pair keeps no
marker, and ``run --resume RUN_DIR`` finishes the run.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from visionad_multicore.visionad.config import (
    RunConfig,
    RunRequest,
    dataset_keys,
    option,
    prepare_model_arguments,
)
from visionad_multicore.visionad.loop import seed_everything
from visionad_multicore.visionad.preflight import CheckReport, PreflightError
from visionad_multicore.visionad.run_files import (
    PairResult,
    RunSummary,
    is_complete,
    log_summary,
    pair_result,
    read_written_results,
    run_dir_name,
    write_error,
    write_marker,
    write_run_config,
)

__all__ = ["PairBackend", "RunInterrupted", "interrupt_on_signals", "open_run", "run_pairs"]

logger = logging.getLogger(__name__)


class RunInterrupted(BaseException):  # noqa: N818 - it is not an error of the run, like KeyboardInterrupt
    """The run received SIGINT or SIGTERM; ``signum`` says which (exit code ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.run_dir: Path | None = None  # set by run_pairs: the folder to resume

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


@contextlib.contextmanager
def interrupt_on_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Turn the signals into :class:`RunInterrupted` while the block runs; previous handlers come back after.

    Outside the main thread (where Python cannot install handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise RunInterrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def open_run(
    config: RunConfig,
    request: RunRequest,
    parent: Path,
    report: CheckReport,
    mode: str,
    visionad_root: Path | None = None,
) -> tuple[str, Path]:
    """Start (or reopen, when resuming) the run folder once the checks before work have passed.

    Args:
        config: the loaded config.
        request: what was asked (a resumed run carries its recorded run time and folder).
        parent: the folder new run folders go into.
        report: the checks' report: errors stop here, warnings are logged.
        mode: ``"native"`` or ``"visionad"`` (recorded in ``run_config.json``).
        visionad_root: the checkout of a ``"visionad"`` run.

    Returns:
        ``(run_time, run_dir)``; a new run's ``run_config.json`` and config copy are written.

    Raises:
        PreflightError: the report has errors (nothing was written).
    """
    if not report.ok:
        raise PreflightError(report)
    for problem in report.warnings:
        logger.warning("%s", problem)
    run_time = request.run_time or datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
    run_dir = request.resume_dir or parent / run_dir_name(run_time, request.run_description)
    if request.resume_dir is None:
        native = mode == "native"
        with interrupt_on_signals():  # an interruption here leaves no temporary file either
            write_run_config(
                run_dir, config, run_time, request.run_description, mode, request.device, request.wandb,
                request.data_root if native else None, request.registry_path if native else None, visionad_root,
            )  # fmt: skip
    logger.info("Results directory: %s", run_dir)
    return run_time, run_dir


class PairBackend(Protocol):
    """How one pair is loaded and run: our loop (native) or a VisionAD checkout's ``train_algo``."""

    label: str

    def load_dataset(self, key: str) -> Mapping[str, Any]:
        """The dataset dict of ``key``."""

    def run_pair(
        self, algo: Any, pair: PairResult, dataset: Mapping[str, Any], args: Mapping[str, Any]
    ) -> None:
        """Train, evaluate and write ``pair.path``; fill ``pair``'s epochs, metrics and metric failures."""


def run_pairs(
    config: RunConfig,
    classes: Sequence[type],
    backend: PairBackend,
    run_dir: Path,
    device: str | None,
    wandb: bool | None,
    resume: bool = False,
    on_result: Callable[[PairResult], None] | None = None,
) -> RunSummary:
    """Run every (model, dataset) pair of ``config`` into ``run_dir``.

    Args:
        config: the loaded config.
        classes: the algorithm class of each model dict, in order.
        backend: loads datasets and runs one pair.
        run_dir: the run folder (exists; ``run_config.json`` written).
        device: the ``--device`` override, or None.
        wandb: the ``--wandb`` override, or None.
        resume: pairs whose folder holds a completion marker are not run again (their results are read).
        on_result: called with each :class:`PairResult` as soon as its pair finishes, fails or is skipped.

    Returns:
        The :class:`RunSummary`.

    Raises:
        RunInterrupted: SIGINT / SIGTERM arrived (the summary so far is logged first).
    """
    summary = RunSummary(run_dir)
    with interrupt_on_signals():
        try:
            for index, model in enumerate(config.model_list):
                for dataset_key in dataset_keys(model, config):
                    pair = pair_result(model, run_dir, dataset_key)
                    if resume and is_complete(pair.path):
                        read_written_results(pair)
                        pair.resumed = True
                        logger.info("Pair %s %s already finished: kept", pair.algo, dataset_key)
                    else:
                        _run_one(pair, classes[index], model, dataset_key, backend, device, wandb)
                    summary.results.append(pair)
                    if on_result is not None:
                        on_result(pair)
        except RunInterrupted as interrupted:
            logger.error(
                "%s: %d pair(s) finished and kept; the unfinished one has no completion marker. "
                "Finish the run with: visionad-multicore run --resume %s",
                interrupted,
                len(summary.results),
                run_dir,
            )
            interrupted.run_dir = run_dir
            raise
    log_summary(summary)
    return summary


def _run_one(
    pair: PairResult,
    cls: type,
    model: Mapping[str, Any],
    dataset_key: str,
    backend: PairBackend,
    device: str | None,
    wandb: bool | None,
) -> None:
    """Run one pair from a clean folder; contain any exception in ``pair.error`` and the error file."""
    logger.info(
        "Running model %s %s, dataset %s%s", pair.algo, pair.model_description, dataset_key, backend.label
    )
    if pair.path.exists():
        logger.info("Removing the unfinished folder %s to start the pair again", pair.path)
        shutil.rmtree(pair.path)
    try:
        dataset = backend.load_dataset(dataset_key)
        args = prepare_model_arguments(model, dataset, device, wandb)
        seed_everything(int(option(args, "seed")))
        algo = cls(**args["model_params"])
        backend.run_pair(algo, pair, dataset, args)
        write_marker(pair.path, metric_failures=pair.metric_failures)
    except Exception:
        pair.error = traceback.format_exc()
        logger.error("Error on run %s, dataset %s:\n%s", pair.algo, dataset_key, pair.error)
        write_error(pair)
