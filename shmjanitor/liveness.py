"""Is the process an object names still there? Three answers: alive, dead, cannot know.

A kind's table names processes, each with the moment it touched the object (the
kind's `parties`: a segment's `cpid` at `ctime` and `lpid` at max(`atime`, `dtime`),
...). A pid names the same process only while that process lives: once it exits the
pid can be handed out again. So a pid held by a process that started after the
object's moment is someone else, and the one the table meant is dead (pid recycled).

A party may be a user instead (an object that names no pid at all): dead when the uid
has no process left, else cannot know (which of its processes used the object?).

That rule compares a start time with a segment time, and the two come from different
clocks. The segment's times are the wall clock when they were set. A start time is the
time since boot the kernel keeps for the process (never stepped) plus the boot time
/proc/stat gives now, which is wall clock minus time since boot: when the wall clock is
stepped forward (NTP correcting a slow RTC, a VM resumed from a pause or a snapshot),
the boot time moves by the step, and so does every start time, but no segment time.
A live creator then seems to have started after its segment. We cannot know the
steps of the past, only collect evidence of them (`Clock`):

* the boot time each run of reap/rm saw, kept in the state directory per boot
  (`boot-time`, keyed by /proc/sys/kernel/random/boot_id): if it is later now than the
  earliest seen this boot, the clock was stepped forward by up to the difference;
* a segment time before the boot time: nothing in the kernel predates its boot, so the
  clock was stepped forward by at least the difference since that time was set.

A start that such a step could explain is "cannot know", never "recycled".
What this cannot see: a step before the first recorded run of this boot (or with no
state directory to keep records in) that leaves every segment time after the boot
time; and a step forward and back between two runs.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, Optional

from shmjanitor import kinds, procs
from shmjanitor.accounts import owner_name
from shmjanitor.durations import format_age
from shmjanitor.model import Creator, Party
from shmjanitor.paths import default_state_dir
from shmjanitor.procs import Proc, User

if TYPE_CHECKING:
    from shmjanitor.classify import Verdict

# A process that started more than this after a segment's moment cannot be the one the
# table names. Start times have a resolution of a clock tick and btime of a second;
# segment times are whole seconds: the two can disagree by about a second either way.
RECYCLE_SLACK = 2.0

RECORD = "boot-time"  # in the state directory: "<boot_id> <earliest btime>\n"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PROC_STAT = Path("/proc/stat")


class Clock(NamedTuple):
    """What the boot time says of wall-clock steps in this boot (epoch seconds)."""

    btime: float  # /proc/stat's btime now: start times are computed with it
    earliest: float  # the earliest btime seen this boot (records and now)

    @property
    def step(self) -> float:
        """How far the wall clock may have been stepped forward this boot."""
        return max(0.0, self.btime - self.earliest)


NO_EVIDENCE = Clock(0.0, 0.0)


def judge(
    pid: int, since: float, facts: Mapping[int, Proc], clock: Clock = NO_EVIDENCE
) -> tuple[Optional[bool], str, Optional[str]]:
    """Is `pid` still the process that touched the object at `since` (epoch seconds)?

    Returns (alive, evidence, name): alive None means cannot be known; evidence is a
    clause that starts with the pid ("4242 exited"); name only while it is alive.
    """
    p = facts.get(pid)
    if p is None:
        return None, f"{pid} not looked up", None
    if p.alive is None:
        if p.note == procs.HIDDEN:
            return None, f"{pid} exists but is hidden (/proc mounted with hidepid)", None
        if p.note == procs.FOREIGN:
            return None, f"{pid} exists but /proc shows another PID namespace", None
        return None, f"{pid}: {p.note or 'unknown'}", None
    if not p.alive:
        if p.note == procs.ZOMBIE:
            return False, f"{pid} is a zombie (exited)", None
        return False, f"{pid} exited", None
    if p.started is not None and p.started > since + RECYCLE_SLACK:
        later = p.started - since
        if since < clock.btime:
            # Nothing of this boot predates it: the clock went forward since `since`.
            ahead = format_age(int(clock.btime - since))
            return None, (
                f"{pid} is held by a process that seems to start {format_age(int(later))} "
                f"later, but the clock was stepped forward at least {ahead} since"
            ), None  # fmt: skip
        if later <= RECYCLE_SLACK + clock.step:
            return None, (
                f"{pid} is held by a process that seems to start {format_age(int(later))} "
                f"later, which a step of the clock this boot ({format_age(int(clock.step))}"
                f" forward) could explain"
            ), None  # fmt: skip
        return False, (
            f"{pid} exited; pid now used by a process started {format_age(int(later))} later"
        ), None  # fmt: skip
    note = f"; {p.note}" if p.note else ""
    return True, f"{pid} ({p.name}) alive{note}", p.name


def judge_user(uid: int, users: Mapping[int, User], reopens: bool = False
               ) -> tuple[Optional[bool], str]:  # fmt: skip
    """Is the user a party names gone? (False, "1000 has no process left") when no
    process runs as it; else it cannot be known which of its processes (if any: hidepid
    may hide them) used the object, which is (None, evidence). Never alive: a live user
    is not a live process that touched the object -- unless the user `reopens` it (a
    POSIX object, opened again by name): then any live process of theirs may."""
    u = users.get(uid)
    who = _user(uid)
    if u is None:
        return None, f"{who} not looked up"
    if u.alive is False:
        return False, f"{who} has no process left"
    if u.alive and reopens:
        return True, f"{who} has processes (pid {u.pid}, ...)"
    if u.alive:
        return None, (
            f"{who} has processes (pid {u.pid}, ...); which of them used it cannot be known"
        )  # fmt: skip
    if u.note == procs.HIDDEN:
        return None, f"{who}: its processes may be hidden (/proc mounted with hidepid)"
    if u.note == procs.FOREIGN:
        return None, f"{who}: /proc shows another PID namespace"
    return None, f"{who}: {u.note or 'unknown'}"


def _user(uid: int) -> str:
    """ "alice (1000)", or "1000" for a uid without an account."""
    name = owner_name(uid)
    return name if name == str(uid) else f"{name} ({uid})"


def judge_party(p: Party, facts: Mapping[int, Proc], users: Mapping[int, User],
                clock: Clock = NO_EVIDENCE) -> tuple[Creator, str]:  # fmt: skip
    """A party as judged, and its clause for a reason ("creator 4242 exited")."""
    role, pid, since, field, uid, reopens = p
    if uid is not None:
        alive, evidence = judge_user(uid, users, reopens)
        return Creator(pid, alive, None), f"{role} {evidence}"
    if pid == 0:
        # The kernel prints pids as the reader's PID namespace numbers them: 0 is a
        # process outside ours (ipc/util.c, sysvipc_proc_open); alive or not, unseen.
        return Creator(0, None, None), f"{role} not visible from this PID namespace " \
            f"({field} 0)"  # fmt: skip
    alive, evidence, name = judge(pid, since, facts, clock)
    # tuple.__new__: Creator(...) without a Python-level call (once per distinct party,
    # which is once per segment when 32,000 creators each left one).
    return _new(Creator, (pid, alive, name)), f"{role} {evidence}"


_new = tuple.__new__


def observe(state_dir: Optional[Path], record: bool, proc_stat: Path = PROC_STAT,
            boot_id: Path = BOOT_ID) -> Clock:  # fmt: skip
    """The clock evidence now: btime, and the earliest btime recorded in this boot.

    `state_dir` None is the default state directory. With `record`, the earliest btime
    is written back there (only into a directory that exists and is ours alone: the
    record never creates the state directory). A record that cannot be read or written
    only means less evidence.
    """
    btime = procs.boot_time(proc_stat)
    if btime is None:
        return NO_EVIDENCE
    try:
        boot = boot_id.read_text().strip()
    except OSError:
        return Clock(btime, btime)
    if state_dir is None:
        state_dir = default_state_dir()
    path = state_dir / RECORD
    seen = _read_record(path)
    earliest = btime
    if seen is not None and seen[0] == boot:
        earliest = min(earliest, seen[1])
    if record and (seen is None or seen != (boot, earliest)):
        _write_record(path, boot, earliest)
    return Clock(btime, earliest)


def _ours_alone(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _read_record(path: Path) -> Optional[tuple[str, float]]:
    """(boot_id, earliest btime) from a regular file of ours that nobody else may write;
    None otherwise (a planted record could only hide steps, never invent one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _ours_alone(st):
            return None
        boot, earliest = os.read(fd, 256).decode("ascii").split()
        return boot, float(earliest)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _write_record(path: Path, boot: str, earliest: float) -> None:
    """Replace the record (write a temporary file, rename it over): a reaper killed in
    between leaves the old record, never a half-written one."""
    try:
        st = os.lstat(path.parent)
        if not stat.S_ISDIR(st.st_mode) or not _ours_alone(st):
            return
        tmp = path.with_name(f".{RECORD}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            os.write(fd, f"{boot} {earliest:.0f}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        pass


@lru_cache(maxsize=1)
def _kernel() -> ModuleType:
    """shmjanitor.kernel, imported on first use (ctypes: `list` does not need it) and
    then looked up once, not per segment (an import statement costs ~2 us a call)."""
    from shmjanitor import kernel

    return kernel


USER_GONE_FOR = 1.0  # seconds a pass trusts "this uid has no process" (users_back)


def users_back(
    v: Verdict,
    seen_dead: Optional[set[int]] = None,
    now: object = None,
    *,
    gone_users: Optional[dict[int, float]] = None,
) -> Optional[str]:
    """Before removing an orphan: is every party whose death made it one still dead?

    None when so; else the reason to keep it ("changed since scan: ..."). The parties
    its kind names (kinds.Kind.parties: a segment's creator since `ctime` and its last
    user since its last attach/detach, ...) are judged by the same rules as in the
    survey, with the boot time read now: a holder of such a pid that is alive or cannot
    be known keeps the object, and so does a user party's uid that has a process again
    (or cannot be seen). `now` (an IPC_STAT just taken) is accepted and not used: what
    the kernel's own fields say (a new lpid) is the kind's changed_since_scan.

    `seen_dead` (one set per pass of remove.execute) holds the pids kill(pid, 0) found
    free earlier in this pass, and learns new ones. Asking again for such a pid cannot
    change the answer: an object only gets this far when IPC_STAT shows the times and
    pids the survey saw, so the process the table names touched it before the pid was
    seen free; it had exited by then, and an exited process never comes back. Whoever
    holds the pid later started after the object's moment, which the judgement already
    calls someone else. So one kill(2) per distinct pid per pass is as strict as one per
    object (32,000 orphans of one creator: 1 call). Only "free" is remembered: a pid
    found in use is asked about again every time.

    `gone_users` does the same for uids found without a process (one /proc walk each
    otherwise), by when they were found (time.monotonic()). Unlike a pid's process, a
    user can come back (log in) at any time: "none" is trusted for USER_GONE_FOR seconds,
    then /proc is walked again.
    """
    kernel = _kernel()
    o = v.obj
    clock: Optional[Clock] = None
    for p in kinds.kind_of(o).parties(o):
        if p.uid is not None:
            now = time.monotonic()
            if gone_users is not None and now - gone_users.get(p.uid, -1e9) < USER_GONE_FOR:
                continue
            alive, evidence = judge_user(p.uid, procs.users([p.uid]), p.reopens)
            if alive is not False:
                return f"changed since scan: {p.role} {evidence}"
            if gone_users is not None:
                gone_users[p.uid] = now
            continue
        pid = p.pid
        if pid <= 0 or (seen_dead is not None and pid in seen_dead):
            continue
        if not kernel.pid_exists(pid):  # ESRCH; EPERM means it exists
            if seen_dead is not None:
                seen_dead.add(pid)
            continue
        if clock is None:
            # No step allowance here, and none needed: the survey judged this pid dead
            # with all the evidence; a holder it called recycled still starts as late
            # (later, after a forward step; a backward step only makes it "alive"), and
            # one that took the pid since started after the survey.
            btime = procs.boot_time()
            clock = NO_EVIDENCE if btime is None else Clock(btime, btime)
        alive, evidence, _ = judge(pid, p.since, procs.look_up([pid], clock.btime, False), clock)
        if alive is not False:
            return f"changed since scan: {p.role} {evidence}"
    return None
