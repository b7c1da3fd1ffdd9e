"""Device checks: a clear error before any work when a requested accelerator is absent."""

from __future__ import annotations

import torch


def check_device(device: str | torch.device) -> str:
    """Return ``device`` as a string if torch can use it, else raise ``RuntimeError`` saying why.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` (or another torch device name, passed through).

    Raises:
        RuntimeError: ``cuda`` asked for and CUDA unavailable, or a GPU index beyond the GPUs present.
        ValueError: not a torch device name.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {device!r} is not a torch device name (e.g. 'cpu', 'cuda', 'cuda:0')"
        ) from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} was requested but CUDA is not available here: torch "
                f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees no usable NVIDIA GPU "
                "(torch.cuda.is_available() is False). Run with device 'cpu' (--device cpu), or use a machine "
                "with an NVIDIA GPU, its driver and a CUDA build of torch."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise RuntimeError(
                f"device {str(device)!r} was requested but only {count} CUDA device(s) are visible "
                f"(cuda:0 .. cuda:{count - 1}); check CUDA_VISIBLE_DEVICES"
            )
    return str(device)
