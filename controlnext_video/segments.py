"""Segments: the unit of distribution of a long clip over GPU workers (pure functions).

A clip of M driving frames is split into segments of up to `segment_length` frames that overlap
by `segment_overlap` frames. Each segment is rendered on its own, anchored like the whole clip:
its pipeline input is `[reference pose] + its driving poses`, so every segment starts from the
same reference image and pose, and one segment covering the clip is exactly the reference
algorithm. Output frame j of the pipeline (j >= 1) is driving frame `start + j - 1`.

Initial noise for a frame depends only on `(seed, frame index)`, never on the plan, so frames
shared by two segments start from the same noise and a request renders the same video whatever
the number of workers. Overlapping frames are cross-faded with smooth weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import torch

from .distributed import decode_frames, rank_and_size
from .noise import keyed_noise

# The reference pose frame's noise index: driving frame i uses index i + 1.
REFERENCE_FRAME_INDEX = 0


@dataclass(frozen=True)
class Segment:
    """Driving frames `[start, stop)`, rendered as one pipeline call."""

    index: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def noise_indices(self) -> tuple[int, ...]:
        """Per pipeline frame, the global index its initial noise is drawn for."""
        return (REFERENCE_FRAME_INDEX, *range(self.start + 1, self.stop + 1))


@dataclass(frozen=True)
class SegmentPlan:
    num_frames: int
    segment_length: int
    segment_overlap: int
    segments: tuple[Segment, ...]

    def weights(self, segment: Segment) -> np.ndarray:
        """Blend weight of each of `segment`'s frames; weights of all segments sum to 1 per frame.

        A frame shared with the previous (next) segment fades in (out) over the shared frames
        with a raised-cosine ramp; where more than two segments cover a frame (overlap above
        half the segment length) the ramps are normalized to sum to one.
        """
        return self._ramp(segment) / self._ramp_totals[segment.start : segment.stop]

    @cached_property
    def _ramp_totals(self) -> np.ndarray:
        total = np.zeros(self.num_frames, dtype=np.float64)
        for other in self.segments:
            total[other.start : other.stop] += self._ramp(other)
        return total

    def _ramp(self, segment: Segment) -> np.ndarray:
        w = np.ones(segment.length, dtype=np.float64)
        i = segment.index
        if i > 0:
            shared = self.segments[i - 1].stop - segment.start
            w[:shared] *= fade_in(shared)
        if i + 1 < len(self.segments):
            shared = segment.stop - self.segments[i + 1].start
            w[segment.length - shared :] *= 1.0 - fade_in(shared)
        return w

    def segments_for_frame(self, frame: int) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.start <= frame < s.stop)


def fade_in(length: int) -> np.ndarray:
    """Raised-cosine ramp strictly between 0 and 1 over `length` frames."""
    x = (np.arange(length) + 1) / (length + 1)
    return 0.5 - 0.5 * np.cos(math.pi * x)


def plan_segments(num_frames: int, segment_length: int, segment_overlap: int) -> SegmentPlan:
    """Segments of `segment_length` frames overlapping by `segment_overlap`, covering the clip.

    The last segment is moved back to end on the last frame (so all segments have the same
    length, unless the clip is shorter than one segment).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if segment_length < 1:
        raise ValueError(f"segment_length must be at least 1, got {segment_length}")
    if not 0 <= segment_overlap < segment_length:
        raise ValueError(f"segment_overlap must be in [0, segment_length={segment_length}), got {segment_overlap}")
    if num_frames <= segment_length:
        return SegmentPlan(num_frames, segment_length, segment_overlap, (Segment(0, 0, num_frames),))
    stride = segment_length - segment_overlap
    starts = []
    for s in range(0, num_frames, stride):
        starts.append(min(s, num_frames - segment_length))
        if s + segment_length >= num_frames:
            break
    segments = tuple(Segment(i, s, s + segment_length) for i, s in enumerate(starts))
    return SegmentPlan(num_frames, segment_length, segment_overlap, segments)


def frame_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Initial noise `(1, len(indices), *shape)`: frame i's noise depends only on (seed, i)."""
    return keyed_noise(seed, indices, shape)


def blend_frames(plan: SegmentPlan, frame: int, contributions: dict[int, np.ndarray]) -> np.ndarray:
    """The blended output frame from each covering segment's version of it.

    `contributions` maps segment index -> that segment's float frame `(H, W, 3)` in [0, 1].
    """
    covering = plan.segments_for_frame(frame)
    missing = [s.index for s in covering if s.index not in contributions]
    if missing:
        raise ValueError(f"frame {frame}: no rendered frame from segment(s) {missing}")
    total = None
    for segment in covering:
        weight = plan.weights(segment)[frame - segment.start]
        part = contributions[segment.index].astype(np.float64) * weight
        total = part if total is None else total + part
    return total.astype(np.float32)


def blend_segments(plan: SegmentPlan, read_frame: Callable[[int, int], np.ndarray]) -> Iterator[np.ndarray]:
    """Stream the output frames in order, each cross-faded from the segments that rendered it.

    `read_frame(segment index, frame)` returns that segment's uint8 version of the frame; only
    the versions of one output frame are held at a time. Yields uint8 `(H, W, 3)` frames.
    """
    for frame in range(plan.num_frames):
        parts = {s.index: read_frame(s.index, frame).astype(np.float32) / 255.0 for s in plan.segments_for_frame(frame)}
        yield np.round(blend_frames(plan, frame, parts) * 255.0).clip(0, 255).astype(np.uint8)


def render_segment(
    pipe,
    reference,
    poses: Sequence,
    segment: Segment,
    *,
    seed: int,
    decode_chunk_size: int,
    callback: Callable[[int, int], None] | None = None,
    process_group=None,
    **pipe_kwargs,
):
    """Render one segment and yield `(driving frame index, uint8 frame (H, W, 3))` in order.

    `poses` are the segment's pipeline poses: `[reference pose] + driving poses[start:stop]`.
    The reference pose frame (pipeline frame 0) anchors the segment and is not yielded.
    Frames are decoded and yielded chunk by chunk, so a caller can write them as they come.
    `callback(step, total_steps)` reports denoising progress after every step (1-based); it may
    raise to stop the render. Other keyword arguments go to the pipeline call. The sampler's fresh
    noise (corrector, churn) is keyed, like the initial noise, by `seed` and the clip-global frame
    indices, so a frame shared by two segments gets the same noise in both.
    With `process_group` (one process per GPU, all calling with the same arguments), the
    segment is denoised over the ranks and each rank yields only the frames it decodes (its
    run of whole decode chunks): together, the frames of one process, bit for bit.
    """
    if len(poses) != segment.length + 1:
        raise ValueError(
            f"segment {segment.index} covers {segment.length} frames: expected {segment.length + 1} poses "
            f"(the reference pose first), got {len(poses)}"
        )
    height, width = np.asarray(poses[0]).shape[:2]
    shape = pipe.latent_shape(1, height, width)[2:]
    latents = frame_noise(seed, segment.noise_indices, shape)
    if callback is not None:
        if "callback_on_step_end" in pipe_kwargs:
            raise ValueError("give callback or callback_on_step_end, not both")
        pipe_kwargs["callback_on_step_end"] = partial(_report_step, callback)
    final = pipe(reference, poses, latents=latents, output_type="latent", generator=torch.Generator().manual_seed(seed),
                 decode_chunk_size=decode_chunk_size, process_group=process_group, noise_seed=seed,
                 frame_indices=segment.noise_indices, **pipe_kwargs)
    mine = range(len(poses)) if process_group is None else \
        decode_frames(len(poses), decode_chunk_size, *reversed(rank_and_size(process_group)))
    index = mine.start - 1
    for chunk in pipe.decode_latents(final, decode_chunk_size, process_group=process_group):
        for frame in chunk:
            if index >= 0:
                yield segment.start + index, np.round(frame * 255).astype(np.uint8)
            index += 1


def _report_step(callback: Callable[[int, int], None], pipe, step: int, timestep, callback_kwargs: dict) -> dict:
    """A pipeline `callback_on_step_end` that tells `callback(step, total)` (1-based) and changes nothing."""
    callback(step + 1, pipe.num_timesteps)
    return callback_kwargs
