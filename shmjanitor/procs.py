"""Process facts for the pids a table mentions: alive, dead, or cannot be known, and since
when. Facts only; what they mean for a segment is liveness.py's judgement.

Which pids exist at all comes from one listing of /proc, so 32,000 segments left by
32,000 dead creators cost one directory read, not 32,000 look-ups. That listing is the
truth only when /proc is complete and ours; two things make it lie, and then a pid it
lacks is asked about with kill(pid, 0), which answers in our own PID namespace and
ignores /proc's mount options (ESRCH: no such process; success or EPERM: it exists):

* hidepid: /proc mounted hidepid=1/2/4 (noaccess, invisible, ptraceable) shows a
  process only to those who pass ptrace_may_access(PTRACE_MODE_READ) or are in its gid=
  group (fs/proc/base.c, has_pid_permissions). That is a check of capabilities, not of
  uids: root without CAP_SYS_PTRACE loses sight of other users' processes, and of its
  own that hold capabilities it lacks (security/commoncap.c, cap_ptrace_access_check).
  So a pid missing from such a /proc is not dead until kill(2) says so.
* another PID namespace's /proc (a shell after `unshare --pid --fork` without
  --mount-proc, a container given the host's /proc): /proc/sysvipc/shm prints pids as
  the *reader's* PID namespace numbers them (ipc/util.c, sysvipc_proc_open), /proc
  lists another namespace's. The same number is another process: /proc is not read.

A user, rather than a process, is evidence for an object that names no pid at all (a
semaphore set nobody ever operated on): `users` says which uids still have a process,
from /proc/PID/status of every process, and only when some object asks.

The rest is read from /proc/PID/stat directly (one read: state, threads, start), without
psutil, so that the start time is computed from the boot time the caller chose and
read once (liveness.Clock), not re-read per process while the clock may be stepping.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Optional

# Notes for facts that are not a plain "alive" or "exited".
ZOMBIE = "zombie"
HIDDEN = "hidden by hidepid"
DENIED = "access denied"
FOREIGN = "another PID namespace's /proc"
LEADER_EXITED = "main thread exited, other threads run"

_CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of starttime in /proc/PID/stat
_COMM_LEN = 15  # TASK_COMM_LEN - 1: a longer command name is cut to this in stat


class Proc(NamedTuple):
    """What we know about one pid at the time we looked."""

    pid: int
    alive: Optional[bool]  # None: it exists, but who it is cannot be known (see note)
    started: Optional[float]  # epoch seconds: the boot time given + start after boot
    name: Optional[str]
    note: Optional[str] = None  # ZOMBIE, HIDDEN, DENIED, FOREIGN, LEADER_EXITED


def boot_time(stat: Path = Path("/proc/stat")) -> Optional[float]:
    """btime of /proc/stat: wall clock minus time since boot, as the kernel computes it
    at each read (fs/proc/stat.c, getboottime64). It moves with every step of the wall
    clock; start times computed from it move with it (see liveness.Clock)."""
    try:
        with open(stat, "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def procfs_is_ours(proc: str = "/proc") -> bool:
    """Does /proc number processes as our PID namespace does?

    /proc/self names us in the namespace /proc belongs to (ENOENT if we are not in it);
    NSpid lists our pid in each namespace from /proc's down to ours, so more than one
    means /proc is an ancestor's, even if the numbers happen to be equal.
    """
    try:
        if int(os.readlink(f"{proc}/self")) != os.getpid():
            return False
        with open(f"{proc}/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) == 2
    except (OSError, ValueError):
        return False
    return True  # no NSpid line (Linux < 4.1): the readlink is all there is


def procfs_hides(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Is /proc (the mount on top at /proc) mounted with a hidepid other than off?

    Whether it hides anything from *us* depends on capabilities, groups and LSMs for
    each process (see the module docstring); we do not guess: absent pids are then
    asked about with kill(2), whoever we are.
    """
    options = ""
    try:
        with open(mountinfo) as f:
            for line in f:
                head, sep, tail = line.partition(" - ")
                fields = head.split()
                if sep and len(fields) > 4 and fields[4] == "/proc":
                    options = tail.split()[2] if len(tail.split()) > 2 else ""
    except OSError:
        return True  # cannot tell: assume the worst, it only costs kill(2) calls
    return any(
        opt.startswith("hidepid=") and opt.split("=", 1)[1] not in ("0", "off")
        for opt in options.split(",")
    )


def look_up(
    pids: Iterable[int], btime: Optional[float] = None, listing: bool = True
) -> dict[int, Proc]:
    """Facts for each distinct pid (0, the "not visible" pid, is skipped).

    `btime` is the boot time start times are computed with (read now when None).
    `listing` lists /proc once for all (worth it for many pids); without it each pid's
    /proc/PID/stat is opened directly.
    """
    wanted = {pid for pid in pids if pid > 0}
    if not wanted:
        return {}
    if not procfs_is_ours():
        return {pid: _by_kill(pid, FOREIGN) for pid in wanted}
    if btime is None:
        btime = boot_time()
    hides = procfs_hides()
    live = _live_pids() if listing else None
    facts: dict[int, Proc] = {}
    for pid in wanted:
        p = _one(pid, btime) if live is None or pid in live else None
        if p is None:  # not in /proc
            p = _by_kill(pid, HIDDEN) if hides else Proc(pid, False, None, None)
        facts[pid] = p
    return facts


def _by_kill(pid: int, why: str) -> Proc:
    """A pid /proc cannot tell us about: dead if kill(2) finds no such process, else it
    exists and is someone we cannot look at (perhaps the pid was recycled)."""
    from shmjanitor import kernel  # ctypes: only where /proc is not enough (hidepid)

    if kernel.pid_exists(pid):
        return Proc(pid, None, None, None, why)
    return Proc(pid, False, None, None)


def _live_pids(proc: str = "/proc") -> set[int]:
    """Every pid /proc lists now (the same listing as psutil.pids())."""
    return {int(name) for name in os.listdir(proc) if name.isdigit()}


def _one(pid: int, btime: Optional[float]) -> Optional[Proc]:
    """Facts from /proc/PID/stat; None when /proc has no such pid (now)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None  # gone since the listing, or hidden: the caller knows which
    except PermissionError:
        # hidepid=1 (noaccess) lists the pid but shuts its files: exists, unknown.
        return Proc(pid, None, None, None, DENIED)
    except OSError as e:
        return Proc(pid, None, None, None, f"/proc/{pid}/stat: {e.strerror}")
    try:
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        left, right = raw.index(b"("), raw.rindex(b")")
        # surrogateescape, as psutil and os.fsdecode: bytes that are not UTF-8 survive
        # to text.printable, which shows them as \xNN (a name is not ours to repair).
        comm = raw[left + 1 : right].decode(errors="surrogateescape")
        fields = raw[right + 2 :].split()
        state, threads, ticks = fields[0], int(fields[17]), int(fields[19])  # 3, 20, 22
    except (ValueError, IndexError):
        return Proc(pid, None, None, None, f"/proc/{pid}/stat unreadable")
    started = None if btime is None else btime + ticks / _CLK_TCK
    name = _name(pid, comm)
    if state == b"Z" and threads > 1:
        # A thread-group leader that called pthread_exit() stays a zombie until the
        # last thread exits (kernel/exit.c, delay_group_leader), yet its other threads
        # run, attach and detach under its pid: the process is alive.
        return Proc(pid, True, started, name, LEADER_EXITED)
    if state in (b"Z", b"X", b"x"):  # zombie; dead (being reaped)
        # Exited: it can never attach again, only its parent's wait() is pending.
        return Proc(pid, False, started, name, ZOMBIE)
    return Proc(pid, True, started, name)


def _name(pid: int, comm: str) -> str:
    """The command name as psutil.Process.name() gives it: comm, or argv[0]'s base name
    when comm was cut to 15 characters and argv[0] starts with it."""
    if len(comm) < _COMM_LEN:
        return comm
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="surrogateescape")
    except OSError:
        return comm
    base = os.path.basename(argv0)
    return base if base.startswith(comm) else comm


class User(NamedTuple):
    """Whether a uid has a live process, as far as we can see."""

    uid: int
    alive: Optional[bool]  # a process runs as it; False: none; None: cannot be known
    pid: Optional[int] = None  # one of its live processes, for the reason
    note: Optional[str] = None  # HIDDEN, FOREIGN, DENIED: why it cannot be known


def users(uids: Iterable[int], proc: str = "/proc") -> dict[int, User]:
    """Which of `uids` has a live process: one listing of /proc and a read of each
    process's status, for all of them at once (systemd-logind's RemoveIPC= judges a
    user gone the same way: no process, no session).

    A process counts for each of its real, effective, saved and filesystem uids (any of
    them lets it act as that user again). A zombie has exited, but not a thread-group
    leader whose other threads run (see _one). No process seen is "none" only when we
    see every process: /proc with hidepid hides other users' processes (and our own
    that hold capabilities we lack), another PID namespace's /proc shows other
    processes, and a status we may not read could be anyone's.
    """
    wanted = set(uids)
    if not wanted:
        return {}
    blind = None if procfs_is_ours(proc) else FOREIGN
    if blind is None and procfs_hides():
        blind = HIDDEN
    if blind is None:
        blind = unseen_ipc_peers(proc)  # the user's processes there are not in our /proc
    found: dict[int, int] = {}
    for name in os.listdir(proc):
        if not name.isdigit() or name in _uncounted:
            continue
        try:
            with open(f"{proc}/{name}/status", "rb") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited since the listing
        except OSError:
            blind = blind or DENIED  # hidepid=noaccess lists it but shuts its files
            continue
        held = _uids_of_live(status)
        for uid in held & wanted:
            found.setdefault(uid, int(name))
        if len(found) == len(wanted):
            break  # one live process per uid is the whole answer: the rest adds nothing
    return {
        uid: User(uid, True, found[uid]) if uid in found
        else User(uid, None, None, blind) if blind else User(uid, False)
        for uid in wanted
    }  # fmt: skip


# Pids `users` does not count (as str, as /proc lists them): see not_counting.
_uncounted: frozenset[str] = frozenset()


@contextmanager
def not_counting(pids: Iterable[int]) -> Iterator[None]:
    """While inside, `users` counts no process of `pids` as a user's: `reap
    --if-owner-gone` leaves out its own ancestry (the epilog that runs it, and what
    started that), which waits for it and is no job of the user's (reaping.ancestry)."""
    global _uncounted
    before, _uncounted = _uncounted, frozenset(map(str, pids))
    try:
        yield
    finally:
        _uncounted = before


def ancestry(proc: str = "/proc") -> list[int]:
    """This process and its ancestors, up to the first of our PID namespace (PPid 0),
    from /proc/PID/status. A parent that exited leaves us to a subreaper or pid 1,
    which is then our parent: the chain is always the current one."""
    chain = [os.getpid()]
    while chain[-1] > 1 and len(chain) < 4096:
        try:
            with open(f"{proc}/{chain[-1]}/status", "rb") as f:
                ppid = next(int(ln.split()[1]) for ln in f if ln.startswith(b"PPid:"))
        except (OSError, StopIteration, ValueError, IndexError):
            break
        if ppid <= 0:
            break
        chain.append(ppid)
    return chain


def _uids_of_live(status: bytes) -> set[int]:
    """The uids of a process from its /proc/PID/status; none for one that has exited."""
    fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
    try:
        state = fields[b"State"].split()[0]
        uids = {int(u) for u in fields[b"Uid"].split()}
        threads = int(fields.get(b"Threads", b"1"))
    except (KeyError, IndexError, ValueError):
        return set()
    if state in (b"Z", b"X", b"x") and threads <= 1:
        return set()  # a zombie: exited (a leader with threads left is alive: see _one)
    return uids


_INITIAL_PID_NS = f"pid:[{0xEFFFFFFC}]"  # include/linux/proc_ns.h, PROC_PID_INIT_INO


def unseen_ipc_peers(proc: str = "/proc") -> Optional[str]:
    """Why processes that our /proc does not show may share our IPC namespace (and so
    be pids the tables print as 0, or tasks waiting on our objects), else None.

    In the initial PID namespace every process has a pid. Elsewhere, the processes of
    other PID namespaces are not in our /proc, yet may share our IPC namespace: the
    containers of a Kubernetes pod share one, each with its own PID namespace. That is so
    when the first process of our PID namespace (its pid 1) is in our IPC namespace: the
    IPC namespace came from outside with it. When pid 1 is in another, ours was made
    later, inside this PID namespace (unshare), and a process outside could enter it only
    by setns(2) through a handle on it: assumed not to happen (the suite runs so).
    """
    try:
        if os.readlink(f"{proc}/self/ns/pid") == _INITIAL_PID_NS:
            return None
        init, ours = os.readlink(f"{proc}/1/ns/ipc"), os.readlink(f"{proc}/self/ns/ipc")
    except OSError:
        return ("processes outside this PID namespace may share its IPC namespace (whether "
                "its pid 1 does cannot be read)")  # fmt: skip
    if init == ours:
        return ("processes outside this PID namespace share its IPC namespace (its pid 1 is "
                "in it, as in a pod's containers)")  # fmt: skip
    return None
