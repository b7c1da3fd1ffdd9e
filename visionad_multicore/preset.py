"""Predictor sets of MultiCore: the members' (distance, patch size, stride), the built-in MC2 / MC4 / MC8 presets
(SPEC section 3's table) and their YAML form. A preset YAML is what ``select-predictors`` writes and what
``multicore``'s ``preset`` accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from visionad_multicore.patchcore.distances import check_distance
from visionad_multicore.patchcore.predictor import PatchCorePlus

__all__ = ["PRESETS", "PRESET_DIR", "PredictorSpec", "Preset", "load_preset"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS: tuple[str, ...] = ("mc2", "mc4", "mc8")


@dataclass(frozen=True)
class PredictorSpec:
    """One Patchcore+ member: distance, patch size and patch stride."""

    distance: str
    patch_size: int
    stride: int

    def __post_init__(self) -> None:
        check_distance(self.distance)
        for name in ("patch_size", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PredictorSpec.{name} must be an integer >= 1, got {value!r}")

    def key(self, position: int) -> str:
        """Method name of the member at 1-based ``position``, e.g. ``p1_euclidean_p3_s1``."""
        return f"p{position}_{self.distance}_p{self.patch_size}_s{self.stride}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def predictor(self, **settings: Any) -> PatchCorePlus:
        """A :class:`PatchCorePlus` with this distance, patch size and stride; ``settings`` are its other
        constructor arguments (coreset size, backbone, seed, ...), checked by its constructor."""
        return PatchCorePlus(
            patch_size=self.patch_size, stride=self.stride, distance=self.distance, **settings
        )


@dataclass(frozen=True)
class Preset:
    """A named list of predictors; ``{name: mc2, predictors: [{distance, patch_size, stride}, ...]}`` in YAML."""

    name: str
    predictors: tuple[PredictorSpec, ...]

    def __post_init__(self) -> None:
        if not self.predictors:
            raise ValueError(f"preset {self.name!r} has no predictors")

    @property
    def member_keys(self) -> list[str]:
        """Method names of the members, in order."""
        return [spec.key(i + 1) for i, spec in enumerate(self.predictors)]

    def to_dict(self) -> dict[str, Any]:
        """The YAML / JSON form."""
        return {"name": self.name, "predictors": [spec.to_dict() for spec in self.predictors]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "<dict>") -> Preset:
        """Build from the YAML form; unknown or missing keys are errors naming ``source``."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: a preset must be a mapping with keys 'name' and 'predictors'")
        unknown = sorted(set(values) - {"name", "predictors"})
        if unknown:
            raise ValueError(
                f"{source}: unknown preset keys {unknown}; valid keys are ['name', 'predictors']"
            )
        if "predictors" not in values or not isinstance(values["predictors"], Sequence):
            raise ValueError(f"{source}: 'predictors' must be a list of {{distance, patch_size, stride}}")
        valid = [f.name for f in dataclasses.fields(PredictorSpec)]
        specs = []
        for i, item in enumerate(values["predictors"]):
            if not isinstance(item, Mapping) or set(item) != set(valid):
                raise ValueError(
                    f"{source}: predictor {i + 1} must have exactly the keys {valid}, got {item!r}"
                )
            try:
                specs.append(PredictorSpec(**item))
            except ValueError as err:
                raise ValueError(f"{source}: predictor {i + 1}: {err}") from err
        return cls(name=str(values.get("name", Path(source).stem)), predictors=tuple(specs))


def load_preset(preset: str | Path | Preset | Mapping[str, Any]) -> Preset:
    """Resolve a preset: a built-in name (``mc2``, ``mc4``, ``mc8``), a path to a YAML file, or its dict form.

    Raises:
        ValueError: unknown name (the message lists the built-in ones) or a malformed file.
    """
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, Mapping):
        return Preset.from_dict(preset)
    text = str(preset)
    if text.lower() in PRESETS:
        path = PRESET_DIR / f"{text.lower()}.yaml"
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"unknown preset {text!r}: not one of {list(PRESETS)} and no such YAML file")
    with open(path) as f:
        values = yaml.safe_load(f)
    return Preset.from_dict(values, source=str(path))
