"""System V semaphore sets: the sem kind (/proc/sysvipc/sem, semctl).

One module per kind of object (see kinds/__init__.py for what a kind provides). The
table names no process at all (key semid perms nsems uid gid cuid cgid otime ctime):
the evidence of use is read per semaphore with semctl at `read()`. Kernel facts relied
on (ipc/sem.c, Linux 6.x; sysvtable.py for what every table shares):

* GETNCNT/GETZCNT count the tasks blocked in semop on that semaphore, to decrease it
  or for it to be zero (count_semcnt: a task counts once, on the semaphore of its first
  operation that could not proceed). A waiter is a process using the set right now.
* GETPID is `sempid`, the last process to change that semaphore: by semop (of any
  operation, waiting for zero too), by semctl SETVAL or SETALL (which set sempid and
  ctime, not otime: semctl_setval, semctl_main), or by the kernel applying its SEM_UNDO
  adjustments when it exits (exit_sem, which sets otime too). It is the pid as seen from
  the caller's PID namespace (pid_vnr): 0 for a semaphore nobody changed, and for one
  whose last changer is not visible from our namespace.
* otime is the latest semop of any of its semaphores (get_semotime), 0 when none.
* GETNCNT, GETZCNT, GETPID, GETALL and IPC_STAT need read permission (ipcperms with
  S_IRUGO): without it (EACCES) nothing of the set's use can be known.
* IPC_RMID frees the set at once and wakes every waiter with EIDRM (freeary): there is
  no "removing" state as for a segment.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import kernel, procs, sysvtable
from shmjanitor.durations import format_age
from shmjanitor.errors import CorruptTable
from shmjanitor.model import Fact, Party

PROC_SEM = sysvtable.PROC_SYSVIPC / "sem"

NAME = "sem"
PLURAL = "semaphores"  # lsipc -s --json calls its array "semaphores"
NOUN = "semaphore set"
VERB = "operate on it"  # "last operator 4242 (postgres) alive, may operate on it again"
IN_USE_RULE = "waiting"  # the rule code (rules.py) of in_use
TABLE = PROC_SEM

COLUMNS = ("key", "semid", "perms", "nsems", "uid", "gid", "cuid", "cgid", "otime", "ctime")
_GONE = (errno.EINVAL, errno.EIDRM)


class SemSet(NamedTuple):
    """One row of /proc/sysvipc/sem, fields named as the kernel names them, and what
    semctl says of each of its semaphores at read(): tuples indexed by semaphore number,
    None when they could not be read (no read permission)."""

    key: int  # unsigned 32-bit; 0 is IPC_PRIVATE
    id: int  # semid
    mode: int  # the 0o777 permission bits (a set has no other flags)
    nsems: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    otime: Optional[int]  # last semop on any of its semaphores, None when never
    ctime: int  # creation, or the last SETVAL, SETALL or IPC_SET
    semncnt: Optional[tuple[int, ...]] = None  # GETNCNT: tasks waiting to decrease it
    semzcnt: Optional[tuple[int, ...]] = None  # GETZCNT: tasks waiting for it to be 0
    sempid: Optional[tuple[int, ...]] = None  # GETPID: its last changer, 0 none or unseen

    @property
    def kind(self) -> str:
        """The registry's name for this kind (kinds/__init__.py)."""
        return NAME

    @property
    def perms(self) -> int:
        return self.mode & 0o777

    @property
    def size(self) -> int:
        return 0  # a set holds no bytes of data worth counting (model.py)

    @property
    def last_used(self) -> int:
        """The latest of ctime and otime: when anybody last touched it."""
        return max(self.ctime, self.otime or 0)

    @property
    def waiters(self) -> Optional[int]:
        """Tasks blocked in semop on it now (GETNCNT + GETZCNT), None when unreadable."""
        n, z = self.semncnt, self.semzcnt
        if n is None or z is None:
            return None
        return sum(n) + sum(z)

    @property
    def operators(self) -> tuple[int, ...]:
        """The distinct non-zero sempids, in semaphore order."""
        pids = self.sempid
        if not pids or not any(pids):
            return ()  # none, or nobody ever changed one: the common case, said at once
        return tuple(dict.fromkeys(p for p in pids if p))


# --- reading ----------------------------------------------------------------------------


Row = tuple  # a table row's ten fields, in SemSet's order (the facts come after)


def parse(text: str, source: str = str(PROC_SEM)) -> list[SemSet]:
    """The whole table without the per-semaphore facts (None), or CorruptTable naming the
    first bad line. Pure."""
    unread = (None, None, None)
    return [_new(SemSet, (*r, *unread)) for r in _rows(text, source)]


def _rows(text: str, source: str) -> list[Row]:
    return sysvtable.parse(text, source, COLUMNS, _convert)


def _convert(column: sysvtable.Column, modes: list[int], _index: dict[str, int]
             ) -> Iterator[Row]:  # fmt: skip
    """One chunk's rows from its columns (sysvtable.parse)."""
    return zip(
        [k & 0xFFFFFFFF for k in column("key")],
        column("semid"),
        modes,
        column("nsems"),
        column("uid"),
        column("gid"),
        column("cuid"),
        column("cgid"),
        [t or None for t in column("otime")],
        column("ctime"),
    )


# tuple.__new__ rather than SemSet(...) or _replace, whose Python frames cost 0.1 s
# more over 32,000 sets (issue 12 measures `list` at that size).
_new = tuple.__new__


def with_facts(sets: Iterable[Row]) -> list[SemSet]:
    """Each set (a SemSet or a table row) with its semaphores' waiters and last pids, read
    now. A set removed since the table was read is dropped; one we may not read keeps
    None (`unknowable`)."""
    out: list[SemSet] = []
    append = out.append
    call = kernel.semctl_no_errno
    for s in sets:
        row = s[:10]  # a row itself (a slice of a whole tuple is that tuple)
        semid = row[1]
        if row[3] == 1:
            # A set of one, the common case (Apache's, PostgreSQL's): the three calls of
            # kernel.sem_waits_and_pids without its frame and lists (32,000 sets: -30 ms).
            n, z, p = call(semid, 0, GETNCNT), call(semid, 0, GETZCNT), call(semid, 0, GETPID)
            if (n | z | p) >= 0:  # none failed (-1)
                append(_new(SemSet, row + ((n,), (z,), (p,))))
                continue
        try:
            append(_new(SemSet, row + kernel.sem_waits_and_pids(semid, row[3])))
        except OSError as e:
            if e.errno in _GONE:
                continue  # removed between the table and semctl: not there any more
            if e.errno not in (errno.EACCES, errno.EPERM):
                raise CorruptTable(f"semctl of semaphore set {semid}: {e.strerror}") from None
            append(_new(SemSet, row + (None, None, None)))
    return out


GETNCNT, GETZCNT, GETPID = kernel.GETNCNT, kernel.GETZCNT, kernel.GETPID


def read(path: Path = PROC_SEM) -> list[SemSet]:
    """The table at `path` and, for each set the kernel still has, its semaphores'
    facts (so a fixture file's sets are all dropped: test text with `parse`)."""
    return with_facts(_rows(sysvtable.read_text(path), str(path)))


def limits() -> dict[str, Optional[int]]:
    """kernel.sem: SEMMSL SEMMNS SEMOPM SEMMNI (per IPC namespace; ipc/ipc_sysctl.c)."""
    values = sysvtable.read_sysctl("sem")
    names = ("semmsl", "semmns", "semopm", "semmni")
    if len(values) != len(names):
        return dict.fromkeys(names)
    return dict(zip(names, values))


def _pids(s: SemSet) -> Optional[str]:
    pids = s.sempid
    if pids is not None and len(pids) == 1:  # a set of one: 32,000 of them in issue 12
        return str(pids[0]) if pids[0] else None
    return ",".join(map(str, s.operators)) or None


FACTS = (
    Fact("NSEMS", "nsems", lambda s: s.nsems, "number of semaphores in the set"),
    Fact("OTIME", "otime", lambda s: s.otime, "time of the last semop", "time"),
    Fact("WAITERS", "waiters", lambda s: s.waiters, "tasks blocked in semop on it now"),
    Fact("SEMPIDS", "sempids", _pids, "last pids to change its semaphores (GETPID)"),
)


def json_facts(s: SemSet) -> str:
    """FACTS as members of its JSON object, each with its comma, in one call: the text
    shapes.FactsJson makes of them one call per fact (tests/test_json_facts.py holds
    the two equal). SEMPIDS is digits and commas: a JSON string needs no escape."""
    otime, waiters, pids = s.otime, s.waiters, _pids(s)
    sempids = "null" if pids is None else f'"{pids}"'
    return (f'"nsems":{s.nsems},"otime":{"null" if otime is None else otime},'
            f'"waiters":{"null" if waiters is None else waiters},"sempids":{sempids},')  # fmt: skip


# --- evidence (pure) --------------------------------------------------------------------


@lru_cache(maxsize=1)
def every_pid_visible() -> bool:
    """Is a sempid of 0 "nobody"? Not where processes of another PID namespace may share
    this IPC namespace (procs.unseen_ipc_peers): a 0 may then be one of them."""
    return procs.unseen_ipc_peers() is None


# parties() of the sets seen in this run, by everything it reads. A leak is thousands
# of sets with the same few answers (never operated on, made by one user within a few
# seconds): one tuple of Parties each, not a few Python objects per set.
_said: dict[tuple[Any, ...], tuple[Party, ...]] = {}


def parties(s: SemSet) -> tuple[Party, ...]:
    """Each distinct last operator (sempid); for a set nobody ever operated on (otime
    and every sempid 0) the creating user; nothing when the facts are unreadable.

    A sempid is as of max(otime, ctime), not otime: SETVAL and SETALL set it and ctime
    but not otime, so the pid may have touched the set after otime, and a process that
    started before its touch is judged by the later moment (ipc/sem.c, semctl_setval).
    """
    pids = s.sempid
    if pids is None:
        return ()
    visible = every_pid_visible()
    key = (pids, s.otime, s.ctime, s.cuid, visible)
    found = _said.get(key)
    if found is None:
        if len(_said) >= 4096:
            _said.clear()
        found = _said[key] = _parties(s, visible)
    return found


def _parties(s: SemSet, every_visible: bool) -> tuple[Party, ...]:
    """parties(), worked out (`every_visible`: every_pid_visible())."""
    assert s.sempid is not None
    since = s.last_used
    found = [Party("last operator", pid, since, "sempid") for pid in s.operators]
    if not found and s.otime is None:
        # Never operated on, never SETVAL'd: no process is named. As systemd-logind's
        # RemoveIPC= judges it: gone when its creating user has no process left.
        found.append(Party("creating user", 0, s.ctime, "cuid", uid=s.cuid))
    if (0 in s.sempid and not every_visible) or (s.otime is not None and not found):
        # Outside the initial PID namespace a 0 may be a process we cannot see (and
        # after a semop, a 0 everywhere is one): classify says "not visible from this
        # PID namespace" (unknown), never dead. In the initial namespace every process
        # has a pid, and a 0 is a semaphore nobody changed.
        found.append(Party("last operator", 0, since, "sempid"))
    return tuple(found)


def in_use(s: SemSet, name_of: Callable[[int], Optional[str]]) -> Optional[str]:
    """The clause when a task is blocked on it now, else None: "2 waiting in semop
    (semaphore 0: 1 to decrease it; semaphore 2: 1 for zero); last operator 4242 (x)"."""
    ncnt, zcnt = s.semncnt, s.semzcnt
    if ncnt is None or zcnt is None or not (any(ncnt) or any(zcnt)):
        return None  # unreadable (unknowable says so), or nobody waits
    parts = []
    for num, (n, z) in enumerate(zip(ncnt, zcnt)):
        what = [f"{n} to decrease it"] * bool(n) + [f"{z} for zero"] * bool(z)
        if what:
            parts.append(f"semaphore {num}: {', '.join(what)}")
    clause = f"{s.waiters} waiting in semop ({'; '.join(parts)})"
    if s.operators:
        names = [
            f"{p} ({n})" if n else str(p) for p, n in zip(s.operators, map(name_of, s.operators))
        ]
        clause += f"; last operator{'s' * (len(names) > 1)} {', '.join(names)}"
    return clause


def unknowable(s: SemSet) -> Optional[str]:
    if s.sempid is None:
        return (
            "its waiters and last operators cannot be read: semctl needs read "
            "permission on it (EACCES; root can)"
        )
    return None


def removing(s: SemSet) -> Optional[str]:
    return None  # IPC_RMID frees a set at once (freeary)


def quiet(s: SemSet, now: float) -> str:
    otime = s.otime
    if otime is None:
        return _quiet(_NEVER, int(now - s.ctime))
    return _quiet(_SINCE, int(now - otime))


_NEVER = "never operated on, created {} ago"
_SINCE = "no semop for {}"


@lru_cache(maxsize=4096)  # the same few ages, over and over: a leak's sets are alike
def _quiet(text: str, seconds: int) -> str:
    return text.format(format_age(seconds))


# --- removing (remove.py drives these) --------------------------------------------------


def stat(id: int) -> SemSet:
    """IPC_STAT now, then each semaphore's waiters and last pid (the IPC_STAT's buffer
    stays for `lock`). Raises OSError: EINVAL/EIDRM gone, EACCES no read permission."""
    row = kernel.sem_stat_row(id)
    if row[3] == 1:  # as with_facts reads a set of one, without a frame or lists
        call = kernel.semctl_no_errno
        n, z, p = call(id, 0, GETNCNT), call(id, 0, GETZCNT), call(id, 0, GETPID)
        if (n | z | p) >= 0:
            return _new(SemSet, row + ((n,), (z,), (p,)))
    return _new(SemSet, row + kernel.sem_waits_and_pids(id, row[3]))


def _other_set(s: SemSet, now: SemSet) -> Optional[str]:
    """The identity checks, never skipped: the same key, creator and size."""
    if now.key != s.key:
        return f"changed since scan: key is now 0x{now.key:08x}"
    if (now.cuid, now.cgid, now.nsems) != (s.cuid, s.cgid, s.nsems):
        return "changed since scan: another set has its id (creator or nsems differ)"
    return None


def _operated(s: SemSet, now: SemSet) -> Optional[str]:
    """The in-use checks: nobody waits, nobody operated on it since `s`."""
    if now.waiters:
        return f"changed since scan: {now.waiters} waiting in semop now"
    # otime is in seconds; a semop within the scan's second shows in sempid only.
    if (now.otime, now.sempid) != (s.otime, s.sempid):
        return "changed since scan: operated on since (semop)"
    return None


def changed_since_scan(s: SemSet, now: SemSet, forced: bool) -> Optional[str]:
    """Why the set is no longer what was judged, else None. Pure."""
    if now == s and not now.waiters:
        # Every field as judged and nobody waiting: each check below would pass (one
        # tuple comparison instead of a dozen fields; reap asks this of every set).
        return None
    why = _other_set(s, now)
    if why or forced:
        return why
    why = _operated(s, now)
    if why:
        return why
    if now.ctime != s.ctime:
        return "changed since scan: SETVAL, SETALL or IPC_SET since"
    if (now.uid, now.gid, now.perms) != (s.uid, s.gid, s.perms):
        return "changed since scan: owner or mode changed (IPC_SET) since"
    return None


def lock(id: int, mode: int) -> None:
    """IPC_SET its permission bits, with uid and gid from `stat(id)`'s IPC_STAT. From
    then on only a process with CAP_IPC_OWNER may semop (do_semtimedop checks ipcperms
    at each call); a task already blocked stays a waiter, which `stat` shows."""
    kernel.sem_set_mode_after_stat(id, mode)


def unlock(id: int, mode: int) -> None:
    """Put its permission bits back to `mode` (undoing lock): IPC_STAT, then IPC_SET."""
    stat(id)
    lock(id, mode & 0o777)


def changed_while_locked(before: SemSet, locked: SemSet) -> Optional[str]:
    """Why it cannot go, comparing the stat before the lock with the one after (not
    ctime or mode: our IPC_SET changed them). Pure."""
    if locked.key != before.key or locked.nsems != before.nsems:
        return "changed since scan: removed and replaced at the last instant"
    if locked.waiters:
        return f"changed since scan: {locked.waiters} waiting in semop at the last instant"
    if (locked.otime, locked.sempid) != (before.otime, before.sempid):
        return "changed since scan: operated on at the last instant"
    return None


def busy_now(id: int) -> Optional[str]:
    return None  # the waiters are in stat(): GETNCNT/GETZCNT


def rmid(id: int) -> None:
    kernel.sem_rmid(id)


def users_after_rmid(id: int) -> Optional[int]:
    return None  # freed at once, waiters woken with EIDRM (ipc/sem.c, freeary)


# --- the quarantine ---------------------------------------------------------------------
# A set's data is its values: nsems unsigned 16-bit numbers, little-endian, in semaphore
# order (semval is at most SEMVMX, 32767). The record keeps what restore needs beyond
# the shared fields (nsems) and what the set looked like (otime, sempid).

_VALUE = struct.Struct("<H")


def known_empty(s: SemSet) -> bool:
    return False  # reading its values is one GETALL


def save_bound(s: SemSet) -> int:
    return s.nsems * _VALUE.size


def data_size(doc: Mapping[str, Any]) -> int:
    return int(doc["nsems"]) * _VALUE.size


def save(s: SemSet, write: Callable[[bytes], None]) -> list[tuple[int, int]]:
    """GETALL, written as the bytes above. Raises OSError."""
    values = kernel.sem_getall(s.id, s.nsems)
    data = struct.pack(f"<{len(values)}H", *values)
    write(data)
    return [(0, len(data))]


def changed_since_copy(s: SemSet, now: SemSet, empty: bool, forced: bool) -> Optional[str]:
    """Why the saved values may be stale: a value changes only by semop (otime, sempid),
    SETVAL/SETALL (ctime, sempid) or an exit's SEM_UNDO (sempid, otime). Pure."""
    if _other_set(s, now):
        return "changed since scan: removed or replaced while it was saved"
    if forced:
        return None
    why = _operated(s, now)
    if why is None and now.ctime != s.ctime:
        why = "changed since scan: SETVAL, SETALL or IPC_SET while it was saved"
    return why


def record(s: SemSet) -> str:
    pids = ", ".join(map(str, s.sempid)) if s.sempid is not None else ""
    otime = "null" if s.otime is None else str(s.otime)
    return f'"nsems": {s.nsems}, "otime": {otime}, "sempid": [{pids}]'


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_record(doc: Mapping[str, Any]) -> Optional[str]:
    nsems = doc.get("nsems")
    if not isinstance(nsems, int) or not _whole(nsems) or nsems < 1:
        return "nsems missing or not a positive whole number"
    if doc.get("otime") is not None and not _whole(doc["otime"]):
        return "otime is not a whole number"
    pids = doc.get("sempid")
    if not isinstance(pids, list) or not all(map(_whole, pids)) or len(pids) not in (0, nsems):
        return "sempid is not a list of nsems pids"
    # save writes every value, always: extents that cover less (or another nsems) would
    # make restore fill a set with zeros of its own and say nothing.
    if "extents" in doc and doc["extents"] != [[0, nsems * _VALUE.size]]:
        return f"extents are not the {nsems} values of the set"
    return None


def same(doc: Mapping[str, Any], now: SemSet) -> bool:
    """Is `now` the set the entry recorded? Key, creator and nsems (not ctime: our own
    lock's IPC_SET moves it)."""
    return (now.key, now.cuid, now.cgid, now.nsems) == (
        doc["key"], doc["cuid"], doc["cgid"], doc["nsems"],
    )  # fmt: skip


def restore(doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> int:
    """semget(key, nsems, IPC_CREAT|IPC_EXCL|0600), SETALL the saved values, then IPC_SET
    the saved owner and mode; its new id. EEXIST (the key is in use) propagates; a set
    made here is removed again if a later step fails. The values' sempid becomes ours
    (SETALL sets it)."""
    nsems = int(doc["nsems"])
    size = nsems * _VALUE.size
    # Read as it comes, nothing allocated ahead: nsems is the entry's word, the data is
    # what the store holds (a tampered nsems of 2**31 would ask 4 GiB before a byte).
    raw = bytearray()
    for off, chunk in data:
        if off != len(raw) or len(raw) + len(chunk) > size:
            raise OSError(errno.EINVAL, f"saved values do not fit a set of {nsems}")
        raw += chunk
    if len(raw) != size:
        raise OSError(errno.EINVAL, f"saved values do not fit a set of {nsems}")
    values = struct.unpack(f"<{nsems}H", raw)
    semid = kernel.sem_create(int(doc["key"]), nsems, 0o600)
    try:
        kernel.sem_setall(semid, values)
        kernel.sem_set_owner(semid, int(doc["uid"]), int(doc["gid"]), int(doc["mode"]))
    except BaseException:  # a signal too: never leave a half-made set behind
        kernel.sem_rmid(semid)
        raise
    return semid
