"""Greedy "coverage" search for a set of Patchcore+ predictors (paper section 4.2; SPEC section 3).

The paper picks MultiCore's predictors by starting from predictor 1 (PatchCore's own settings: euclidean,
p = 3, s = 1) and repeatedly adding the candidate whose inclusion most improves a metric (P-AUC by default)
of the *mean of the normalised heatmaps* of the group, on synthetic anomalies made from training images
only; it stops when the metric no longer improves. The authors' code only hard-codes the result; this
module runs the search itself, for a new domain.

Two stages:

1. :func:`score_candidates`: every candidate's heatmaps of the synthetic set, normalised with the mean and
   std of that candidate's heatmaps on the *clean* fusion-share images, computed once and cached on disk
   (float16 ``.npy`` per candidate, keyed by a hash of everything that determines them). The memory banks
   are fitted on the bank share of the training images; the synthetic anomalies come from the held-out
   fusion share (:func:`~visionad_multicore.synthetic.dataset.split_bank_fusion`). All candidates share the
   backbone: each image goes through it once and its layer maps are kept in memory, so 48 candidates cost
   one backbone pass per image (plus their own patching, coreset and nearest-neighbour search).
2. :func:`coverage_search`: the greedy search over those maps. The default criterion is the pixel AUROC
   of all synthetic items (mask pixels positive, every other pixel, empty-mask items included, negative:
   VisionAD's ``Pixelwise_AUC`` on a test set), exact, by the package's one AUROC
   (:func:`visionad_multicore.auroc.binary_auroc`). An earlier 65,536-bin histogram approximation was
   dropped: on search-sized inputs (200 maps of 256 x 256, float16) the exact count took 0.28 s against the
   histogram's 0.54 s (``benchmarks/bench_selection_auroc.py``). The reported table uses whatever metric
   functions the caller passes in ``evaluate``.

Test images are never read: everything here sees training images only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from visionad_multicore.atomic import atomic_path, atomic_write_text
from visionad_multicore.auroc import binary_auroc
from visionad_multicore.member_maps import (
    ImageSource,
    LayerMaps,
    image_batches,
    member_heatmaps,
    normalisation_stats,
)
from visionad_multicore.patchcore.backbone import build_backbone
from visionad_multicore.preset import PredictorSpec, Preset

log = logging.getLogger(__name__)

PATCH_SIZES = (3, 1, 5, 7)
STRIDES = (1, 3, 5)
DISTANCES = ("euclidean", "cosine", "minkowski3", "manhattan")
START = PredictorSpec(distance="euclidean", patch_size=3, stride=1)  # predictor 1: PatchCore's settings
CACHE_FORMAT = "visionad_multicore.selection-cache/1"

Criterion = Callable[[np.ndarray, np.ndarray], float]
Evaluator = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


# ------------------------------------------------------------------------------------------------ candidates
def default_candidates() -> list[PredictorSpec]:
    """The paper's 48 predictor settings: patch size [3, 1, 5, 7] x stride [1, 3, 5] x the four distances."""
    return [
        PredictorSpec(distance=d, patch_size=p, stride=s)
        for p in PATCH_SIZES
        for s in STRIDES
        for d in DISTANCES
    ]


def spec_label(spec: PredictorSpec) -> str:
    """Short label, e.g. ``euclidean p3 s1``."""
    return f"{spec.distance} p{spec.patch_size} s{spec.stride}"


def load_candidates(path: str | os.PathLike[str]) -> list[PredictorSpec]:
    """Read candidates from YAML: a preset (``{name, predictors: [...]}``) or a bare list of predictors.

    Each predictor is ``{distance: ..., patch_size: ..., stride: ...}``; anything else is an error naming the
    file and the entry.
    """
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read candidates file {path}: {err}") from err
    if isinstance(values, list):
        values = {"name": path.stem, "predictors": values}
    specs = list(Preset.from_dict(values, source=str(path)).predictors)
    if len(set(specs)) != len(specs):
        raise ValueError(f"{path}: the candidates list holds duplicates")
    return specs


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ScoringSettings:
    """Settings of the candidates' Patchcore+ predictors (shared by all candidates).

    Attributes:
        backbone: Backbone name (``efficientnet_lite0`` offline, ``wideresnet50`` as in the paper).
        backbone_weights: Optional local weights file.
        coreset_size: Memory-bank size of every candidate.
        k: Neighbours averaged into a patch score.
        feature_dim: Pooled patch-feature dimension.
        feature_aggregation: Patch aggregation of every candidate (see :class:`PatchCorePlus`).
        projection_dim: Random-projection dimension of the coreset selection.
        sigma: Gaussian smoothing of the heatmaps, in pixels.
        seed: Seed of every candidate's coreset (the same for all, so candidates differ only in p, s, d).
        device: Device of the backbone and the predictors.
        batch_size: Images per backbone pass.
        knn_backend: ``auto``, ``faiss`` or ``torch`` (not part of the cache key: both give the same maps).
    """

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    coreset_size: int = 25_000
    k: int = 1
    feature_dim: int = 1024
    feature_aggregation: str = "auto"
    projection_dim: int = 128
    sigma: float = 4.0
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8
    knn_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("coreset_size", "k", "feature_dim", "projection_dim", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ScoringSettings.{name} must be a positive int, got {value!r}")

    def cache_fields(self) -> dict[str, Any]:
        """The settings that change the heatmaps (device, batching and kNN backend do not)."""
        values = dataclasses.asdict(self)
        for name in ("device", "batch_size", "knn_backend"):
            values.pop(name)
        return values


# ------------------------------------------------------------------------------------------------ images
def fingerprint(source: ImageSource) -> str:
    """SHA-256 of an image source: its own ``fingerprint()`` if it has one, else the bytes of every image."""
    own = getattr(source, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.sha256()
    for batch in image_batches(source, 64):
        digest.update(batch.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(str(len(source)).encode())  # type: ignore[arg-type]
    return digest.hexdigest()


def cache_key(spec: PredictorSpec, settings: ScoringSettings, data_fingerprint: str) -> str:
    """Hash of everything that determines one candidate's normalised synthetic heatmaps.

    The package version is part of the key, so a new release never reuses maps of an older predictor.
    """
    from visionad_multicore import __version__

    payload = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "predictor": spec.to_dict(),
        "settings": settings.cache_fields(),
        "data": data_fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def score_candidates(
    candidates: Sequence[PredictorSpec],
    bank_images: ImageSource,
    clean_images: ImageSource,
    synthetic_images: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    settings: ScoringSettings | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[PredictorSpec, np.ndarray]:
    """Every candidate's normalised heatmaps of the synthetic set (computed once, cached on disk).

    For each candidate: fit a Patchcore+ memory bank on ``bank_images``; its heatmaps of ``clean_images``
    give the normalisation ``mean`` and ``std`` (over all pixels); its heatmaps of ``synthetic_images`` are
    returned as ``(h - mean) / std`` in float16. The backbone sees each image once whatever the number of
    candidates, and only when some candidate is not in the cache.

    Args:
        candidates: Predictor settings to score.
        bank_images: Bank-share training images ``(Nb, 3, H, W)`` normalised with ``mean`` / ``std`` (or a
            dataset whose items start with such an image).
        clean_images: Clean fusion-share training images ``(Nf, 3, H, W)`` (never in the bank).
        synthetic_images: The synthetic anomalies ``(S, 3, H, W)``, e.g. a
            :class:`~visionad_multicore.synthetic.dataset.SyntheticAnomalySet` built on ``clean_images``.
        mean: Per-channel normalisation mean of the images (handed to the backbone).
        std: Per-channel normalisation std of the images.
        settings: Predictor settings shared by all candidates.
        cache_dir: Folder of the on-disk cache (``<key>.npy`` + ``<key>.json`` per candidate), or None to
            keep everything in memory only.
        progress: Show tqdm bars.

    Returns:
        ``{spec: maps (S, H, W) float16}`` in candidate order; cached maps are memory-mapped read-only.
    """
    settings = settings or ScoringSettings()
    if len(set(candidates)) != len(candidates):
        raise ValueError("candidates hold duplicates")
    data_fp = hashlib.sha256(
        "|".join(
            [
                fingerprint(bank_images),
                fingerprint(clean_images),
                fingerprint(synthetic_images),
                json.dumps([list(map(float, mean)), list(map(float, std))]),
            ]
        ).encode()
    ).hexdigest()
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    keys = {spec: cache_key(spec, settings, data_fp) for spec in candidates}
    results: dict[PredictorSpec, np.ndarray] = {}
    missing = []
    for spec in candidates:
        path = cache / f"{keys[spec]}.npy" if cache is not None else None
        if path is not None and path.exists() and path.with_suffix(".json").exists():
            results[spec] = np.load(path, mmap_mode="r")
        else:
            missing.append(spec)
    log.info("candidates: %d cached, %d to compute", len(candidates) - len(missing), len(missing))
    if missing:
        extractor = build_backbone(settings.backbone, settings.backbone_weights, settings.device, mean, std)
        start = time.perf_counter()
        passes = (
            (bank_images, "Backbone: bank share"),
            (clean_images, "Backbone: clean fusion share"),
            (synthetic_images, "Backbone: synthetic set"),
        )
        bank, clean, synthetic = (
            LayerMaps(extractor, images, settings.batch_size, settings.device, desc, progress)
            for images, desc in passes
        )
        n_images = len(bank) + len(clean) + len(synthetic)
        log.info("backbone pass over %d images in %.1f s", n_images, time.perf_counter() - start)
        del extractor
        for number, spec in enumerate(tqdm(missing, desc="Candidates", disable=not progress), start=1):
            t0 = time.perf_counter()
            member = spec.predictor(
                coreset_size=settings.coreset_size,
                k=settings.k,
                backbone=settings.backbone,
                backbone_weights=settings.backbone_weights,
                feature_dim=settings.feature_dim,
                feature_aggregation=settings.feature_aggregation,
                projection_dim=settings.projection_dim,
                knn_backend=settings.knn_backend,
                sigma=settings.sigma,
                seed=settings.seed,
                device=settings.device,
                input_mean=mean,
                input_std=std,
                progress=False,
            )
            member.fit_features(bank.on(settings.device))
            mean_, std_ = normalisation_stats(member_heatmaps(member, clean, settings.device), dims=(0, 1, 2))
            mu, sd = float(mean_), float(std_)
            maps = (
                ((member_heatmaps(member, synthetic, settings.device) - mean_) / std_)
                .numpy()
                .astype(np.float16)
            )
            results[spec] = maps
            if cache is not None:
                path = cache / f"{keys[spec]}.npy"
                with atomic_path(path, suffix=".npy") as tmp:
                    np.save(tmp, maps)
                meta = {
                    "format": CACHE_FORMAT,
                    "predictor": spec.to_dict(),
                    "settings": dataclasses.asdict(settings),
                    "data_fingerprint": data_fp,
                    "norm_mean": mu,
                    "norm_std": sd,
                    "shape": list(maps.shape),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))
            log.info(
                "candidate %d/%d %s scored in %.1f s (norm mean %.4g, std %.4g)",
                number,
                len(missing),
                spec_label(spec),
                time.perf_counter() - t0,
                mu,
                sd,
            )
    return {spec: results[spec] for spec in candidates}


# ------------------------------------------------------------------------------------------------ criteria
def pixel_auc_criterion(maps: np.ndarray, masks: np.ndarray) -> float:
    """Default search criterion: the exact pixel AUROC over every synthetic item (unflipped).

    Raises:
        ValueError: no anomalous or no normal pixel (:class:`~visionad_multicore.auroc.OneClassError`).
    """
    return binary_auroc(maps, masks)


# ------------------------------------------------------------------------------------------------ search
@dataclass(frozen=True)
class SearchStep:
    """One step of the greedy search.

    Attributes:
        step: 1-based step (step 1 is the start predictor alone).
        added: The predictor added at this step.
        predictors: The group after this step, in order of addition.
        criterion: The search criterion of the group's mean normalised heatmap.
        metrics: Exact metrics of that heatmap on the synthetic set (empty when no evaluator was given).
    """

    step: int
    added: PredictorSpec
    predictors: tuple[PredictorSpec, ...]
    criterion: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`coverage_search`.

    Attributes:
        steps: Every accepted step, the start predictor first.
        metric: Name of the search criterion.
        stop_reason: Why the search ended (``no improvement``, ``maximum reached``, ``no candidates left``).
        best_rejected: Criterion of the best candidate group that was not accepted (NaN if none was tried).
    """

    steps: tuple[SearchStep, ...]
    metric: str
    stop_reason: str
    best_rejected: float = float("nan")

    @property
    def chosen(self) -> tuple[PredictorSpec, ...]:
        """The selected predictors in order of addition."""
        return self.steps[-1].predictors

    def preset(self, name: str) -> Preset:
        """The chosen set as a preset (the YAML the multicore configs accept)."""
        return Preset(name=name, predictors=self.chosen)

    def table_rows(self) -> list[dict[str, Any]]:
        """Rows like the paper's Table 4: step, added predictor, group size, criterion and the metrics."""
        rows = []
        for s in self.steps:
            row: dict[str, Any] = {
                "step": s.step,
                "added": spec_label(s.added),
                "n_predictors": len(s.predictors),
                f"criterion ({self.metric})": round(s.criterion, 5),
            }
            row.update({name: (round(v, 4) if np.isfinite(v) else "n/a") for name, v in s.metrics.items()})
            rows.append(row)
        return rows


def coverage_search(
    maps: Mapping[PredictorSpec, np.ndarray],
    masks: np.ndarray,
    criterion: Criterion = pixel_auc_criterion,
    metric: str = "Pixelwise_AUC",
    max_predictors: int = 8,
    start: PredictorSpec = START,
    evaluate: Evaluator | None = None,
    progress: bool = True,
) -> SearchResult:
    """Greedy coverage search over candidates' normalised heatmaps of a synthetic set.

    Start from ``start``; at each step add the candidate (not yet chosen) whose inclusion maximises
    ``criterion(mean of the group's maps, masks)``; stop when the best addition does not improve the
    criterion strictly, when ``max_predictors`` are chosen, or when no candidate is left. Ties go to the
    candidate listed first.

    Args:
        maps: ``{spec: (N, H, W)}`` normalised heatmaps (float16 or float32, e.g. from
            :func:`score_candidates`); must contain ``start``.
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` binary synthetic masks (empty masks are nominal items).
        criterion: Function of ``(mean maps (N, H, W) float32, masks (N, H, W) bool)``; higher is better.
        metric: Name of the criterion, for the table.
        max_predictors: Most predictors in the group (>= 1).
        start: The first predictor (the paper's predictor 1).
        evaluate: Optional function giving the exact metrics of each accepted group for the table.
        progress: Show a tqdm bar per step.

    Returns:
        The :class:`SearchResult`.
    """
    if max_predictors < 1:
        raise ValueError(f"max_predictors must be >= 1, got {max_predictors}")
    if start not in maps:
        raise ValueError(f"the start predictor {spec_label(start)} is not among the candidates' maps")
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 4:
        masks = masks[:, 0]
    shape = np.shape(maps[start])
    for spec, m in maps.items():
        if np.shape(m) != shape or masks.shape != shape:
            raise ValueError(
                f"maps of {spec_label(spec)} {np.shape(m)} and masks {masks.shape} must all match"
            )

    total = np.asarray(maps[start], dtype=np.float32).copy()  # running sum of the group's maps (N, H, W)
    chosen = [start]

    def step_record(added: PredictorSpec, value: float) -> SearchStep:
        mean_maps = total / len(chosen)
        metrics = dict(evaluate(mean_maps, masks)) if evaluate is not None else {}
        return SearchStep(len(chosen), added, tuple(chosen), value, metrics)

    steps = [step_record(start, criterion(total, masks))]
    log.info("step 1: %s, %s = %.5f", spec_label(start), metric, steps[0].criterion)
    stop_reason = "maximum reached"
    best_rejected = float("nan")
    while len(chosen) < max_predictors:
        remaining = [spec for spec in maps if spec not in chosen]
        if not remaining:
            stop_reason = "no candidates left"
            break
        best_spec, best_value = None, -np.inf
        for spec in tqdm(remaining, desc=f"Step {len(chosen) + 1}", disable=not progress, leave=False):
            value = criterion((total + np.asarray(maps[spec], dtype=np.float32)) / (len(chosen) + 1), masks)
            if value > best_value:
                best_spec, best_value = spec, value
        assert best_spec is not None
        if not best_value > steps[-1].criterion:
            stop_reason = "no improvement"
            best_rejected = float(best_value)
            log.info(
                "stop: best addition %s gives %.5f <= %.5f",
                spec_label(best_spec),
                best_value,
                steps[-1].criterion,
            )
            break
        total += np.asarray(maps[best_spec], dtype=np.float32)
        chosen.append(best_spec)
        steps.append(step_record(best_spec, float(best_value)))
        log.info("step %d: + %s, %s = %.5f", len(chosen), spec_label(best_spec), metric, best_value)
    return SearchResult(tuple(steps), metric, stop_reason, best_rejected)
