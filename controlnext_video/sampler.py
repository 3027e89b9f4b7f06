"""The long-video sampler: per-step fusion of overlapping windows (k-diffusion style).

A sampler is a plain function of a window denoiser, the current latents and a scheduler whose
timesteps are set. At each timestep every window is denoised from the current global latents;
the guided model outputs are averaged per frame over the windows that keep that frame, and the
public `scheduler.step` is called once for the whole clip.

This equals the reference, which steps each window separately (resetting the scheduler's private
step index) and averages the stepped latents: for a fixed input an Euler step is affine in the
model output, so averaging outputs then stepping gives the same latents, without touching
scheduler internals.

Given a `torch.distributed` process group, the windows of each step are split over its ranks and
their outputs exchanged, with the same result as one process bit for bit
(`controlnext_video.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .distributed import WindowSplit, all_gather_uneven, check_same_on_all_ranks, rank_and_size, split_windows
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
    process_group=None,
) -> torch.Tensor:
    """Denoise `latents` over `scheduler.timesteps` with per-step window fusion.

    Shapes: latents `(1, N, C, h, w)` with `N == plan.num_frames` -> same shape.
    `on_step_end(step_index, t, latents)` is called after each step (0-based) and returns the
    latents to continue from (the same tensor, or a replacement). When a batch of several windows
    runs out of memory, the batch size is halved and the same step goes on;
    `on_out_of_memory(new_windows_per_batch)` is told (a batch of one window re-raises).

    With `process_group` (every rank calls with the same arguments and `windows_per_batch`),
    each rank denoises its share of the batches of `windows_per_batch` windows, the kept outputs
    are all-gathered every step and summed in window order on every rank: every rank returns the
    one-process result. `on_step_end` runs on every rank and must return the same on all.
    """
    if latents.shape[1] != plan.num_frames:
        raise ValueError(f"latents have {latents.shape[1]} frames, the window plan {plan.num_frames}")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    counts = torch.tensor(plan.counts, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)
    windows = plan.windows
    if process_group is None:
        exchange = None
    else:
        check_same_on_all_ranks(latents, process_group, "initial latents")
        check_same_on_all_ranks(torch.tensor([windows_per_batch]), process_group, "windows_per_batch")
        rank, world_size = rank_and_size(process_group)
        split = split_windows(len(windows), windows_per_batch, world_size)
        windows = tuple(plan.windows[i] for i in split.windows_of(rank))
        exchange = _OutputExchange(plan, split, latents, process_group)
    for step, t in enumerate(scheduler.timesteps):
        scaled = scheduler.scale_model_input(latents, t)
        outputs, windows_per_batch = _denoise_windows(denoise, scaled, t, windows, windows_per_batch, on_out_of_memory)
        if exchange is not None:
            outputs = exchange(outputs)
        total = torch.zeros_like(latents)
        for window, output in zip(plan.windows, outputs, strict=True):
            total[:, window.keep_from : window.stop] += output.to(total.dtype)
        latents = scheduler.step(total / counts, t, latents, return_dict=False)[0]
        if on_step_end is not None:
            latents = on_step_end(step, t, latents)
    return latents


def _denoise_windows(
    denoise: WindowDenoiser,
    scaled: torch.Tensor,
    t: torch.Tensor,
    windows: Sequence[Window],
    windows_per_batch: int,
    on_out_of_memory: Callable[[int], None] | None,
) -> tuple[list[torch.Tensor], int]:
    """Each window's kept output `(1, stop - keep_from, C, h, w)`, in order, `windows_per_batch`
    windows per call (halved on out-of-memory); returns them and the batch size now in force."""
    kept = []
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
            kept.append(output[:, window.keep_from - window.start :])
        done += len(batch)
    return kept, windows_per_batch


class _OutputExchange:
    """Every rank's kept window outputs of one step, gathered on every rank in window order."""

    def __init__(self, plan: WindowPlan, split: WindowSplit, latents: torch.Tensor, process_group) -> None:
        self.group, self.dtype, self.frame_shape = process_group, latents.dtype, tuple(latents.shape[2:])
        frame_elements = latents[0, 0].numel()
        # kept frames of each window, per rank
        self.frames = [[plan.windows[i].stop - plan.windows[i].keep_from for i in split.windows_of(r)]
                       for r in range(split.world_size)]
        self.sizes = [sum(frames) * frame_elements for frames in self.frames]
        self.frame_elements = frame_elements
        self.device = latents.device

    def __call__(self, mine: list[torch.Tensor]) -> list[torch.Tensor]:
        """Shapes: this rank's `(1, kept_i, C, h, w)` -> every window's, in window order."""
        flat = torch.cat([o.to(self.dtype).reshape(-1) for o in mine]) if mine else \
            torch.empty(0, dtype=self.dtype, device=self.device)
        outputs = []
        for part, frames in zip(all_gather_uneven(flat, self.sizes, self.group), self.frames, strict=True):
            pieces = part.split([n * self.frame_elements for n in frames])
            outputs.extend(piece.view(1, n, *self.frame_shape) for piece, n in zip(pieces, frames, strict=True))
        return outputs
