"""Fit text columns to a terminal's width and draw them. Pure: cells in, lines out.

A terminal table is for a person reading it at 60, 80 or 120 columns: the columns that
matter least give way first (dropped whole), names are narrowed with an ellipsis, and
long text (a reason, a command line) wraps at word boundaries instead of being cut to
nothing. `notruncate` keeps everything at full width, as lsipc --notruncate does.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple, Optional

SEP = " "  # between columns, as lsipc
MIN_WRAP = 16  # a wrapped column narrower than this reads as a column of syllables
MIN_SQUEEZE = 6  # a narrowed name keeps this much (5 characters and the ellipsis)

# SGR codes of the 8 colours every terminal has (ECMA-48): no terminfo, no rich.
_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33",
        "magenta": "35", "cyan": "36"}  # fmt: skip


class Col(NamedTuple):
    header: str
    right: bool = False  # numbers align right
    drop: int = 0  # 0: never dropped; otherwise the highest gives way first
    wrap: bool = False  # long text: wrapped at word boundaries, never cut
    squeeze: bool = False  # a name: may be cut with an ellipsis when room is short


@lru_cache(maxsize=256)
def sgr(style: str) -> str:
    """The escape sequence for a style such as "bold red"."""
    return "\x1b[" + ";".join(_SGR[w] for w in style.split()) + "m"


def paint(text: str, style: Optional[str]) -> str:
    return f"{sgr(style)}{text}\x1b[0m" if style and text else text


@lru_cache(maxsize=65536)  # a leak is thousands of rows with one and the same reason
def wrap(text: str, width: int) -> tuple[str, ...]:
    """`text` in lines of at most `width`, broken at spaces; a word longer than a line
    (a path) is split, so nothing is lost."""
    return tuple(textwrap.wrap(text, width, break_on_hyphens=False)) or ("",)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def natural(cols: Sequence[Col], rows: Sequence[Sequence[str]], header: bool = True) -> list[int]:
    """Each column's full width: its longest cell (and header)."""
    widths = [len(c.header) if header else 1 for c in cols]
    for i, cells in enumerate(zip(*rows)):
        widths[i] = max(widths[i], max(map(len, cells)))
    return widths


def fit(cols: Sequence[Col], full: Sequence[int], width: int) -> tuple[list[int], list[int]]:
    """Which columns to show (indices, in order) and how wide, to fit `width`.

    1. Wrapped columns ask for a fair share (a third of the line, at least MIN_WRAP,
       at most what they hold); while the rest and that share do not fit, the column
       with the highest `drop` goes.
    2. The wrapped columns share the room that is left, up to their full width.
    3. If it still does not fit, names are narrowed, down to MIN_SQUEEZE.
    What still does not fit (a terminal of 20 columns) overflows, cutting nothing more.
    """
    keep = list(range(len(cols)))
    w = list(full)
    wraps = [i for i in keep if cols[i].wrap]
    share = {i: min(w[i], max(MIN_WRAP, width // 3)) for i in wraps}

    def used(sizes: dict[int, int]) -> int:
        return sum(sizes.get(i, w[i]) for i in keep) + len(SEP) * (len(keep) - 1)

    for i in sorted((i for i in keep if cols[i].drop), key=lambda i: -cols[i].drop):
        if used(share) <= width:
            break
        keep.remove(i)
    fixed = {i: w[i] for i in keep if i not in share}
    room = width - sum(fixed.values()) - len(SEP) * (len(keep) - 1)
    for n, i in enumerate(wraps):  # the last wrapped column takes what the others leave
        left = len(wraps) - n
        w[i] = max(min(w[i], room // left), min(w[i], MIN_WRAP))
        room -= w[i]
    over = used({}) - width
    for i in keep:
        if over <= 0:
            break
        if cols[i].squeeze and w[i] > MIN_SQUEEZE:
            give = min(over, w[i] - max(MIN_SQUEEZE, len(cols[i].header)))
            if give > 0:
                w[i] -= give
                over -= give
    return keep, [w[i] for i in keep]


def draw(
    cols: Sequence[Col],
    rows: Sequence[Sequence[str]],
    width: Optional[int],
    *,
    header: bool = True,
    color: bool = False,
    styles: Optional[tuple[int, Sequence[Optional[str]]]] = None,
) -> list[str]:
    """The table's lines: a header (bold when `color`), then each row, its wrapped cells
    continued on the lines below. `width` None: every column at full width, nothing cut.
    `styles` is (column, a style per row) for the one column that is painted."""
    full = natural(cols, rows, header)
    keep, widths = (list(range(len(cols))), full) if width is None else fit(cols, full, width)
    shown = [cols[i] for i in keep]
    painted = -1 if styles is None else styles[0]

    def line(parts: list[tuple[str, int, Col, Optional[str]]]) -> str:
        out = []
        for text, w, c, style in parts:
            pad = " " * (w - len(text))
            out.append(pad + paint(text, style) if c.right else paint(text, style) + pad)
        return SEP.join(out).rstrip(" ")

    lines = []
    if header:
        lines.append(line([(h, w, c, "bold" if color else None)
                           for h, w, c in zip((c.header for c in shown), widths, shown)]))  # fmt: skip
    for r, row in enumerate(rows):
        parts: list[list[str]] = []
        for i, w, c in zip(keep, widths, shown):
            text = row[i]
            if len(text) <= w:
                parts.append([text])
            elif c.wrap:
                parts.append(list(wrap(text, w)))
            else:
                parts.append([_cut(text, w)])
        style = styles[1][r] if styles is not None and color else None
        for j in range(max(map(len, parts))):
            lines.append(line([
                (p[j] if j < len(p) else "", w, c, style if i == painted else None)
                for p, i, w, c in zip(parts, keep, widths, shown)
            ]))  # fmt: skip
    return lines


def wrap_lines(lines: Sequence[str], width: Optional[int]) -> list[str]:
    """Sentences (a footer, a summary) wrapped to `width` at word boundaries."""
    if width is None:
        return list(lines)
    return [part for text in lines for part in wrap(text, width)]
