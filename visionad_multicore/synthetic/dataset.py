"""A reproducible synthetic-anomaly set: SSA masks paired with clean training images, noised inside the mask.

The set is built from images that already went through the training dataset's resize and normalisation,
i.e. exactly what the test images go through, so synthetic and test images can never be resized differently
(one of the mistakes of the reference code). It holds its own copy of those images and never touches a
dataloader: in the reference code the noise hook stayed on the training loader that also fed the memory bank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from visionad_multicore.synthetic.anomalies import AnomalyMix, apply_anomaly, resolve_mix
from visionad_multicore.synthetic.masks import MaskSet
from visionad_multicore.synthetic.noise import add_noise


def split_bank_fusion(n: int, bank_share: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` training images into a memory-bank share and a held-out fusion share, reproducibly.

    Synthetic anomalies must come from images that are *not* in the memory bank scoring them (an image's
    clean regions would match themselves, unlike a test image's). Both the coverage search and MultiCore
    use this one rule.

    Args:
        n: Number of training images (>= 2).
        bank_share: Fraction for the memory bank, in (0, 1). The fusion share gets
            ``max(1, round(n * (1 - bank_share)))`` images and the bank the rest (at least 1).
        seed: Seed of the random permutation.

    Returns:
        ``(bank_idx, fusion_idx)``: sorted disjoint int64 index arrays covering ``range(n)``.
    """
    if not 0.0 < bank_share < 1.0:
        raise ValueError(f"bank_share must be in (0, 1), got {bank_share}")
    if n < 2:
        raise ValueError(f"need at least 2 training images to split into bank and fusion shares, got {n}")
    n_fusion = min(max(1, round(n * (1.0 - bank_share))), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_fusion:]).astype(np.int64), np.sort(perm[:n_fusion]).astype(np.int64)


def _balanced_indices(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices into ``range(count)`` from concatenated random permutations (uses differ by <= 1)."""
    reps = -(-size // count)  # ceil
    return np.concatenate([rng.permutation(count) for _ in range(reps)])[:size]


class SyntheticAnomalySet(Dataset):
    """Synthetic anomalies: item ``i`` is a clean training image noised inside an SSA mask.

    ``clean_images`` are taken straight from the training dataset's items, so they are already resized and
    normalised as test images are. To add noise in [0, 1] pixel space the image is unnormalised
    (``x * std + mean``), noised inside the mask, clipped to [0, 1] and normalised again. Normalisation is a
    per-pixel affine map and NEAREST resizing only copies pixels, so the two commute: this is the same as
    noising the image before the loader's normalise + resize (with the mask at the resized size). With a
    smoothing resize (bilinear, antialias) the two differ slightly at mask borders; the masks are drawn at
    the model input size, so the noise grain is then one model pixel either way.

    Pairing: mask and image indices are reproducible from ``seed``; each mask (and each image) is used
    ``size // N`` or ``size // N + 1`` times. The noise of item ``i`` comes from a generator seeded with
    ``(seed, i)``, so an item is the same whatever order or worker it is read in.

    Args:
        clean_images: ``(M, 3, H, W)`` normalised training images (held out of any memory bank).
        mean: Per-channel normalisation mean (3 values) the images were normalised with.
        std: Per-channel normalisation std (3 values).
        mask_set: SSA masks; resized NEAREST to ``(H, W)`` if drawn at another size (a very small mask can
            vanish when shrunk; prefer drawing masks at the model input size).
        size: Number of synthetic items (the paper uses 4000).
        noise_std: Noise std in [0, 1] pixel units (when ``mix`` is None: the paper's noise-only content).
        per_channel: Independent noise per channel instead of one grey field (same condition).
        seed: Seed of the pairing and of the anomalies.
        mix: What fills the masks: ``None`` (Gaussian noise of ``noise_std``, the paper's recipe), a preset
            name of :mod:`visionad_multicore.synthetic.anomalies` (``paper``, ``mixed``, ``subtle``), an
            :class:`~visionad_multicore.synthetic.anomalies.AnomalyMix` or its dict form. ``cutpaste`` content
            comes from another image of ``clean_images``.
    """

    def __init__(
        self,
        clean_images: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        mask_set: MaskSet,
        size: int = 4000,
        noise_std: float = 0.5,
        per_channel: bool = False,
        seed: int = 0,
        mix: str | AnomalyMix | Mapping[str, Any] | None = None,
    ) -> None:
        if clean_images.dim() != 4 or clean_images.shape[0] == 0:
            raise ValueError(
                f"clean_images must be a non-empty (M, C, H, W) tensor, got {tuple(clean_images.shape)}"
            )
        if len(mask_set) == 0:
            raise ValueError("mask_set holds no masks")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        c, h, w = clean_images.shape[1:]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if self.mean.shape[0] != c or self.std.shape[0] != c:
            raise ValueError(
                f"mean and std need {c} values (one per channel), got {list(mean)} and {list(std)}"
            )
        self.clean_images = clean_images.detach().float().cpu()
        masks = torch.from_numpy(mask_set.masks)  # (N, d, d) bool
        if masks.shape[1:] != (h, w):
            masks = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
        self.masks = masks  # (N, H, W) bool
        self.size = int(size)
        self.noise_std = float(noise_std)
        self.per_channel = bool(per_channel)
        self.seed = int(seed)
        self.mix = None if mix is None else resolve_mix(mix)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xDA7A]))
        self.mask_index = _balanced_indices(len(mask_set), self.size, rng)  # (size,)
        self.image_index = _balanced_indices(clean_images.shape[0], self.size, rng)  # (size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image (C, H, W) normalised, mask (1, H, W) float in {0, 1})`` of item ``i``."""
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a synthetic set of {self.size}")
        i = i % self.size
        mask = self.masks[self.mask_index[i]][None].float()  # (1, H, W)
        image = self.clean_images[self.image_index[i]]  # (C, H, W)
        if mask.any() and (self.mix is not None or self.noise_std > 0):
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1)
            )
            image01 = image * self.std + self.mean
            if self.mix is None:
                changed = add_noise(image01, mask, self.noise_std, self.per_channel, generator)  # (C, H, W)
            else:
                changed, _ = apply_anomaly(image01, mask, self.mix, generator, self._donor(i, generator))
            # re-normalise only inside the mask so clean pixels stay bit-identical to the input
            image = torch.where(mask.bool(), (changed - self.mean) / self.std, image)
        return image.clone(), mask

    def _donor(self, i: int, generator: torch.Generator) -> torch.Tensor:
        """Another clean image in [0, 1] (the same one if there is only one) for cut-paste content."""
        n = self.clean_images.shape[0]
        j = int(self.image_index[i])
        if n > 1:
            j = (j + 1 + int(torch.randint(0, n - 1, (), generator=generator))) % n
        return self.clean_images[j] * self.std + self.mean

    def fingerprint(self) -> str:
        """SHA-256 of everything that determines the items (images, masks, pairing, noise settings, seed)."""
        digest = hashlib.sha256(b"visionad_multicore.SyntheticAnomalySet/1")
        for array in (
            self.clean_images.numpy(),
            self.masks.numpy(),
            self.mask_index,
            self.image_index,
            self.mean.numpy(),
            self.std.numpy(),
        ):
            digest.update(np.ascontiguousarray(array).tobytes())
            digest.update(str(array.shape).encode())
        digest.update(repr((self.size, self.noise_std, self.per_channel, self.seed)).encode())
        if self.mix is not None:
            digest.update(repr(sorted(self.mix.to_dict().items())).encode())
        return digest.hexdigest()

    def tensors(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack items into ``(images (K, C, H, W), masks (K, 1, H, W))`` (all items by default)."""
        idx = range(self.size) if indices is None else indices
        items = [self[int(i)] for i in idx]
        return torch.stack([x for x, _ in items]), torch.stack([m for _, m in items])
