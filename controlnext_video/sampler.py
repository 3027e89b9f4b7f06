"""The long-video sampler: per-step fusion of overlapping windows (k-diffusion style).

A sampler is a plain function of a window denoiser, the current latents and a scheduler whose
timesteps are set. At each timestep every window is denoised from the current global latents;
the guided model outputs are averaged per frame over the windows that keep that frame, and the
public `scheduler.step` is called once for the whole clip.

This equals the reference, which steps each window separately (resetting the scheduler's private
step index) and averages the stepped latents: for a fixed input an Euler step is affine in the
model output, so averaging outputs then stepping gives the same latents, without touching
scheduler internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .memory import is_out_of_memory
from .windows import Window, WindowPlan

# (scaled latents (1, N, C, h, w), timestep, windows) -> one guided model output
# (1, window.size, C, h, w) per window, in order.
WindowDenoiser = Callable[[torch.Tensor, torch.Tensor, Sequence[Window]], Sequence[torch.Tensor]]
# (step index, timestep, latents after the step) -> the latents to go on from
StepEnd = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def sample_windows(
    denoise: WindowDenoiser,
    latents: torch.Tensor,
    scheduler,
    plan: WindowPlan,
    *,
    windows_per_batch: int = 1,
    on_step_end: StepEnd | None = None,
    on_out_of_memory: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Denoise `latents` over `scheduler.timesteps` with per-step window fusion.

    Shapes: latents `(1, N, C, h, w)` with `N == plan.num_frames` -> same shape.
    `on_step_end(step_index, t, latents)` is called after each step (0-based) and returns the
    latents to continue from (the same tensor, or a replacement). When a batch of several windows
    runs out of memory, the batch size is halved and the same step goes on;
    `on_out_of_memory(new_windows_per_batch)` is told (a batch of one window re-raises).
    """
    if latents.shape[1] != plan.num_frames:
        raise ValueError(f"latents have {latents.shape[1]} frames, the window plan {plan.num_frames}")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    counts = torch.tensor(plan.counts, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)
    windows = plan.windows
    timesteps = scheduler.timesteps
    for step, t in enumerate(timesteps):
        scaled = scheduler.scale_model_input(latents, t)
        total = torch.zeros_like(latents)
        done = 0
        while done < len(windows):
            batch = windows[done : done + windows_per_batch]
            try:
                outputs = denoise(scaled, t, batch)
            except Exception as exc:
                if not is_out_of_memory(exc) or windows_per_batch == 1:
                    raise
                windows_per_batch //= 2
                if on_out_of_memory is not None:
                    on_out_of_memory(windows_per_batch)
                continue
            for window, output in zip(batch, outputs, strict=True):
                first = window.keep_from - window.start
                total[:, window.keep_from : window.stop] += output[:, first:].to(total.dtype)
            done += len(batch)
        latents = scheduler.step(total / counts, t, latents, return_dict=False)[0]
        if on_step_end is not None:
            latents = on_step_end(step, t, latents)
    return latents
