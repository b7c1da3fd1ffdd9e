"""Streaming memory-bank building: patch features in, coreset rows beside them, the coreset gathered at the end.

A :class:`BankBuilder` receives the patch features of one batch at a time and never holds the bank twice:

- the features go, in blocks of :data:`~visionad_multicore.patchcore.coreset.PROJECTION_CHUNK_ROWS` rows (the
  blocks the in-memory projection always used, so the projected values are the same), to the bank storage:
  a pre-allocated tensor (``float32``, or ``float16`` to halve it), or a file on disk when the bank does not
  fit the memory budget;
- each block is projected at once with the seeded matrix and turned into coreset rows
  (:func:`~visionad_multicore.patchcore.coreset.coreset_rows`, (N, 129) float32) on the selection's device;
- :meth:`BankBuilder.finish` runs the greedy selection on those rows, frees them, and gathers the chosen
  full vectors (float32) from the storage.

Before the first block is stored the builder estimates what it will hold (:class:`BankEstimate`) and reserves
it in a :class:`MemoryBudget`; when the estimate cannot fit, it fails at once with the numbers and the setting
to change. Peak memory for N vectors of width D: the storage (N * D * 2 or 4 bytes, or nothing on disk), the
coreset rows (N * 129 * 4 bytes), one staging block (65,536 * D * 4 bytes) and the selection's (N,) vectors:
4.2 M patches of 1024 dims take 2.3 GB of RAM with the bank on disk, against 35 GB before (bank, its
concatenated copy and two projected copies).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionad_multicore.patchcore.coreset import (
    PROJECTION_CHUNK_ROWS,
    coreset_rows,
    coreset_width,
    projection_matrix,
    select_coreset,
)
from visionad_multicore.patchcore.distances import check_distance

logger = logging.getLogger(__name__)

BANK_DTYPES: tuple[str, ...] = ("float32", "float16")
BANK_STORAGES: tuple[str, ...] = ("auto", "memory", "disk")
DEFAULT_MEMORY_SHARE = 0.8  # default budget: this share of the memory available when fitting starts
_GB = 1e9


def _size(nbytes: float) -> str:
    """Bytes as GB (1e9) with two decimals, or MB below 0.1 GB."""
    return f"{nbytes / _GB:.2f} GB" if abs(nbytes) >= 0.1 * _GB else f"{nbytes / 1e6:.2f} MB"


def check_bank_settings(bank_dtype: str, bank_storage: str, memory_limit_gb: float | None) -> None:
    """Raise a ``ValueError`` naming the setting when one of the bank settings is invalid."""
    if bank_dtype not in BANK_DTYPES:
        raise ValueError(f"unknown bank_dtype {bank_dtype!r}; known: {', '.join(BANK_DTYPES)}")
    if bank_storage not in BANK_STORAGES:
        raise ValueError(f"unknown bank_storage {bank_storage!r}; known: {', '.join(BANK_STORAGES)}")
    if memory_limit_gb is not None and (isinstance(memory_limit_gb, bool) or not memory_limit_gb > 0):
        raise ValueError(f"memory_limit_gb must be a positive number or None, got {memory_limit_gb!r}")


def available_memory_bytes() -> int:
    """Memory the kernel reports as available (``MemAvailable``), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class MemoryBudget:
    """RAM (and disk space) that bank builders may reserve; one budget can serve every member of an ensemble.

    Args:
        limit_gb: RAM limit in GB (1e9 bytes); ``None``: 80 % of the memory the kernel reports available now
            (what this process already holds, e.g. the training images, is not counted as available).
    """

    def __init__(self, limit_gb: float | None = None) -> None:
        self.explicit = limit_gb is not None
        self.limit = (
            int(limit_gb * _GB)
            if limit_gb is not None
            else int(DEFAULT_MEMORY_SHARE * available_memory_bytes())
        )
        self.reserved = 0
        self.disk_reserved: dict[str, int] = {}

    @property
    def remaining(self) -> int:
        """Bytes of RAM not yet reserved."""
        return self.limit - self.reserved

    def describe(self) -> str:
        """The limit and where it comes from, for error messages."""
        source = (
            "memory_limit_gb" if self.explicit else f"default: {DEFAULT_MEMORY_SHARE:.0%} of available memory"
        )
        return f"{_size(self.limit)} ({source}; {_size(self.reserved)} already reserved)"

    def reserve(self, nbytes: int) -> None:
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        self.reserved = max(0, self.reserved - nbytes)

    def disk_free(self, folder: Path) -> int:
        """Free bytes in ``folder`` minus what other builders reserved there."""
        return shutil.disk_usage(folder).free - self.disk_reserved.get(str(folder), 0)


@dataclass(frozen=True)
class BankEstimate:
    """What building a bank of ``n_vectors`` x ``width`` holds at its peak, in bytes.

    Attributes:
        n_vectors: patches in the bank; width: their dimension; bank_dtype: storage dtype.
        bank: the full bank at ``bank_dtype`` (RAM with memory storage, disk otherwise).
        rows: the coreset rows (N x 129 float32; on the selection's device).
        working: the staging block, the selection's (N,) vectors and the final bank with its index copies.
    """

    n_vectors: int
    width: int
    bank_dtype: str
    bank: int
    rows: int
    working: int

    def ram(self, storage: str, rows_on_host: bool = True) -> int:
        """Peak RAM with ``storage`` (``memory`` or ``disk``)."""
        return (self.bank if storage == "memory" else 0) + (self.rows if rows_on_host else 0) + self.working

    def describe(self, storage: str, rows_on_host: bool = True) -> str:
        parts = [f"coreset rows {_size(self.rows)}" + ("" if rows_on_host else " (on the GPU)")]
        if storage == "memory":
            parts.insert(0, f"bank {_size(self.bank)} ({self.n_vectors:,} x {self.width} {self.bank_dtype})")
        parts.append(f"working {_size(self.working)}")
        return f"{_size(self.ram(storage, rows_on_host))} of RAM = " + " + ".join(parts)


def estimate_bank(
    n_vectors: int,
    width: int,
    distance: str,
    projection_dim: int = 128,
    coreset_size: int = 25_000,
    bank_dtype: str = "float32",
) -> BankEstimate:
    """Peak memory of building a bank of ``n_vectors`` patch vectors of ``width`` dims (see :class:`BankEstimate`)."""
    item = 2 if bank_dtype == "float16" else 4
    rows = n_vectors * coreset_width(min(width, projection_dim), distance) * 4
    kept = min(n_vectors, coreset_size) * width * 4
    # staging block, min_dist / assign / block state of the selection, the final bank and two index copies
    working = min(n_vectors, PROJECTION_CHUNK_ROWS) * width * 4 + n_vectors * 12 + 3 * kept
    return BankEstimate(n_vectors, width, bank_dtype, n_vectors * width * item, rows, working)


@dataclass(frozen=True)
class BuiltBank:
    """Result of :meth:`BankBuilder.finish`: coreset ``indices`` (M,), ``bank`` (M, D) float32 CPU, counts."""

    indices: torch.Tensor
    bank: torch.Tensor
    n_seen: int
    grid: tuple[int, int] | None


class BankBuilder:
    """Builds one predictor's memory bank from a stream of patch-feature batches (see the module docstring).

    Args:
        distance: the predictor's distance.
        coreset_size: vectors kept.
        projection_dim: random-projection dimension of the selection.
        seed: seeds the projection and the first centre.
        device: device of the projection and the selection (``cuda`` keeps the coreset rows there).
        bank_dtype: ``float32`` or ``float16`` storage of the full bank (the coreset is chosen on rows
            projected from the float32 features either way; the kept vectors are the stored values).
        bank_storage: ``memory``, ``disk`` (a temporary file in ``bank_dir``) or ``auto`` (memory when the
            estimate fits the budget, else disk).
        bank_dir: folder of the disk storage (default: the system's temporary folder).
        budget: shared :class:`MemoryBudget` (default: a new one with the default limit).
        n_images: images that will be added, when known: the whole bank is estimated and allocated at the
            first batch. Unknown: storage grows block by block and the budget is checked at every block.
        progress: tqdm bar of the selection.
        label: name of the bank in messages (e.g. the member's key).
    """

    def __init__(
        self,
        distance: str,
        coreset_size: int,
        projection_dim: int = 128,
        seed: int = 0,
        device: str | torch.device = "cpu",
        bank_dtype: str = "float32",
        bank_storage: str = "auto",
        bank_dir: str | os.PathLike[str] | None = None,
        budget: MemoryBudget | None = None,
        n_images: int | None = None,
        progress: bool = True,
        label: str = "memory bank",
    ) -> None:
        check_distance(distance)
        check_bank_settings(bank_dtype, bank_storage, None)
        if n_images is not None and n_images < 1:
            raise ValueError(f"n_images must be >= 1 or None, got {n_images}")
        self.distance = distance
        self.coreset_size = coreset_size
        self.projection_dim = projection_dim
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = torch.float16 if bank_dtype == "float16" else torch.float32
        self.bank_dtype = bank_dtype
        self.requested_storage = bank_storage
        self.bank_dir = Path(bank_dir) if bank_dir is not None else Path(tempfile.gettempdir())
        self.budget = budget if budget is not None else MemoryBudget()
        self.n_images = n_images
        self.progress = progress
        self.label = label
        self.grid: tuple[int, int] | None = None
        self.width = 0
        self.count = 0  # rows stored (flushed)
        self.capacity: int | None = None
        self.storage = ""
        self._reserved = 0
        self._disk_reserved = 0
        self._staged = 0
        self._staging: torch.Tensor | None = None
        self._matrix: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None  # (capacity, w) when the size is known
        self._row_blocks: list[torch.Tensor] = []  # otherwise
        self._bank: torch.Tensor | None = None  # (capacity, D) memory storage when the size is known
        self._bank_blocks: list[torch.Tensor] = []  # otherwise
        self._file: Path | None = None

    # ------------------------------------------------------------------ streaming
    def add(self, features: torch.Tensor, grid: tuple[int, int]) -> None:
        """Append one batch of patch features.

        Args:
            features: (B * h * w, D) float tensor (any device), D the same for every batch.
            grid: (h, w) patch grid of one image.
        """
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"{self.label}: expected features (P, D), got shape {tuple(features.shape)}")
        if self._staging is None:
            self._start(features, grid)
        elif features.shape[1] != self.width:
            raise ValueError(f"{self.label}: feature width changed from {self.width} to {features.shape[1]}")
        assert self._staging is not None
        start = 0
        while start < features.shape[0]:
            take = min(features.shape[0] - start, self._staging.shape[0] - self._staged)
            self._staging[self._staged : self._staged + take] = features[start : start + take]
            self._staged += take
            start += take
            if self._staged == self._staging.shape[0]:
                self._flush()

    def _start(self, features: torch.Tensor, grid: tuple[int, int]) -> None:
        """Estimate, reserve, choose the storage and allocate, at the first batch."""
        self.grid = (int(grid[0]), int(grid[1]))
        self.width = int(features.shape[1])
        per_image = self.grid[0] * self.grid[1]
        rows_on_host = self.device.type == "cpu"
        if self.n_images is not None:
            self.capacity = self.n_images * per_image
            estimate = estimate_bank(
                self.capacity,
                self.width,
                self.distance,
                self.projection_dim,
                self.coreset_size,
                self.bank_dtype,
            )
            self.storage = self._choose_storage(estimate, rows_on_host)
            self._reserved = estimate.ram(self.storage, rows_on_host)
            self.budget.reserve(self._reserved)
            if self.storage == "disk":
                self._reserve_disk(estimate.bank)
            if not rows_on_host:
                self._check_device_memory(estimate.rows)
            logger.info(
                "%s: %d images x %d patches x %d dims -> %s storage; %s",
                self.label,
                self.n_images,
                per_image,
                self.width,
                self.storage,
                estimate.describe(self.storage, rows_on_host),
            )
        else:
            self.storage = "disk" if self.requested_storage == "disk" else "memory"
        block = PROJECTION_CHUNK_ROWS if self.capacity is None else min(PROJECTION_CHUNK_ROWS, self.capacity)
        self._staging = torch.empty(block, self.width, dtype=torch.float32, device=features.device)
        if self.width > self.projection_dim:
            self._matrix = projection_matrix(self.width, self.projection_dim, self.seed).to(self.device)
        row_width = coreset_width(min(self.width, self.projection_dim), self.distance)
        if self.capacity is not None:
            self._rows = torch.empty(self.capacity, row_width, dtype=torch.float32, device=self.device)
            if self.storage == "memory":
                self._bank = torch.empty(self.capacity, self.width, dtype=self.dtype)
        if self.storage == "disk":
            self._open_file()

    def _choose_storage(self, estimate: BankEstimate, rows_on_host: bool) -> str:
        in_memory = estimate.ram("memory", rows_on_host)
        on_disk = estimate.ram("disk", rows_on_host)
        remaining = self.budget.remaining
        if self.requested_storage == "memory" and in_memory > remaining:
            raise MemoryError(
                f"{self.label}: building the bank in memory needs {estimate.describe('memory', rows_on_host)}, "
                f"over the memory budget {self.budget.describe()}. Set bank_storage='disk' or 'auto' (the bank "
                f"then goes to a file in bank_dir), bank_dtype='float16' (halves the bank), or raise "
                f"memory_limit_gb."
            )
        if self.requested_storage == "memory" or (
            self.requested_storage == "auto" and in_memory <= remaining
        ):
            return "memory"
        if on_disk > remaining:
            raise MemoryError(
                f"{self.label}: even with the bank on disk, building it needs "
                f"{estimate.describe('disk', rows_on_host)}, over the memory budget {self.budget.describe()}. "
                f"Raise memory_limit_gb, lower projection_dim (the coreset rows are N x (projection_dim + 1) "
                f"float32) or coreset_size, or fit on fewer images or a larger patch stride."
            )
        return "disk"

    def _reserve_disk(self, nbytes: int) -> None:
        self.bank_dir.mkdir(parents=True, exist_ok=True)
        free = self.budget.disk_free(self.bank_dir)
        if nbytes > free:
            raise OSError(
                f"{self.label}: the bank needs {_size(nbytes)} on disk in {self.bank_dir}, which has "
                f"{_size(free)} free (after other banks' reservations). Set bank_dir to a folder with more "
                f"space, or bank_dtype='float16' (halves the file)."
            )
        key = str(self.bank_dir)
        self.budget.disk_reserved[key] = self.budget.disk_reserved.get(key, 0) + nbytes
        self._disk_reserved += nbytes

    def _check_device_memory(self, nbytes: int) -> None:
        free, _total = torch.cuda.mem_get_info(self.device)
        if nbytes > free:
            raise MemoryError(
                f"{self.label}: the coreset rows need {_size(nbytes)} on {self.device}, which has "
                f"{_size(free)} free. Lower projection_dim, fit on fewer images or a larger patch stride, "
                f"or select on the CPU (device='cpu')."
            )

    def _open_file(self) -> None:
        self.bank_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="visionad_bank_", suffix=".bin", dir=self.bank_dir)
        os.close(fd)
        self._file = Path(name)

    def _flush(self) -> None:
        """Project the staged block, store its coreset rows and its features; empty the staging block."""
        assert self._staging is not None
        n = self._staged
        if n == 0:
            return
        block = self._staging[:n]  # (n, D) float32
        if self._matrix is not None:
            projected = block.to(self.device, torch.float32) @ self._matrix  # (n, projection_dim)
        else:
            projected = block.to(device=self.device, dtype=torch.float32)
        rows = coreset_rows(projected, self.distance)  # (n, w)
        if self.capacity is not None:
            if self.count + n > self.capacity:
                raise ValueError(
                    f"{self.label}: more patches than the {self.n_images} announced images hold "
                    f"({self.capacity}); pass the right n_images (or None)"
                )
            assert self._rows is not None
            self._rows[self.count : self.count + n] = rows
        else:
            self._row_blocks.append(rows.clone() if rows.data_ptr() == block.data_ptr() else rows)
        stored = block.to("cpu", self.dtype)
        if self.storage == "disk":
            assert self._file is not None
            with open(self._file, "ab") as f:
                stored.numpy().tofile(f)
        elif self._bank is not None:
            self._bank[self.count : self.count + n] = stored
        else:
            self._bank_blocks.append(stored.clone() if stored.data_ptr() == block.data_ptr() else stored)
        self.count += n
        self._staged = 0
        if self.capacity is None:
            self._check_growing()

    def _check_growing(self) -> None:
        """Size unknown in advance: check the budget as the bank grows; spill an ``auto`` bank to disk."""
        held = sum(t.numel() * t.element_size() for t in self._bank_blocks)
        rows = sum(t.numel() * t.element_size() for t in self._row_blocks) if self.device.type == "cpu" else 0
        staging = 0 if self._staging is None else self._staging.numel() * 4
        if held + rows + staging <= self.budget.remaining:
            return
        if (
            self.storage == "memory"
            and self.requested_storage == "auto"
            and rows + staging <= self.budget.remaining
        ):
            logger.info(
                "%s: %.2f GB of bank in memory reaches the budget; moving it to disk", self.label, held / _GB
            )
            self._open_file()
            assert self._file is not None
            with open(self._file, "ab") as f:
                for t in self._bank_blocks:
                    t.numpy().tofile(f)
            self._bank_blocks = []
            self.storage = "disk"
            return
        what = "the coreset rows" if self.storage == "disk" else "the bank and its coreset rows"
        raise MemoryError(
            f"{self.label}: after {self.count:,} patches {what} hold {_size(held + rows + staging)}, over "
            f"the memory budget {self.budget.describe()}. Set bank_storage='disk' or 'auto', "
            f"bank_dtype='float16', raise memory_limit_gb, or fit on fewer images or a larger patch stride."
        )

    # ------------------------------------------------------------------ the coreset
    def finish(self) -> BuiltBank:
        """Select the coreset and gather its vectors; frees everything else (and deletes the disk file)."""
        if self._staging is None:
            raise ValueError(f"{self.label}: fit received no training batches")
        try:
            self._flush()
            self._staging = None
            if self._rows is not None:
                rows = self._rows[: self.count]
            else:
                rows = torch.cat(self._row_blocks) if len(self._row_blocks) > 1 else self._row_blocks[0]
                self._row_blocks = []
            self._rows = None
            indices = select_coreset(rows, self.coreset_size, self.distance, self.seed, self.progress)
            del rows
            bank = self._gather(indices)
        finally:
            self.close()
        return BuiltBank(indices, bank, self.count, self.grid)

    def _gather(self, indices: torch.Tensor) -> torch.Tensor:
        """(M, D) float32 vectors of ``indices`` from the storage, in selection order."""
        if self.storage == "disk":
            assert self._file is not None
            order = np.argsort(indices.numpy(), kind="stable")
            mapped = np.memmap(
                self._file, dtype=np.dtype(self.bank_dtype), mode="r", shape=(self.count, self.width)
            )
            picked = np.empty((len(order), self.width), dtype=np.float32)
            picked[order] = mapped[indices.numpy()[order]]  # ascending reads
            del mapped
            return torch.from_numpy(picked)
        if self._bank is not None:
            return self._bank[: self.count][indices].float().contiguous()
        starts = np.cumsum([0] + [len(t) for t in self._bank_blocks])
        block_of = np.searchsorted(starts, indices.numpy(), side="right") - 1
        out = torch.empty(len(indices), self.width, dtype=torch.float32)
        for b in np.unique(block_of):
            where = torch.from_numpy(np.nonzero(block_of == b)[0])
            out[where] = self._bank_blocks[b][indices[where] - int(starts[b])].float()
        return out

    def close(self) -> None:
        """Release the reservation and the storage (idempotent); called by :meth:`finish` and on errors."""
        self.budget.release(self._reserved)
        self._reserved = 0
        if self._disk_reserved:
            key = str(self.bank_dir)
            self.budget.disk_reserved[key] = max(
                0, self.budget.disk_reserved.get(key, 0) - self._disk_reserved
            )
            self._disk_reserved = 0
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None
        self._staging = None
        self._rows = None
        self._bank = None
        self._row_blocks = []
        self._bank_blocks = []

    def __enter__(self) -> BankBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
