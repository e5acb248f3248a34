"""System V shared memory segments: the shm kind (/proc/sysvipc/shm, shmctl).

One module per kind of object (see kinds/__init__.py for what a kind provides). This
part reads the table into Segment records; pure apart from `read()`.

Facts of the table this parser relies on (ipc/shm.c, sysvipc_shm_proc_show), besides
those every table shares (sysvtable.py):

* `perms` carries SHM_DEST (0o1000: IPC_RMID was called, the segment dies at last
  detach) and SHM_LOCKED (0o2000) above the 0o777 bits.
* atime/dtime are 0 ("never") for a segment nobody attached.
* `rss` and `swap` (bytes) appeared in Linux 3.x; older kernels print 14 columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from pathlib import Path
from typing import NamedTuple, Optional

from shmjanitor import sysvtable

PROC_SHM = sysvtable.PROC_SYSVIPC / "shm"

SHM_DEST = 0o1000
SHM_LOCKED = 0o2000
IPC_PRIVATE = 0

REQUIRED = (
    "key", "shmid", "perms", "size", "cpid", "lpid", "nattch",
    "uid", "gid", "cuid", "cgid", "atime", "dtime", "ctime",
)  # fmt: skip
OPTIONAL = ("rss", "swap")


class Segment(NamedTuple):
    """One row of /proc/sysvipc/shm, fields named as the kernel names them.

    A NamedTuple rather than a frozen dataclass: it is just as immutable, and building
    32,000 of them costs 30 ms instead of 160 ms (issue 5 measures `list` at that size).
    """

    key: int  # unsigned 32-bit; 0 is IPC_PRIVATE
    id: int  # shmid
    mode: int  # full mode: 0o777 permission bits | SHM_DEST | SHM_LOCKED
    size: int  # bytes
    cpid: int  # creator's pid, 0 when not visible from our PID namespace
    lpid: int  # pid of the last shmat/shmdt, 0 when never attached
    nattch: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    atime: Optional[int]  # last attach, None when never
    dtime: Optional[int]  # last detach, None when never
    ctime: int  # creation or last IPC_SET
    rss: Optional[int]  # None on kernels that do not print it
    swap: Optional[int]

    @property
    def kind(self) -> str:
        """The registry's name for this kind (kinds/__init__.py)."""
        return "shm"

    @property
    def perms(self) -> int:
        return self.mode & 0o777

    @property
    def dest(self) -> bool:
        """IPC_RMID was already called: the kernel removes it at the last detach."""
        return bool(self.mode & SHM_DEST)

    @property
    def locked(self) -> bool:
        return bool(self.mode & SHM_LOCKED)

    @property
    def last_used(self) -> int:
        """The latest of ctime, atime and dtime: when anybody last touched it."""
        return max(self.ctime, self.atime or 0, self.dtime or 0)


def parse(text: str, source: str = str(PROC_SHM)) -> list[Segment]:
    """Parse the whole table, or raise CorruptTable naming the first bad line.

    Never guesses: a row with the wrong number of fields or a non-number is an error,
    because a reaper acting on a half-understood table could remove the wrong segment.
    """
    lines = text.splitlines()
    index = sysvtable.header(lines, source, REQUIRED)
    width = len(lines[0].split())
    segments: list[Segment] = []
    # A few thousand rows at a time: the split fields of 32,000 rows would be 500,000
    # strings at once, and peak memory is one of the things issue 5 measures.
    for _start, rows in sysvtable.chunks(lines, source, width):
        try:
            segments.extend(_convert(rows, width, index))
        except ValueError:
            raise sysvtable.not_a_number(lines, source) from None
    return segments


def _convert(rows: list[list[str]], width: int, index: dict[str, int]) -> Iterator[Segment]:
    """Rows of `width` fields to Segments; ValueError if a field is not a number.

    Column by column rather than row by row: one int() pass over every field, then each
    column is a slice, which costs a third of 16 index look-ups per row.
    """
    numbers = list(map(int, chain.from_iterable(rows)))
    i_perms = index["perms"]
    modes = [int(fields[i_perms], 8) for fields in rows]

    def column(name: str) -> list[int]:
        return numbers[index[name] :: width]

    def optional(name: str) -> Iterable[Optional[int]]:
        return column(name) if name in index else repeat(None)

    return map(
        Segment,
        [k & 0xFFFFFFFF for k in column("key")],
        column("shmid"),
        modes,
        column("size"),
        column("cpid"),
        column("lpid"),
        column("nattch"),
        column("uid"),
        column("gid"),
        column("cuid"),
        column("cgid"),
        [t or None for t in column("atime")],
        [t or None for t in column("dtime")],
        column("ctime"),
        optional("rss"),
        optional("swap"),
    )


def read(path: Path = PROC_SHM) -> list[Segment]:
    """Read and parse the table at `path` (the kernel's, unless a test says otherwise)."""
    text = sysvtable.read_text(path)
    return parse(text, str(path))


class Limits(NamedTuple):
    """Kernel limits from /proc/sys/kernel (per IPC namespace), None when unreadable."""

    shmmni: Optional[int]  # max number of segments
    shmall: Optional[int]  # max total pages
    shmmax: Optional[int]  # max segment size


def read_limits(root: Path = Path("/proc/sys/kernel")) -> Limits:
    def one(name: str) -> Optional[int]:
        try:
            return int((root / name).read_text())
        except (OSError, ValueError):
            return None

    return Limits(one("shmmni"), one("shmall"), one("shmmax"))
