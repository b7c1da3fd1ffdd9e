"""UNet of the Heatmap Fusion Module: shapes, batch independence, residual start, seeding."""

from __future__ import annotations

import pytest
import torch

from visionad_multicore.fusion.unet import UNet


@pytest.mark.parametrize(("channels", "depth", "size"), [(2, 2, (32, 32)), (4, 3, (40, 24)), (1, 1, (17, 9))])
def test_output_shape(channels: int, depth: int, size: tuple[int, int]) -> None:
    net = UNet(channels, base_channels=4, depth=depth)
    out = net(torch.randn(3, channels, *size))
    assert out.shape == (3, 1, *size)


def test_batch_of_one_equals_in_batch_and_train_equals_eval() -> None:
    torch.manual_seed(0)
    net = UNet(3, base_channels=8, depth=3, residual_mean=False, seed=1)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    net.eval()
    with torch.no_grad():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(5)])
        net.train()
        in_train_mode = net(x)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, in_train_mode, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched, torch.zeros_like(batched))


def test_no_batchnorm() -> None:
    net = UNet(2, base_channels=8, depth=2)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_residual_mean_starts_at_channel_mean() -> None:
    net = UNet(4, base_channels=4, depth=2, residual_mean=True)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), x.mean(dim=1, keepdim=True))


def test_same_seed_same_weights_different_seed_different() -> None:
    a, b, c = (UNet(2, 4, 2, residual_mean=False, seed=s) for s in (3, 3, 4))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.inc[0].weight, c.inc[0].weight)


def test_gradients_reach_first_layer_after_one_step() -> None:
    net = UNet(2, 4, 2, residual_mean=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 2, 16, 16), torch.rand(2, 1, 16, 16)
    for _ in range(2):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    assert net.inc[0].weight.grad is not None and net.inc[0].weight.grad.abs().sum() > 0


def test_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="expected input"):
        UNet(3, 4, 2)(torch.randn(1, 2, 16, 16))


def test_work_size_runs_low_and_returns_requested_size() -> None:
    net = UNet(2, base_channels=4, depth=2, residual_mean=True, work_size=16)
    x = torch.randn(2, 2, 64, 48)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 1, 64, 48)
        assert net(x, out_size=(32, 32)).shape == (2, 1, 32, 32)
        low = torch.randn(2, 2, 16, 16)
        torch.testing.assert_close(net(low), low.mean(dim=1, keepdim=True))  # identity start at work size
    with pytest.raises(ValueError, match="work_size"):
        UNet(2, 4, depth=3, work_size=4)


@pytest.mark.parametrize("work_size", [None, 16, 32, 48])
def test_untrained_module_is_exactly_the_full_resolution_mean(work_size: int | None) -> None:
    """Identity at init whatever the work size: the mean is never routed through the low-resolution path."""
    net = UNet(3, base_channels=4, depth=2, residual_mean=True, work_size=work_size)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    x[:, :, 30, :] += 5.0  # a one-pixel line every member sees must survive
    with torch.no_grad():
        assert torch.equal(net(x), x.mean(dim=1, keepdim=True))


def test_no_transposed_convolutions() -> None:
    """Upsampling is interpolation + conv (a stride-2 transposed conv paints a 2 x 2 checkerboard)."""
    net = UNet(2, base_channels=4, depth=3, residual_mean=False, seed=0)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 2 * 4 + 3 * 3 + 1
