"""`shmjanitor leaks`: the programs, users or units that leak most, from the history
store (history.py), as a table, plain columns or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

from shmjanitor.durations import format_size
from shmjanitor.history import Leak
from shmjanitor.text import printable

HEADERS = ("LEAKED", "BYTES", "REMOVED", "FREED", "RESTORED")


def cells(x: Leak, exact_bytes: bool) -> tuple[str, ...]:
    size = str if exact_bytes else format_size
    return (str(x.leaked), size(x.leaked_bytes), str(x.removed), size(x.removed_bytes),
            str(x.restored))  # fmt: skip


def plain(rows: Sequence[Leak], by: str, exact_bytes: bool, out: IO[str],
          bold: bool = False) -> None:  # fmt: skip
    """Numbers first, right-aligned; the command (user, unit) last, as it may hold
    spaces: `awk '{print $1}'` still reads the counts. Unknown makers: "-"."""
    lines: list[tuple[str, ...]] = [(*HEADERS, by.upper())]
    lines += [(*cells(x, exact_bytes), "-" if x.who is None else printable(x.who)) for x in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    for n, line in enumerate(lines):
        text = " ".join([*(c.rjust(w) for c, w in zip(line, widths)), line[-1]])
        out.write(f"\x1b[1m{text}\x1b[0m\n" if bold and n == 0 else text + "\n")


def to_json(rows: Sequence[Leak], by: str, since: float, until: float) -> str:
    """{"by", "since", "until", "leaks": [{BY, leaked, leaked_bytes, removed,
    removed_bytes, restored}, ...]}, most objects leaked first; BY null: no maker known."""
    return json.dumps({
        "by": by, "since": since, "until": until,
        "leaks": [{by: x.who, "leaked": x.leaked, "leaked_bytes": x.leaked_bytes,
                   "removed": x.removed, "removed_bytes": x.removed_bytes,
                   "restored": x.restored} for x in rows],
    }) + "\n"  # fmt: skip
