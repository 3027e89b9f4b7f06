from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlnext_video.video import fit_frame, output_rate, parse_rate
from controlnext_video.video.rates import STANDARD_RATES, clean_rate


def test_parse_rate_accepts_exact_forms_and_refuses_floats() -> None:
    assert parse_rate("30000/1001") == Fraction(30000, 1001)
    assert parse_rate(25) == 25
    assert parse_rate(Fraction(24000, 1001)) == Fraction(24000, 1001)
    with pytest.raises(ValueError, match="fps must be exact"):
        parse_rate(29.97)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fps must be positive"):
        parse_rate("0/1")
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate("fast")


def test_output_rate_divides_exactly() -> None:
    # The peers' bug: 29.97 // 2 == 14 plays 7% fast. Ours stays exact.
    assert output_rate(Fraction(30000, 1001), 2) == Fraction(15000, 1001)
    assert output_rate(Fraction(24000, 1001), 3) == Fraction(8000, 1001)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        output_rate(Fraction(25), 0)


@given(st.sampled_from(STANDARD_RATES), st.floats(-0.009, 0.009))
def test_measured_rates_near_a_standard_rate_snap_to_it(rate: Fraction, error: float) -> None:
    measured = Fraction(rate) * (1 + Fraction(error).limit_denominator(10**6))
    snapped = clean_rate(measured.limit_denominator(10**7), exact=False)
    # The nearest standard rate within 1% (29.97 and 30 are 0.1% apart: either may be nearest).
    assert snapped in STANDARD_RATES
    assert abs(snapped - measured) <= abs(rate - measured)


def test_exact_small_fractions_are_kept() -> None:
    assert clean_rate(Fraction(600, 29), exact=True) == Fraction(600, 29)
    assert clean_rate(Fraction(1234567, 100000), exact=False) == Fraction(1234567, 100000).limit_denominator(1001)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(16, 120), st.integers(16, 120), st.integers(8, 100), st.integers(8, 100),
    st.sampled_from(["crop", "pad", "stretch"]),
)
def test_fit_frame_always_gives_the_requested_shape(src_h: int, src_w: int, out_h: int, out_w: int, fit: str) -> None:
    frame = np.full((src_h, src_w, 3), 255, np.uint8)
    out = fit_frame(frame, (out_h, out_w), fit)  # type: ignore[arg-type]
    assert out.shape == (out_h, out_w, 3) and out.dtype == np.uint8
    if fit != "pad":
        assert out.min() >= 250  # crop and stretch never show bars
    else:
        # Letterbox: the white area keeps the source's aspect ratio to within a pixel.
        bright = out[..., 0] > 128
        content_h, content_w = int(bright.any(axis=1).sum()), int(bright.any(axis=0).sum())
        assert content_h == out_h or content_w == out_w
        assert abs(content_w - content_h * src_w / src_h) <= 1.5 + src_w / src_h
