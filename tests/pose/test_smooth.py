"""Smoothing: measured jitter reduction on a noisy still pose, lag on a step, gap filling.

Numbers are printed (run with -s to see them) and bounded by the assertions.
"""

from fractions import Fraction

import numpy as np
import pytest

from pose.errors import PoseInputError
from pose.layout import NUM_KEYPOINTS, R_WRIST
from pose.smooth import OneEuroFilter, SmoothingConfig, fill_gaps, one_euro, smooth_sequence
from pose.types import PoseFrame
from tests.pose.synthetic import full_frame, sequence

FPS = 15  # 30 fps clip, stride 2
NOISE = 0.004  # keypoint noise, in frame heights (about 4 px at 1080p)
W, H = 1920, 1080


def _noisy_still(n=150, seed=0):
    rng = np.random.default_rng(seed)
    clean = full_frame((960, 300), W, H).keypoints
    frames = []
    for _ in range(n):
        kp = clean.copy()
        kp[:, 0] += rng.normal(0, NOISE * H / W, NUM_KEYPOINTS)
        kp[:, 1] += rng.normal(0, NOISE, NUM_KEYPOINTS)
        frames.append(PoseFrame.from_keypoints(kp))
    return clean, sequence(frames, W, H, fps=Fraction(FPS))


def _jitter(seq):
    """Mean frame-to-frame displacement of the keypoints, in pixels."""
    xy = seq.stack()[:, :, :2] * (W, H)
    return float(np.linalg.norm(np.diff(xy, axis=0), axis=-1).mean())


def _step_settle(config, size=0.2, n=40, at=20):
    """Frames after a sudden jump of `size` frame heights until the output stays within 10% of
    the new position, and frames before it where the output has already left the old one."""
    frames = []
    for t in range(n):
        kp = full_frame((960, 300 + (size * H if t >= at else 0)), W, H).keypoints
        frames.append(PoseFrame.from_keypoints(kp))
    out = smooth_sequence(sequence(frames, W, H, fps=Fraction(FPS)), config)
    y = out.stack()[:, 1, 1] * H  # the neck
    err = np.abs(y - np.where(np.arange(n) >= at, 300 + size * H, 300)) / (size * H)
    after = next(k for k in range(at, n) if np.all(err[k:] < 0.1)) - at
    before = sum(err[:at] >= 0.1)
    return after, before


STEPS = (0.01, 0.05, 0.2)  # frame heights: about 11, 54 and 216 px at 1080p
MAX_LAG = {True: 2, False: 4}  # frames at 15 poses/s, for steps of at least 0.01


@pytest.mark.parametrize("zero_phase", [True, False])
def test_jitter_drops_by_a_measured_factor_with_bounded_step_lag(zero_phase):
    config = SmoothingConfig(zero_phase=zero_phase)
    _, noisy = _noisy_still()
    factor = _jitter(noisy) / _jitter(smooth_sequence(noisy, config))
    lags = {size: _step_settle(config, size=size) for size in STEPS}
    print(f"\nzero_phase={zero_phase}: jitter reduced {factor:.1f}x; step of size: (frames settling after, "
          f"frames moving early) = {lags} at {FPS} poses/s")
    assert factor > 4.0
    assert all(after <= MAX_LAG[zero_phase] and before <= MAX_LAG[zero_phase] for after, before in lags.values())
    if not zero_phase:
        assert all(before == 0 for _, before in lags.values())  # a causal filter never anticipates


def test_smoothing_keeps_the_average_position():
    clean, noisy = _noisy_still(300, seed=1)
    out = smooth_sequence(noisy)
    bias = np.abs(out.stack()[:, :, :2].mean(0) - clean[:, :2]).max() * H
    assert bias < 1.5  # pixels


def test_one_euro_filter_speed_adaptation():
    still = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    fast = OneEuroFilter(min_cutoff=1.0, beta=50.0)
    for f in (still, fast):
        f(np.zeros(1), 1 / 15)
    assert still(np.ones(1), 1 / 15)[0] < fast(np.ones(1), 1 / 15)[0] < 1.0
    with pytest.raises(PoseInputError, match="min_cutoff > 0"):
        OneEuroFilter(min_cutoff=0.0)


def test_filter_restarts_after_absent_samples():
    signal = np.array([0.0, 0.0, 5.0, 1.0, 1.0])
    valid = np.array([True, True, False, True, True])
    out = one_euro(signal, 1 / 15, 0.2, 0.0, 1.0, zero_phase=False, valid=valid)
    assert out[2] == 5.0  # passed through
    assert out[3] == 1.0  # restarted: no pull towards the earlier zeros


def test_short_gaps_are_filled_long_gaps_stay_missing():
    frames = [full_frame((900 + 10 * t, 300), W, H) for t in range(14)]
    for t in (3, 4):  # a 2-frame gap
        frames[t] = PoseFrame.empty()
    for t in range(7, 13):  # a 6-frame gap
        frames[t] = PoseFrame.empty()
    frames[0] = PoseFrame.empty()  # leading: no detection before it
    out = fill_gaps(sequence(frames, W, H), max_gap=4)
    assert out[3].filled and out[4].filled and not out[3].missing
    np.testing.assert_allclose(out[3].keypoints, full_frame((930, 300), W, H).keypoints, atol=1e-6)
    assert all(out[t].missing for t in range(7, 13)) and out[0].missing
    assert not out[5].filled


def test_dropped_keypoints_are_interpolated_across_short_gaps():
    frames = []
    for t in range(8):
        kp = full_frame((900, 300), W, H).keypoints
        if t in (3, 4):
            kp[R_WRIST, 2] = 0.1  # wrist lost for two frames: the forearm would blink off
        frames.append(PoseFrame.from_keypoints(kp))
    out = fill_gaps(sequence(frames, W, H), max_gap=4)
    assert out[3].body[R_WRIST, 2] == pytest.approx(1.0)
    assert not out[3].filled  # the frame itself was detected


def test_smoothing_ignores_absent_points():
    frames = []
    for t in range(20):
        kp = full_frame((900, 300), W, H).keypoints
        if t % 2:
            kp[39:60] = 0.0  # right hand flickers in and out: absent frames are at (0, 0)
        frames.append(PoseFrame.from_keypoints(kp))
    out = smooth_sequence(sequence(frames, W, H), SmoothingConfig())
    present = out.stack()[::2, 39:60, :2]
    np.testing.assert_allclose(present, np.broadcast_to(frames[0].keypoints[39:60, :2], present.shape), atol=1e-6)
    assert not out.stack()[1::2, 39:60].any()


def test_fill_gaps_validates_max_gap():
    with pytest.raises(PoseInputError, match="max_gap"):
        fill_gaps(sequence([full_frame((900, 300), W, H)], W, H), max_gap=-1)
