"""Message queues (kinds/msg.py) with real queues and real processes, in the test's own
IPC namespace: the table, who waits on a queue (/proc/PID/task/TID/syscall), the
re-checks and removal, the quarantine's copy (msgrcv MSG_COPY) and restore.

Whether a task waits on a queue can only be seen where every task's system call can be
read: tests that say "nobody waits" need that (`seen`). /proc of this machine shows a
PID 1 whose system call even root may not read; scripts/test runs the suite in a PID
namespace of its own, where every task is the suite's.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import pytest
import sysv_ipc
from conftest import python_as
from segments import _children

from shmjanitor import kernel, waiters
from shmjanitor.kinds import msg

HERE = Path(__file__).parent
_libc = ctypes.CDLL(None, use_errno=True)
_libc.msgsnd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                         ctypes.c_int)  # fmt: skip
_libc.msgrcv.restype = ctypes.c_ssize_t


# --- processes that use queues ----------------------------------------------------------


def _closed_tasks() -> list[str]:
    """Tasks whose system call we may not read (said independently of kinds/msg.py)."""
    closed = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                Path(f"/proc/{pid}/task/{tid}/syscall").read_bytes()
            except PermissionError:
                closed.append(f"{pid}/{tid}")
            except OSError:
                pass
    return closed


@pytest.fixture
def seen() -> None:
    """Skip unless every task that could wait on our queues can be seen."""
    closed = _closed_tasks()
    if closed:
        pytest.skip(f"the system call of task {closed[0]} is closed even to us (no "
                    "PTRACE_MODE_ATTACH on it); scripts/test runs the suite in its own "
                    "PID namespace, where every task can be read")  # fmt: skip
    initial = os.readlink("/proc/self/ns/pid") == f"pid:[{0xEFFFFFFC}]"
    if not initial and os.readlink("/proc/1/ns/ipc") == os.readlink("/proc/self/ns/ipc"):
        pytest.skip("this PID namespace's pid 1 shares our IPC namespace: tasks outside it "
                    "may wait on our queues unseen")  # fmt: skip


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stat() and busy_now() sweeps /proc afresh (no shared sweep, see REUSE)."""
    monkeypatch.setattr(msg, "REUSE", 0.0)
    monkeypatch.setattr(msg, "REUSE_RUNS", 0)


def _spawn(body: Callable[[], object], uid: Optional[int] = None) -> int:
    """A forked child that runs `body` (which waits or sleeps) until the test ends."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            body()
        except sysv_ipc.Error as e:  # e.g. the lock's EACCES: the exit code says which
            code = _errno_of(e)
        except BaseException:
            code = 1
        os._exit(code)
    _children.append(pid)
    return pid


def _errno_of(e: sysv_ipc.Error) -> int:
    return {sysv_ipc.PermissionsError: 100, sysv_ipc.ExistentialError: 101}.get(type(e), 102)


def _wchan(pid: int, tid: Optional[int] = None) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid or pid}/wchan").read_text()
    except OSError:
        return ""


def _until_waiting(pid: int, where: str, tid: Optional[int] = None) -> None:
    """Until the task sleeps in `where` (do_msgrcv, do_msgsnd): the kernel's own word."""
    deadline = time.monotonic() + 10
    while _wchan(pid, tid) != where:
        assert time.monotonic() < deadline, f"{pid} never waited in {where}: {_wchan(pid)!r}"
        time.sleep(0.01)


def reader(q: sysv_ipc.MessageQueue, uid: Optional[int] = None) -> int:
    """A process waiting in msgrcv on `q`, which never had a message."""
    pid = _spawn(q.receive, uid)
    _until_waiting(pid, "do_msgrcv")
    return pid


def fill(q: sysv_ipc.MessageQueue, size: int = 1000) -> None:
    while True:
        try:
            q.send(b"f" * size, block=False)
        except sysv_ipc.BusyError:
            return


def writer(q: sysv_ipc.MessageQueue) -> int:
    """A process waiting in msgsnd on `q`, which is full."""
    fill(q)
    pid = _spawn(lambda: q.send(b"w" * 1000))
    _until_waiting(pid, "do_msgsnd")
    return pid


def sent_and_exited(q: sysv_ipc.MessageQueue, data: bytes = b"hello") -> int:
    pid = os.fork()
    if pid == 0:
        try:
            q.send(data)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def sleeper(uid: int) -> int:
    """A task of `uid` that waits on nothing (in nanosleep)."""
    pid = _spawn(lambda: time.sleep(3600), uid)
    _until_waiting(pid, "hrtimer_nanosleep")
    return pid


def new_queue(key: Optional[int] = None, mode: int = 0o600) -> sysv_ipc.MessageQueue:
    return sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=mode)


def one(q: sysv_ipc.MessageQueue) -> msg.Queue:
    (found,) = [x for x in msg.read() if x.id == q.id]
    return found


def _no_name(_pid: int) -> Optional[str]:
    return None


# --- the table --------------------------------------------------------------------------

# One row as ipc/msg.c prints it, each field a different number: key -1 is 0xffffffff.
TABLE = (
    "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid"
    "      stime      rtime      ctime\n"
    "        -1      32769   640          12          3   501   502  1000  1001  1002  1003"
    " 1700000100          0 1700000000\n"
)


def test_parse_names_every_field_as_the_kernel_does() -> None:
    (q,) = msg.parse(TABLE)
    assert q[:14] == (0xFFFFFFFF, 32769, 0o640, 12, 3, 501, 502, 1000, 1001, 1002, 1003,
                      1700000100, None, 1700000000)  # fmt: skip
    assert (q.kind, q.perms, q.size, q.last_used) == ("msg", 0o640, 12, 1700000100)
    assert msg.parties(q) == (("last sender", 501, 1700000100.0, "lspid", None, False),)
    assert msg.quiet(q, 1700000160) == "no message sent or received for 1m"


# --- who waits on a queue ---------------------------------------------------------------


def test_reader_that_never_got_a_message_is_seen_waiting(seen: None) -> None:
    q = new_queue()
    pid = reader(q)
    found = one(q)
    assert [(b.pid, b.call) for b in found.blocked] == [(pid, "msgrcv")]
    # No field of the table names it: it never received anything.
    assert (found.lrpid, found.rtime, msg.parties(found)) == (0, None, ())
    assert msg.in_use(found, _no_name) == f"{pid} (python) blocked in msgrcv"
    assert msg.in_use(found, lambda p: "worker") == f"{pid} (worker) blocked in msgrcv"
    assert msg.unknowable(found) is None
    # Stopped (Ctrl-Z), it goes back to msgrcv on SIGCONT: still waiting on it.
    os.kill(pid, signal.SIGSTOP)
    _until_waiting(pid, "do_signal_stop")
    assert [b.pid for b in one(q).blocked] == [pid]


def test_writer_on_a_full_queue_is_seen_waiting(seen: None) -> None:
    q = new_queue()
    pid = writer(q)
    found = one(q)
    assert [(b.pid, b.call) for b in found.blocked] == [(pid, "msgsnd")]
    assert found.qbytes == 16384 and found.cbytes == 16000
    assert msg.in_use(found, _no_name) == f"{pid} (python) blocked in msgsnd"


def test_nobody_waits_on_a_queue_whose_sender_exited(seen: None) -> None:
    q = new_queue()
    other = new_queue()
    reader(other)  # waits on another queue: not on this one
    pid = sent_and_exited(q)
    found = one(q)
    assert (found.blocked, found.hidden, found.blind) == ((), (), None)
    assert msg.in_use(found, _no_name) is None and msg.unknowable(found) is None
    assert msg.parties(found) == (
        ("last sender", pid, float(found.stime or 0), "lspid", None, False),
    )
    assert msg.quiet(found, found.ctime) == "no message sent or received for 0s"


def test_a_queue_nobody_used_names_nobody(seen: None) -> None:
    out = subprocess.run(["ipcmk", "-Q", "-p", "0640"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    (found,) = msg.read()
    assert str(found.id) in out and found.perms == 0o640
    assert msg.parties(found) == () and msg.in_use(found, _no_name) is None
    assert msg.unknowable(found) is None
    assert msg.quiet(found, found.ctime + 300) == "never used, created 5m ago"


def test_a_task_waiting_in_another_ipc_namespace_waits_on_its_own_queue(seen: None) -> None:
    """The msqid in /proc/PID/syscall is of the task's namespace: the same number here
    is another queue."""
    q = new_queue()
    r, w = os.pipe()

    def elsewhere() -> None:
        assert _libc.unshare(0x08000000) == 0  # CLONE_NEWIPC
        theirs = new_queue()
        os.write(w, b"%d\n" % theirs.id)
        theirs.receive()

    pid = _spawn(elsewhere)
    assert int(os.read(r, 64)) == q.id  # both are the first queue of their namespace
    _until_waiting(pid, "do_msgrcv")
    assert one(q).blocked == ()


def test_the_last_receiver_may_be_a_thread(seen: None) -> None:
    """msgsnd hands a message straight to a waiting receiver and records its thread id
    as lrpid (pipelined_send); /proc lists processes, not threads: it is judged as its
    process."""
    q = new_queue()
    r, w = os.pipe()

    def threaded() -> None:
        import threading

        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(64)

        def receive() -> None:
            os.write(w, b"%d\n" % threading.get_native_id())
            libc.msgrcv(q.id, buf, ctypes.c_size_t(56), ctypes.c_long(0), 0)
            time.sleep(3600)  # the thread lives on after it received

        threading.Thread(target=receive, daemon=True).start()
        time.sleep(3600)

    pid = _spawn(threaded)
    tid = int(os.read(r, 64))
    _until_waiting(pid, "do_msgrcv", tid)
    q.send(b"to the thread")
    found = one(q)
    assert (found.lrpid, found.lrpid_tgid, found.qnum) == (tid, pid, 0)
    rtime = float(found.rtime or 0)
    assert msg.parties(found)[1] == (
        f"last receiver, thread {tid} of",
        pid,
        rtime,
        "lrpid",
        None,
        False,
    )


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 system calls: x86_64 only")
def test_a_32_bit_task_waiting_is_seen(seen: None, tmp_path: Path) -> None:
    """A 32-bit program shows i386's numbers: msgrcv 401, and ipc(MSGRCV, ...) 117."""
    exe = tmp_path / "msgwait32"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(HERE / "msgwait32.c")], check=True)
    q = new_queue()
    pids = []
    for how in ("direct", "ipc"):
        p = subprocess.Popen([str(exe), how, str(q.id)])
        _children.append(p.pid)
        _until_waiting(p.pid, "do_msgrcv")
        pids.append(p.pid)
    assert sorted(b.pid for b in one(q).blocked) == sorted(pids)


def test_tasks_whose_system_call_is_closed_could_wait_where_they_may(tmp_path: Path) -> None:
    """Read as uid 1000: the system call of uid 1001's task is closed to it. That task
    could wait on a queue it may read, or on one whose room a message may not fit in;
    not on an empty queue it may not read. Root's tasks (CAP_IPC_OWNER) on any."""
    open_to_all = new_queue(mode=0o604)
    shut = new_queue(mode=0o600)
    full = new_queue(mode=0o600)
    for q in (shut, full):
        q.uid = 1000
    fill(full)
    other = sleeper(1001)
    zombie = _spawn(lambda: None, 1001)  # exits at once; not waited for until the end
    while Path(f"/proc/{zombie}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
        time.sleep(0.01)
    script = (
        "import json; from shmjanitor.kinds import msg\n"
        "print(json.dumps({q.id: [h.pid for h in q.hidden] for q in msg.read()}))"
    )
    out = subprocess.run([*python_as(1000), "-c", script], capture_output=True, text=True,
                         cwd="/")  # fmt: skip
    assert out.returncode == 0, out.stderr
    hidden = {int(k): set(v) for k, v in json.loads(out.stdout).items()}
    assert other in hidden[open_to_all.id]
    assert other not in hidden[shut.id]
    assert other in hidden[full.id]
    assert os.getpid() in hidden[shut.id]  # root: CAP_IPC_OWNER opens every queue
    # A zombie or a kernel thread (where /proc shows any) waits on nothing.
    assert not {zombie, *_kernel_threads()} & set().union(*hidden.values())


def _kernel_threads() -> set[int]:
    """Processes whose /proc/PID/stat flags have PF_KTHREAD."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[6]) & 0x00200000:
            found.add(int(pid))
    return found


def test_pid_1_whose_system_call_is_closed_makes_every_queue_unknowable() -> None:
    """As on this machine outside scripts/test: /proc's PID 1 even root may not trace."""
    if not any(t.startswith("1/") for t in _closed_tasks()):
        pytest.skip("PID 1's system call is readable here (scripts/test's own PID namespace)")
    q = new_queue()
    sent_and_exited(q)
    why = msg.unknowable(one(q))
    assert why is not None and why.startswith("1 (")
    assert "could be waiting in msgsnd or msgrcv on it" in why


def test_a_machine_whose_system_call_numbers_are_not_known(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:  # fmt: skip
    q = new_queue()
    reader(q)
    monkeypatch.setattr(waiters, "_CALLS", {})
    found = one(q)
    assert found.blocked == ()
    assert msg.unknowable(found) == (
        f"the system call numbers of msgsnd and msgrcv on this machine ({os.uname().machine}) "
        "are not known to shmjanitor: a task waiting on it cannot be seen"
    )


def test_tasks_that_hidepid_hides() -> None:
    """/proc mounted hidepid=2 shows uid 1000 only its own processes: root's, which could
    wait on any queue, are not even listed. The kernel's count of threads says so."""
    q = new_queue(mode=0o600)
    q.uid = 1000
    script = "from shmjanitor.kinds import msg\n(q,) = msg.read(); print(q.hidden == (), q.blind)"
    out = subprocess.run(["unshare", "--mount", "sh", "-c",
                          'mount -t proc -o hidepid=2 proc /proc && exec "$@"', "sh",
                          *python_as(1000), "-c", script],
                         capture_output=True, text=True, cwd="/")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "True /proc is mounted with hidepid and hides tasks from us: one waiting on it "
        "cannot be seen\n"
    )


def test_tasks_outside_our_pid_namespace_that_share_our_ipc_namespace() -> None:
    """As a pod's containers do: the reader's PID namespace has its pid 1 in our IPC
    namespace, and tasks outside it cannot be seen."""
    script = "from shmjanitor.kinds import msg; print(msg.sweep().blind)"
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                          script], capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "share its IPC namespace" in out, out


# --- removing ---------------------------------------------------------------------------


def test_stat_is_what_the_table_says(seen: None) -> None:
    q = new_queue(key=0x5EED0001, mode=0o640)
    sent_and_exited(q, b"12345")
    now = msg.stat(q.id)
    assert now == one(q)
    assert (now.qnum, now.cbytes, now.qbytes) == (1, 5, 16384)


def test_a_reader_that_came_after_the_scan_keeps_it(seen: None, fresh: None) -> None:
    """Checked before the lock: the lock's IPC_SET would wake it and shut it out with
    EACCES (msgrcv checks its permission again, ipc/msg.c expunge_all)."""
    q = new_queue(mode=0o666)
    scanned = one(q)
    pid = reader(q, uid=1000)
    before = msg.stat(q.id)
    assert msg.changed_since_scan(scanned, before, False) == (
        f"changed since scan: {pid} (python) blocked in msgrcv now"
    )
    assert msg.changed_since_scan(scanned, before, True) is None  # rm --force
    # Why it must be seen before: the lock throws it out.
    msg.lock(q.id, 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == _errno_of(sysv_ipc.PermissionsError(""))


def test_changes_since_the_scan(seen: None) -> None:
    q = new_queue()
    scanned = one(q)
    assert msg.changed_since_scan(scanned, msg.stat(q.id), False) is None
    q.send(b"x")
    assert msg.changed_since_scan(scanned, msg.stat(q.id), False) == (
        "changed since scan: a message was sent or received since"
    )
    assert msg.changed_since_scan(scanned, msg.stat(q.id), True) is None  # rm --force
    scanned = one(q)
    q.mode = 0o644  # IPC_SET: ctime, or within the scan's second the mode, shows it
    why = msg.changed_since_scan(scanned, msg.stat(q.id), False)
    assert why in ("changed since scan: IPC_SET since",
                   "changed since scan: owner, mode or size limit changed (IPC_SET) since")  # fmt: skip
    assert msg.changed_since_scan(scanned._replace(ctime=msg.stat(q.id).ctime),
                                  msg.stat(q.id), False) == (
        "changed since scan: owner, mode or size limit changed (IPC_SET) since"
    )  # fmt: skip
    assert msg.changed_since_scan(scanned._replace(key=7), msg.stat(q.id), True) == (
        f"changed since scan: key is now 0x{q.key & 0xFFFFFFFF:08x}"
    )


def test_the_lock_keeps_owner_and_size_limit(seen: None) -> None:
    """IPC_SET writes uid, gid, mode and msg_qbytes at once: all but the mode must be the
    ones IPC_STAT just read."""
    q = new_queue(mode=0o660)
    q.uid, q.gid, q.max_size = 1000, 1001, 5000
    before = msg.stat(q.id)
    msg.lock(q.id, 0)
    locked = msg.stat(q.id)
    assert (locked.perms, locked.uid, locked.gid, locked.qbytes) == (0, 1000, 1001, 5000)
    assert msg.changed_while_locked(before, locked) is None
    msg.stat(q.id)
    msg.lock(q.id, before.perms)  # put back, as remove.py does
    assert (q.mode & 0o777, q.max_size) == (0o660, 5000)


def test_use_at_the_last_instant(seen: None, fresh: None) -> None:
    """After the lock only a task with CAP_IPC_OWNER may send or start to wait (here:
    root); a sender already waiting on a full queue stays (IPC_SET does not wake it)."""
    q = new_queue()
    before = msg.stat(q.id)
    msg.lock(q.id, 0)
    q.send(b"root may still send")
    assert msg.changed_while_locked(before, msg.stat(q.id)) == (
        "changed since scan: a message was sent or received at the last instant"
    )
    assert msg.busy_now(q.id) is None
    pid = writer(q)
    before = msg.stat(q.id)._replace(blocked=())
    assert msg.busy_now(q.id) == f"changed since scan: {pid} (python) blocked in msgsnd now"
    assert msg.changed_while_locked(before, msg.stat(q.id)) == (
        f"changed since scan: {pid} (python) blocked in msgsnd at the last instant"
    )


def test_rmid(seen: None) -> None:
    q = new_queue()
    writer(q)
    msg.rmid(q.id)
    assert msg.users_after_rmid(q.id) is None
    assert msg.read() == []
    with pytest.raises(OSError) as e:
        msg.stat(q.id)
    assert e.value.errno in (errno.EINVAL, errno.EIDRM)


# --- the quarantine ---------------------------------------------------------------------

MESSAGES = [(1, b"first"), (7, bytes(range(256))), (3, b""), (2**62, b"\0" * 10),
            (1, b"z" * 8192)]  # fmt: skip


def _doc(q: msg.Queue) -> dict:  # type: ignore[type-arg]
    """An index entry as the quarantine writes one: the shared fields and the record."""
    doc = {"key": q.key, "uid": q.uid, "gid": q.gid, "cuid": q.cuid, "cgid": q.cgid,
           "mode": q.perms, **json.loads("{" + msg.record(q) + "}")}  # fmt: skip
    assert msg.check_record(doc) is None
    return doc


def _saved(q: msg.Queue) -> bytes:
    chunks: list[bytes] = []
    extents = msg.save(q, chunks.append)
    data = b"".join(chunks)
    assert extents == ([(0, len(data))] if data else [])
    return data


def _send(msqid: int, mtype: int, text: bytes) -> None:
    """msgsnd(2) itself (sysv_ipc's types stop at 2**31)."""
    buf = struct.pack("@l", mtype) + text
    assert _libc.msgsnd(msqid, buf, len(text), 0) == 0, os.strerror(ctypes.get_errno())


def _drain(msqid: int) -> list[tuple[int, bytes]]:
    """Take every message off the queue, oldest first (msgrcv, IPC_NOWAIT)."""
    out = []
    buf = ctypes.create_string_buffer(8 + 65536)
    while True:
        n = _libc.msgrcv(msqid, buf, 65536, 0, 0o4000)
        if n < 0:
            assert ctypes.get_errno() == errno.ENOMSG
            return out
        out.append((struct.unpack_from("@l", buf)[0], buf.raw[8 : 8 + n]))


def test_save_and_restore_round_trip() -> None:
    q = new_queue(key=0x5EED0002, mode=0o640)
    q.uid, q.gid, q.max_size = 1000, 1001, 12000  # below kernel.msgmnb: anyone may
    for mtype, text in MESSAGES:
        _send(q.id, mtype, text)
    scanned = one(q)
    assert not msg.known_empty(scanned)
    data = _saved(scanned)
    # The format: each message as its type, its length and its bytes.
    assert data[:21] == struct.pack("<qQ", 1, 5) + b"first"
    assert msg.messages(data) == MESSAGES
    # MSG_COPY took nothing and touched nothing.
    now = kernel.msg_stat(q.id)
    assert (now.qnum, now.cbytes, now.rtime, now.lrpid) == (5, 8463, None, 0)
    doc = _doc(scanned)
    msg.rmid(q.id)
    new = msg.restore(doc, iter([(0, data[:100]), (100, data[100:])]))
    now = kernel.msg_stat(new)
    assert (now.key, now.mode & 0o777, now.uid, now.gid, now.qbytes) == (
        0x5EED0002, 0o640, 1000, 1001, 12000
    )  # fmt: skip
    assert msg.same(doc, msg.stat(new)) and not msg.same({**doc, "key": 1}, msg.stat(new))
    assert _drain(new) == MESSAGES
    assert msg.check_record({**doc, "qnum": -1}) == "qnum missing or not a whole number"
    assert msg.check_record({**doc, "rtime": "x"}) == "rtime is not a whole number"


def test_an_empty_queue_is_saved_as_its_attributes() -> None:
    q = new_queue(key=0x5EED0003, mode=0o604)
    q.max_size = 100  # below msgmnb: anybody may lower it
    scanned = one(q)
    assert msg.known_empty(scanned) and _saved(scanned) == b""
    doc = _doc(scanned)
    msg.rmid(q.id)
    now = kernel.msg_stat(msg.restore(doc, iter([])))
    assert (now.key, now.mode & 0o777, now.qbytes, now.qnum) == (0x5EED0003, 0o604, 100, 0)


_RESTORE = (
    "import json, sys; from shmjanitor.kinds import msg\n"
    "try:\n"
    "    print(msg.restore(json.loads(sys.argv[1]), iter([(0, bytes.fromhex(sys.argv[2]))])))\n"
    "except OSError as e:\n"
    "    print(-e.errno)"
)


def _restore_as(uid: int, doc: dict, data: bytes) -> int:  # type: ignore[type-arg]
    """msg.restore run by `uid` (no capabilities): the new id, or -errno."""
    out = subprocess.run([*python_as(uid), "-c", _RESTORE, json.dumps(doc), data.hex()],
                         capture_output=True, text=True, cwd="/")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_restore_by_a_user_keeps_the_limit_it_may_not_raise() -> None:
    """msg_qbytes above kernel.msgmnb needs CAP_SYS_RESOURCE (EPERM): the queue comes back
    with its messages and msgmnb's limit."""
    doc = {"key": 0x5EED0004, "uid": 1000, "gid": 1000, "cuid": 1000, "cgid": 1000,
           "mode": 0o600, "qbytes": 20000, "qnum": 1, "cbytes": 2, "lspid": 1, "lrpid": 0,
           "stime": 1, "rtime": None}  # fmt: skip
    new = _restore_as(1000, doc, struct.pack("<qQ", 9, 2) + b"hi")
    assert new >= 0
    now = kernel.msg_stat(new)
    assert (now.uid, now.qbytes, now.qnum) == (1000, 16384, 1)
    assert _drain(new) == [(9, b"hi")]


def test_a_restore_that_fails_halfway_leaves_no_queue() -> None:
    """Messages that need more room than kernel.msgmnb, restored without CAP_SYS_RESOURCE:
    the new queue cannot be made large enough (EPERM) and is removed again."""
    Path("/proc/sys/kernel/msgmnb").write_text("100")  # this test's IPC namespace's
    doc = {"key": 0x5EED0007, "uid": 1000, "gid": 1000, "cuid": 1000, "cgid": 1000,
           "mode": 0o600, "qbytes": 100, "qnum": 1, "cbytes": 200, "lspid": 1, "lrpid": 0,
           "stime": 1, "rtime": None}  # fmt: skip
    assert _restore_as(1000, doc, struct.pack("<qQ", 1, 200) + b"x" * 200) == -errno.EPERM
    assert msg.read() == []


def test_restore_refuses_a_key_in_use_and_damaged_data() -> None:
    q = new_queue(key=0x5EED0005)
    q.send(b"abc")
    scanned = one(q)
    data = _saved(scanned)
    doc = _doc(scanned)
    with pytest.raises(OSError) as e:
        msg.restore(doc, iter([(0, data)]))
    assert e.value.errno == errno.EEXIST
    msg.rmid(q.id)
    for bad in (data[:-1], data + b"\0", struct.pack("<qQ", 0, 3) + b"abc"):
        with pytest.raises(OSError) as e:
            msg.restore(doc, iter([(0, bad)]))
        assert e.value.errno == errno.EINVAL
    assert msg.read() == []  # nothing was created


def _forbid_msg_copy() -> None:
    """In this (forked) process msgrcv with MSG_COPY fails with ENOSYS and takes nothing,
    as on a kernel built without CONFIG_CHECKPOINT_RESTORE (a seccomp filter)."""
    audit_arch, nr = {"x86_64": (0xC000003E, 70), "aarch64": (0xC00000B7, 188)}[os.uname().machine]
    program = [
        (0x20, 0, 0, 4),  # ld seccomp_data.arch
        (0x15, 0, 5, audit_arch),  # jeq: else allow
        (0x20, 0, 0, 0),  # ld seccomp_data.nr
        (0x15, 0, 3, nr),  # jeq msgrcv: else allow
        (0x20, 0, 0, 48),  # ld args[4] (msgflg), low half
        (0x45, 0, 1, kernel.MSG_COPY),  # jset MSG_COPY: else allow
        (0x06, 0, 0, 0x00050000 | errno.ENOSYS),  # SECCOMP_RET_ERRNO
        (0x06, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    filt = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(filt))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.c_char_p(prog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="seccomp numbers")
def test_a_kernel_without_msg_copy_keeps_a_queue_with_messages() -> None:
    q = new_queue()
    q.send(b"only copy")
    q.send(b"never take")
    scanned = one(q)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _forbid_msg_copy()
            msg.save(scanned, lambda _b: None)
            os.write(w, b"0 saved")
        except OSError as e:
            os.write(w, f"{e.errno} {e.strerror}".encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    code, why = os.read(r, 4096).decode().split(" ", 1)
    assert int(code) == errno.ENOSYS
    assert why == (
        "its 2 messages cannot be read without taking them off the queue: this kernel has "
        "no msgrcv MSG_COPY (CONFIG_CHECKPOINT_RESTORE is off); kept (--no-quarantine "
        "removes it without a copy)"
    )
    assert _drain(q.id) == [(1, b"only copy"), (1, b"never take")]


def test_a_message_longer_than_msgmax_is_now_cannot_be_copied() -> None:
    q = new_queue()
    _send(q.id, 1, b"m" * 8000)
    Path("/proc/sys/kernel/msgmax").write_text("100")  # this test's IPC namespace's
    with pytest.raises(OSError) as e:
        _saved(one(q))
    assert e.value.errno == errno.EINVAL
    assert "message 0 is longer than kernel.msgmax (100)" in str(e.value)
    assert kernel.msg_stat(q.id).qnum == 1


def test_changes_while_it_was_saved(seen: None) -> None:
    q = new_queue()
    q.send(b"one")
    scanned = one(q)
    _saved(scanned)
    assert msg.changed_since_copy(scanned, msg.stat(q.id), False, False) is None
    q.send(b"two")
    assert msg.changed_since_copy(scanned, msg.stat(q.id), False, False) == (
        "changed since scan: a message was sent or received while it was saved"
    )
    assert msg.changed_since_copy(scanned, msg.stat(q.id), False, True) is None  # forced
    q = new_queue()
    empty = one(q)
    sent_and_exited(q)
    assert msg.changed_since_copy(empty, msg.stat(empty.id), True, False) is not None


# --- facts ------------------------------------------------------------------------------


def test_facts_are_named_and_valued_as_lsipc_says() -> None:
    q = new_queue(key=0x5EED0006)
    sent_and_exited(q, b"abc")
    sent_and_exited(q, b"de")
    time.sleep(1.1)  # SEND and RECV a second apart: each column shows its own
    q.receive()
    out = subprocess.run(["lsipc", "-q", "--json", "-b", "--time-format=iso", "-o",
                          "ID,USEDBYTES,MSGS,SEND,RECV,LSPID,LRPID"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    (theirs,) = json.loads(out)["messages"]
    ours = one(q)
    names = {f.json: f for f in msg.FACTS}
    for name, value in theirs.items():
        if name == "id":
            continue
        fact = names[name]
        if fact.unit == "time":
            value = int(datetime.fromisoformat(value).timestamp())
        assert fact.get(ours) == int(value), name
    assert names["qbytes"].get(ours) == 16384 and names["blocked"].get(ours) == 0
    assert msg.limits() == {"msgmni": 32000, "msgmnb": 16384, "msgmax": 8192}


@pytest.fixture(autouse=True)
def _sweep_of_this_test() -> Iterator[None]:
    """No sweep of an earlier test's namespace is reused."""
    msg._last = None
    yield
    msg._last = None
