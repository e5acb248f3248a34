"""System V shared memory segments: the shm kind (/proc/sysvipc/shm, shmctl).

One module per kind of object (see kinds/__init__.py for what a kind provides). The
first part reads the table into Segment records and says what in them is evidence of
use (pure apart from `read()` and `limits()`); the part below `# --- removing ---`
re-checks, removes, saves and restores one segment.

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
from typing import Callable, NamedTuple, Optional

from shmjanitor import sysvtable
from shmjanitor.durations import format_age
from shmjanitor.model import Fact, Party

PROC_SHM = sysvtable.PROC_SYSVIPC / "shm"

NAME = "shm"
PLURAL = "segments"
NOUN = "segment"
VERB = "attach"
TABLE = PROC_SHM

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
        return NAME

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


def limits() -> dict[str, Optional[int]]:
    """shmmni, shmall and shmmax of this IPC namespace (None: unreadable)."""
    return read_limits()._asdict()


def _status(s: Segment) -> str:
    return ",".join(name for name, on in (("dest", s.dest), ("locked", s.locked)) if on) or "-"


# The facts of a segment beyond those every object has (size, ctime, the owner, ...).
# `list` shows segments in the table and JSON the README documents (render.py keeps
# that shape); these name the same columns and fields.
FACTS = (
    Fact("NATTCH", "nattch", lambda s: s.nattch, "processes attached"),
    Fact("CPID", "cpid", lambda s: s.cpid, "the creator's pid (0: not visible from here)",
         "pid"),
    Fact("LPID", "lpid", lambda s: s.lpid, "pid of the last attach or detach", "pid"),
    Fact("ATIME", "atime", lambda s: s.atime, "last attach (- never)", "time"),
    Fact("DTIME", "dtime", lambda s: s.dtime, "last detach (- never)", "time"),
    Fact("RSS", "rss", lambda s: s.rss, "resident memory (- if the kernel does not say)",
         "bytes"),
    Fact("SWAP", "swap", lambda s: s.swap, "swapped-out memory", "bytes"),
    Fact("STATUS", "status", _status, "dest (IPC_RMID called), locked (SHM_LOCK), or -"),
)  # fmt: skip


# --- evidence of use (classify.py asks these, the same way for every kind) ---------


def parties(s: Segment) -> tuple[Party, ...]:
    """The creator (cpid, as of ctime), then the last user: the pid of the last shmat or
    shmdt, as of that moment (every write of lpid sets atime or dtime: ipc/shm.c,
    shm_open and shm_close). No last user when nobody ever attached (lpid 0, no times),
    as ipcmk leaves a segment; lpid 0 after an attach is a process outside our PID
    namespace (the kernel prints pids as the reader's namespace numbers them)."""
    # tuple.__new__ rather than Party(...): the same tuple, without a Python-level call
    # (a survey makes one or two per segment: 32,000 of them).
    creator = _new(Party, ("creator", s.cpid, s.ctime, "cpid", None))
    atime, dtime = s.atime, s.dtime
    if not (atime or dtime) and s.lpid == 0:
        return (creator,)
    touched = max(atime or 0, dtime or 0)
    return (creator, _new(Party, ("last user", s.lpid, touched or s.ctime, "lpid", None)))


_new = tuple.__new__


def in_use(s: Segment, name_of: Callable[[int], Optional[str]]) -> Optional[str]:
    """Attached now: nattch counts the attaches the kernel holds (ipc/shm.c)."""
    if s.nattch <= 0:
        return None
    name = name_of(s.lpid)
    who = f" ({name})" if name else ""
    return f"{s.nattch} attached; last attach/detach by pid {s.lpid}{who}"


def unknowable(s: Segment) -> Optional[str]:
    """nattch, cpid and lpid are in the table for every reader: nothing is hidden."""
    return None


def removing(s: Segment) -> Optional[str]:
    """SHM_DEST: IPC_RMID was called while attached; the kernel keeps the segment until
    the last detach (ipc/shm.c, do_shm_rmid), and nobody can attach it by key."""
    if not s.mode & SHM_DEST:
        return None
    return (
        f"IPC_RMID already called (SHM_DEST); the kernel frees it when the last of "
        f"{s.nattch} attached detaches"
    )


def quiet(s: Segment, now: float) -> str:
    atime, ctime = s.atime, s.ctime
    if atime is None:
        return f"never attached, created {format_age(int(now - ctime))} ago"
    last_used = max(ctime, atime, s.dtime or 0)  # s.last_used, inlined: 32,000 calls
    return f"nobody attached for {format_age(max(0, int(now - last_used)))}"


# --- removing ---
