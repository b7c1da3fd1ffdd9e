"""Streaming bank building: equal to the in-memory path, memory estimates and their errors, disk storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionad_multicore.patchcore import bank as bank_module
from visionad_multicore.patchcore.bank import BankBuilder, MemoryBudget, estimate_bank
from visionad_multicore.patchcore.coreset import greedy_coreset_indices, random_projection
from visionad_multicore.patchcore.distances import DISTANCES
from visionad_multicore.patchcore.predictor import PatchCorePlus

CHUNK = 100  # staging / projection block of these tests (the library's is 65,536 rows)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_module, "PROJECTION_CHUNK_ROWS", CHUNK)


def _batches(n_batches: int = 7, per_batch: int = 3, grid: int = 6, width: int = 160) -> list[torch.Tensor]:
    """Patch-feature batches of ``per_batch`` images with a ``grid x grid`` patch grid each."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(12, width, generator=gen) * 3
    out = []
    for _ in range(n_batches):
        n = per_batch * grid * grid
        out.append(centres[torch.randint(12, (n,), generator=gen)] + torch.randn(n, width, generator=gen))
    return out


def _reference(batches: list[torch.Tensor], size: int, distance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-memory path: concatenate, project in CHUNK-row blocks, select, gather."""
    bank = torch.cat(batches)
    proj = random_projection(bank, 128, seed=0, chunk_rows=CHUNK)
    from visionad_multicore.patchcore.coreset import coreset_rows, select_coreset

    idx = select_coreset(coreset_rows(proj, distance), size, distance, progress=False)
    assert torch.equal(idx, greedy_coreset_indices(bank, size, distance, progress=False))
    return idx, bank[idx]


def _build(batches: list[torch.Tensor], size: int, distance: str, **kwargs: object) -> bank_module.BuiltBank:
    with BankBuilder(distance, size, progress=False, **kwargs) as builder:  # type: ignore[arg-type]
        for b in batches:
            builder.add(b, (6, 6))
        return builder.finish()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize(
    "settings",
    [
        {"n_images": 21, "bank_storage": "memory"},
        {"n_images": 21, "bank_storage": "disk"},
        {"n_images": None, "bank_storage": "memory"},
        {"n_images": None, "bank_storage": "disk"},
        {"n_images": 30, "bank_storage": "auto"},  # fewer images than announced
    ],
    ids=["memory", "disk", "memory_growing", "disk_growing", "auto_fewer"],
)
def test_streaming_bank_equals_in_memory_path(distance: str, settings: dict, tmp_path: Path) -> None:
    batches = _batches()
    idx, vectors = _reference(batches, 150, distance)
    built = _build(batches, 150, distance, bank_dir=tmp_path, **settings)
    assert torch.equal(built.indices, idx)
    assert torch.equal(built.bank, vectors)
    assert built.n_seen == 7 * 3 * 36 and built.grid == (6, 6)
    assert list(tmp_path.iterdir()) == []  # the disk file is gone


def test_auto_spills_to_disk_when_the_budget_is_reached(tmp_path: Path) -> None:
    batches = _batches()
    idx, vectors = _reference(batches, 150, "euclidean")
    budget = MemoryBudget(limit_gb=600_000 / 1e9)  # holds the coreset rows, not the bank as well
    with BankBuilder("euclidean", 150, bank_dir=tmp_path, budget=budget, progress=False) as builder:
        for b in batches:
            builder.add(b, (6, 6))
        assert builder.storage == "disk" and len(list(tmp_path.iterdir())) == 1
        built = builder.finish()
    assert torch.equal(built.indices, idx) and torch.equal(built.bank, vectors)


def test_float16_storage_same_coreset_rounded_vectors(tmp_path: Path) -> None:
    batches = _batches()
    idx, vectors = _reference(batches, 150, "euclidean")
    for storage in ("memory", "disk"):
        built = _build(
            batches,
            150,
            "euclidean",
            n_images=21,
            bank_dtype="float16",
            bank_storage=storage,
            bank_dir=tmp_path,
        )
        assert torch.equal(built.indices, idx)  # chosen on rows projected from the float32 features
        assert built.bank.dtype == torch.float32
        assert torch.equal(built.bank, vectors.half().float())


def test_auto_chooses_disk_when_the_estimate_does_not_fit(tmp_path: Path) -> None:
    est = estimate_bank(21 * 36, 160, "euclidean", coreset_size=150)
    budget = MemoryBudget(limit_gb=(est.ram("disk") + 1000) / 1e9)
    with BankBuilder("euclidean", 150, bank_dir=tmp_path, budget=budget, n_images=21, progress=False) as b:
        b.add(_batches(1)[0], (6, 6))
        assert b.storage == "disk"
    assert list(tmp_path.iterdir()) == []  # closed without finishing: the file is removed too


def test_memory_estimate_error_is_numeric_and_names_the_setting() -> None:
    est = estimate_bank(21 * 36, 160, "euclidean", coreset_size=150)
    budget = MemoryBudget(limit_gb=est.ram("memory") / 2 / 1e9)
    builder = BankBuilder("euclidean", 150, bank_storage="memory", budget=budget, n_images=21, progress=False)
    with pytest.raises(
        MemoryError, match=r"needs \d+\.\d\d [MG]B of RAM.*bank_storage='disk'.*memory_limit_gb"
    ):
        builder.add(_batches(1)[0], (6, 6))
    assert builder.count == 0  # nothing was stored


def test_disk_error_when_even_the_rows_do_not_fit(tmp_path: Path) -> None:
    budget = MemoryBudget(limit_gb=1e-6)
    builder = BankBuilder("euclidean", 150, bank_dir=tmp_path, budget=budget, n_images=21, progress=False)
    with pytest.raises(MemoryError, match="even with the bank on disk.*projection_dim"):
        builder.add(_batches(1)[0], (6, 6))


def test_disk_space_error_names_bank_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Usage:
        free = 1000

    monkeypatch.setattr(bank_module.shutil, "disk_usage", lambda _folder: Usage())
    builder = BankBuilder(
        "euclidean", 150, bank_storage="disk", bank_dir=tmp_path, n_images=21, progress=False
    )
    with pytest.raises(OSError, match=r"[MG]B on disk in .*Set bank_dir"):
        builder.add(_batches(1)[0], (6, 6))


def test_growing_bank_error_when_over_budget(tmp_path: Path) -> None:
    builder = BankBuilder(
        "euclidean", 150, bank_storage="memory", budget=MemoryBudget(limit_gb=1e-5), progress=False
    )
    with pytest.raises(MemoryError, match=r"after \d+ patches .* [MG]B, over the memory budget"):
        for b in _batches():
            builder.add(b, (6, 6))


def test_shared_budget_across_builders() -> None:
    est = estimate_bank(21 * 36, 160, "euclidean", coreset_size=150)
    budget = MemoryBudget(limit_gb=1.5 * est.ram("memory") / 1e9)
    first = BankBuilder("euclidean", 150, bank_storage="memory", budget=budget, n_images=21, progress=False)
    second = BankBuilder("euclidean", 150, bank_storage="memory", budget=budget, n_images=21, progress=False)
    first.add(_batches(1)[0], (6, 6))
    with pytest.raises(MemoryError, match="already reserved"):
        second.add(_batches(1)[0], (6, 6))
    first.close()
    assert budget.reserved == 0


def test_estimate_of_the_paper_setting() -> None:
    # 4,140 images x 32 x 32 patches x 1024 dims: 17.4 GB float32 bank, 2.2 GB of coreset rows
    est = estimate_bank(4140 * 32 * 32, 1024, "euclidean", 128, 25_000)
    assert est.bank == 4140 * 1024 * 1024 * 4
    assert est.rows == 4140 * 1024 * 129 * 4
    assert est.ram("disk") < 3e9 < 8e9 < est.ram("memory")
    assert estimate_bank(4140 * 1024, 1024, "minkowski3").rows == 4140 * 1024 * 128 * 4  # no norm column


def test_more_images_than_announced_is_an_error() -> None:
    with pytest.raises(ValueError, match="more patches than the 2 announced images"):
        _build(_batches(), 150, "euclidean", n_images=2)


def test_predictor_fit_streams_and_fails_early(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = [
        [torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(i)), torch.randn(2, 16, 4, 4)]
        for i in range(3)
    ]
    ref = PatchCorePlus(coreset_size=50, feature_dim=64, progress=False).fit_features(maps)
    for settings in ({"bank_storage": "disk"}, {"bank_dtype": "float32", "bank_storage": "memory"}):
        model = PatchCorePlus(coreset_size=50, feature_dim=64, progress=False, **settings)
        model.fit_features(iter(maps), n_images=6)
        assert torch.equal(model.memory_bank_, ref.memory_bank_)
        assert torch.equal(model.coreset_indices_, ref.coreset_indices_)
    tiny = PatchCorePlus(
        coreset_size=50, feature_dim=64, progress=False, bank_storage="memory", memory_limit_gb=1e-6
    )
    seen = []

    def stream():  # the error comes at the first batch, before the rest is computed
        for m in maps:
            seen.append(1)
            yield m

    with pytest.raises(MemoryError, match="memory_limit_gb"):
        tiny.fit_features(stream(), n_images=6)
    assert len(seen) == 1


def test_invalid_bank_settings() -> None:
    with pytest.raises(ValueError, match="bank_dtype"):
        PatchCorePlus(bank_dtype="bfloat16")
    with pytest.raises(ValueError, match="bank_storage"):
        PatchCorePlus(bank_storage="ram")
    with pytest.raises(ValueError, match="memory_limit_gb"):
        PatchCorePlus(memory_limit_gb=0)
