"""POSIX IPC objects: files in /dev/shm (shm_open, and sem_open's "sem.NAME") and in
/dev/mqueue (mq_open). What the three POSIX kinds (kinds/posix_*.py) share: the object,
read from a directory fd without following a link.

An object is one regular file directly in its directory. Never a directory, socket,
fifo, device or symlink: entries are stat'ed with AT_SYMLINK_NOFOLLOW from the
directory's fd, and anything but S_ISREG is not an object. Its `id` is its inode number
on that file system (the kernel's own number for it: names are reused, inodes of live
files are not), and it has no key (0), as lsipc 2.40 shows none.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from stat import S_ISREG
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import holders as _holders
from shmjanitor.accounts import owner_name
from shmjanitor.durations import format_age
from shmjanitor.holders import Holder, Holdings
from shmjanitor.model import Party
from shmjanitor.text import printable

SHM_DIR = "/dev/shm"
MQUEUE_DIR = "/dev/mqueue"

# Where each directory is really opened: itself, or, in the child of a sweep that reads
# another namespace's (inside.py), that namespace's directory as an fd of ours
# (/proc/self/fd/N, opened inside the container's root); None: it has none. Objects
# keep the directory's own name (/dev/shm, /dev/mqueue): it is theirs in their namespace.
_OPEN: dict[str, Optional[str]] = {}


def open_path(d: str) -> Optional[str]:
    """The path to open for directory `d` (SHM_DIR or MQUEUE_DIR); None: none here."""
    return _OPEN.get(d, d)


def reach(shm: Optional[str], mqueue: Optional[str]) -> None:
    """Read and remove the objects of these directories (paths of fds, or None) in
    place of /dev/shm and /dev/mqueue, for the rest of this process (a sweep's child)."""
    _OPEN[SHM_DIR] = shm
    _OPEN[MQUEUE_DIR] = mqueue
    forget()
    # posixrm keeps each directory's fd open once used: one our own parent opened before
    # it forked us (settling a pending run of its namespace) is OUR /dev/shm, and a
    # restore (which reads nothing first) put a container's file there.
    from shmjanitor import posixrm

    for place in (posixrm.SHM, posixrm.MQUEUE):
        place.reset()


class MqAttr(NamedTuple):
    """mq_getattr's answer for a queue (struct mq_attr), and the QSIZE its file shows.

    `qsize` is None as read(): the file's QSIZE is not read, because reading the file
    sets its ctime and atime (ipc/mqueue.c, mqueue_read_file; tested), which would make
    every `list` a change of the queue; mq_getattr on an fd touches no time."""

    maxmsg: int
    msgsize: int
    curmsgs: int
    qsize: Optional[int] = None  # bytes in its messages (the file's QSIZE:), if read


class PosixObject(NamedTuple):
    """One file of /dev/shm or /dev/mqueue, as read once (an fstatat from the directory's
    fd), with who held it during the run's one pass over /proc (holders.scan)."""

    id: int  # st_ino
    name: str  # the directory entry (os.fsdecode: surrogateescape for any byte)
    dir: str  # the directory it was read from ("/dev/shm", "/dev/mqueue")
    dev: int  # st_dev
    mode: int  # st_mode & 0o7777 (the permission bits and setuid/setgid/sticky)
    uid: int
    gid: int
    st_size: int  # the file's length (JSON "size"); a queue's file is 0 long
    used_bytes: int  # st_blocks * 512: what a (sparse) file really takes of RAM
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    holders: tuple[Holder, ...] = ()  # open (fd N) or mapped now, by the pass
    blocked: tuple[str, ...] = ()  # why the pass could not prove it unused (shared)
    name_pid: Optional[int] = None  # a creator pid its name carries (torch_<pid>_...)
    program: Optional[str] = None  # the likely creator, from its name's pattern
    mq: Optional[MqAttr] = None  # a queue's attributes (posix-mqueue only)
    # Added by P1: why we cannot take a write lease on it (not its owner and no
    # CAP_LEASE; fs.leases-enable 0), None when we can (docs/posix-notes.md §2).
    no_lease: Optional[str] = None

    @property
    def kind(self) -> str:
        """The registry's name of its kind: each kind's subclass says its own."""
        raise NotImplementedError("a PosixObject is made as one of its kinds' subclasses")

    @property
    def key(self) -> int:
        return 0  # POSIX objects have names, not keys

    @property
    def perms(self) -> int:
        return self.mode & 0o777

    @property
    def cuid(self) -> int:
        return self.uid  # a file keeps no creator apart from its owner

    @property
    def cgid(self) -> int:
        return self.gid

    @property
    def ctime(self) -> int:
        return self.ctime_ns // 1_000_000_000

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000

    @property
    def atime(self) -> int:
        return self.atime_ns // 1_000_000_000

    @property
    def size(self) -> int:
        """Bytes it holds in the kernel (model.py): the pages a file really uses, or
        the bytes in a queue's messages; never the length of a sparse file."""
        if self.mq is None:
            return self.used_bytes
        if self.mq.qsize is not None:
            return self.mq.qsize
        return self.mq.curmsgs * self.mq.msgsize  # at most that (QSIZE not read)

    @property
    def last_used(self) -> int:
        """The latest of mtime, ctime and atime: min-age counts from it (issue 13)."""
        # Compared by hand: max() of three is twice the time, and classify asks every
        # object (10,000 files: 2 ms of a list).
        t, c, a = self.mtime_ns, self.ctime_ns, self.atime_ns
        if c > t:
            t = c
        return (a if a > t else t) // 1_000_000_000

    @property
    def path(self) -> str:
        return f"{self.dir}/{self.name}"


def is_object(mode: int) -> bool:
    """A regular file: the only kind of entry that is a POSIX object."""
    return S_ISREG(mode)


# One class per kind: remove.py and classify find an object's kind module by its class.
# Its kind is a class attribute, not a property: Survey.of and the summaries ask every
# object's kind, a Python call each as a property. So is its key (always 0), and a file
# of /dev/shm's size is its used_bytes field itself (the field's own C getter: read_dir
# asks only /dev/mqueue's files for queue attributes, so its mq is None): the history
# asks each object's key and size twice and the summary its size once a run, a property
# call each (0.1-0.2 us: 10,000 files, 6 ms of a list).
class PosixShm(PosixObject):
    __slots__ = ()
    kind = "posix-shm"
    key = 0
    size = PosixObject.used_bytes  # type: ignore[assignment]  # the field's descriptor


class PosixSem(PosixObject):
    """A named semaphore: /dev/shm/sem.NAME (glibc's sem_open), a 32-byte sem_t."""

    __slots__ = ()
    kind = "posix-sem"
    key = 0
    size = PosixObject.used_bytes  # type: ignore[assignment]  # as PosixShm's


class PosixMqueue(PosixObject):
    __slots__ = ()
    kind = "posix-mqueue"
    key = 0


# --- name patterns (pure) -----------------------------------------------------------
# The program a name is known to come from, and which group of the pattern (if any) is
# the creator's pid. Looked up in each program's source:
#   psm_<hex>            Python multiprocessing.shared_memory (_SHM_NAME_PREFIX "/psm_")
#   sem.mp-<rand>        Python multiprocessing locks and semaphores (semprefix "/mp")
#   sem.loky-<pid>-<r>   joblib/loky's semaphores ("/loky-%i-%s" % (os.getpid(), ...))
#   pym-<pid>-<rand>     Python multiprocessing.heap arenas (mkstemp(prefix="pym-%d-"))
#   torch_<pid>_<r>_<n>  PyTorch's libshm (torch/lib/libshm/core.cpp: "/torch_" getpid())
#   nccl-<rand>          NCCL's host memory (mkstemp-style, no pid)
#   vader_segment.<host>.<jobid>.<rank>, sm_segment.<host>.<uid>.<jobid>.<rank>
#                        Open MPI's shared-memory BTL (4.x vader, 5.x sm): a job id and a
#                        rank, no pid
#   PostgreSQL.<n>       PostgreSQL's dynamic shared memory (a random handle, no pid)
#   .org.chromium.*, .com.google.Chrome.*  Chromium and Chrome
#   pulse-shm-<n>        PulseAudio;  jack-*, jack_*  the JACK audio server
# (PID) marks the pid. All in one regular expression: one match() per name.
PATTERNS = (
    (r"psm_", "Python multiprocessing.shared_memory"),
    (r"sem\.mp-", "Python multiprocessing"),
    (r"sem\.loky-(PID)-", "joblib (loky)"),
    (r"pym-(PID)-", "Python multiprocessing.heap"),
    (r"torch_(PID)_", "PyTorch"),
    (r"nccl-", "NCCL"),
    (r"vader_segment\.", "Open MPI"),
    (r"sm_segment\.", "Open MPI"),
    (r"PostgreSQL\.[0-9]+$", "PostgreSQL"),
    (r"\.org\.chromium\.", "Chromium"),
    (r"\.com\.google\.Chrome\.", "Chrome"),
    (r"pulse-shm-", "PulseAudio"),
    (r"jack[-_]", "JACK"),
)
_PROGRAMS = re.compile("|".join(
    f"(?P<p{i}>{rx.replace('(PID)', f'(?P<d{i}>[0-9]+)')})" for i, (rx, _) in enumerate(PATTERNS)
))  # fmt: skip
_PID_MAX = 1 << 22  # PID_MAX_LIMIT on 64-bit (include/linux/threads.h)


def known_program(name: str) -> tuple[Optional[str], Optional[int]]:
    """(the likely creator program, the creator pid its name carries) of a name. Pure."""
    m = _PROGRAMS.match(name)
    if m is None:
        return None, None
    i = m.lastgroup  # "p<i>": the outer group of the alternative that matched
    assert i is not None
    digits = m.groupdict().get(f"d{i[1:]}")
    pid = int(digits) if digits is not None else 0
    return PATTERNS[int(i[1:])][1], pid if 0 < pid <= _PID_MAX else None


# --- one read of each directory and one pass over /proc per run ------------------------


class Entry(NamedTuple):
    """A regular file of a directory as fstatat(AT_SYMLINK_NOFOLLOW) saw it."""

    name: str
    st: os.stat_result
    mq: Optional[MqAttr] = None


class Snapshot(NamedTuple):
    """What one run read: each directory's regular files, and the holders pass over all
    of them. `blocked` is per directory: the clauses naming who kept the pass from
    proving a file of it unused; `unseen` whether processes /proc does not list may
    hold its files (a pid in a name then need not be ours)."""

    entries: dict[str, list[Entry]]  # dir -> its regular files
    holdings: Holdings
    blocked: dict[str, tuple[str, ...]]
    unseen: dict[str, bool]
    lease: Callable[[int], Optional[str]]  # uid -> why no write lease (None: we can)
    # Each kind's files, split once by name: /dev/shm's "sem.*" are posix-sem's, the
    # rest posix-shm's; /dev/mqueue's are posix-mqueue's (objects() with no `keep`).
    parts: Optional[dict[type[PosixObject], list[Entry]]] = None


REUSE = 1.0  # seconds a snapshot serves the kinds' read() (one survey; survey.forget)
_snap: Optional[tuple[float, Snapshot]] = None


def forget() -> None:
    """Drop the run's snapshot: the next read() reads the directories and /proc again
    (survey.take calls it first, so that every survey has its own)."""
    global _snap
    _snap = None


def snapshot(proc: str = "/proc") -> Snapshot:
    """The run's snapshot: read once, and reused by the other POSIX kinds' read() for
    REUSE seconds (a `list` reads the three kinds one after the other)."""
    global _snap
    now = time.monotonic()
    if _snap is not None and now - _snap[0] < REUSE:
        return _snap[1]
    s = take(proc)
    _snap = (time.monotonic(), s)
    return s


def take(proc: str = "/proc") -> Snapshot:
    """Read /dev/shm and /dev/mqueue once each, then one holders pass for the files of
    both: the directories first, so that a process that opens a file listed meanwhile
    is seen holding it."""
    dirs = (SHM_DIR, MQUEUE_DIR)
    entries: dict[str, list[Entry]] = {}
    devs: dict[str, int] = {}
    for d in dirs:
        dev, found = read_dir(d, queues=d == MQUEUE_DIR)
        entries[d] = found
        if dev is not None and found:
            devs[d] = dev
    h = _holders.scan(set(devs.values()), proc) if devs else Holdings()
    blocked: dict[str, tuple[str, ...]] = {}
    unseen: dict[str, bool] = {}
    for d in dirs:
        why = [w for w in h.unseen if w != _holders.OUTSIDE or _shared_outside(d, proc)]
        unseen[d] = bool(why)
        blocked[d] = _blocked_clauses(h, why)
    shm: list[Entry] = []
    sem: list[Entry] = []
    for e in entries[SHM_DIR]:  # a loop, not a function call per name
        (sem if e[0].startswith(SEM_PREFIX) else shm).append(e)
    parts: dict[type[PosixObject], list[Entry]] = {
        PosixShm: shm,
        PosixSem: sem,
        PosixMqueue: entries[MQUEUE_DIR],
    }
    return Snapshot(entries, h, blocked, unseen, _lease_check(), parts)


SEM_PREFIX = "sem."  # glibc's sem_open names its file "sem.NAME" (sysdeps/pthread)
_DIR_OF = {"PosixShm": SHM_DIR, "PosixSem": SHM_DIR, "PosixMqueue": MQUEUE_DIR}


def read_dir(path: str, queues: bool = False) -> tuple[Optional[int], list[Entry]]:
    """(st_dev, the regular files) of one directory, from its fd, never following a
    link; (None, []) when it does not exist (no mqueue mounted). A queue's attributes
    are asked with mq_getattr on an fd opened from the directory's fd. `path` is
    SHM_DIR or MQUEUE_DIR, opened where open_path says (a sweep's child: another's)."""
    real = open_path(path)
    if real is None:
        return None, []
    try:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None, []
    try:
        dev = os.fstat(fd).st_dev
        found: list[Entry] = []
        append = found.append
        with os.scandir(fd) as it:
            for e in it:
                try:
                    s = e.stat(follow_symlinks=False)  # fstatat(fd, name, NOFOLLOW)
                except FileNotFoundError:
                    continue  # removed since the listing
                if S_ISREG(s.st_mode) and s.st_dev == dev:  # is_object
                    append(_new(Entry, (e.name, s, None)))
        if queues:
            found = [Entry(e.name, e.st, mq_attr(fd, e.name)) for e in found]
        return dev, found
    finally:
        os.close(fd)


def mq_attr(dir_fd: int, name: str) -> Optional[MqAttr]:
    """mq_getattr of the queue `name` (None when we may not open it). The fd is opened
    read-only, non-blocking (a lease of someone else's fails at once instead of waiting),
    without following a link, and closed at once: an mqueue fd is an mqd_t (glibc's
    mq_getattr is the mq_getsetattr system call on it, which touches no time)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return None
    try:
        return _mq_getattr(fd)
    finally:
        os.close(fd)


def _mq_getattr(fd: int) -> Optional[MqAttr]:
    import ctypes

    attr = (ctypes.c_long * 8)()  # struct mq_attr: flags, maxmsg, msgsize, curmsgs, pad[4]
    if _libc().mq_getattr(fd, attr) != 0:
        return None  # not a queue after all (EBADF/EINVAL): no attributes
    return MqAttr(attr[1], attr[2], attr[3])


@lru_cache(maxsize=1)
def _libc() -> Any:
    """libc, loaded on first use (ctypes: only when there are queues to ask)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _shared_outside(path: str, proc: str) -> bool:
    """May processes outside our PID namespace (which /proc does not list) hold files of
    `path`? Assumed so unless our PID namespace's pid 1 sees another file system there:
    then this one was mounted later, inside this namespace (as the suite does), and a
    process outside reaches it only through setns(2) into our mount namespace, which we
    assume does not happen (as procs.unseen_ipc_peers assumes for IPC namespaces). A
    pod's containers share /dev/shm, and their pid 1 sees the same one."""
    real = open_path(path)
    try:
        if real is None:
            return False
        ours = os.stat(real).st_dev
        theirs = os.stat(f"{proc}/1/root{path}").st_dev
    except FileNotFoundError:
        return False  # pid 1 has no such directory: not the same file system
    except OSError:
        return True  # pid 1's root is closed to us: cannot tell
    return ours == theirs


def _blocked_clauses(h: Holdings, unseen: Iterable[str], named: int = 3) -> tuple[str, ...]:
    """ "pid 1 (sandbox) permission denied", a few named, then "and N more"; then why
    some processes are not listed at all."""
    said = [f"pid {u.pid} ({printable(u.comm or '?')}) {u.why}" for u in h.unreadable[:named]]
    if len(h.unreadable) > named:
        said.append(f"and {len(h.unreadable) - named} more")
    return (*said, *unseen)


CAP_LEASE = 28  # include/uapi/linux/capability.h
LEASES_ENABLE = "/proc/sys/fs/leases-enable"


def _lease_check() -> Callable[[int], Optional[str]]:
    """uid -> why we cannot take a write lease on a file of that owner, None when we
    can (fs/locks.c, generic_setlease: the fsuid must own the file, or CAP_LEASE;
    leases-enable 0 refuses every lease with EINVAL)."""
    try:
        with open(LEASES_ENABLE, "rb") as f:
            enabled = f.read().strip() != b"0"
    except OSError:
        enabled = True  # cannot tell here: the lease itself will say at removal
    if not enabled:
        return lambda uid: "fs.leases-enable is 0"
    from shmjanitor.kernel import has_cap

    if has_cap(CAP_LEASE):
        return lambda uid: None
    me = os.geteuid()
    return lambda uid: None if uid == me else "not its owner, and no CAP_LEASE"


def objects(cls: type[PosixObject], path: str, keep: Optional[Callable[[str], bool]] = None,
            snap: Optional[Snapshot] = None) -> list[PosixObject]:  # fmt: skip
    """The objects of kind `cls` in directory `path`: the kind's own files (the
    snapshot's split), or those whose name `keep` accepts; each with its holders, what
    blocked the proof, its name's program and pid (the pid only when /proc shows every
    process that could hold it)."""
    s = snapshot() if snap is None else snap
    if keep is None and s.parts is not None and _DIR_OF.get(cls.__name__) == path:
        found = s.parts.get(cls, [])
    else:
        found = [e for e in s.entries.get(path, []) if keep is None or keep(e[0])]
    if not found:
        return []
    blocked = s.blocked.get(path, ())
    pids_ours = not s.unseen.get(path, False)
    dev = found[0][1].st_dev  # read_dir keeps the files of the directory's own device
    held = {ino: tuple(sorted(hs)) for (d, ino), hs in s.holdings.held.items() if d == dev}
    leases: dict[int, Optional[str]] = {}
    for uid in {e[1].st_uid for e in found}:
        leases[uid] = s.lease(uid)
    # The program a name shows, and the pid in it when ours (most names show none).
    match = _PROGRAMS.match
    named = {name: _named(name, pids_ours) for name, _, _ in found if match(name)}
    if any(pid is not None for _, pid in named.values()) and _seen_by_other_pid_ns(dev):
        # a pid in a name is the creator's in ITS PID namespace (a container's getpid()),
        # not one of our /proc: judged by the owner instead
        named = {name: (program, None) for name, (program, _) in named.items()}
    # tuple.__new__: the NamedTuple without its Python-level __new__ (10,000 files), and
    # one comprehension: every field read straight from the stat. Most names show no
    # program: their program and pid are None, and the few that show one are put in
    # after (a lookup per file in the comprehension was a tenth of its time).
    out = [_new(cls, (
        f.st_ino, name, path, dev, f.st_mode & 0o7777, f.st_uid, f.st_gid, f.st_size,
        f.st_blocks * 512, f.st_mtime_ns, f.st_ctime_ns, f.st_atime_ns, held.get(f.st_ino, ()),
        blocked, None, None, mq, leases[f.st_uid],
    )) for name, f, mq in found]  # fmt: skip
    if named:
        out = [o if o[1] not in named else o._replace(program=named[o[1]][0],
                                                      name_pid=named[o[1]][1])
               for o in out]  # fmt: skip
    return out


def _seen_by_other_pid_ns(dev: int, proc: str = "/proc") -> bool:
    """Does a process of another PID namespace than ours have the file system `dev`
    mounted (a container with its own PID namespace sharing the host's /dev/shm, as
    `docker --ipc=host` does; or the container whose directory a sweep's child reads)?
    Then a pid its programs put in a name (torch_<pid>_...) may be a pid of that
    namespace, which our /proc numbers otherwise: a live creator would look dead. Read
    from /proc/PID/mountinfo, text the kernel writes: no path is looked up through
    another process's root (a FUSE root whose daemon a user stopped would hang root's
    run). A process whose namespaces cannot be read counts as one (cannot know).
    Walked only when some name carries a pid."""
    try:
        ours = os.readlink(f"{proc}/self/ns/pid")
    except OSError:
        return True
    mine = f" {os.major(dev)}:{os.minor(dev)} "
    seen: set[str] = set()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            pidns = os.readlink(f"{proc}/{name}/ns/pid")
            mnt = os.readlink(f"{proc}/{name}/ns/mnt")
        except FileNotFoundError:
            continue  # exited
        except OSError:
            return True  # closed to us: which file systems it sees cannot be told
        if pidns == ours or mnt in seen:
            continue
        seen.add(mnt)
        try:
            with open(f"{proc}/{name}/mountinfo", encoding="utf-8", errors="replace") as f:
                if any(mine in line for line in f):
                    return True
        except FileNotFoundError:
            continue
        except OSError:
            return True
    return False


def _named(name: str, pids_ours: bool) -> tuple[Optional[str], Optional[int]]:
    program, pid = known_program(name)
    return program, pid if pids_ours else None


_new = tuple.__new__


# --- evidence (pure): what the three kinds' parties, in_use, ... say ------------------


def parties(o: PosixObject) -> tuple[Party, ...]:
    """The creator its name names (torch_<pid>_...), when /proc shows every process that
    could hold it: dead, it is an orphan whoever else lives (issue 13). Else its owner,
    who may open it again by name while any process of theirs lives (reopens)."""
    if o.name_pid is not None:
        return (Party("creator (pid in its name)", o.name_pid, float(o.ctime), "name"),)
    # since 0: a user's liveness has no moment, so one tuple per owner serves every
    # object of theirs (classify judges a tuple once)
    owner = _owners.get(o.uid)
    if owner is None:
        owner = _owners[o.uid] = (_new(Party, ("owner", 0, 0.0, "uid", o.uid, True)),)
    return owner


_owners: dict[int, tuple[Party, ...]] = {}  # uid -> (its owner party,): immutable facts


def _who(h: Holder) -> str:
    what = ", ".join(printable(x) for x in (h.comm, None if h.uid is None else owner_name(h.uid))
                     if x)  # fmt: skip
    return f"{h.pid} ({what})" if what else str(h.pid)


def holders_clause(hs: Sequence[Holder], named: int = 3) -> str:
    """ "open by 4242 (python3, alice) fd 5; mapped by 4250 (python3, alice)": at most
    `named` processes of each way, then "and N more"."""
    fds: dict[int, list[str]] = {}
    maps: list[Holder] = []
    first: dict[int, Holder] = {}
    for h in hs:
        first.setdefault(h.pid, h)
        if h.how == _holders.MAPPED:
            maps.append(h)
        else:
            fds.setdefault(h.pid, []).append(h.how[3:] if h.how.startswith("fd ") else h.how)
    said = []
    if fds:
        each = [f"{_who(first[pid])} fd {', '.join(ns)}" for pid, ns in list(fds.items())[:named]]
        more = f" and {len(fds) - named} more" if len(fds) > named else ""
        said.append(f"open by {', '.join(each)}{more}")
    if maps:
        pids = list(dict.fromkeys(h.pid for h in maps))
        each = [_who(first[pid]) for pid in pids[:named]]
        more = f" and {len(pids) - named} more" if len(pids) > named else ""
        said.append(f"mapped by {', '.join(each)}{more}")
    return "; ".join(said)


def in_use(o: PosixObject, name_of: Callable[[int], Optional[str]]) -> Optional[str]:
    return holders_clause(o.holders) if o.holders else None


def unknowable(o: PosixObject) -> Optional[str]:
    """Unknown only when the pass could not read every process AND no write lease can
    be taken at removal; when one can, the lease is the kernel's proof (quiet says so)."""
    if o.blocked and o.no_lease is not None:
        return (f"holders not all readable ({'; '.join(o.blocked)}), and no write lease can "
                f"prove it unused ({o.no_lease})")  # fmt: skip
    return None


def removing(o: PosixObject) -> Optional[str]:
    return None  # unlink removes the name at once; held files have holders (in_use)


def quiet(o: PosixObject, now: float) -> str:
    """ "nobody holds it; modified 3h ago" (the latest of mtime, ctime, atime)."""
    m, c, a = o.mtime_ns, o.ctime_ns, o.atime_ns
    changed = m if m > c else c
    read = a > changed  # read since its last change: "read"; else "modified"
    age = max(0, int(now - (a if read else changed) // 1_000_000_000))  # as last_used
    # One text per (blocked, messages, read, age): thousands of files share one.
    key = (o.blocked, o.mq.curmsgs if o.mq is not None else 0, read, age)
    text = _quiet.get(key)
    if text is None:
        if len(_quiet) >= 4096:
            _quiet.clear()
        text = _quiet[key] = _quiet_text(*key)
    return text


_quiet: dict[tuple[tuple[str, ...], int, bool, int], str] = {}


def _quiet_text(blocked: tuple[str, ...], curmsgs: int, read: bool, age: int) -> str:
    if blocked:
        head = (f"nobody seen holding it; holders not all readable ({'; '.join(blocked)}): "
                "the write lease decides at removal")  # fmt: skip
    else:
        head = "nobody holds it"
    if curmsgs:
        head += f"; {curmsgs} message{'s' if curmsgs != 1 else ''} on it"
    return f"{head}; {'read' if read else 'modified'} {format_age(age)} ago"
