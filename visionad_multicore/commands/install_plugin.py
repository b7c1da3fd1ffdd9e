"""``visionad-multicore install-plugin PATH_TO_VISIONAD [--uninstall]``.

Makes a VisionAD checkout's own ``run.py`` accept ``algo_class_name`` ``multicore`` and ``patchcore_plus``
(see :mod:`visionad_multicore.plugin` for exactly what is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
what it changes (printed as it goes):
  algos/visionad_multicore_shim.py          new: returns our classes from the installed package
  algos/algo_class_list.py                  a block between marker comments at the top of get_algo
  algos/algo_class_list.py.visionad_multicore.bak   backup of the original file
Installing twice changes nothing. --uninstall removes the block and the shim and checks that
algo_class_list.py is byte-identical to the backup (then deletes the backup).

then, inside the checkout:  python run.py --config_file configs/<your config>.py   (algo_class_name "multicore")
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument(
        "visionad_root", type=Path, metavar="PATH_TO_VISIONAD", help="root of a VisionAD checkout"
    )
    parser.add_argument("--uninstall", action="store_true", help="revert the checkout to its original files")


def run(args: argparse.Namespace) -> int:
    """Install or uninstall; print each change. 0 on success, 1 with a message on a known error."""
    from visionad_multicore.plugin import NotAVisionADCheckoutError, PluginConflictError, install, uninstall

    try:
        report = uninstall(args.visionad_root) if args.uninstall else install(args.visionad_root)
    except (NotAVisionADCheckoutError, PluginConflictError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0
