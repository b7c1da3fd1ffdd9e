"""Command-line entry point: ``visionad-multicore <command> ...``.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Only the module of the command being run is imported, so ``--help`` and light commands stay fast and
optional dependencies (wandb, a VisionAD checkout) are never imported unless asked for.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command name -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("visionad_multicore.commands.run", "run a VisionAD config file (train, evaluate, write results)"),
    "demo-data": ("visionad_multicore.commands.demo_data", "write the embedded MVTec-layout demo dataset"),
    "ssa-preview": (
        "visionad_multicore.commands.ssa_preview",
        "picture and table of the synthetic anomalies",
    ),
    "select-predictors": (
        "visionad_multicore.commands.select_predictors",
        "greedy coverage search for a predictor set on synthetic anomalies",
    ),
    "leaderboard": ("visionad_multicore.commands.leaderboard", "tables, plots and exports from results dirs"),
    "install-plugin": (
        "visionad_multicore.commands.install_plugin",
        "make a VisionAD checkout's run.py accept multicore and patchcore_plus",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<18} {desc}" for name, (_, desc) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="visionad-multicore",
        description="MultiCore anomaly detection for VisionAD.\n\ncommands:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="visionad-multicore <command> [options]  (visionad-multicore <command> --help)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen command and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; known commands: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"visionad-multicore {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
