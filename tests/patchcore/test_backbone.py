"""Backbones: the EfficientNet-Lite0 weight mapping classifies ImageNet images correctly; eval mode."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data

from visionad_multicore.patchcore.backbone import (
    FeatureExtractor,
    _TimmStagesBody,
    _WRN50Body,
    build_backbone,
    build_efficientnet_lite0_classifier,
    wrn50_weights_path,
)


@pytest.mark.parametrize(("image", "label"), [(data.chelsea, 285), (data.coffee, 967)])
def test_lite0_weights_classify(image, label: int) -> None:  # type: ignore[no-untyped-def]
    net = build_efficientnet_lite0_classifier()
    x = np.asarray(Image.fromarray(image()).resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    x = (torch.from_numpy(x).permute(2, 0, 1) - 0.5) / 0.5  # lite0 normalisation: mean = std = 0.5
    with torch.no_grad():
        assert int(net(x[None]).argmax()) == label  # 285 Egyptian cat, 967 espresso


def test_lite0_extractor_maps_and_eval_mode() -> None:
    fe = build_backbone("efficientnet_lite0")
    fe.train()
    assert not fe.training and not any(m.training for m in fe.modules())
    maps = fe(torch.zeros(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    assert fe.strides == (8, 16)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "wideresnet50"])
def test_batchnorm_folding_keeps_the_maps(name: str) -> None:
    """Every BatchNorm after a convolution is folded into it; the maps equal the unfolded network's."""
    gen = torch.Generator().manual_seed(0)
    if name == "efficientnet_lite0":
        body: torch.nn.Module = _TimmStagesBody(build_efficientnet_lite0_classifier(), keep=(2, 4))
        expected_folds = 33
    else:  # random weights with random BatchNorm statistics (no download): folding must not be a no-op
        body = _WRN50Body(torchvision.models.wide_resnet50_2(weights=None))
        for m in body.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.data.uniform_(0.5, 1.5, generator=gen)
        expected_folds = sum(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    body.eval()
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        reference = body(x)
    fe = FeatureExtractor(
        copy.deepcopy(body), name, (1, 1), (8, 16), (0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3
    )
    assert fe.folded_batchnorms == expected_folds
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fe.modules())
    for a, b in zip(fe(x), reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_cpu_micro_batches_give_the_whole_batch_maps() -> None:
    """Chunking the batch on a CPU (cache-sized micro-batches) returns the maps of one whole-batch call."""
    fe = build_backbone("efficientnet_lite0")
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fe.cpu_chunk_pixels = 2 * 64 * 64 // torch.get_num_threads()
    assert fe.chunk_size(x) == 2  # three calls: 2 + 2 + 1 images
    chunked = fe(x)
    fe.cpu_chunk_pixels = None
    assert fe.chunk_size(x) == 5
    whole = fe(x)
    for a, b in zip(chunked, whole):
        assert a.shape == b.shape and a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_renormalisation_from_loader_stats() -> None:
    """An image normalised with any loader stats reaches the body normalised as lite0 expects."""
    img01 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    fe = build_backbone("efficientnet_lite0", input_mean=mean, input_std=std)
    x = (img01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x * fe.scale + fe.shift, (img01 - 0.5) / 0.5)


def test_unknown_backbone_lists_registry() -> None:
    with pytest.raises(ValueError, match="wideresnet50, efficientnet_lite0"):
        build_backbone("no_such_net_xyz")


def test_wrn50_offline_message(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="efficientnet_lite0") as err:
        wrn50_weights_path(allow_download=False)
    assert str(tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth") in str(err.value)
