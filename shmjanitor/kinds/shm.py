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
from itertools import repeat
from operator import itemgetter
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
IN_USE_RULE = "attached"  # the rule code (rules.py) of in_use
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


# Every field of a Segment is an int or None (parse makes them so): two equal fields
# are one value, whichever object holds it (survey.Tables.packed sends each once).
PLAIN = True


def parse(text: str, source: str = str(PROC_SHM)) -> list[Segment]:
    """Parse the whole table, or raise CorruptTable naming the first bad line.

    Never guesses: a row with the wrong number of fields or a non-number is an error,
    because a reaper acting on a half-understood table could remove the wrong segment.
    """
    return sysvtable.parse(text, source, REQUIRED, _convert)


def _convert(column: sysvtable.Column, modes: list[int], index: dict[str, int]
             ) -> Iterator[Segment]:  # fmt: skip
    """One chunk's Segments from its columns (sysvtable.parse)."""

    def optional(name: str) -> Iterable[Optional[int]]:
        return column(name) if name in index else repeat(None)

    # tuple.__new__ over zipped columns: Segment(...) is a Python-level __new__ per row
    # (making 100 Segments: 87 us that way, 29 us this way).
    return map(_new, repeat(Segment), zip(
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
    ))  # fmt: skip


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
    return Limits(*(sysvtable.sysctl_value(n, root) for n in ("shmmni", "shmall", "shmmax")))


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
    creator = _new(Party, ("creator", s.cpid, s.ctime, "cpid", None, False))
    atime, dtime = s.atime, s.dtime
    if not (atime or dtime) and s.lpid == 0:
        return (creator,)
    touched = max(atime or 0, dtime or 0)
    return (creator, _new(Party, ("last user", s.lpid, touched or s.ctime, "lpid", None, False)))


_new = tuple.__new__

# The fields parties, in_use, removing, quiet, unknowable and last_used read: two
# segments equal in these have the same parties and one verdict but for the segment
# itself (survey.parties_of and classify.classify_all reuse them; a leak's segments
# differ in key, id and size alone). tests/test_classify.py fails when a field that
# changes a verdict or a party is missing here.
EVIDENCE = itemgetter(2, 4, 5, 6, 11, 12, 13)  # mode, cpid, lpid, nattch, atime, dtime, ctime


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
# What remove.py and quarantine.py ask of a segment (kinds.Kind says what each is for).
# Imported here rather than at the top, which is the reading part's; kernel and segcopy
# (ctypes) only on first use, as `list` never needs them.
import errno  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from shmjanitor import kernel, segcopy
    from shmjanitor.kernel import Stat


class _OnFirstUse:
    """A module imported when first used, which then takes this stand-in's place as a
    global here: after the first call, `kernel.shm_stat` is a plain module lookup."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(f"shmjanitor.{self._name}")
        globals()[self._name] = module
        return getattr(module, attr)


if not TYPE_CHECKING:
    kernel = _OnFirstUse("kernel")
    segcopy = _OnFirstUse("segcopy")


def stat(id: int) -> Stat:
    """IPC_STAT, which does not attach (an attach would change nattch, lpid and atime)."""
    return kernel.shm_stat(id)


def changed_since_scan(s: Segment, now: Stat, forced: bool) -> Optional[str]:
    """Why the segment is no longer what we judged (None when it is the same). Pure."""
    if now.key != s.key:
        return f"changed since scan: key is now 0x{now.key:08x}"
    if now.mode & SHM_DEST:
        return "changed since scan: someone else called IPC_RMID"
    if forced:
        return None
    if now.nattch:
        return f"changed since scan: {now.nattch} attached now"
    # Times are whole seconds: an attach and detach within the second of the scan leaves
    # them as they were, but not lpid, the pid of the last shmat/shmdt.
    if (now.atime, now.dtime, now.ctime, now.lpid) != (s.atime, s.dtime, s.ctime, s.lpid):
        return "changed since scan: attached, detached or IPC_SET since"
    if now.cpid != s.cpid or now.uid != s.uid:
        return "changed since scan: owner or creator differ"
    # IPC_SET moves ctime only to a later second (ctime is in seconds): within the scan's
    # second only the mode shows it (e.g. the quarantine putting back the mode a killed
    # run's last-instant lock had set, after this run's survey saw the lock's 000).
    if now.mode & 0o777 != s.perms:
        return "changed since scan: mode changed (IPC_SET) since"
    return None


def lock(id: int, mode: int) -> None:
    """IPC_SET of the permission bits, from the buffer the last stat() filled (IPC_SET
    writes uid, gid and mode together: kernel.set_mode_after_stat)."""
    kernel.set_mode_after_stat(id, mode)


def unlock(id: int, mode: int) -> None:
    """Put its permission bits back to `mode` (undoing lock): IPC_STAT, then IPC_SET."""
    stat(id)
    lock(id, mode & 0o777)


def changed_while_locked(before: Stat, locked: Stat) -> Optional[str]:
    """An attach between the IPC_STAT before the lock and the lock shows after it: in
    nattch, or in the times and lpid once it detached again. Pure."""
    if locked.nattch or locked.mode & SHM_DEST or (
        locked.key, locked.atime, locked.dtime, locked.lpid
    ) != (before.key, before.atime, before.dtime, before.lpid):  # fmt: skip
        return "changed since scan: attached at the last instant"
    return None


def busy_now(id: int) -> Optional[str]:
    """Nothing beyond IPC_STAT: nattch says who is attached."""
    return None


def rmid(id: int) -> None:
    kernel.shm_rmid(id)


def users_after_rmid(id: int) -> Optional[int]:
    """IPC_RMID frees a segment nobody is attached to at once (ipc/shm.c, do_shm_rmid):
    one still there has users, who attached after our last look; its nattch."""
    return kernel.shm_nattch(id)


# --- the quarantine ---


def known_empty(s: Segment) -> bool:
    """Are the segment's bytes all zero, known without attaching to copy them?

    Yes when nobody ever attached to it (atime 0, shown as None) and the kernel holds
    no page of it (rss and swap 0). A System V segment is only ever written through an
    attach, and every attach sets atime (ipc/shm.c, __shm_open: shmat, and the fork of
    an attached process). The re-check before the save (atime unchanged, so still 0)
    and the one at the last instant (changed_since_copy) show that nobody attached in
    between either.
    """
    return s.atime is None and s.rss == 0 and s.swap == 0


def save_bound(s: Segment) -> int:
    """At most the bytes the segment holds: its resident and swapped pages (a sparse
    segment's holes are not copied), or its size on a kernel that does not say."""
    return min(s.size, (s.rss or 0) + (s.swap or 0)) if s.rss is not None else s.size


# What save() saw just before its own shmdt, by shmid: why the copy may be torn ("" when
# nobody else attached or detached while we copied). Only an IPC_STAT while we are still
# attached shows it (nattch not 1, or lpid not ours): our shmdt makes lpid ours again.
# changed_since_copy takes it right after the save (remove.copy_out). One save at a time.
_while_copying: dict[int, str] = {}


def save(s: Segment, write: Callable[[bytes], None]) -> list[tuple[int, int]]:
    """Attach read-only, hand the bytes that exist to `write` (segcopy: never a page the
    segment does not hold), look, detach. Raises OSError (attach, listing the pages)."""
    _while_copying.clear()  # one save at a time: nothing of an earlier one is left over
    with segcopy.attached(s.id) as addr:
        extents = segcopy.copy(addr, s.size, write)
        now = kernel.shm_stat(s.id)
    alone = now.nattch == 1 and now.lpid == os.getpid()
    _while_copying[s.id] = "" if alone else (
        "changed since scan: attached by another process while copying")  # fmt: skip
    return extents


def changed_since_copy(s: Segment, now: Stat, empty: bool, forced: bool) -> Optional[str]:
    """Why a segment we saved cannot go now (None when nobody touched it since).

    Right after save(): whether anybody attached while we copied (what save saw while
    still attached; --force does not ask). At the last instant: the same segment, and
    after our own detach lpid is ours, so anyone else's attach or detach since shows as
    their lpid. A segment saved as zeros without attaching must still be unattached
    ever (atime unset).
    """
    copying = _while_copying.pop(s.id, None)
    if copying is not None:  # right after save(): the copy itself is in question
        return None if forced else (copying or None)
    if now.key != s.key or now.mode & SHM_DEST or now.cpid != s.cpid:
        return "changed since scan: removed or replaced while copying"
    if empty:
        if now.nattch or now.atime is not None:
            return "changed since scan: attached by another process while it was saved"
        return None
    if forced:
        return None
    if now.nattch or now.lpid != os.getpid():
        return "changed since scan: attached by another process after it was copied"
    return None


def _json_int(n: Optional[int]) -> str:
    return "null" if n is None else str(n)


def record(s: Segment) -> str:
    """Its own facts in a quarantine entry, in the order entries have always had them."""
    return (f'"cpid": {s.cpid}, "lpid": {s.lpid}, "atime": {_json_int(s.atime)}, '
            f'"dtime": {_json_int(s.dtime)}, "ctime": {s.ctime}')  # fmt: skip


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_record(doc: Mapping[str, Any]) -> Optional[str]:
    for name in ("cpid", "lpid", "ctime"):
        if not _whole(doc.get(name)):
            return f"{name} missing or not a whole number"
    for name in ("atime", "dtime"):
        if doc.get(name) is not None and not _whole(doc[name]):
            return f"{name} is not a whole number"
    return None


def data_size(doc: Mapping[str, Any]) -> int:
    return int(doc["size"])


def same(doc: Mapping[str, Any], now: Stat) -> bool:
    """The segment an entry recorded: same key, creator pid and creator uid."""
    return (now.key, now.cpid, now.cuid) == (doc["key"], doc["cpid"], doc["cuid"])


def restore(doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> int:
    """shmget with the entry's key and size, the stored extents written, then its owner
    and mode: the new shmid. Whatever fails after shmget (a signal too) removes the
    half-made segment again. Raises OSError (EEXIST: the key is in use)."""
    import sysv_ipc

    try:
        # 0600 while we fill it; the saved mode is set once the bytes are in. The
        # kernel gives zero pages and allocates none until written: only the stored
        # extents are written, so a sparse segment comes back sparse.
        shmid = kernel.shm_create(doc["key"], doc["size"], 0o600)
    except OSError as e:
        limit = sysvtable.sysctl_value("shmmax")
        if e.errno == errno.EINVAL and limit is not None and doc["size"] > limit:
            raise OSError(e.errno, (
                f"its {doc['size']} bytes are more than kernel.shmmax ({limit}); raise it "
                "(sysctl kernel.shmmax) and try again"
            )) from None  # fmt: skip
        raise
    try:
        shm = sysv_ipc.attach(shmid)
    except sysv_ipc.Error as e:
        kernel.shm_rmid(shmid)
        raise OSError(errno.EIO, f"cannot attach to the new segment: {e}") from None
    try:
        for off, chunk in data:
            shm.write(chunk, off)
        shm.uid, shm.gid = doc["uid"], doc["gid"]
        shm.mode = doc["mode"]
    except BaseException as e:  # a signal too: never leave a half-filled segment
        shm.detach()
        kernel.shm_rmid(shmid)
        if isinstance(e, sysv_ipc.Error):
            raise OSError(errno.EIO, f"cannot restore its owner or mode: {e}") from None
        raise
    shm.detach()
    return shmid
