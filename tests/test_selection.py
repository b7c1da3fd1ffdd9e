"""Tests of the greedy coverage search (visionad_multicore.selection) and the select-predictors command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from visionad_multicore import selection
from visionad_multicore.cli import main
from visionad_multicore.ensemble import PredictorSpec, load_preset
from visionad_multicore.patchcore.predictor import PatchCorePlus
from visionad_multicore.selection import (
    START,
    ScoringSettings,
    coverage_search,
    default_candidates,
    load_candidates,
    pixel_auc_criterion,
    score_candidates,
)
from visionad_multicore.synthetic.dataset import SyntheticAnomalySet
from visionad_multicore.synthetic.masks import SSAConfig, generate_masks

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny convolutions run far faster on one thread on a shared 2-core machine (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_default_candidates_are_the_48_paper_settings() -> None:
    cands = default_candidates()
    assert len(cands) == 48 == len(set(cands))
    assert cands[0] == START == PredictorSpec("euclidean", 3, 1)
    assert {(c.patch_size, c.stride, c.distance) for c in cands} == {
        (p, s, d)
        for p in (1, 3, 5, 7)
        for s in (1, 3, 5)
        for d in ("euclidean", "cosine", "minkowski3", "manhattan")
    }


def test_load_candidates(tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text(
        "- {distance: cosine, patch_size: 1, stride: 3}\n- {distance: euclidean, patch_size: 3, stride: 1}\n"
    )
    assert load_candidates(bare) == [PredictorSpec("cosine", 1, 3), START]
    preset = tmp_path / "preset.yaml"
    preset.write_text("name: x\npredictors:\n  - {distance: manhattan, patch_size: 5, stride: 5}\n")
    assert load_candidates(preset) == [PredictorSpec("manhattan", 5, 5)]
    dup = tmp_path / "dup.yaml"
    dup.write_text(
        "- {distance: cosine, patch_size: 1, stride: 3}\n- {distance: cosine, patch_size: 1, stride: 3}\n"
    )
    with pytest.raises(ValueError, match="duplicates"):
        load_candidates(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {distance: cosine, patch: 1, stride: 3}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_candidates(bad)


def test_default_criterion_is_the_exact_unflipped_pixel_auroc() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((6, 32, 32)) < 0.1
    maps = (rng.normal(size=(6, 32, 32)) + 1.2 * masks).astype(np.float16)  # ties, as in the cache
    exact = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auc_criterion(maps, masks) == pytest.approx(exact, abs=1e-12)
    assert pixel_auc_criterion(-maps, masks) == pytest.approx(1 - exact, abs=1e-12)  # unflipped
    with pytest.raises(ValueError, match="class"):
        pixel_auc_criterion(maps, np.zeros_like(masks))


def _toy_problem() -> tuple[dict[PredictorSpec, np.ndarray], np.ndarray]:
    """Anomalies of two kinds: START sees kind 1 only, B kind 2 only, C is noise, D duplicates START."""
    rng = np.random.default_rng(1)
    n, h = 12, 16
    masks = np.zeros((n, h, h), dtype=bool)
    kind1 = np.zeros_like(masks)
    kind2 = np.zeros_like(masks)
    for i in range(n - 2):  # the last two items are nominal (empty masks)
        y, x = rng.integers(0, h - 4, size=2)
        target = kind1 if i % 2 == 0 else kind2
        target[i, y : y + 4, x : x + 4] = True
    masks = kind1 | kind2
    noise = rng.normal(0, 0.3, size=(4, n, h, h))
    maps = {
        START: 3.0 * kind1 + noise[0],
        PredictorSpec("cosine", 1, 1): 3.0 * kind2 + noise[1],
        PredictorSpec("manhattan", 5, 5): rng.normal(0, 1.0, size=(n, h, h)),
        PredictorSpec("euclidean", 7, 3): 3.0 * kind1 + noise[3],
    }
    return {k: v.astype(np.float16) for k, v in maps.items()}, masks


def test_coverage_search_adds_the_complementary_predictor_then_stops() -> None:
    maps, masks = _toy_problem()
    seen = []

    def evaluate(mean_maps: np.ndarray, m: np.ndarray) -> dict[str, float]:
        seen.append(mean_maps.copy())
        return {"P-AUC": float(roc_auc_score(m.ravel(), mean_maps.ravel()))}

    result = coverage_search(maps, masks, max_predictors=8, evaluate=evaluate, progress=False)
    assert result.chosen[:2] == (START, PredictorSpec("cosine", 1, 1))
    assert [s.step for s in result.steps] == list(range(1, len(result.steps) + 1))
    values = [s.criterion for s in result.steps]
    assert all(b > a for a, b in zip(values, values[1:]))  # every accepted step improves strictly
    assert result.stop_reason in ("no improvement", "no candidates left")
    if result.stop_reason == "no improvement":
        assert result.best_rejected <= values[-1]
    assert PredictorSpec("manhattan", 5, 5) not in result.chosen  # pure noise never helps here
    # the evaluator sees the mean of the chosen normalised maps
    expected = (maps[START].astype(np.float32) + maps[PredictorSpec("cosine", 1, 1)].astype(np.float32)) / 2
    np.testing.assert_allclose(seen[1], expected, rtol=1e-6)
    assert abs(result.steps[1].metrics["P-AUC"] - values[1]) < 1e-3
    rows = result.table_rows()
    assert rows[0]["added"] == "euclidean p3 s1" and rows[1]["n_predictors"] == 2
    assert result.preset("toy").to_dict()["predictors"][1] == {
        "distance": "cosine",
        "patch_size": 1,
        "stride": 1,
    }


def test_coverage_search_limits_and_errors() -> None:
    maps, masks = _toy_problem()
    one = coverage_search(maps, masks, max_predictors=1, progress=False)
    assert one.chosen == (START,) and one.stop_reason == "maximum reached"
    two = coverage_search(
        maps, masks[:, None], max_predictors=2, progress=False
    )  # (N, 1, H, W) masks accepted
    assert len(two.chosen) == 2 and two.stop_reason == "maximum reached"
    without_start = {k: v for k, v in maps.items() if k != START}
    with pytest.raises(ValueError, match="start predictor"):
        coverage_search(without_start, masks, progress=False)
    with pytest.raises(ValueError, match="must all match"):
        coverage_search({**maps, PredictorSpec("cosine", 7, 5): np.zeros((2, 3, 3))}, masks, progress=False)
    # a criterion where nothing helps: the search stops after the start predictor
    flat = coverage_search(maps, masks, criterion=lambda m, k: 0.5, progress=False)
    assert flat.chosen == (START,) and flat.stop_reason == "no improvement"


# ------------------------------------------------------------------------------------------------ scoring
@pytest.fixture(scope="module")
def tiny_scoring_inputs() -> tuple[torch.Tensor, torch.Tensor, SyntheticAnomalySet]:
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    base = (
        torch.rand(1, 3, 8, 8, generator=g).repeat_interleave(8, -1).repeat_interleave(8, -2)
    )  # smooth texture
    images01 = (base + 0.05 * torch.rand(6, 3, 64, 64, generator=g)).clamp(0, 1)
    images = (images01 - mean) / std
    bank, clean = images[:4], images[4:]
    cfg = SSAConfig(
        size=64, buckets=(2, 4, 8), masks_per_bucket=3, multi_counts=(2,), masks_per_multi=2, n_empty=2
    )
    synthetic = SyntheticAnomalySet(clean, MEAN, STD, generate_masks(cfg, seed=0), size=10, seed=0)
    return bank, clean, synthetic


def _counting_backbone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the backbone builder used by selection so that it counts the images it is shown."""
    seen: list[int] = []
    real = selection.build_backbone

    def build(*args, **kwargs):  # type: ignore[no-untyped-def]
        extractor = real(*args, **kwargs)

        class Counting(torch.nn.Module):
            def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
                seen.append(int(images.shape[0]))
                return extractor(images)

        return Counting()

    monkeypatch.setattr(selection, "build_backbone", build)
    return seen


def test_score_candidates_one_backbone_pass_normalised_and_cached(
    tiny_scoring_inputs: tuple[torch.Tensor, torch.Tensor, SyntheticAnomalySet],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bank, clean, synthetic = tiny_scoring_inputs
    cands = [START, PredictorSpec("cosine", 1, 1), PredictorSpec("manhattan", 3, 3)]
    settings = ScoringSettings(coreset_size=40, batch_size=4)
    seen = _counting_backbone(monkeypatch)
    maps = score_candidates(cands, bank, clean, synthetic, MEAN, STD, settings, tmp_path, progress=False)
    # one backbone pass per image, whatever the number of candidates
    assert sum(seen) == len(bank) + len(clean) + len(synthetic)
    assert list(maps) == cands
    for spec in cands:
        assert maps[spec].shape == (10, 64, 64) and maps[spec].dtype == np.float16
    # normalisation: recompute one candidate by hand with the same predictor
    member = PatchCorePlus(
        patch_size=1,
        stride=1,
        distance="cosine",
        coreset_size=40,
        seed=0,
        input_mean=MEAN,
        input_std=STD,
        progress=False,
    ).fit([bank])
    clean_maps = member.predict([clean]).heatmaps.double()
    syn_images, _ = synthetic.tensors()
    expected = (member.predict([syn_images]).heatmaps.double() - clean_maps.mean()) / clean_maps.std()
    np.testing.assert_allclose(maps[cands[1]].astype(np.float64), expected.numpy(), atol=0.02, rtol=0.01)

    # second call: every candidate from the cache, no backbone built at all
    def no_backbone(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the backbone must not run on a full cache hit")

    monkeypatch.setattr(selection, "build_backbone", no_backbone)
    again = score_candidates(cands, bank, clean, synthetic, MEAN, STD, settings, tmp_path, progress=False)
    for spec in cands:
        assert np.array_equal(np.asarray(again[spec]), maps[spec])
    assert len(list(tmp_path.glob("*.npy"))) == 3 and len(list(tmp_path.glob("*.json"))) == 3
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["norm_std"] > 0 and meta["shape"] == [10, 64, 64]
    # a different setting is a different cache entry
    other = ScoringSettings(coreset_size=41, batch_size=4)
    keys = {selection.cache_key(START, s, "data") for s in (settings, other)}
    assert len(keys) == 2
    assert selection.cache_key(START, settings, "data") == selection.cache_key(
        START, ScoringSettings(coreset_size=40, batch_size=2, device="cuda"), "data"
    )


def test_select_predictors_command_never_reads_test_images(
    tiny_mvtec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    opened: list[str] = []
    real_open = Image.open

    def recording_open(fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"datasets:\n  tiny:\n    path: {tiny_mvtec}\n")
    cands = tmp_path / "cands.yaml"
    cands.write_text(
        "- {distance: cosine, patch_size: 1, stride: 1}\n- {distance: manhattan, patch_size: 3, stride: 3}\n"
    )
    out = tmp_path / "out" / "preset.yaml"
    argv = [
        "select-predictors",
        "--dataset",
        "tiny",
        "--registry",
        str(registry),
        "--candidates",
        str(cands),
        "--size",
        "64",
        "--coreset-size",
        "30",
        "--synthetic-size",
        "16",
        "--max-predictors",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert opened and all("/train/" in p for p in opened), [p for p in opened if "/train/" not in p]
    preset = load_preset(out)
    assert preset.predictors[0] == START and 1 <= len(preset.predictors) <= 3
    assert "\n| 1 | euclidean p3 s1 | 1 |" in out.with_suffix(".md").read_text()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["n_bank"] == 6 and record["n_fusion"] == 2 and len(record["candidates"]) == 3
    assert "chosen:" in capsys.readouterr().out
    # rerun: everything from the cache (beside --out), same preset
    assert len(list((out.parent / ".preset_cache").glob("*.npy"))) == 3
    assert main(argv) == 0
    assert load_preset(out) == preset
