"""Durations in, ages out: "90s", "10m", "1h30m", "2d" <-> seconds <-> "2h10m".

One format both ways: what format_age prints, parse_duration reads back (to the
unit it was rounded down to), and it is one word, so a column of ages stays one field."""

from __future__ import annotations

import re
from functools import lru_cache

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)\s*([smhdw])")
_WHOLE = re.compile(r"(?:\d+\s*[smhdw]\s*)+")


def parse_duration(text: str) -> int:
    """Seconds in `text`: "0", "45" (seconds), "90s", "10m", "1h", "2d", "1h30m", "1w".

    Raises ValueError with a message that shows the accepted forms.
    """
    t = text.strip().lower()
    if t.isdigit():
        return int(t)
    if t and _WHOLE.fullmatch(t):
        return sum(int(n) * _UNITS[u] for n, u in _PART.findall(t))
    raise ValueError(
        f"{text!r} is not a duration: use a number of seconds or units s, m, h, d, w "
        "such as 0, 90s, 10m, 1h, 1h30m, 2d"
    )


@lru_cache(maxsize=65536)  # a table's ages repeat: same second, same text
def format_age(seconds: float) -> str:
    """A short age in one word, two units at most, rounded down: "45s", "12m", "2h10m",
    "3d4h" (the units of parse_duration; the lists, reasons and log lines all use it)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, sec = divmod(s, 60)
        return f"{m}m{sec}s" if sec and m < 10 else f"{m}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


@lru_cache(maxsize=65536)  # sizes repeat too (a leak is many segments of one size)
def format_size(n: int) -> str:
    """Bytes as ipcs/lsipc print them in human mode: 4K, 1.5M, 2G (binary units)."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in "KMGTPE":
        value /= 1024
        if value < 1024 or unit == "E":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    raise AssertionError("unreachable")
