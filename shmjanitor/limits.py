"""`shmjanitor limits`: the kernel's shared memory limits and their use, as `lsipc -g`
and `ipcs -l`/`ipcs -u` show them. Pure apart from `read()`.

Facts this relies on:

* kernel.shmmni, kernel.shmall and kernel.shmmax (/proc/sys/kernel) belong to the IPC
  namespace: a container has its own.
* shmall is counted in pages, and each segment counts its size rounded up to whole
  pages (ipc/shm.c, newseg: numpages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT, checked
  against shm_ctlall). `ipcs -u` prints this sum ("pages allocated"); `lsipc -g`
  divides the sum of sizes by the page size instead, which undercounts.
* SHMMIN is 1, a constant of the kernel (include/uapi/linux/shm.h), not a sysctl.
* The default shmmax and shmall are ULONG_MAX - 2^24, "as large as possible without
  facilitating scenarios where userspace causes overflows when adjusting the limits"
  (include/uapi/linux/shm.h): the kernel's way of saying "no limit". A value at or
  above it is shown as "unlimited" (ipcs and lsipc print the number).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from shmjanitor import scan
from shmjanitor.durations import format_size

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SHMMIN = 1
ULONG_MAX = (1 << (8 * struct.calcsize("L"))) - 1
UNLIMITED_FROM = ULONG_MAX - (1 << 24)  # the kernel's default SHMMAX and SHMALL


def unlimited(limit: Optional[int]) -> bool:
    """Whether the kernel's `limit` (shmmax or shmall) means no limit at all."""
    return limit is not None and limit >= UNLIMITED_FROM


@dataclass(frozen=True)
class Usage:
    """The limits of one IPC namespace and what is in use; None where unreadable."""

    shmmni: Optional[int]  # max number of segments
    shmall: Optional[int]  # max pages in all segments together
    shmmax: Optional[int]  # max bytes of one segment
    segments: int
    pages: int  # each segment's size rounded up to pages, as the kernel counts
    resident: Optional[int]  # pages in memory (None: the kernel reports no rss)
    swapped: Optional[int]  # pages in swap
    shmmin: int = SHMMIN


@dataclass(frozen=True)
class Row:
    """One line of the view, named and described as `lsipc -g` does where it has one."""

    resource: str
    description: str
    limit: Optional[int]  # None: no limit of its own (RSS, SWAP) or unreadable
    used: Optional[int]  # None: not something that is used up (SHMMAX, SHMMIN)
    bytes: bool = False  # limit is in bytes (shown as 4K, 16E unless --bytes)

    @property
    def unlimited(self) -> bool:
        return unlimited(self.limit)

    @property
    def use_percent(self) -> Optional[float]:
        if self.used is None or self.limit is None or self.unlimited:
            return None
        # shmmni may be 0 (no new segment can be made): any use is then over the limit
        return 100.0 * self.used / self.limit if self.limit else None


def measure(segments: list[scan.Segment], lim: scan.Limits, page_size: int = PAGE_SIZE) -> Usage:
    def pages(n: int) -> int:
        return (n + page_size - 1) // page_size

    known = all(s.rss is not None for s in segments)  # old kernels print no rss/swap
    return Usage(
        shmmni=lim.shmmni,
        shmall=lim.shmall,
        shmmax=lim.shmmax,
        segments=len(segments),
        pages=sum(pages(s.size) for s in segments),
        resident=sum(s.rss or 0 for s in segments) // page_size if known else None,
        swapped=sum(s.swap or 0 for s in segments) // page_size if known else None,
    )


def read(proc_shm: Path = scan.PROC_SHM, root: Path = Path("/proc/sys/kernel")) -> Usage:
    return measure(scan.read(proc_shm), scan.read_limits(root))


def rows(u: Usage) -> list[Row]:
    return [
        Row("SHMMNI", "Shared memory segments", u.shmmni, u.segments),
        Row("SHMALL", "Shared memory pages", u.shmall, u.pages),
        Row("SHMMAX", "Max size of shared memory segment (bytes)", u.shmmax, None, True),
        Row("SHMMIN", "Min size of shared memory segment (bytes)", u.shmmin, None, True),
        Row("RSS", "Shared memory pages resident", None, u.resident),
        Row("SWAP", "Shared memory pages swapped", None, u.swapped),
    ]


HEADERS = ("RESOURCE", "LIMIT", "USED", "USE%", "DESCRIPTION")


def cells(r: Row, exact_bytes: bool) -> tuple[str, ...]:
    """One word per column but the last, so `awk '{print $2}'` is LIMIT on every line."""
    if r.limit is None:
        limit = "-"
    elif r.unlimited:
        limit = "unlimited"
    elif r.bytes and not exact_bytes:
        limit = format_size(r.limit)
    else:
        limit = str(r.limit)
    pct = r.use_percent
    return (
        r.resource,
        limit,
        "-" if r.used is None else str(r.used),
        "-" if pct is None else f"{pct:.2f}%",  # lsipc's "%2.2f%%"
        r.description,
    )


def plain(u: Usage, exact_bytes: bool, out: IO[str], bold: bool = False) -> None:
    """Aligned columns, numbers to the right, the description last (bold header: table)."""
    lines = [HEADERS, *(cells(r, exact_bytes) for r in rows(u))]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS) - 1)]
    for n, line in enumerate(lines):
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        text = " ".join([*parts, line[-1]])
        out.write(f"\x1b[1m{text}\x1b[0m\n" if bold and n == 0 else text + "\n")


def to_json(u: Usage) -> str:
    """{"limits": [{resource, description, limit, unlimited, used, use_percent}, ...]}.

    `limit` is the kernel's number even when it means unlimited (`unlimited` says so);
    `used` and `use_percent` are null where nothing is used up against the limit.
    """
    docs = []
    for r in rows(u):
        pct = r.use_percent
        docs.append({
            "resource": r.resource, "description": r.description, "limit": r.limit,
            "unlimited": r.unlimited, "used": r.used,
            "use_percent": None if pct is None else round(pct, 2),
        })  # fmt: skip
    return json.dumps({"limits": docs}) + "\n"
