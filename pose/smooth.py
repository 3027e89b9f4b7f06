"""Temporal smoothing of keypoints and filling of short detection gaps.

Two steps, applied in this order by the callers:
1. `fill_gaps`: a run of at most `max_gap` missing frames between two detected frames is
   linearly interpolated (marked `filled`); longer runs, and runs at the start or end of the
   clip, stay missing. The same applies per keypoint: a point that drops below the present
   score (0.3) for at most `max_gap` frames between two confident detections is interpolated,
   so limbs do not blink off for a frame or two.
2. `smooth_sequence`: a One Euro filter (Casiry, Roussel, Vogel, CHI 2012) per coordinate: a low-pass filter whose
   cut-off rises with speed, so still poses are steadied and fast moves keep up. Coordinates are
   filtered in units of the frame height (x scaled by width / height) so the parameters do not
   depend on the resolution; time is in seconds (the sequence's fps). Offline, the filter runs
   forwards and backwards and the two passes are averaged (`zero_phase`): the causal filter's
   delay cancels, so the skeleton stays in sync with the video and its audio.
   Scores are smoothed with the same filter at a fixed cut-off, so a limb whose confidence
   hovers around the drawing threshold does not flicker.

A point is filtered only over the frames where it has a positive score; the filter restarts
after every missing frame or absent stretch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pose.errors import PoseInputError
from pose.layout import PRESENT_SCORE
from pose.types import PoseSequence


DEFAULT_MAX_GAP = 4  # pose frames: ~0.27 s at 15 poses per second


def _alpha(cutoff: float | np.ndarray, dt: float):
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One Euro filter over arrays of any shape (each element filtered independently).

    min_cutoff: cut-off frequency (Hz) at rest; lower steadies more and lags more.
    beta: how fast the cut-off rises with speed (per unit of signal per second).
    d_cutoff: cut-off (Hz) of the derivative estimate the speed comes from.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if not min_cutoff > 0 or not d_cutoff > 0 or beta < 0:
            raise PoseInputError(
                f"OneEuroFilter needs min_cutoff > 0, d_cutoff > 0, beta >= 0; got "
                f"min_cutoff={min_cutoff}, beta={beta}, d_cutoff={d_cutoff}"
            )
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def reset(self) -> None:
        self._x = self._dx = None

    def __call__(self, x: np.ndarray, dt: float, restart: np.ndarray | None = None) -> np.ndarray:
        """Filter the next sample, taken dt seconds after the previous one.

        restart: optional boolean mask (x's shape) of elements that start afresh at this sample
        (their previous samples were absent): their output is the input, their speed zero.
        """
        x = np.asarray(x, dtype=np.float64)
        if not dt > 0:
            raise PoseInputError(f"OneEuroFilter: dt must be positive, got {dt}")
        if self._x is None:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        a_d = _alpha(self.d_cutoff, dt)
        dx = a_d * (x - self._x) / dt + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(dx)
        a = _alpha(cutoff, dt)
        x_hat = a * x + (1 - a) * self._x
        if restart is not None:
            restart = np.broadcast_to(restart, x.shape)
            x_hat = np.where(restart, x, x_hat)
            dx = np.where(restart, 0.0, dx)
        self._x, self._dx = x_hat, dx
        return x_hat.copy()


def one_euro(
    signal: np.ndarray,
    dt: float,
    min_cutoff: float,
    beta: float,
    d_cutoff: float,
    zero_phase: bool,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Filter a signal along its first axis (time). Shapes: signal (T, ...) -> (T, ...).

    valid: optional boolean mask of shape signal.shape[:k]; invalid samples pass through
    unchanged and the filter restarts after them.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if valid is None:
        valid = np.ones(signal.shape[:1], dtype=bool)
    valid = np.asarray(valid, dtype=bool).reshape(valid.shape + (1,) * (signal.ndim - np.ndim(valid)))

    def run(sig, ok):
        f = OneEuroFilter(min_cutoff, beta, d_cutoff)
        out = sig.copy()
        prev_ok = np.zeros_like(ok[0]) if len(ok) else None
        for t in range(len(sig)):
            y = f(sig[t], dt, restart=~prev_ok)
            out[t] = np.where(ok[t], y, sig[t])
            prev_ok = ok[t]
        return out

    forward = run(signal, valid)
    if not zero_phase:
        return forward
    backward = run(signal[::-1], valid[::-1])[::-1]
    return (forward + backward) / 2


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a 1-D boolean mask."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2], edges[1::2]))


def _interpolate(values: np.ndarray, start: int, end: int) -> None:
    """Linear interpolation of values[start:end] between values[start-1] and values[end]."""
    a, b = values[start - 1], values[end]
    t = (np.arange(start, end) - (start - 1)) / (end - (start - 1))
    values[start:end] = a + (b - a) * t.reshape(-1, *([1] * (values.ndim - 1)))


def fill_gaps(seq: PoseSequence, max_gap: int = DEFAULT_MAX_GAP, present_score: float = PRESENT_SCORE) -> PoseSequence:
    """Interpolate missing frames and dropped keypoints across gaps of at most max_gap frames.

    Gaps at the start or end of the clip (no detection on one side) are left as they are.
    """
    if int(max_gap) != max_gap or max_gap < 0:
        raise PoseInputError(f"max_gap must be a non-negative integer, got {max_gap!r}")
    kp = seq.stack().astype(np.float64)
    missing = seq.missing.copy()
    filled = seq.filled.copy()
    n = len(seq)
    if max_gap == 0 or n == 0:
        return seq
    for start, end in _runs(missing):
        if start > 0 and end < n and end - start <= max_gap:
            _interpolate(kp, start, end)
            missing[start:end] = False
            filled[start:end] = True
    for j in range(kp.shape[1]):
        low = (kp[:, j, 2] < present_score) & ~missing
        for start, end in _runs(low):
            if start == 0 or end == n or end - start > max_gap or missing[start - 1] or missing[end]:
                continue
            # the run is bounded by confident detections on both sides (missing frames excluded)
            _interpolate(kp[:, j], start, end)
    return seq.with_stack(kp, missing=missing, filled=filled)


@dataclass(frozen=True)
class SmoothingConfig:
    """Parameters of `smooth_sequence`. Defaults, measured on synthetic noisy sequences at
    15 poses per second (`tests/pose/test_smooth.py`): about 5x less frame-to-frame jitter on
    a still pose, and a sudden jump followed within a frame (MediaPipe's own pose smoothing
    takes the same approach: a very low rest cut-off and a high beta).

    min_cutoff: Hz at rest; beta: cut-off rise per (frame heights / s) of speed; d_cutoff: Hz
    of the speed estimate; score_cutoff: Hz for the scores; zero_phase: average a forward and
    a backward pass.
    """

    min_cutoff: float = 0.2
    beta: float = 30.0
    d_cutoff: float = 1.0
    score_cutoff: float = 2.0
    zero_phase: bool = True


def smooth_sequence(seq: PoseSequence, config: SmoothingConfig = SmoothingConfig()) -> PoseSequence:
    """Smooth every keypoint over time (see the module docstring); fill gaps first."""
    if len(seq) < 2:
        return seq
    dt = 1.0 / float(seq.fps)
    kp = seq.stack().astype(np.float64)
    valid = (kp[:, :, 2] > 0) & ~seq.missing[:, None]
    to_units = np.array([seq.width / seq.height, 1.0])
    out = kp.copy()
    out[:, :, :2] = one_euro(
        kp[:, :, :2] * to_units, dt, config.min_cutoff, config.beta, config.d_cutoff, config.zero_phase, valid
    ) / to_units
    out[:, :, 2] = one_euro(kp[:, :, 2], dt, config.score_cutoff, 0.0, config.d_cutoff, config.zero_phase, valid)
    return seq.with_stack(out)
