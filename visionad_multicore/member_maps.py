"""What every ensemble of Patchcore+ predictors computes before fusing, for MultiCore and the coverage search
(:mod:`visionad_multicore.selection`): the per-member normalisation statistics of clean heatmaps
(:func:`normalisation_stats`: mean and std over every pixel, the std floored at :data:`STD_FLOOR`), and, for the
search, which scores 48 candidates on the same images, one kept backbone pass per image (:class:`LayerMaps`)
and each member's heatmaps of an image set from it (:func:`member_heatmaps`). MultiCore does not keep layer
maps: its banks are streamed (:meth:`PatchCorePlus.add_to_bank`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from visionad_multicore.patchcore.predictor import PatchCorePlus

__all__ = ["STD_FLOOR", "ImageSource", "LayerMaps", "image_batches", "member_heatmaps", "normalisation_stats"]

STD_FLOOR = 1e-8
ImageSource = Tensor | Dataset


def image_batches(source: ImageSource, batch_size: int) -> Iterator[Tensor]:
    """``(B, 3, H, W)`` batches of a tensor ``(N, 3, H, W)`` or of a dataset whose items start with an image."""
    n = len(source)  # type: ignore[arg-type]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if isinstance(source, Tensor):
            yield source[start:stop]
        else:
            yield torch.stack([source[i][0] for i in range(start, stop)])


class LayerMaps:
    """Backbone layer maps of an image source, computed once (one pass per image) and kept on the CPU.

    Args:
        extractor: The backbone, ``(B, 3, H, W) -> [layer maps]``.
        source: Images ``(N, 3, H, W)`` or a dataset whose items start with an image.
        batch_size: Images per backbone pass.
        device: Device of the backbone pass.
        desc: Progress-bar label.
        progress: Show a tqdm bar.
    """

    def __init__(
        self,
        extractor: torch.nn.Module,
        source: ImageSource,
        batch_size: int,
        device: str,
        desc: str = "Backbone",
        progress: bool = True,
    ) -> None:
        self.batches: list[list[Tensor]] = []
        self.out_size: tuple[int, int] | None = None
        n_batches = -(-len(source) // batch_size)  # type: ignore[arg-type]
        with torch.no_grad():
            for batch in tqdm(
                image_batches(source, batch_size),
                total=n_batches,
                desc=desc,
                disable=not progress,
                leave=False,
            ):
                self.out_size = (int(batch.shape[-2]), int(batch.shape[-1]))
                maps = extractor(batch.to(device, dtype=torch.float32))
                self.batches.append([m.cpu() for m in maps])

    def __len__(self) -> int:
        return sum(batch[0].shape[0] for batch in self.batches)

    def on(self, device: str) -> Iterable[list[Tensor]]:
        """The batches' layer maps, moved to ``device`` one batch at a time."""
        for maps in self.batches:
            yield [m.to(device) for m in maps]


def member_heatmaps(member: PatchCorePlus, maps: LayerMaps, device: str) -> Tensor:
    """``(N, H, W)`` float32 CPU heatmaps of every image of ``maps`` by one fitted member."""
    assert maps.out_size is not None
    return torch.cat(
        [member.predict_features(m, maps.out_size).heatmaps.float().cpu() for m in maps.on(device)]
    )


def normalisation_stats(clean_maps: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and std (float64 sums, returned as float32) of clean heatmaps over ``dims``, std floored.

    Args:
        clean_maps: Heatmaps of clean images, e.g. ``(N, M, H, W)`` for M members (``dims=(0, 2, 3)``).
        dims: The axes averaged over (every pixel of every image).

    Returns:
        ``(mean, std)`` over the remaining axes.
    """
    values = clean_maps.double()
    return values.mean(dim=tuple(dims)).float(), values.std(dim=tuple(dims)).float().clamp_min(STD_FLOOR)
