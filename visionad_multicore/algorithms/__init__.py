"""Algorithm registry: VisionAD algorithm names -> our ``ModelWrapper`` subclasses, imported on demand.

``get_algorithm("MultiCore")`` returns the class (names are case-insensitive, like VisionAD's ``get_algo``).
Nothing heavy is imported until a class is asked for, so ``--help`` and the registry itself stay cheap.

VisionAD's own baselines (PatchCore, FastFlow, EfficientAD, ...) live in a VisionAD checkout, not in this
package: asking for one here raises :class:`VisionADBaselineError`, which tells the user to pass
``--visionad_root``; the runner then resolves those names with the checkout's ``algos/algo_class_list.get_algo``.
"""

from __future__ import annotations

import importlib

_ANOMALIB = "visionad_multicore.algorithms.anomalib_baselines:"

# name (lower case) -> "module:Class"
ALGORITHMS: dict[str, str] = {
    "random": "visionad_multicore.algorithms.random:WrapperRandom",
    "patchcore_plus": "visionad_multicore.algorithms.patchcore_plus:WrapperPatchCorePlus",
    "multicore": "visionad_multicore.algorithms.multicore:WrapperMultiCore",
    # anomalib's baselines (optional extra [baselines]): algorithms/anomalib_baselines.py
    "anomalib_patchcore": _ANOMALIB + "WrapperAnomalibPatchcore",
    "anomalib_padim": _ANOMALIB + "WrapperAnomalibPadim",
    "anomalib_dfm": _ANOMALIB + "WrapperAnomalibDfm",
    "anomalib_dfkde": _ANOMALIB + "WrapperAnomalibDfkde",
    "anomalib_stfpm": _ANOMALIB + "WrapperAnomalibStfpm",
    "anomalib_fastflow": _ANOMALIB + "WrapperAnomalibFastflow",
    "anomalib_cflow": _ANOMALIB + "WrapperAnomalibCflow",
    "anomalib_reverse_distillation": _ANOMALIB + "WrapperAnomalibReverseDistillation",
    "anomalib_draem": _ANOMALIB + "WrapperAnomalibDraem",
    "anomalib_ganomaly": _ANOMALIB + "WrapperAnomalibGanomaly",
    "anomalib_fre": _ANOMALIB + "WrapperAnomalibFre",
    "anomalib_supersimplenet": _ANOMALIB + "WrapperAnomalibSupersimplenet",
}

# VisionAD's baselines as its algos/algo_class_list.get_algo names them (lower case) -> its class name.
VISIONAD_BASELINES: dict[str, str] = {
    "fastflow2d": "WrapperFastFlow2d",
    "patchcore": "WrapperPatchCore",
    "pfm": "WrapperPFM",
    "fastflow2d_altub": "WrapperFastFlowAltUB",
    "pefm": "WrapperPEFM",
    "cflow": "WrapperCFLOW",
    "mspba": "WrapperMSPBA",
    "memseg": "WrapperMemSeg",
    "cdo": "WrapperCDO",
    "cfa": "WrapperCFA",
    "reverse_distillation": "WrapperReverseDistillation",
    "ast": "WrapperAST",
    "msflow": "WrapperMSFlow",
    "simplenet": "WrapperSimpleNet",
    "efficientad": "WrapperEfficientAD",
    "ppdm": "WrapperPPDM",
    "ddad": "WrapperDDAD",
}


class UnknownAlgorithmError(KeyError):
    """The algorithm name is not in this package's registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VisionADBaselineError(UnknownAlgorithmError):
    """The name is one of VisionAD's baselines, which need a VisionAD checkout (``--visionad_root``)."""


def available_algorithms() -> list[str]:
    """Names this package provides, sorted."""
    return sorted(ALGORITHMS)


def get_algorithm(name: str) -> type:
    """Return the algorithm class registered under ``name`` (case-insensitive), importing its module.

    Raises:
        VisionADBaselineError: ``name`` is one of VisionAD's baselines (run with ``--visionad_root``).
        UnknownAlgorithmError: ``name`` is unknown; the message lists the known names.
        ImportError: the registered module or class cannot be imported (the message names it).
    """
    key = str(name).lower()
    if key not in ALGORITHMS:
        if key in VISIONAD_BASELINES:
            raise VisionADBaselineError(
                f"algorithm {name!r} is one of VisionAD's baselines ({VISIONAD_BASELINES[key]}), which live in a "
                "VisionAD checkout, not in visionad_multicore: clone https://github.com/alext1995/VisionAD and "
                "pass --visionad_root PATH (or visionad_root=PATH) to run it. "
                f"This package provides: {', '.join(available_algorithms())}"
            )
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; this package provides: {', '.join(available_algorithms())}; "
            f"VisionAD's baselines (with --visionad_root): {', '.join(sorted(VISIONAD_BASELINES))}"
        )
    module_name, class_name = ALGORITHMS[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"algorithm {key!r}: cannot import module {module_name} ({err})") from err
    try:
        return getattr(module, class_name)
    except AttributeError as err:
        raise ImportError(f"algorithm {key!r}: module {module_name} has no class {class_name}") from err
