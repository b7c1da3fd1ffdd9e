"""A clear error before any work when a CUDA device is asked for and absent; GPU end to end when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionad_multicore.algorithms.multicore import WrapperMultiCore
from visionad_multicore.algorithms.patchcore_plus import WrapperPatchCorePlus
from visionad_multicore.ensemble import MultiCore
from visionad_multicore.patchcore.device import check_device
from visionad_multicore.patchcore.predictor import PatchCorePlus

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available on this machine")


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_absent_cuda_is_a_clear_error(device: str) -> None:
    with pytest.raises(RuntimeError, match=r"CUDA is not available.*--device cpu"):
        check_device(device)


@NO_CUDA
@pytest.mark.parametrize(
    "build",
    [
        lambda: PatchCorePlus(device="cuda"),
        lambda: MultiCore("mc2", device="cuda"),
        lambda: WrapperPatchCorePlus(device="cuda"),
        lambda: WrapperMultiCore(device="cuda:0"),
    ],
    ids=["PatchCorePlus", "MultiCore", "patchcore_plus", "multicore"],
)
def test_models_refuse_absent_cuda_when_built(build: object) -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        build()  # type: ignore[operator]


def test_cpu_and_bad_names() -> None:
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not a torch device name"):
        check_device("gpu0")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_index_beyond_the_visible_ones() -> None:
    with pytest.raises(RuntimeError, match="CUDA device"):
        check_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("distance", ["euclidean", "cosine", "minkowski3", "manhattan"])
def test_gpu_predictor_matches_cpu(tiny_mvtec: Path, distance: str) -> None:
    from tests.patchcore.test_predictor import _load

    train = _load(tiny_mvtec / "train/good")
    test = _load(tiny_mvtec / "test/defect")
    # a bank kept whole: the same vectors on both devices, so the maps agree to float rounding
    cpu = PatchCorePlus(distance=distance, coreset_size=10_000, progress=False).fit(train.split(4))
    gpu = PatchCorePlus(distance=distance, coreset_size=10_000, device="cuda", progress=False).fit(
        train.split(4)
    )
    a, b = cpu.predict(test.split(2)), gpu.predict(test.split(2))
    torch.testing.assert_close(b.heatmaps, a.heatmaps, rtol=1e-3, atol=1e-3)
    # a real coreset on the GPU
    small = PatchCorePlus(distance=distance, coreset_size=100, device="cuda", progress=False).fit(
        train.split(4)
    )
    assert small.memory_bank_.shape[0] == 100 and len(set(small.coreset_indices_.tolist())) == 100
