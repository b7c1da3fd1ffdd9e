"""Dataset registry: dataset keys -> VisionAD's dataset dicts, read from YAML.

The built-in registry is ``algorithm_configs/datasets.yaml`` (presets for MVTec AD, VisA, IDW, the demo data
and the development data); users add their own YAML files (``registry_path`` or the ``VISIONAD_DATASETS_YAML``
environment variable). ``load_dataset(key)`` returns the dict VisionAD's ``data.configure_dataset.load_dataset``
returns, with one difference: MVTec-layout classes are indexed in place instead of copied into grouped folders,
so ``folder_path_novel_test`` / ``folder_path_novel_masks`` are *lists* of defect folders. The loaders report an
anomalous image as ``<defect>_<file>``, the name VisionAD's grouped copy gives it, so paths in results match.

Where a root folder comes from, first match wins: the ``data_root`` argument, the root's environment variable
(``VISIONAD_MVTEC_ROOT``, ``VISIONAD_VISA_ROOT``, ``VISIONAD_IDW_ROOT``, ``VISIONAD_DEMO_ROOT``), then
``VISIONAD_DATA_ROOT``. The development data root (``dev_*`` keys) instead comes from
``VISIONAD_MULTICORE_SHARED_DATA`` or its default ``<repo>/../shared/data``.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visionad_multicore.constants import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY_PATH = REPO_ROOT / "algorithm_configs" / "datasets.yaml"
GENERAL_ROOT_ENV = "VISIONAD_DATA_ROOT"
EXTRA_REGISTRY_ENV = "VISIONAD_DATASETS_YAML"

LAYOUTS = ("mvtec", "visa", "folders")
FOLDER_KEYS = (
    "folder_path_regular_train",
    "folder_path_regular_test",
    "folder_path_novel_test",
    "folder_path_novel_masks",
)
SLICE_KEYS = (
    "regular_train_start",
    "regular_train_end",
    "regular_test_start",
    "regular_test_end",
    "novel_test_start",
    "novel_test_end",
)
SKIP_KEYS = ("skip_train_regular", "skip_test_regular", "skip_test_novel")
# Keys of the dict load_dataset returns (and create_dataloaders accepts).
DATASET_DICT_KEYS = (*FOLDER_KEYS, *SLICE_KEYS, *SKIP_KEYS, "mean", "std", "pixel_labels", "dataset_key")

_TOP_KEYS = ("roots", "families", "datasets")
_ROOT_KEYS = ("env", "default", "description")
_FAMILY_KEYS = ("root", "key_prefix", "layout", "classes", "mean", "std", "pixel_labels", "description")
_ENTRY_KEYS = (
    "path",
    "root",
    "layout",
    "mean",
    "std",
    "pixel_labels",
    "description",
    *SLICE_KEYS,
    *SKIP_KEYS,
    *FOLDER_KEYS,
)


class DatasetRegistryError(ValueError):
    """A registry file is malformed (unknown key, wrong type, unknown root or layout)."""


class UnknownDatasetError(KeyError):
    """A dataset key that no registry file defines."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class RootSpec:
    """A named base folder (``roots:`` section)."""

    name: str
    env: str | None = None
    default: str | None = None
    description: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry before its folders are resolved against a root."""

    key: str
    layout: str = "mvtec"
    path: str | None = None
    root: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)  # folder of the YAML file (for relative paths)
    folders: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    slicing: Mapping[str, int | None] = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    pixel_labels: bool = True
    description: str = ""
    source: str = ""


def _check_keys(given: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise DatasetRegistryError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")


def _as_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DatasetRegistryError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _stats(value: Any, default: tuple[float, ...], where: str) -> tuple[float, ...]:
    if value is None:
        return default
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise DatasetRegistryError(f"{where}: expected a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _slicing(raw: Mapping[str, Any], where: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in SLICE_KEYS:
        v = raw.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise DatasetRegistryError(f"{where}: {name} must be an integer or null, got {v!r}")
        out[name] = v
    for name in SKIP_KEYS:
        v = raw.get(name, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DatasetRegistryError(f"{where}: {name} must be an integer >= 1, got {v!r}")
        out[name] = v
    return out


def _layout(value: Any, where: str) -> str:
    layout = "mvtec" if value is None else value
    if layout not in LAYOUTS:
        raise DatasetRegistryError(f"{where}: unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return layout


def _entry_spec(key: str, raw: Mapping[str, Any], base_dir: Path, source: str) -> DatasetSpec:
    where = f"{source}: dataset {key!r}"
    _check_keys(raw, _ENTRY_KEYS, where)
    layout = _layout(raw.get("layout"), where)
    pixel_labels = raw.get("pixel_labels", True)
    if not isinstance(pixel_labels, bool):
        raise DatasetRegistryError(f"{where}: pixel_labels must be true or false, got {pixel_labels!r}")
    folders: dict[str, str | tuple[str, ...]] = {}
    if layout == "folders":
        needed = FOLDER_KEYS if pixel_labels else FOLDER_KEYS[:3]
        missing = [k for k in needed if k not in raw]
        if missing:
            raise DatasetRegistryError(f"{where}: layout 'folders' needs {', '.join(missing)}")
        for k in FOLDER_KEYS:
            if k in raw and raw[k] is not None:
                v = raw[k]
                folders[k] = v if isinstance(v, str) else tuple(str(p) for p in v)
    else:
        given = [k for k in FOLDER_KEYS if k in raw]
        if given:
            raise DatasetRegistryError(
                f"{where}: {', '.join(given)} need layout 'folders' (layout is {layout!r})"
            )
        if not raw.get("path"):
            raise DatasetRegistryError(f"{where}: layout {layout!r} needs a 'path' to the class folder")
    return DatasetSpec(
        key=key,
        layout=layout,
        path=None if raw.get("path") is None else str(raw["path"]),
        root=raw.get("root"),
        base_dir=base_dir,
        folders=folders,
        slicing=_slicing(raw, where),
        mean=_stats(raw.get("mean"), IMAGENET_MEAN, where),
        std=_stats(raw.get("std"), IMAGENET_STD, where),
        pixel_labels=pixel_labels,
        description=str(raw.get("description", "")),
        source=source,
    )


def _family_specs(name: str, raw: Mapping[str, Any], base_dir: Path, source: str) -> list[DatasetSpec]:
    where = f"{source}: family {name!r}"
    _check_keys(raw, _FAMILY_KEYS, where)
    classes = raw.get("classes")
    if isinstance(classes, Mapping):
        pairs = [(str(k), str(v)) for k, v in classes.items()]
    elif isinstance(classes, Sequence) and not isinstance(classes, str):
        pairs = [(str(c), str(c)) for c in classes]
    else:
        raise DatasetRegistryError(f"{where}: 'classes' must be a list of folders or a mapping key -> folder")
    prefix = str(raw.get("key_prefix", f"{name}_"))
    entry = {k: raw[k] for k in ("root", "layout", "mean", "std", "pixel_labels", "description") if k in raw}
    return [
        _entry_spec(prefix + suffix, {**entry, "path": folder}, base_dir, source) for suffix, folder in pairs
    ]


@dataclass
class DatasetRegistry:
    """Roots and dataset entries merged from one or more YAML files (later files override earlier ones)."""

    roots: dict[str, RootSpec] = field(default_factory=dict)
    specs: dict[str, DatasetSpec] = field(default_factory=dict)

    def add_file(self, path: str | os.PathLike[str]) -> None:
        """Read a registry YAML file and merge its roots, families and datasets into this registry."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"dataset registry file not found: {path}")
        with open(path, encoding="utf-8") as fh:
            raw = _as_mapping(yaml.safe_load(fh), str(path))
        _check_keys(raw, _TOP_KEYS, str(path))
        base_dir = path.resolve().parent
        for name, r in _as_mapping(raw.get("roots"), f"{path}: roots").items():
            r = _as_mapping(r, f"{path}: root {name!r}")
            _check_keys(r, _ROOT_KEYS, f"{path}: root {name!r}")
            self.roots[name] = RootSpec(name, r.get("env"), r.get("default"), str(r.get("description", "")))
        new: list[DatasetSpec] = []
        for name, fam in _as_mapping(raw.get("families"), f"{path}: families").items():
            new += _family_specs(name, _as_mapping(fam, f"{path}: family {name!r}"), base_dir, str(path))
        for key, entry in _as_mapping(raw.get("datasets"), f"{path}: datasets").items():
            new.append(_entry_spec(key, _as_mapping(entry, f"{path}: dataset {key!r}"), base_dir, str(path)))
        for spec in new:
            if spec.root is not None and spec.root not in self.roots:
                raise DatasetRegistryError(
                    f"{spec.source}: dataset {spec.key!r} names root {spec.root!r}; "
                    f"known roots: {', '.join(self.roots) or '(none)'}"
                )
            if spec.key in self.specs and self.specs[spec.key].source != spec.source:
                logger.info(
                    "dataset %r from %s overrides the entry from %s",
                    spec.key,
                    spec.source,
                    self.specs[spec.key].source,
                )
            self.specs[spec.key] = spec

    def keys(self) -> list[str]:
        """All dataset keys, in registry order."""
        return list(self.specs)

    def spec(self, key: str) -> DatasetSpec:
        """The entry for ``key``; an unknown key raises an error listing the closest and all known keys."""
        if key not in self.specs:
            close = difflib.get_close_matches(key, self.specs, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownDatasetError(
                f"unknown dataset key {key!r}.{hint} Known keys: {', '.join(self.specs)}. "
                f"Add your own in a YAML file passed as registry_path or listed in {EXTRA_REGISTRY_ENV}."
            )
        return self.specs[key]

    def resolve_root(self, name: str, data_root: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
        """Folder of root ``name`` and where it came from (for error messages).

        Order: ``data_root``, the root's environment variable, ``$VISIONAD_DATA_ROOT``, the root's default.
        A root with a default (the development data) ignores ``data_root`` and ``$VISIONAD_DATA_ROOT``, so
        one ``--data_root`` for a benchmark does not move it.
        """
        root = self.roots[name]
        if data_root is not None and root.default is None:
            return Path(data_root).expanduser(), "the data_root argument (--data_root)"
        if root.env and os.environ.get(root.env):
            return Path(os.environ[root.env]).expanduser(), f"${root.env}"
        if root.default is None and os.environ.get(GENERAL_ROOT_ENV):
            return Path(os.environ[GENERAL_ROOT_ENV]).expanduser(), f"${GENERAL_ROOT_ENV}"
        if root.default is not None:
            default = os.path.normpath(os.path.expanduser(root.default.replace("{repo}", str(REPO_ROOT))))
            return Path(default), f"the default of root {name!r}"
        env = f"set {root.env} or {GENERAL_ROOT_ENV}" if root.env else f"set {GENERAL_ROOT_ENV}"
        raise FileNotFoundError(f"no folder given for root {name!r}: pass data_root (--data_root) or {env}")

    def _base(self, spec: DatasetSpec, data_root: str | os.PathLike[str] | None) -> tuple[Path, str]:
        if spec.root is None:
            return spec.base_dir, f"the folder of {spec.source}"
        try:
            return self.resolve_root(spec.root, data_root)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"dataset {spec.key!r}: {err}") from None

    def dataset(self, key: str, data_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Resolve ``key`` to VisionAD's dataset dict, checking that every folder exists."""
        spec = self.spec(key)
        base, origin = self._base(spec, data_root)

        def locate(p: str) -> Path:
            q = Path(os.path.expandvars(p)).expanduser()
            return q if q.is_absolute() else base / q

        def need(folder: Path, what: str) -> str:
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"dataset {key!r}: {what} folder not found: {folder} (base folder {base} from {origin})"
                )
            return str(folder)

        out: dict[str, Any] = {"dataset_key": key}
        if spec.layout == "folders":
            for k, v in spec.folders.items():
                if k == "folder_path_novel_masks" and not spec.pixel_labels:
                    continue  # image-level labels only: masks are not used even if listed
                out[k] = need(locate(v), k) if isinstance(v, str) else [need(locate(p), k) for p in v]
        else:
            assert spec.path is not None
            cls = Path(need(locate(spec.path), "class"))
            out["folder_path_regular_train"] = need(cls / "train" / "good", "training (train/good)")
            out["folder_path_regular_test"] = need(cls / "test" / "good", "regular test (test/good)")
            if spec.layout == "visa":
                out["folder_path_novel_test"] = need(cls / "test" / "bad", "anomalous test (test/bad)")
                if spec.pixel_labels:
                    out["folder_path_novel_masks"] = need(
                        cls / "ground_truth" / "bad", "mask (ground_truth/bad)"
                    )
            else:
                defects = sorted(
                    d
                    for d in os.listdir(need(cls / "test", "test"))
                    if d != "good" and (cls / "test" / d).is_dir()
                )
                if not defects:
                    raise FileNotFoundError(
                        f"dataset {key!r}: no defect folders (test/<defect>) in {cls / 'test'}"
                    )
                out["folder_path_novel_test"] = [str(cls / "test" / d) for d in defects]
                if spec.pixel_labels:
                    out["folder_path_novel_masks"] = [
                        need(cls / "ground_truth" / d, f"mask (ground_truth/{d})") for d in defects
                    ]
        out.setdefault("folder_path_novel_masks", None)
        out.update(spec.slicing)
        out["mean"] = list(spec.mean)
        out["std"] = list(spec.std)
        out["pixel_labels"] = spec.pixel_labels
        return out


def registry_files(
    registry_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> list[Path]:
    """The YAML files that make up the registry: built-in, then ``$VISIONAD_DATASETS_YAML``, then ``registry_path``."""
    files = [DEFAULT_REGISTRY_PATH]
    files += [Path(p) for p in os.environ.get(EXTRA_REGISTRY_ENV, "").split(os.pathsep) if p]
    if registry_path is not None:
        if isinstance(registry_path, (str, os.PathLike)):
            files.append(Path(registry_path))
        else:
            files += [Path(p) for p in registry_path]
    return files


def load_registry(
    registry_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> DatasetRegistry:
    """Read the built-in registry plus any user YAML files (see ``registry_files``)."""
    registry = DatasetRegistry()
    for path in registry_files(registry_path):
        registry.add_file(path)
    return registry


def known_dataset_keys(
    registry_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> list[str]:
    """Every dataset key the registry (built-in plus user files) defines."""
    return load_registry(registry_path).keys()


def load_dataset(
    key: str,
    data_root: str | os.PathLike[str] | None = None,
    registry_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> dict[str, Any]:
    """VisionAD's dataset dict for ``key``.

    Args:
        key: dataset key, e.g. ``mvtec_bottle``, ``visa_pcb4``, ``idw_birdstrike``, ``demo_brick``.
        data_root: folder that replaces the root of the entry (e.g. the MVTec AD folder for ``mvtec_*``).
        registry_path: user YAML file(s) added on top of the built-in registry.

    Returns:
        ``folder_path_regular_train`` / ``folder_path_regular_test`` (str), ``folder_path_novel_test`` /
        ``folder_path_novel_masks`` (a str, or for MVTec layout a list of defect folders, masks aligned with
        them; None when ``pixel_labels`` is False), the six ``*_start`` / ``*_end`` slice bounds (None = all),
        ``skip_*`` (>= 1), ``mean`` and ``std`` (lists of 3 floats), ``pixel_labels`` (False: image-level
        labels only, no masks) and ``dataset_key``; pass it to ``loaders.create_dataloaders(**dataset)``.

    Raises:
        UnknownDatasetError: ``key`` is not in the registry (the message lists the known keys).
        FileNotFoundError: a folder is missing (the message names the key and the folder).
        DatasetRegistryError: a registry file is malformed (the message lists the valid keys).
    """
    return load_registry(registry_path).dataset(key, data_root)
