"""How the report prints numbers: metric values to three decimals (FID 112.000, recall 0.612) unless that
would hide them (a KID of 0.00041), rates to two significant digits (0.31 samples/s, not 0.0; 1,200, not
1,234.567: a speed on a shared machine is not known better than that)."""

from __future__ import annotations

import math

DECIMALS = 3  # metric values: as the tables have always shown them
RATE_DIGITS = 2  # significant digits of a rate (samples/s)


def significant(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits in fixed-point notation, thousands separated:
    0.3123 -> "0.31", 3.04 -> "3.0", 745.3 -> "745", 12345.6 -> "12,346" (digits=2); below 1e-4 in
    scientific notation (1.0e-10)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-4:  # 0.0000000001 is no easier to read than 1.0e-10
        return f"{value:.{digits - 1}e}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    return f"{value:,.{decimals}f}"


def format_value(value) -> str:
    """A metric value or a count: "—" for None, floats to ``DECIMALS`` decimals (more significant digits
    when those would print a non-zero value as 0.000), ints with thousands separators."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != 0 and math.isfinite(value) and abs(value) < 10 ** -(DECIMALS - 1):
            return significant(value, DECIMALS)
        return f"{value:,.{DECIMALS}f}"
    return f"{value:,}"


def format_rate(value: float | None) -> str:
    """samples/s (or any rate) to ``RATE_DIGITS`` significant digits; "—" for None."""
    return "—" if value is None else significant(float(value), RATE_DIGITS)


def format_seconds(value: float | None) -> str:
    """A duration in seconds, to one decimal ("—" for None)."""
    return "—" if value is None else f"{value:,.1f}"
