"""Read and parse /proc/sysvipc/shm into Segment records. Pure apart from `read()`.

The kernel prints one header line naming the columns, then one line per segment
(ipc/shm.c, sysvipc_shm_proc_show). Facts this parser relies on:

* `key` is printed with "%10d", i.e. as a signed int: keys >= 0x80000000 come out
  negative. We keep the unsigned 32-bit value, which is what ipcs shows as 0x%08x.
* `perms` is the mode in octal ("%4o") and carries SHM_DEST (0o1000: IPC_RMID was
  called, the segment dies at last detach) and SHM_LOCKED (0o2000) above the 0o777 bits.
* times are epoch seconds, 0 meaning "never" (atime/dtime of a never-attached segment).
* `rss` and `swap` (bytes) appeared in Linux 3.x; older kernels print 14 columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, repeat
from pathlib import Path
from typing import NamedTuple, Optional

from shmjanitor.errors import CorruptTable, NoSysvIpc

PROC_SHM = Path("/proc/sysvipc/shm")

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
    if not lines:
        raise CorruptTable(f"{source}: empty, not even a header line")
    header = lines[0].split()
    index = {name: i for i, name in enumerate(header)}
    missing = [name for name in REQUIRED if name not in index]
    if missing:
        raise CorruptTable(f"{source}: header lacks column(s) {', '.join(missing)}")
    width = len(header)
    (i_key, i_id, i_perms, i_size, i_cpid, i_lpid, i_nattch, i_uid, i_gid, i_cuid, i_cgid,
     i_atime, i_dtime, i_ctime) = (index[name] for name in REQUIRED)  # fmt: skip
    i_rss = index.get("rss")
    i_swap = index.get("swap")

    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) == width:
            rows.append(fields)
        elif fields:
            raise CorruptTable(
                f"{source}, line {lineno}: {len(fields)} fields where the header names "
                f"{width}: {line.strip()!r}"
            )
    # Convert column by column rather than row by row: one int() pass over every field,
    # then each column is a slice. At 32,000 rows this is a third of the per-row cost.
    try:
        numbers = list(map(int, chain.from_iterable(rows)))
        modes = [int(fields[i_perms], 8) for fields in rows]
    except ValueError:
        raise _not_a_number(lines, source) from None

    def column(i: int) -> list[int]:
        return numbers[i::width]

    def optional(i: Optional[int]) -> Iterable[Optional[int]]:
        return repeat(None) if i is None else column(i)

    return list(
        map(
            Segment,
            [k & 0xFFFFFFFF for k in column(i_key)],
            column(i_id),
            modes,
            column(i_size),
            column(i_cpid),
            column(i_lpid),
            column(i_nattch),
            column(i_uid),
            column(i_gid),
            column(i_cuid),
            column(i_cgid),
            [t or None for t in column(i_atime)],
            [t or None for t in column(i_dtime)],
            column(i_ctime),
            optional(i_rss),
            optional(i_swap),
        )
    )


def _not_a_number(lines: list[str], source: str) -> CorruptTable:
    """The error for the first line with a field that is not a number."""
    i_perms = lines[0].split().index("perms")
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        try:
            [int(f) for f in fields]
            if fields:
                int(fields[i_perms], 8)
        except ValueError:
            return CorruptTable(
                f"{source}, line {lineno}: a field is not a number: {line.strip()!r}"
            )
    raise AssertionError("called for a table whose numbers all parse")


def read(path: Path = PROC_SHM) -> list[Segment]:
    """Read and parse the table at `path` (the kernel's, unless a test says otherwise)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoSysvIpc(
            f"{path} does not exist: this kernel has no System V IPC (or this is not Linux)"
        ) from None
    except OSError as e:
        raise CorruptTable(f"cannot read {path}: {e.strerror}") from None
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
