"""System V message queues: the msg kind (/proc/sysvipc/msg, msgctl, msgsnd, msgrcv).

One module per kind of object (see kinds/__init__.py for what a kind provides). The
table (key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime)
names the last sender and the last receiver; who is waiting on a queue right now it
does not say, and the kernel counts it nowhere. Kernel facts relied on (ipc/msg.c,
Linux 6.x; sysvtable.py for what every table shares):

* lspid is the sender's process (task_tgid), set by every msgsnd with stime. lrpid is
  the receiver's process after a msgrcv that found a message queued, but the receiving
  *thread* (task_pid) when msgsnd handed the message straight to a receiver that was
  waiting (pipelined_send): then lrpid is a thread id, which /proc does not list.
* A task waiting in msgrcv or msgsnd shows in /proc/PID/task/TID/syscall as the call's
  number and the msqid as its first argument (fs/proc/base.c, proc_pid_syscall). That
  file needs PTRACE_MODE_ATTACH: without it the task could be waiting on any queue.
  A reader that blocked before any message arrived is in no field of the table.
* IPC_SET wakes every waiting receiver to check its permission again (expunge_all with
  -EAGAIN): one that the new mode shuts out fails with EACCES. A waiting sender is woken
  only when its message fits (ss_wakeup), so it stays, checked against the old mode.
  So the last-instant lock (mode 000) would throw a waiting reader out; `stat` looks
  for waiting tasks just before it.
* msgrcv with MSG_COPY copies the message at an index and leaves it queued, stime,
  rtime, lspid and lrpid untouched (Linux 3.8+, CONFIG_CHECKPOINT_RESTORE; ENOSYS
  without it). Older kernels ignore the flag and would take the message.
* IPC_RMID frees the queue and its messages at once, waking every waiter with EIDRM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import kernel, sysvtable
from shmjanitor.durations import format_age
from shmjanitor.model import Fact, Party
from shmjanitor.waiters import Blocked, Cred, Hidden, Sweep, msgmax, sweep

PROC_MSG = sysvtable.PROC_SYSVIPC / "msg"

NAME = "msg"
PLURAL = "queues"
NOUN = "message queue"
VERB = "send or receive"  # "last sender 4242 (x) alive, may send or receive again"
IN_USE_RULE = "blocked"  # the rule code (rules.py) of in_use
TABLE = PROC_MSG

COLUMNS = ("key", "msqid", "perms", "cbytes", "qnum", "lspid", "lrpid",
           "uid", "gid", "cuid", "cgid", "stime", "rtime", "ctime")  # fmt: skip


class Queue(NamedTuple):
    """One row of /proc/sysvipc/msg, fields named as the kernel names them, and what
    the kernel and /proc said of its use at read() (or stat())."""

    key: int  # unsigned 32-bit; 0 is IPC_PRIVATE
    id: int  # msqid
    mode: int  # the 0o777 permission bits (a queue has no other flags)
    cbytes: int  # bytes of the messages on it
    qnum: int  # messages on it
    lspid: int  # last msgsnd's process, 0 when never or not visible from here
    lrpid: int  # last msgrcv's process, or thread (module docstring); 0 as lspid
    uid: int
    gid: int
    cuid: int
    cgid: int
    stime: Optional[int]  # last msgsnd, None when never
    rtime: Optional[int]  # last msgrcv, None when never
    ctime: int  # creation or the last IPC_SET
    qbytes: Optional[int] = None  # msg_qbytes (IPC_STAT), None when we may not read it
    blocked: tuple[Blocked, ...] = ()  # tasks waiting on it now
    hidden: tuple[Hidden, ...] = ()  # tasks that could be waiting on it, unseen
    blind: Optional[str] = None  # why no waiting task could be seen at all
    lrpid_tgid: Optional[int] = None  # lrpid's process when lrpid names a thread of it

    @property
    def kind(self) -> str:
        """The registry's name for this kind (kinds/__init__.py)."""
        return NAME

    @property
    def perms(self) -> int:
        return self.mode & 0o777

    @property
    def size(self) -> int:
        return self.cbytes

    @property
    def last_used(self) -> int:
        """The latest of ctime, stime and rtime: when anybody last touched it."""
        return max(self.ctime, self.stime or 0, self.rtime or 0)


# --- reading the table ------------------------------------------------------------------


Row = tuple  # a table row's fourteen fields, in Queue's order (the facts come after)
_UNREAD = (None, (), (), None, None)  # Queue's defaults for the facts read per queue
# tuple.__new__ rather than Queue(...) or _replace, whose Python frames cost 2 us a
# queue (issue 12 measures `list` at 32,000 queues).
_new = tuple.__new__


def parse(text: str, source: str = str(PROC_MSG)) -> list[Queue]:
    """The whole table without the facts read per queue, or CorruptTable naming the
    first bad line. Pure."""
    return [_new(Queue, r + _UNREAD) for r in _rows(text, source)]


def _rows(text: str, source: str) -> list[Row]:
    return sysvtable.parse(text, source, COLUMNS, _convert)


def _convert(column: sysvtable.Column, modes: list[int], _index: dict[str, int]
             ) -> Iterator[Row]:  # fmt: skip
    """One chunk's rows from its columns (sysvtable.parse)."""
    return zip(
        [k & 0xFFFFFFFF for k in column("key")],
        column("msqid"),
        modes,
        column("cbytes"),
        column("qnum"),
        column("lspid"),
        column("lrpid"),
        column("uid"),
        column("gid"),
        column("cuid"),
        column("cgid"),
        [t or None for t in column("stime")],
        [t or None for t in column("rtime")],
        column("ctime"),
    )


def read(path: Path = PROC_MSG) -> list[Queue]:
    """The table at `path` and, for each queue the kernel still has, its msg_qbytes and
    the tasks waiting on it (one sweep of /proc for all). A fixture file's queues are
    dropped (test text with `parse`)."""
    global _last
    queues = _rows(sysvtable.read_text(path), str(path))
    if not queues:
        return []  # no queue, nobody to look for (a sweep reads every task's syscall)
    _last = sweep()  # also for the re-checks of a reap that follows (see REUSE)
    return with_facts(queues, _last)


def with_facts(queues: Iterable[Row], s: Sweep) -> list[Queue]:
    """Each queue (a Queue or a table row) with msg_qbytes (IPC_STAT: 2 us a queue) and
    the sweep's evidence. A queue removed since the table was read is dropped."""
    out: list[Queue] = []
    append = out.append
    qbytes = kernel.msg_qbytes
    evidence = _Evidence(s)
    hidden_on = evidence.hidden_on if evidence.some else None
    every, blind, blocked, threads = evidence.every, s.blind, s.blocked.get, s.threads.get
    for q in queues:
        row = q[:14]  # a row itself (a slice of a whole tuple is that tuple)
        try:
            limit = qbytes(row[1])
        except OSError:
            continue  # gone since the table was read
        hidden = every if hidden_on is None else hidden_on(_new(Queue, row + _UNREAD), limit)
        append(_new(Queue, row + (limit, blocked(row[1], ()), hidden, blind, threads(row[6]))))
    return out


def limits() -> dict[str, Optional[int]]:
    """msgmni (queues), msgmnb (default msg_qbytes), msgmax (largest message): per IPC
    namespace (ipc/ipc_sysctl.c)."""
    return {name: sysvtable.sysctl_value(name) for name in ("msgmni", "msgmnb", "msgmax")}


def _blocked_count(q: Queue) -> int:
    return len(q.blocked)


# Named as lsipc -q names its columns and JSON fields where it has them (USEDBYTES,
# MSGS, SEND, RECV, LSPID, LRPID); QBYTES and BLOCKED are ours (ipcs -q -i: qbytes).
FACTS = (
    Fact("QBYTES", "qbytes", lambda q: q.qbytes, "most bytes it may hold (msg_qbytes)", "bytes"),
    Fact("USEDBYTES", "usedbytes", lambda q: q.cbytes, "bytes of its messages (cbytes)", "bytes"),
    Fact("MSGS", "msgs", lambda q: q.qnum, "messages on it (qnum)"),
    Fact("LSPID", "lspid", lambda q: q.lspid, "pid of the last msgsnd", "pid"),
    Fact("LRPID", "lrpid", lambda q: q.lrpid, "pid of the last msgrcv", "pid"),
    Fact("SEND", "send", lambda q: q.stime, "time of the last msgsnd", "time"),
    Fact("RECV", "recv", lambda q: q.rtime, "time of the last msgrcv", "time"),
    Fact("BLOCKED", "blocked", _blocked_count, "tasks waiting in msgsnd or msgrcv on it now"),
)


def json_facts(q: Queue) -> str:
    """FACTS as members of its JSON object, each with its comma, in one call: the text
    shapes.FactsJson makes of them one call per fact (tests/test_json_facts.py holds
    the two equal)."""
    qbytes, stime, rtime = q.qbytes, q.stime, q.rtime
    return (f'"qbytes":{"null" if qbytes is None else qbytes},"usedbytes":{q.cbytes},'
            f'"msgs":{q.qnum},"lspid":{q.lspid},"lrpid":{q.lrpid},'
            f'"send":{"null" if stime is None else stime},'
            f'"recv":{"null" if rtime is None else rtime},"blocked":{len(q.blocked)},')  # fmt: skip


class _Evidence:
    """The sweep's facts for one queue at a time (cached by owner and mode: 32,000
    queues with the same few owners cost one permission check per owner)."""

    def __init__(self, s: Sweep) -> None:
        self.s = s
        self.every = tuple(h for h in s.hidden if h.cred is None or h.cred.ipc_owner)
        self.some = tuple(h for h in s.hidden if h.cred is not None and not h.cred.ipc_owner)
        self.readers: dict[tuple[int, int, int, int, int], tuple[Hidden, ...]] = {}

    def hidden_on(self, q: Queue, qbytes: Optional[int]) -> tuple[Hidden, ...]:
        """The hidden tasks that could wait on `q` (its msg_qbytes as given)."""
        if _sender_possible(q.qnum, q.cbytes, qbytes, self.s.msgmax):
            return self.every + self.some
        k = (q.uid, q.gid, q.cuid, q.cgid, q.mode & 0o777)
        readers = self.readers.get(k)
        if readers is None:
            readers = self.readers[k] = tuple(
                h for h in self.some if h.cred is not None and _may_read(h.cred, q)
            )
        return self.every + readers


def _sender_possible(qnum: int, cbytes: int, qbytes: Optional[int], msgmax: Optional[int]
                     ) -> bool:  # fmt: skip
    """Could a task be waiting in msgsnd on a queue with these numbers?

    A sender waits only while its message does not fit (msg_fits_inqueue: cbytes +
    msgsz <= qbytes and qnum + 1 <= qbytes), and each msgrcv or IPC_SET wakes those whose
    message fits now (ss_wakeup). No message is longer than kernel.msgmax, so with that
    much room left nobody can be waiting to send (assuming msgmax was not lowered while
    a sender waited). A waiting sender may have been let in by a mode changed since
    (IPC_SET does not wake it to check again): its credentials prove nothing.
    """
    if qbytes is None or msgmax is None:
        return True
    return qnum + 1 > qbytes or qbytes - cbytes < msgmax


def _may_read(c: Cred, q: Queue) -> bool:
    """Would ipcperms(S_IRUGO) let this task receive from `q`? (ipc/util.c: the owner's
    bits if its euid is uid or cuid, else the group's if gid or cgid is one of its
    groups, else the others'.) A receiver that waits has passed it with the mode of now:
    IPC_SET wakes every receiver to check again (expunge_all). An id /proc could not map
    into our user namespace reads as the overflow id: then any of the three may apply.
    """
    if _OVERFLOW in (c.euid, q.uid, q.cuid) or _OVERFLOW in (q.gid, q.cgid):
        return bool(q.mode & 0o444)
    if c.euid in (q.uid, q.cuid):
        return bool(q.mode & 0o400)
    if q.gid in c.groups or q.cgid in c.groups:
        return bool(q.mode & 0o040)
    return bool(q.mode & 0o004)


_OVERFLOW = 65534  # /proc/sys/kernel/overflowuid and overflowgid, as nearly always


# --- evidence (pure) --------------------------------------------------------------------


def parties(q: Queue) -> tuple[Party, ...]:
    """The last sender (after a msgsnd) and the last receiver (after a msgrcv).

    A last receiver that was a thread other than its process's first (lrpid a thread
    id: the module docstring) is judged as its process, which /proc lists."""
    found = []
    if q.stime is not None:
        found.append(Party("last sender", q.lspid, float(q.stime), "lspid"))
    if q.rtime is not None:
        if q.lrpid_tgid is not None:
            found.append(Party(f"last receiver, thread {q.lrpid} of", q.lrpid_tgid,
                               float(q.rtime), "lrpid"))  # fmt: skip
        else:
            found.append(Party("last receiver", q.lrpid, float(q.rtime), "lrpid"))
    return tuple(found)


def _tasks(pid: int, comm: Optional[str], n: int) -> str:
    what = ", ".join(x for x in (comm, f"{n} threads" if n > 1 else None) if x)
    return f"{pid} ({what})" if what else str(pid)


def in_use(q: Queue, name_of: Callable[[int], Optional[str]]) -> Optional[str]:
    """The clause: "4242 (reader) blocked in msgrcv, 4250 (w, 2 threads) blocked in msgsnd"."""
    return _blocked_clause(q.blocked, name_of) if q.blocked else None


def _blocked_clause(blocked: Iterable[Blocked], name_of: Callable[[int], Optional[str]]) -> str:
    count: dict[tuple[int, str], int] = {}
    comm: dict[int, Optional[str]] = {}
    for b in blocked:
        count[b.pid, b.call] = count.get((b.pid, b.call), 0) + 1
        comm[b.pid] = b.comm
    return ", ".join(f"{_tasks(pid, name_of(pid) or comm[pid], n)} blocked in {call}"
                     for (pid, call), n in count.items())  # fmt: skip


def unknowable(q: Queue) -> Optional[str]:
    """Why it cannot be known whether a task waits on it, else None."""
    if q.blind:
        return q.blind
    if not q.hidden:
        return None
    threads: dict[int, int] = {}
    first: dict[int, Hidden] = {}
    for h in q.hidden:
        threads[h.pid] = threads.get(h.pid, 0) + 1
        first.setdefault(h.pid, h)
    named = [_tasks(pid, first[pid].comm, n) for pid, n in list(threads.items())[:3]]
    more = f" and {len(threads) - 3} more" if len(threads) > 3 else ""
    return (f"{', '.join(named)}{more} could be waiting in msgsnd or msgrcv on it: "
            f"/proc/PID/task/TID/syscall is closed to us ({q.hidden[0].why})")  # fmt: skip


def removing(q: Queue) -> Optional[str]:
    return None  # IPC_RMID frees a queue at once


def quiet(q: Queue, now: float) -> str:
    stime, rtime = q.stime, q.rtime
    if stime is None and rtime is None:
        return _quiet(_NEVER, int(now - q.ctime))
    return _quiet(_SINCE, int(now - max(stime or 0, rtime or 0)))


_NEVER = "never used, created {} ago"
_SINCE = "no message sent or received for {}"


@lru_cache(maxsize=4096)  # the same few ages, over and over: a leak's queues are alike
def _quiet(text: str, seconds: int) -> str:
    return text.format(format_age(seconds))


# --- removing (remove.py drives these) --------------------------------------------------
# Waiting tasks have no counter in the kernel: seeing them takes a sweep of /proc, about
# 20 us a task (2 ms for 100 tasks, 100 ms for 5,000); a sweep per queue before its lock
# would make a reap of 32,000 queues take minutes. So `stat` and `busy_now` share one
# sweep while it is younger than REUSE seconds, or than REUSE_RUNS times what it took
# (a sweep then costs at most a tenth of the time). A task that starts waiting on a
# queue between the sweep and that queue's lock is not seen, as a task that starts
# waiting during a sweep, after it was read, is not seen by even a fresh one: the window
# grows from a sweep's length to at most REUSE_RUNS + 1 of them. The lock then throws
# such a reader out (EACCES), IPC_RMID such a sender (EIDRM). REUSE = REUSE_RUNS = 0
# makes each call sweep afresh.
REUSE = 0.05
REUSE_RUNS = 10
_last: Optional[Sweep] = None
_evidence: Optional[_Evidence] = None  # of _last
_monotonic = time.monotonic


def _recent() -> _Evidence:
    global _last, _evidence
    s = _last
    if s is None or _monotonic() - s.started > max(REUSE, REUSE_RUNS * s.took):
        s = _last = sweep()
    e = _evidence
    if e is None or e.s is not s:
        e = _evidence = _Evidence(s)
    return e


def stat(id: int) -> Queue:
    """IPC_STAT now (its buffer stays for `lock`), and the tasks that wait on it (a
    sweep of /proc at most REUSE seconds old, see above). Raises OSError: EINVAL/EIDRM
    gone, EACCES no read permission."""
    row = kernel.msg_stat_row(id)
    e = _recent()
    s = e.s
    q: Queue = _new(Queue, row + (s.blocked.get(id, ()), e.every, s.blind,
                                  s.threads.get(row[6])))  # fmt: skip
    if e.some:
        q = q._replace(hidden=e.hidden_on(q, q.qbytes))
    return q


def _other_queue(q: Queue, now: Queue) -> Optional[str]:
    """The identity checks, never skipped: the same key and creator."""
    if now.key != q.key:
        return f"changed since scan: key is now 0x{now.key:08x}"
    if (now.cuid, now.cgid) != (q.cuid, q.cgid):
        return "changed since scan: another queue has its id (its creator differs)"
    return None


def _waiting(now: Queue) -> Optional[str]:
    if now.blocked:
        return f"changed since scan: {in_use(now, _no_name)} now"
    why = unknowable(now)
    return f"changed since scan: {why}" if why else None


def _no_name(_pid: int) -> Optional[str]:
    return None


def _used(q: Queue, now: Queue) -> Optional[str]:
    # Times are whole seconds: within the scan's second a send or a receive shows in
    # qnum, cbytes, lspid or lrpid. (Only the very processes they name, sending and
    # receiving as much within that second, would leave all as they were: the judgement
    # that let this queue get here found those dead.)
    if (now.stime, now.rtime, now.qnum, now.cbytes, now.lspid, now.lrpid) != (
        q.stime, q.rtime, q.qnum, q.cbytes, q.lspid, q.lrpid
    ):  # fmt: skip
        return "changed since scan: a message was sent or received since"
    return None


def changed_since_scan(q: Queue, now: Queue, forced: bool) -> Optional[str]:
    """Why the queue is no longer what was judged, else None. Pure."""
    if now == q and not (now.blocked or now.hidden or now.blind):
        # Every field as judged and nobody waiting or hidden: each check below would pass
        # (one tuple comparison; reap asks this of every queue).
        return None
    why = _other_queue(q, now)
    if why or forced:
        return why
    why = _waiting(now) or _used(q, now)
    if why:
        return why
    if now.ctime != q.ctime:
        return "changed since scan: IPC_SET since"
    if (now.uid, now.gid, now.perms) != (q.uid, q.gid, q.perms) or (
        q.qbytes is not None and now.qbytes != q.qbytes
    ):  # fmt: skip
        return "changed since scan: owner, mode or size limit changed (IPC_SET) since"
    return None


def lock(id: int, mode: int) -> None:
    """IPC_SET its permission bits, with uid, gid and msg_qbytes from `stat(id)`'s
    IPC_STAT (any other msg_qbytes would change the queue's limit). From then on only a
    task with CAP_IPC_OWNER may send or receive (ipcperms at each call; a receiver
    already waiting is woken to check too, and one shut out fails with EACCES)."""
    kernel.msg_set_mode_after_stat(id, mode)


def unlock(id: int, mode: int) -> None:
    """Put its permission bits back to `mode` (undoing lock): IPC_STAT, then IPC_SET."""
    stat(id)
    lock(id, mode & 0o777)


def changed_while_locked(before: Queue, locked: Queue) -> Optional[str]:
    """Why it cannot go, comparing the stat before the lock with the one after (not
    ctime or mode: our IPC_SET changed them). Pure."""
    if locked.key != before.key or (locked.cuid, locked.cgid) != (before.cuid, before.cgid):
        return "changed since scan: removed and replaced at the last instant"
    if locked.blocked:
        return f"changed since scan: {in_use(locked, _no_name)} at the last instant"
    if _used(before, locked):
        return "changed since scan: a message was sent or received at the last instant"
    return None


def busy_now(id: int) -> Optional[str]:
    """A task waiting on it now (the shared sweep, see REUSE), or one that could be and
    cannot be seen; None when the queue is gone (IPC_RMID will say so)."""
    e = _recent()
    s = e.s
    if s.blind:
        return f"changed since scan: {s.blind}"
    blocked = s.blocked.get(id)
    if blocked:
        return f"changed since scan: {_blocked_clause(blocked, _no_name)} now"
    if not s.hidden:
        return None  # nobody hidden: no IPC_STAT needed to say who could wait on it
    try:
        return _waiting(stat(id))
    except OSError:
        return None


def rmid(id: int) -> None:
    kernel.msg_rmid(id)


def users_after_rmid(id: int) -> Optional[int]:
    return None  # freed at once, waiters woken with EIDRM (ipc/msg.c, freeque)


# --- the quarantine ---------------------------------------------------------------------
# A queue's data is its messages, oldest first, each as its mtype (8 bytes, signed,
# little-endian), its length (8 bytes, unsigned, little-endian) and its bytes: one
# extent [0, qnum * 16 + cbytes]. The record keeps what restore needs beyond the shared
# fields (qbytes) and what the queue looked like (qnum, cbytes, lspid, lrpid, times).

_HEAD = struct.Struct("<qQ")


def known_empty(q: Queue) -> bool:
    return q.qnum == 0


def save_bound(q: Queue) -> int:
    """The saved form: a 16-byte header per message and its bytes."""
    return q.qnum * 16 + q.cbytes


def data_size(doc: Mapping[str, Any]) -> int:
    return int(doc["qnum"]) * 16 + int(doc["cbytes"])


@lru_cache(maxsize=1)
def _copy_safe() -> bool:
    """Linux 3.8+: older kernels do not know MSG_COPY and would take the message of type
    `index` off the queue (commit 4a674f34ba04, "ipc: introduce message queue copy
    feature")."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 8)


def _no_copy(q: Queue, detail: str) -> OSError:
    return OSError(errno.ENOSYS, (
        f"its {q.qnum} message{'s' * (q.qnum != 1)} cannot be read without taking them off "
        f"the queue: {detail}; kept (--no-quarantine removes it without a copy)"
    ))  # fmt: skip


def save(q: Queue, write: Callable[[bytes], None]) -> list[tuple[int, int]]:
    """Copy every message with msgrcv(MSG_COPY), leaving the queue as it was, and write
    them as above. Raises OSError: ENOSYS where the kernel cannot copy a message, EINVAL
    for a message longer than kernel.msgmax is now, EAGAIN when the messages copied are
    not `q`'s qnum and cbytes (sent or received meanwhile), EACCES, EIDRM."""
    if not _copy_safe():
        raise _no_copy(q, f"Linux {os.uname().release} has no msgrcv MSG_COPY")
    # The kernel copies into a buffer of min(bufsz, msgmax) bytes that it first fills
    # from ours (ipc/msg.c, prepare_copy): ours is that long.
    bufsz = max(msgmax() or 0, 1)
    total = 0
    index = 0
    while True:
        try:
            m = kernel.msg_copy(q.id, index, bufsz)
        except OSError as e:
            if e.errno == errno.ENOSYS:
                raise _no_copy(q, "this kernel has no msgrcv MSG_COPY "
                                  "(CONFIG_CHECKPOINT_RESTORE is off)") from None  # fmt: skip
            if e.errno == errno.EINVAL:
                kernel.msg_stat(q.id)  # raises when the queue is gone
                raise OSError(errno.EINVAL, (
                    f"message {index} is longer than kernel.msgmax ({bufsz}) is now: it "
                    "cannot be copied; raise msgmax to save it"
                )) from None  # fmt: skip
            raise
        if m is None:  # ENOMSG: past the last one
            break
        mtype, text = m
        write(_HEAD.pack(mtype, len(text)) + text)
        total += _HEAD.size + len(text)
        index += 1
    if (index, total - index * _HEAD.size) != (q.qnum, q.cbytes):
        # The entry records q's qnum and cbytes, and restore (and the index's extents
        # check, data_size) holds the data to them. Unforced, changed_since_copy would
        # say the same; rm --force skips that check, not this one.
        raise OSError(errno.EAGAIN, "changed since scan: a message was sent or received "
                                    "while it was saved")  # fmt: skip
    return [(0, total)] if total else []


def changed_since_copy(q: Queue, now: Queue, empty: bool, forced: bool) -> Optional[str]:
    """Why the saved messages (or, `empty`, the knowledge that there were none) may be
    stale: any msgsnd or msgrcv since sets stime or rtime and lspid or lrpid; MSG_COPY
    sets none of them. Pure."""
    if _other_queue(q, now):
        return "changed since scan: removed or replaced while it was saved"
    if forced:
        return None
    if _used(q, now):
        return "changed since scan: a message was sent or received while it was saved"
    return _waiting(now)


def _json_int(x: Optional[int]) -> str:
    return "null" if x is None else str(x)


def record(q: Queue) -> str:
    return (f'"qbytes": {_json_int(q.qbytes)}, "qnum": {q.qnum}, "cbytes": {q.cbytes}, '
            f'"lspid": {q.lspid}, "lrpid": {q.lrpid}, "stime": {_json_int(q.stime)}, '
            f'"rtime": {_json_int(q.rtime)}')  # fmt: skip


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_record(doc: Mapping[str, Any]) -> Optional[str]:
    for name in ("qnum", "cbytes", "lspid", "lrpid"):
        if not _whole(doc.get(name)):
            return f"{name} missing or not a whole number"
    for name in ("qbytes", "stime", "rtime"):
        if doc.get(name) is not None and not _whole(doc[name]):
            return f"{name} is not a whole number"
    if (doc.get("qbytes") or 0) >= 1 << 64:  # msg_qbytes is an unsigned long
        return "qbytes does not fit the kernel's msg_qbytes"
    return None


def same(doc: Mapping[str, Any], now: Queue) -> bool:
    """Is the queue `now` the one the entry recorded (same key and creator)?"""
    return (now.key, now.cuid, now.cgid) == (doc.get("key"), doc.get("cuid"), doc.get("cgid"))


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """The (mtype, text) pairs of saved data, or ValueError where it is not what `save`
    writes. Pure."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        if len(data) - at < _HEAD.size:
            raise ValueError(f"{len(data) - at} stray bytes at the end")
        mtype, n = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        if mtype < 1 or n > len(data) - at:
            raise ValueError(f"message {len(out)}: type {mtype}, length {n} out of bounds")
        out.append((mtype, data[at : at + n]))
        at += n
    return out


def restore(doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> int:
    """A new queue with the entry's key, messages (types, order, bytes), msg_qbytes,
    owner and mode; its id. The data is read whole first, so a damaged entry creates
    nothing; a failure after msgget removes the new queue. Raises OSError (EEXIST: the
    key is in use)."""
    buf = bytearray()
    for off, chunk in data:
        if off != len(buf):
            raise OSError(errno.EINVAL, f"saved messages have a hole at byte {len(buf)}")
        buf += chunk
    try:
        saved = messages(bytes(buf))
    except ValueError as e:
        raise OSError(errno.EINVAL, f"saved messages are damaged: {e}") from None
    if len(saved) != doc.get("qnum") or sum(len(t) for _, t in saved) != doc.get("cbytes"):
        raise OSError(errno.EINVAL, "saved messages do not match the entry's qnum and cbytes")
    msqid = kernel.msg_create(int(doc["key"]), 0o600)
    try:
        _fill(msqid, saved, doc.get("qbytes"))
        st = kernel.msg_stat(msqid)
        kernel.msg_set(msqid, int(doc["uid"]), int(doc["gid"]), int(doc["mode"]), st.qbytes)
    except BaseException:  # a signal too: never leave a half-filled queue
        with contextlib.suppress(OSError):
            kernel.msg_rmid(msqid)
        raise
    return msqid


def _fill(msqid: int, saved: list[tuple[int, bytes]], qbytes: Optional[int]) -> None:
    """Send the messages in order without waiting, then set the recorded msg_qbytes.

    The new queue's limit is kernel.msgmnb; messages that need more get a larger one
    first (above msgmnb needs CAP_SYS_RESOURCE: EPERM). The recorded limit is set last,
    as it may be below what the queue holds (IPC_SET allows that); where it is refused
    (EPERM: above msgmnb without CAP_SYS_RESOURCE) the queue keeps msgmnb."""
    need = max(sum(len(t) for _, t in saved), len(saved))
    st = kernel.msg_stat(msqid)
    if need > st.qbytes:
        kernel.msg_set(msqid, st.uid, st.gid, 0o600, need)
    for mtype, text in saved:
        kernel.msg_send(msqid, mtype, text)
    st = kernel.msg_stat(msqid)
    if qbytes is not None and qbytes != st.qbytes:
        try:
            kernel.msg_set(msqid, st.uid, st.gid, 0o600, qbytes)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
