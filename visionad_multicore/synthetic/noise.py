"""The SSA anomaly itself: zero-mean Gaussian noise added inside a mask, in [0, 1] pixel space.

The paper fixes the noise std at 0.5 (the value it found best) and applies it before the dataset's
normalisation. By default one grey noise field is shared by the three channels (as in the authors' code);
``per_channel=True`` draws each channel independently. The result is clipped to [0, 1], the range of a real
image (the authors' code did not clip, which leaves pixel values no camera can produce); clipping means a
pixel near 0 or 1 is pushed less in one direction than the other, which is part of what "noise" looks like
on a real image.
"""

from __future__ import annotations

import torch


def add_noise(
    images01: torch.Tensor,
    masks: torch.Tensor,
    std: float = 0.5,
    per_channel: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add Gaussian noise inside ``masks`` to images in [0, 1] and clip the result to [0, 1].

    Args:
        images01: ``(B, C, H, W)`` or ``(C, H, W)`` float images with values in [0, 1].
        masks: ``(B, 1, H, W)`` / ``(B, H, W)`` (or ``(1, H, W)`` / ``(H, W)`` for one image); bool or {0, 1}.
        std: Noise standard deviation in [0, 1] pixel units (>= 0).
        per_channel: Independent noise per channel instead of one field shared by all channels.
        generator: Seeded ``torch.Generator`` for reproducible noise (on the images' device).

    Returns:
        Noised images, same shape and dtype as ``images01``; pixels outside the masks are unchanged.
    """
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    single = images01.dim() == 3
    images = images01.unsqueeze(0) if single else images01  # (B, C, H, W)
    if images.dim() != 4:
        raise ValueError(f"images01 must be (B, C, H, W) or (C, H, W), got shape {tuple(images01.shape)}")
    b, c, h, w = images.shape
    m = masks.to(device=images.device)
    if single and m.dim() == 2:
        m = m.unsqueeze(0)  # (1, H, W)
    if m.dim() == 3:
        m = m.unsqueeze(1) if not single else m.unsqueeze(0)  # (B, 1, H, W)
    if m.shape != (b, 1, h, w):
        raise ValueError(
            f"masks of shape {tuple(masks.shape)} do not match images of shape {tuple(images01.shape)}"
        )
    m = m.to(images.dtype)
    channels = c if per_channel else 1
    noise = torch.randn((b, channels, h, w), generator=generator, device=images.device, dtype=images.dtype)
    out = (images + std * noise * m).clamp_(0.0, 1.0)  # (B, C, H, W); noise broadcasts over C if grey
    out = torch.where(m.bool(), out, images)  # outside the mask: exactly the input, even if out of [0, 1]
    return out.squeeze(0) if single else out
