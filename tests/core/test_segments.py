"""Segment planning, blend weights and plan-independent noise, as properties; rendering a segment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from controlnext_video.segments import Segment, blend_frames, frame_noise, plan_segments, render_segment

from .conftest import random_inputs


@st.composite
def settings(draw):
    length = draw(st.integers(1, 60))
    overlap = draw(st.integers(0, length - 1))
    return draw(st.integers(1, 500)), length, overlap


@given(settings())
def test_segment_plan_properties(args):
    n, length, overlap = args
    plan = plan_segments(n, length, overlap)
    segs = plan.segments
    assert segs[0].start == 0 and segs[-1].stop == n
    assert all(0 <= s.start < s.stop <= n for s in segs)
    assert [s.index for s in segs] == list(range(len(segs)))
    assert all(s.length == min(length, n) for s in segs)
    for a, b in zip(segs, segs[1:]):
        assert b.start > a.start and a.stop - b.start >= overlap  # neighbours share >= overlap frames
        assert b.start <= a.stop  # no gap
    # blend weights sum to one on every frame and are positive where a segment covers a frame
    total = np.zeros(n)
    for s in segs:
        w = plan.weights(s)
        assert (w > 0).all() and (w <= 1).all()
        total[s.start : s.stop] += w
    assert np.allclose(total, 1.0)


def test_one_segment_is_the_whole_clip():
    plan = plan_segments(50, 240, 16)
    assert plan.segments == (plan.segments[0],) and plan.segments[0].stop == 50
    assert np.array_equal(plan.weights(plan.segments[0]), np.ones(50))


def test_examples_and_errors():
    plan = plan_segments(100, 40, 8)
    assert [(s.start, s.stop) for s in plan.segments] == [(0, 40), (32, 72), (60, 100)]
    for bad in ((0, 4, 1), (10, 0, 0), (10, 4, 4)):
        with pytest.raises(ValueError):
            plan_segments(*bad)


def test_noise_depends_only_on_seed_and_frame():
    a = frame_noise(7, [0, 5, 6, 7], (4, 2, 2))
    b = frame_noise(7, [0, 6, 7], (4, 2, 2))
    assert torch.equal(a[:, [0, 2, 3]], b)
    assert not torch.equal(frame_noise(8, [5], (4, 2, 2)), a[:, 1:2])
    assert not torch.equal(a[:, 1], a[:, 2])
    big = frame_noise(2**40 + 3, [1], (4, 2, 2))
    assert big.shape == (1, 1, 4, 2, 2)


def test_noise_indices_of_a_segment():
    seg = plan_segments(30, 10, 4).segments[1]
    assert seg.noise_indices == (0, *range(seg.start + 1, seg.stop + 1))


def test_blend_cross_fades_shared_frames():
    plan = plan_segments(12, 8, 4)
    first, second = plan.segments
    shared = range(second.start, first.stop)
    ones = np.ones((2, 2, 3), np.float32)
    outs = [blend_frames(plan, f, {0: ones * 0.2, 1: ones * 0.8})[0, 0, 0] for f in shared]
    assert all(0.2 < v < 0.8 for v in outs) and outs == sorted(outs)  # a monotone fade
    assert blend_frames(plan, 0, {0: ones * 0.2})[0, 0, 0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="frame 5: no rendered frame from segment"):
        blend_frames(plan, 5, {0: ones})


def test_render_segment_reports_progress_and_yields_its_frames(tiny_pipe):
    ref, poses = random_inputs(5, 64, 64)
    segment = Segment(index=1, start=10, stop=14)
    steps = []
    frames = list(render_segment(tiny_pipe, ref, poses, segment, seed=3, decode_chunk_size=2,
                                 callback=lambda step, total: steps.append((step, total)),
                                 num_inference_steps=2, window_size=4, overlap=1))
    assert steps == [(1, 2), (2, 2)]
    assert [i for i, _ in frames] == [10, 11, 12, 13]
    assert all(f.dtype == np.uint8 and f.shape == (64, 64, 3) for _, f in frames)
    with pytest.raises(ValueError, match="not both"):
        list(render_segment(tiny_pipe, ref, poses, segment, seed=3, decode_chunk_size=2, callback=print,
                            callback_on_step_end=lambda *args: {}))
