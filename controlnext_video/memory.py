"""Memory planning on the GPU: how many windows per UNet call, and a retry at a smaller plan on
out-of-memory instead of a failed job.

The first guess comes from the free GPU memory and an estimate of one window's activation memory;
the estimate is deliberately simple (activations scale with batch x frames x latent pixels), and
an out-of-memory error during a step halves the batch and carries on with the same step, so a
wrong guess costs one failed call, not the job.
"""

from __future__ import annotations

import torch

# Estimated peak activation bytes per latent element of one UNet call, per byte of the compute
# dtype (SVD UNet with SDPA attention). An estimate to be calibrated on each GPU kind: the
# out-of-memory fallback keeps a too-small estimate safe.
ACTIVATION_BYTES_PER_ELEMENT = 4500
# Share of the free memory the plan may use (the rest: allocator slack, the decoder, other work).
MEMORY_HEADROOM = 0.8


def window_bytes(height: int, width: int, window_size: int, dtype: torch.dtype, cfg: bool = True) -> int:
    """Estimated activation memory of one window in one UNet call."""
    latent_pixels = (height // 8) * (width // 8)
    element_size = torch.finfo(dtype).bits // 8
    return int((2 if cfg else 1) * window_size * latent_pixels * ACTIVATION_BYTES_PER_ELEMENT * element_size)


def plan_windows_per_batch(
    free_bytes: int, height: int, width: int, window_size: int, dtype: torch.dtype, num_windows: int
) -> int:
    """How many windows to denoise in one UNet call with `free_bytes` of free memory (at least 1)."""
    per_window = window_bytes(height, width, window_size, dtype)
    return max(1, min(num_windows, int(free_bytes * MEMORY_HEADROOM) // max(per_window, 1)))


def free_memory(device: torch.device, limit_bytes: int | None = None) -> int | None:
    """Free bytes on a CUDA device (None elsewhere: no plan, one window per call).

    With `limit_bytes` (a memory cap for this process, e.g. to share a card or to hold a plan
    inside a smaller card's memory), what this process may still allocate under the cap counts.
    """
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if limit_bytes is not None:
        free = min(free, max(0, limit_bytes - torch.cuda.memory_reserved(device)))
    return int(free)


def apply_memory_limit(device: torch.device, limit_bytes: int | None) -> None:
    """Make the CUDA caching allocator refuse allocations past `limit_bytes` (an out-of-memory
    error the pipeline's fallback handles), so a cap is enforced and not only planned for;
    None lifts the cap."""
    if limit_bytes is not None and limit_bytes <= 0:
        raise ValueError(f"memory limit must be positive, got {limit_bytes} bytes")
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = 1.0 if limit_bytes is None else min(1.0, limit_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
