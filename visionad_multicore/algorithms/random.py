"""``random``: a seeded chance-level baseline (random heatmaps and scores), VisionAD's sanity check.

Its metrics should sit near 0.5 AUC; anything far from that points at a harness or data problem. It also
exercises every hook of the VisionAD contract cheaply, which makes it the algorithm of the harness tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from visionad_multicore.atomic import atomic_path
from visionad_multicore.visionad.model_wrapper import ModelWrapper

HEATMAP_SIZE = 256


class WrapperRandom(ModelWrapper):
    """Uniform random heatmaps ``(N, 256, 256)`` and scores ``(N,)`` drawn from a seeded generator.

    The generator is reset to ``seed`` in ``pre_eval_processing`` and ``load_model``, so each evaluation
    (regular test set, then anomalous test set) gives the same outputs, and a saved then loaded model gives
    identical predictions.

    Args:
        seed: seed of the generator.
        methods: names of the methods to output (each gets its own independent draws).
        device: accepted for the VisionAD contract; outputs are made on the CPU.
        wandb: accepted for the VisionAD contract; unused.
    """

    def __init__(
        self,
        seed: int = 0,
        methods: tuple[str, ...] | list[str] = ("random",),
        device: str = "cpu",
        wandb: bool = False,
    ) -> None:
        super().__init__()
        self._configure(seed=seed, methods=methods, device=device, wandb=wandb)

    def _configure(self, seed: int, methods: tuple[str, ...] | list[str], device: str, wandb: bool) -> None:
        if isinstance(methods, str) or not methods:
            raise ValueError(f"methods must be a non-empty list of names, got {methods!r}")
        self.params = {
            "seed": int(seed),
            "methods": list(methods),
            "device": str(device),
            "wandb": bool(wandb),
        }
        self.seed = int(seed)
        self.methods = list(methods)
        self.epochs_trained = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def train_one_epoch(self) -> None:
        """Nothing to learn; counts the epoch (saved with the model)."""
        self.epochs_trained += 1

    def pre_eval_processing(self) -> None:
        """Reset the generator so every evaluation draws the same outputs."""
        self._generator = torch.Generator().manual_seed(self.seed)

    def eval_outputs_dataloader(self, dataloader: Iterator, len_dataloader: int) -> tuple[dict, dict]:
        """Draw one heatmap ``(256, 256)`` and one score per image yielded, for each method.

        Returns:
            ``({method: (N, 256, 256) float32}, {method: (N,) float32})``.
        """
        n_images = sum(int(images.shape[0]) for images, _ in dataloader)
        heatmaps, scores = {}, {}
        for method in self.methods:
            heatmaps[method] = torch.rand((n_images, HEATMAP_SIZE, HEATMAP_SIZE), generator=self._generator)
            scores[method] = torch.rand((n_images,), generator=self._generator)
        return heatmaps, scores

    def save_model(self, location: str | os.PathLike[str]) -> None:
        """Write ``model_params.json`` and the number of epochs trained to ``location``."""
        self.save_params(location)
        path = os.path.join(location, "state.pt")
        with atomic_path(path) as tmp:
            torch.save({"epochs_trained": self.epochs_trained}, tmp)

    def load_model(self, location: str | os.PathLike[str], **kwargs: Any) -> None:
        """Restore parameters and state saved by :meth:`save_model` (works on a fresh instance)."""
        self._configure(**self.load_params(location))
        state = torch.load(os.path.join(location, "state.pt"), weights_only=True)
        self.epochs_trained = int(state["epochs_trained"])
