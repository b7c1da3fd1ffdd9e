"""The Heatmap Fusion Module's network: a UNet (Ronneberger et al., MICCAI 2015) over stacked heatmaps.

Design choices (SPEC section 3, "Heatmap Fusion Module"):

- Normalisation is ``GroupNorm``. It normalises each sample on its own, so a batch of one, a sample inside a
  larger batch, and train versus eval mode all give the same output (BatchNorm in train mode at test time is
  one of the reference code's mistakes).
- Inputs of any height and width are accepted: they are reflect-padded up to a multiple of ``2 ** depth`` and
  the output is cropped back.
- ``work_size`` lets the network run at a lower resolution than its inputs (a CPU compromise; the paper's
  setting is ``None``, the native resolution): inputs are area-downsampled to ``work_size x work_size`` and the
  network's output is bilinearly upsampled to the input size. Member heatmaps are gaussian-smoothed (sigma
  4 px at 256 px), so little is lost at 128 px and not much at 64 px.
- With ``residual_mean=True`` the output is ``a * mean(x) + b + up(UNet(down(x)))``: the channel mean of the
  input *at the input's own resolution*, a learnable scale ``a`` (starts at 1) and offset ``b`` (starts at 0),
  and the UNet's correction, computed at ``work_size`` and upsampled. The UNet's last convolution starts at
  zero, so an untrained module is exactly the plain ensemble mean at any ``work_size`` (nothing of the mean is
  lost to the low-resolution path: a thin defect every member sees stays as sharp as in the mean), and
  training learns a correction to it (``a`` and ``b`` let the loss's sigmoid sharpen and shift the map).
- Upsampling inside the UNet is bilinear interpolation followed by a 3 x 3 convolution, not a transposed
  convolution: a stride-2 transposed convolution writes a 2 x 2 periodic pattern (checkerboard) that a
  trained module shows as a grid texture in its maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet"]


def _groups_for(channels: int, max_groups: int = 8) -> int:
    """The largest number of groups <= ``max_groups`` that divides ``channels``."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class _DoubleConv(nn.Sequential):
    """(3x3 conv -> GroupNorm -> ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(_groups_for(out_channels), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(_groups_for(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """Bilinear upsampling to the skip tensor's size, a 3x3 conv, concatenation with the skip, a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv = _DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, self.reduce(up)], dim=1))


class UNet(nn.Module):
    """UNet mapping ``in_channels`` stacked heatmaps to one fused heatmap.

    Args:
        in_channels: Number of input heatmaps (ensemble members).
        base_channels: Width of the first level; level ``i`` has ``base_channels * 2 ** i`` channels.
        depth: Number of 2x downsamplings (the original UNet has 4).
        residual_mean: Add the channel mean of the input to the output (see the module docstring).
        seed: Seed of the weight initialisation (a private generator; the global RNG is not used).
        work_size: Side of the square grid the network works on (``None``: the input's own size).

    Shapes:
        input ``(B, in_channels, H, W)`` -> output ``(B, 1, H, W)``: unbounded scores (logits); the loss applies
        a sigmoid, the fused anomaly map is the raw output.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        depth: int = 4,
        residual_mean: bool = True,
        seed: int = 0,
        work_size: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"UNet: in_channels must be >= 1, got {in_channels}")
        if base_channels < 1:
            raise ValueError(f"UNet: base_channels must be >= 1, got {base_channels}")
        if depth < 1:
            raise ValueError(f"UNet: depth must be >= 1, got {depth}")
        if work_size is not None and work_size < 2**depth:
            raise ValueError(f"UNet: work_size must be None or >= 2 ** depth = {2**depth}, got {work_size}")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.depth = depth
        self.residual_mean = residual_mean
        self.work_size = work_size

        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.inc = _DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(_DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(_Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        if residual_mean:
            self.residual_scale = nn.Parameter(torch.ones(1))
            self.residual_offset = nn.Parameter(torch.zeros(1))
        self._init_weights(torch.Generator().manual_seed(seed))

    def _init_weights(self, generator: torch.Generator) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.residual_mean:
            # Start as the identity on the ensemble mean: the correction begins at exactly zero.
            nn.init.zeros_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight, std=1e-2, generator=generator)
        assert self.head.bias is not None
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, out_size: tuple[int, int] | None = None) -> Tensor:
        """Fuse heatmaps.

        Args:
            x: Normalised heatmaps, ``(B, in_channels, H, W)``.
            out_size: Output ``(H_out, W_out)``; default the input's ``(H, W)``.

        Returns:
            Fused map ``(B, 1, H_out, W_out)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        target = size if out_size is None else (int(out_size[0]), int(out_size[1]))
        out = self.correction(x)  # (B, 1, h, w) at the work size
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)  # (B, 1, H, W)
        if self.residual_mean:
            out = out + self.residual_scale * x.mean(dim=1, keepdim=True) + self.residual_offset
        if target != size:
            out = F.interpolate(
                out, size=target, mode="bilinear", align_corners=False
            )  # (B, 1, H_out, W_out)
        return out

    def correction(self, x: Tensor) -> Tensor:
        """The UNet's own output at the work size (the correction added to the mean): ``(B, 1, h, w)``."""
        if self.work_size is not None and tuple(x.shape[-2:]) != (self.work_size, self.work_size):
            x = F.interpolate(x, size=(self.work_size, self.work_size), mode="area")  # (B, C, w, w)
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        padded = x
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            padded = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

        skips = [self.inc(padded)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], kernel_size=2)))
        out = skips.pop()
        for up in self.ups:
            out = up(out, skips.pop())
        return self.head(out)[..., :height, :width]  # (B, 1, h, w)
