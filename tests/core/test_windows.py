"""Window planning, stated as properties over many clip lengths and settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlnext_video.windows import plan_windows


@st.composite
def settings(draw):
    window = draw(st.integers(1, 32))
    overlap = draw(st.integers(0, window - 1))
    n = draw(st.integers(1, 300))
    if n > window and overlap == 0:
        overlap = draw(st.integers(1, window - 1)) if window > 1 else 0
    return n, window, overlap


@given(settings())
def test_plan_properties(args):
    n, window, overlap = args
    if n > window and overlap == 0:
        with pytest.raises(ValueError, match="overlap"):
            plan_windows(n, window, overlap)
        return
    plan = plan_windows(n, window, overlap)
    size = min(window, n)
    assert plan.window_size == size
    # bounds: every window has the effective size and lies inside the clip, in increasing order
    assert all(w.size == size and 0 <= w.start < w.stop <= n for w in plan.windows)
    assert plan.windows[0].start == 0 and plan.windows[-1].stop == n
    starts = [w.start for w in plan.windows]
    assert starts == sorted(set(starts))
    # every frame enters the average at least once
    assert all(c >= 1 for c in plan.counts) and len(plan.counts) == n
    # consecutive windows overlap by at least `overlap` frames (the last one, moved back, by more)
    for a, b in zip(plan.windows, plan.windows[1:]):
        assert a.stop - b.start >= overlap
    # strides are window - overlap except for the moved last window
    for a, b in zip(plan.windows[:-1], plan.windows[1:-1]):
        assert b.start - a.start == size - overlap
    # the reference-pose rule: window frame 0 takes pose 0, the others their own pose
    for w in plan.windows:
        assert w.control_indices[0] == 0
        assert list(w.control_indices[1:]) == list(range(w.start + 1, w.stop))
        assert w.keep_from == (0 if w.start == 0 else w.start + 1)


def test_reference_examples():
    assert [w.start for w in plan_windows(10, 4, 2).windows] == [0, 2, 4, 6]
    assert [w.start for w in plan_windows(11, 4, 2).windows] == [0, 2, 4, 6, 7]
    assert [w.start for w in plan_windows(240, 24, 6).windows][-2:] == [198, 216]
    assert plan_windows(5, 24, 6).windows[0].stop == 5
    assert plan_windows(10, 4, 2).counts == (1, 1, 1, 2, 1, 2, 1, 2, 1, 1)


@pytest.mark.parametrize(
    "n, window, overlap, message",
    [(0, 4, 1, "num_frames"), (10, 0, 0, "window_size"), (10, 4, 4, "overlap"), (10, 4, -1, "overlap"),
     (10, 4, 0, "at least 1")],
)
def test_invalid(n, window, overlap, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(n, window, overlap)
