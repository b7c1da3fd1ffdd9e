"""``slow_random``: WrapperRandom that sleeps in every training epoch, so a test can interrupt a run mid-pair.

Registered by subprocess tests with ``ALGORITHMS["slow_random"] = "tests.slow_random:SlowRandom"``.
"""

from __future__ import annotations

import time

from visionad_multicore.algorithms.random import WrapperRandom


class SlowRandom(WrapperRandom):
    """WrapperRandom whose ``train_one_epoch`` takes ``seconds``; outputs do not depend on it."""

    def __init__(self, seconds: float = 0.3, **params: object) -> None:
        super().__init__(**params)  # type: ignore[arg-type]
        self.seconds = float(seconds)
        self.params["seconds"] = self.seconds

    def train_one_epoch(self) -> None:
        time.sleep(self.seconds)
        super().train_one_epoch()
