"""What the web page's tabs read from their inputs (tools/inferences/web_app.py, web_play.py): numbers from
sliders and boxes, checked, and the one-line error a bad one becomes on the page."""
from __future__ import annotations

import math


class PageError(ValueError):
    """A bad upload or setting: one line shown on the page (the server keeps running)."""


def as_int(name: str, value, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from a slider / number box, else PageError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PageError(f"{name}={value!r} is not a number; give a whole number in {lo}..{hi}") from None
    if not math.isfinite(v) or v != int(v) or not lo <= v <= hi:
        raise PageError(f"{name}={value!r} is not allowed: give a whole number in {lo}..{hi}")
    return int(v)


def as_float(name: str, value, lo: float, hi: float) -> float:
    """A number in [lo, hi], else PageError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and lo <= v <= hi):
        raise PageError(f"{name}={value!r} is not allowed: give a number in {lo}..{hi}")
    return v
