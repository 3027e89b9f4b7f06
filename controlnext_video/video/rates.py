"""Frame rates as exact fractions.

Rates are `fractions.Fraction` everywhere: 29.97 fps is ``Fraction(30000, 1001)``, and the
output rate of a stride-2 render of it is ``Fraction(15000, 1001)``, never ``14`` or ``15``.
"""

from __future__ import annotations

from fractions import Fraction

#: Rates a measured rate is snapped to when it is within `SNAP_TOLERANCE` of one (film, PAL,
#: NTSC and their doubles; the NTSC ones are the exact 1000/1001 fractions).
STANDARD_RATES: tuple[Fraction, ...] = tuple(
    Fraction(n, d)
    for n, d in (
        (24000, 1001), (24, 1), (25, 1), (30000, 1001), (30, 1), (48000, 1001), (48, 1),
        (50, 1), (60000, 1001), (60, 1), (100, 1), (120000, 1001), (120, 1),
        (15000, 1001), (15, 1), (12, 1), (12000, 1001), (25, 2),
    )
)
#: Relative distance within which a measured (non-exact) rate is snapped to a standard one.
SNAP_TOLERANCE = 0.01
#: Largest denominator kept for a measured rate that is not near a standard one.
MAX_RATE_DENOMINATOR = 1001


def parse_rate(value: Fraction | int | str) -> Fraction:
    """Parse a frame rate given as a Fraction, an int, or a string like ``"30000/1001"``.

    Floats are refused: ``29.97`` is not ``30000/1001``, and guessing would break timing.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(
            f"fps must be exact (a Fraction, an int or a 'num/den' string), got float {value!r}; "
            "use Fraction(30000, 1001) for 29.97"
        )
    try:
        rate = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"fps {value!r} is not a rate like 30000/1001") from exc
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {rate}")
    return rate


def format_rate(rate: Fraction) -> str:
    """``Fraction(30000, 1001)`` -> ``"30000/1001"`` (what `parse_rate` reads back)."""
    return f"{rate.numerator}/{rate.denominator}"


def nearest_standard_rate(rate: Fraction) -> Fraction | None:
    """The standard rate within `SNAP_TOLERANCE` (relative) of ``rate``, or None."""
    best = min(STANDARD_RATES, key=lambda std: abs(std - rate))
    return best if abs(best - rate) <= SNAP_TOLERANCE * best else None


def clean_rate(measured: Fraction, *, exact: bool) -> Fraction:
    """Turn a rate read from a container into the rate we work at.

    ``exact`` means the container states the rate as a small exact fraction of a constant-rate
    stream (an MP4 at 30000/1001): it is kept as is. Otherwise (a rate averaged over jittery or
    variable timestamps, or from a millisecond time base) it is snapped to the nearest standard
    rate within `SNAP_TOLERANCE`, or else reduced to a denominator of at most
    `MAX_RATE_DENOMINATOR`.
    """
    if measured <= 0:
        raise ValueError(f"frame rate must be positive, got {measured}")
    if exact and measured.denominator <= MAX_RATE_DENOMINATOR:
        return measured
    standard = nearest_standard_rate(measured)
    if standard is not None:
        return standard
    return measured.limit_denominator(MAX_RATE_DENOMINATOR)


def output_rate(source_fps: Fraction, stride: int) -> Fraction:
    """The exact rate of every ``stride``-th frame of a ``source_fps`` clip."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return Fraction(source_fps) / stride
