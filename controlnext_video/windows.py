"""Planning of the overlapping temporal windows that cover a long clip (pure functions).

The reference denoises a clip of N frames in windows of `window_size` frames, starting every
`window_size - overlap` frames, the last one moved back to end on the last frame. Within every
window, frame 0 is conditioned on the reference pose (global pose 0) instead of its own pose;
so a window that starts after 0 does not contribute its first frame to the per-frame average.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

# Frames per GPU of an automatic segment length: a segment fused over G GPUs gets about G times
# this many frames, so it takes about as long as a one-GPU segment of this length.
AUTO_FRAMES_PER_GPU = 72


@dataclass(frozen=True)
class Window:
    """Frames `[start, stop)` of the clip, of which `[keep_from, stop)` enter the average."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def keep_from(self) -> int:
        return self.start if self.start == 0 else self.start + 1

    @property
    def control_indices(self) -> tuple[int, ...]:
        """Global pose index for each window frame: frame 0 takes the reference pose."""
        return (0, *range(self.start + 1, self.stop))


@dataclass(frozen=True)
class WindowPlan:
    num_frames: int
    window_size: int
    overlap: int
    windows: tuple[Window, ...]

    @cached_property
    def counts(self) -> tuple[int, ...]:
        """How many windows contribute to each frame's average."""
        counts = [0] * self.num_frames
        for w in self.windows:
            for i in range(w.keep_from, w.stop):
                counts[i] += 1
        return tuple(counts)


def plan_windows(num_frames: int, window_size: int, overlap: int) -> WindowPlan:
    """Windows covering `num_frames` frames, as the reference places them.

    The effective window size is `min(window_size, num_frames)`; a clip no longer than one
    window is a single window. Raises ValueError for arguments that leave frames uncovered.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if window_size < 1:
        raise ValueError(f"window_size must be at least 1, got {window_size}")
    if not 0 <= overlap < window_size:
        raise ValueError(f"overlap must be in [0, window_size={window_size}), got {overlap}")
    size = min(window_size, num_frames)
    if size == num_frames:
        return WindowPlan(num_frames, size, overlap, (Window(0, num_frames),))
    if overlap < 1:
        raise ValueError(
            f"overlap must be at least 1 when the clip ({num_frames} frames) is longer than window_size "
            f"({window_size}): the first frame of every later window is conditioned on the reference pose "
            "and left out, so windows must overlap to cover it"
        )
    stride = size - overlap
    starts = [min(s, num_frames - size) for s in range(0, num_frames - overlap, stride)]
    return WindowPlan(num_frames, size, overlap, tuple(Window(s, s + size) for s in starts))


def segment_windows(frames: int, window_size: int, overlap: int) -> int:
    """The windows a segment of `frames` output frames is denoised in (its frames plus the
    reference pose frame the pipeline puts first)."""
    return len(plan_windows(frames + 1, window_size, overlap).windows)


def auto_segment_length(window_size: int, overlap: int, gpus: int, frames_per_gpu: int = AUTO_FRAMES_PER_GPU) -> int:
    """A segment length for segments fused over `gpus` GPUs: about `frames_per_gpu * gpus`
    frames, made so that a segment's windows (its frames plus the reference pose frame) number a
    multiple of `gpus`, so that no GPU idles in any step (speed-up cap W / ceil(W / G) = G).
    """
    if gpus < 1 or frames_per_gpu < 1:
        raise ValueError(f"gpus and frames_per_gpu must be at least 1, got {gpus} and {frames_per_gpu}")
    if not 0 < overlap < window_size:
        raise ValueError(f"overlap must be in (0, window_size={window_size}), got {overlap}")
    stride = window_size - overlap
    target = segment_windows(frames_per_gpu * gpus, window_size, overlap)
    windows = gpus * max(1, round(target / gpus))
    # the most pipeline frames that `windows` windows cover, less the reference pose frame
    return overlap + windows * stride - 1
