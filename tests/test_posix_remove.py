"""Removing POSIX objects (issue 13, items 2 and 5): the write lease is the last
instant's proof (docs/posix-notes.md, section 2). Real files in the test's own tmpfs on
/dev/shm, held by real processes; the objects are deliberately built WITHOUT holders,
as if the /proc pass had missed them, so that only the lease stands between a held file
and its removal."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import needs_real_root
from test_holders import make, spawn  # noqa: F401 (spawn: a fixture)

from shmjanitor import classify, holders, kinds, posixfs, posixrm, remove
from shmjanitor.config import Config
from shmjanitor.model import Action, Party, State
from shmjanitor.posixfs import MqAttr, PosixMqueue, PosixObject, PosixSem, PosixShm
from shmjanitor.quarantine import Store

SHM = Path("/dev/shm")
REPO = Path(__file__).resolve().parent.parent


def obj(path: Path, cls: type = PosixShm, mq: Optional[MqAttr] = None) -> PosixObject:
    """The object as the reader makes it (posixfs.PosixObject), from an fstatat."""
    s = os.stat(path, follow_symlinks=False)
    o: PosixObject = cls(s.st_ino, path.name, str(path.parent), s.st_dev, s.st_mode & 0o7777,
                         s.st_uid, s.st_gid, s.st_size, s.st_blocks * 512, s.st_mtime_ns,
                         s.st_ctime_ns, s.st_atime_ns, mq=mq)  # fmt: skip
    return o


# The same, in a child process (which must not import the tests: conftest would run).
READ_IN_CHILD = """
import os
from shmjanitor import posixrm
from shmjanitor.posixfs import PosixShm
def read_one(path):
    s = os.stat(path, follow_symlinks=False)
    d, _, name = path.rpartition("/")
    o = PosixShm(s.st_ino, name, d, s.st_dev, s.st_mode & 0o7777, s.st_uid, s.st_gid,
                 s.st_size, s.st_blocks * 512, s.st_mtime_ns, s.st_ctime_ns, s.st_atime_ns)
    posixrm.remember([o])
    return o
"""


def read_all(*paths: Path) -> list[PosixObject]:
    objs = [obj(p) for p in paths]
    posixrm.remember(objs)
    return objs


def _kind(name: str, noun: str, queue: bool = False) -> types.ModuleType:
    """A POSIX kind module as kinds/posix_*.py makes one (helper P1's): the removal
    half is posixrm's names, which is all remove.py and the quarantine ask."""
    m = types.ModuleType(f"posix_kind_for_tests_{name}")
    r = posixrm
    for n in ("stat", "changed_since_scan", "lock", "unlock", "changed_while_locked",
              "busy_now", "rmid", "users_after_rmid", "known_empty", "save_bound",
              "data_size", "save", "changed_since_copy", "record", "check_record", "same",
              "restore"):  # fmt: skip
        setattr(m, n, getattr(r, n))
    if queue:  # as kinds/posix_mqueue.py imports it
        m.save = r.mq_save  # type: ignore[attr-defined]
    m.NAME, m.NOUN, m.PLURAL = name, noun, "posix"
    m.parties = lambda o: ()  # type: ignore[attr-defined]
    return m


@pytest.fixture(autouse=True)
def posix_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, noun, queue in (("posix-shm", "POSIX shared memory object", False),
                              ("posix-sem", "POSIX semaphore", False),
                              ("posix-mqueue", "POSIX message queue", True)):  # fmt: skip
        if name not in kinds._MODULES:  # until kinds/posix_*.py land
            m = _kind(name, noun, queue)
            monkeypatch.setitem(kinds._MODULES, name, m.__name__)
            monkeypatch.setitem(kinds._loaded, m.__name__, m)
        # The verdicts here say "orphan" whatever the owner does (the worst a wrong
        # survey could say): no party is asked again at removal, only the lease.
        monkeypatch.setattr(kinds.of(name), "parties", lambda o: ())


def verdict(o: Any) -> classify.Verdict:
    return classify.Verdict(o, State.ORPHAN, "orphan: nobody holds it", classify.NOBODY, 0)


def reap(objs: list[Any], batch: Any = None, forced: bool = False) -> list[remove.Result]:
    return remove.execute([remove.Candidate(verdict(o), "orphan") for o in objs],
                          dry_run=False, batch=batch, max_copy=None if batch is None else 1 << 40,
                          forced=forced)  # fmt: skip


# ------------------------------------------------------------------ removal and refusal


def test_an_orphan_is_removed():
    (o,) = read_all(make("orphan"))
    (r,) = reap([o])
    assert r.action is Action.REMOVED, r
    assert not (SHM / "orphan").exists()
    assert o.id not in posixrm.SHM.leases, "the lease is let go"


@pytest.mark.parametrize("how", [("fd",), ("map",)], ids=["fd", "mapping-fd-closed"])
def test_a_held_file_is_refused_by_the_lease(spawn, how):  # noqa: F811
    """A holder the scan did not report (no holders on the object): the kernel refuses
    the write lease (EAGAIN) for an open fd, and for a mapping whose fd was closed."""
    path = make("held")
    spawn(path, *how)
    (o,) = read_all(path)
    (r,) = reap([o])
    assert r.action is Action.KEPT and r.reason == posixrm.HELD, r
    assert path.exists() and os.stat(path).st_ino == o.id


def test_rm_force_removes_a_held_file_but_never_another_inode(spawn, tmp_path):  # noqa: F811
    """--force skips the in-use checks, never the identity ones; with the quarantine on a
    held file is kept: a copy is made only under the lease, never torn."""
    path = make("forced")
    spawn(path, "fd")
    (o,) = read_all(path)
    st = Store(tmp_path / "state", Config())
    (r,) = reap([o], batch=st.open_batch(time.time()), forced=True)
    assert r.action is Action.KEPT and "--no-quarantine removes it without a copy" in r.reason
    (r,) = reap([o], forced=True)
    assert r.action is Action.REMOVED, r
    # The name reused by another file: gone, not that file.
    path2 = make("reused")
    (o2,) = read_all(path2)
    os.unlink(path2)
    make("reused")
    (r2,) = reap([o2], forced=True)
    assert r2.action is Action.GONE and (SHM / "reused").exists(), r2


def test_a_changed_file_is_kept():
    path = data_file("changed")
    (o,) = read_all(path)
    time.sleep(0.01)
    with open(path, "r+b") as f:
        f.write(b"j")
    (r,) = reap([o])
    assert r.action is Action.KEPT and "modified" in r.reason, r
    assert path.exists()


def test_a_symlink_at_the_name_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    path = make("link")
    (o,) = read_all(path)
    os.unlink(path)
    os.symlink(victim, path)
    (r,) = reap([o])
    assert r.action is Action.GONE, r
    assert victim.read_text() == "keep me" and path.is_symlink()


# --------------------------------------------------------------------- the last instant


def opener(path: Path) -> subprocess.Popen:
    """A process that opens `path` read-write when told (a line on stdin), writes, and
    reports its open's st_nlink and the bytes it finds."""
    code = (
        "import os, sys\n"
        "sys.stdin.readline()\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "print(os.fstat(fd).st_nlink, os.pread(fd, 5, 0).decode(), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def go(p: subprocess.Popen) -> None:
    assert p.stdin is not None
    p.stdin.write("\n")
    p.stdin.flush()


def wait_until_open_waits(p: subprocess.Popen, fd: int) -> None:
    """Until the opener sits in break_lease(): our lease shows the break pending."""
    deadline = time.monotonic() + 10
    while fcntl.fcntl(fd, posixrm.F_GETLEASE) == fcntl.F_WRLCK:
        assert p.poll() is None and time.monotonic() < deadline, "the opener never came"
        time.sleep(0.005)


def data_file(name: str) -> Path:
    path = make(name)
    with open(path, "r+b") as f:
        f.write(b"hello")
    return path


def test_an_open_between_our_stat_and_our_lease_keeps_it(monkeypatch):
    """A delayed open timed after our last stat and before the lease: the lease is
    refused (the opener's fd counts) and the object is kept."""
    path = data_file("late-open")
    (o,) = read_all(path)
    p = opener(path)
    real = posixrm._ignore_sigio  # the first step of lock(), after every stat

    def open_now() -> None:
        go(p)
        assert p.stdout is not None
        assert p.stdout.readline().split() == ["1", "hello"]
        real()

    monkeypatch.setattr(posixrm, "_ignore_sigio", open_now)
    (r,) = reap([o])
    go(p)
    p.wait()
    assert r.action is Action.KEPT and r.reason == posixrm.HELD, r
    assert os.stat(path).st_ino == o.id


def test_an_opener_blocked_by_our_lease_gets_the_file_at_its_name(monkeypatch):
    """An open while we hold the lease waits in break_lease(); busy_now sees the break
    pending, the object is kept, and the opener gets it at its name (st_nlink 1)."""
    path = data_file("blocked-open")
    (o,) = read_all(path)
    p = opener(path)
    real = posixrm.SHM.busy_now

    def busy(id: int) -> Optional[str]:
        go(p)
        wait_until_open_waits(p, posixrm.SHM.leases[id])
        return real(id)

    monkeypatch.setattr(kinds.of("posix-shm"), "busy_now", busy)
    (r,) = reap([o])
    assert p.stdout is not None
    got = p.stdout.readline().split()
    go(p)
    p.wait()
    assert r.action is Action.KEPT and r.reason.startswith(posixrm.OPENED), r
    assert got == ["1", "hello"] and os.stat(path).st_ino == o.id


def test_an_opener_between_reassert_and_unlink_gets_the_removed_file_and_it_is_said(
    monkeypatch,
):
    """The one window the lease cannot close (notes, "what it does not prove", 2): an
    open that resolved the name before our unlink. It gets the removed file with its
    bytes (st_nlink 0) once we let go, and the result says so: never a silent loss."""
    path = data_file("last-us")
    (o,) = read_all(path)
    p = opener(path)
    real = posixrm.SHM.stat
    calls = {"n": 0}

    def stat(id: int) -> posixrm.Now:
        now = real(id)
        if id in posixrm.SHM.leases and fcntl.fcntl(
            posixrm.SHM.leases[id], posixrm.F_GETLEASE
        ) == fcntl.F_WRLCK:  # fmt: skip
            calls["n"] += 1
            if calls["n"] == 2:  # rmid's look at the name, after its re-assert
                go(p)
                wait_until_open_waits(p, posixrm.SHM.leases[id])
        return now

    monkeypatch.setattr(posixrm.SHM, "stat", stat)
    monkeypatch.setattr(kinds.of("posix-shm"), "stat", stat)
    (r,) = reap([o])
    assert p.stdout is not None
    got = p.stdout.readline().split()
    go(p)
    p.wait()
    assert calls["n"] >= 2
    assert r.action is Action.REMOVED and "removed while 1 attached" in r.reason, r
    assert got == ["0", "hello"], "the opener has the removed file and its bytes"


def test_sigio_from_a_broken_lease_does_not_kill_us():
    """An opener breaking our lease sends us SIGIO, whose default action is to
    terminate (fs/locks.c, lease_break_callback): lock() ignores it first."""
    path = make("sigio")
    code = READ_IN_CHILD + (
        "import sys, time\n"
        "o = read_one(sys.argv[1])\n"
        "posixrm.lock(o.id, 0)\n"
        "print('locked', flush=True)\n"
        "time.sleep(1)\n"
        "print('alive', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(path)],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    assert p.stdout.readline() == "locked\n"
    with pytest.raises(BlockingIOError):  # O_NONBLOCK: refused at once, the break starts
        os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    assert p.stdout.readline() == "alive\n"
    assert p.wait() == 0


# ------------------------------------------------------------- when no lease can be had

_DROP_LEASE = r"""
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
hdr = struct.pack("Ii", 0x20080522, 0)
data = ctypes.create_string_buffer(24)
assert libc.capget(hdr, data) == 0
caps = list(struct.unpack("6I", data.raw))
caps[0] &= ~(1 << 28); caps[1] &= ~(1 << 28)  # CAP_LEASE out of effective, permitted
assert libc.capset(hdr, struct.pack("6I", *caps)) == 0
o = read_one(sys.argv[1])
try:
    posixrm.lock(o.id, 0)
    print("lease" if o.id in posixrm.SHM.leases else "no lease:", posixrm.SHM.no_lease)
    posixrm.rmid(o.id)
    print("removed")
except OSError as e:
    print("kept:", e.strerror)
"""


def _without_cap_lease(path: Path) -> str:
    out = subprocess.run([sys.executable, "-c", READ_IN_CHILD + _DROP_LEASE, str(path)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_without_a_lease_a_fresh_look_at_proc_decides(spawn):  # noqa: F811
    """Root without CAP_LEASE, a file of another owner: EACCES (vfs_setlease), so a
    fresh holders.scan decides instead: a holder keeps it, none lets it go."""
    needs_real_root()
    held = make("held-nolease", uid=4321)
    child = spawn(held, "map")
    assert f"kept: held by pid {child.pid}" in _without_cap_lease(held)
    assert held.exists()
    free = make("free-nolease", uid=4321)
    out = _without_cap_lease(free)
    if holders.scan([os.stat(SHM).st_dev]).complete:
        assert "no lease:" in out and "CAP_LEASE" in out and "removed" in out, out
        assert not free.exists()
    else:  # a PID namespace (scripts/test), a sandbox's PID 1: the look proves nothing
        assert "kept: cannot prove nobody holds it: no write lease" in out, out
        assert free.exists()


# --------------------------------------------------------------------------- the stress

_WORKER = r"""
import ctypes, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
d, n, seed, until = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rnd = random.Random(seed)
ops = 0
while time.time() < until:
    name = f"{d}/obj{rnd.randrange(n)}"
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)  # shm_open(O_CREAT): made anew
    except OSError:
        continue
    os.ftruncate(fd, 4096)
    ino = os.fstat(fd).st_ino
    opened = os.fstat(fd).st_nlink  # 0: an open already under way got the removed file
    probe = os.open(f"/proc/self/fd/{fd}", os.O_PATH)  # not counted by the lease
    if rnd.random() < 0.5:  # a mapping whose fd is closed
        addr = libc.mmap(None, 4096, 3, 1, fd, 0)
        os.close(fd)
        ctypes.memmove(addr, b"x", 1)
        time.sleep(rnd.random() * 0.01)
        held = os.fstat(probe).st_nlink
        libc.munmap(addr, 4096)
    else:
        os.write(fd, b"y")
        time.sleep(rnd.random() * 0.01)
        held = os.fstat(probe).st_nlink
        os.close(fd)
    os.close(probe)
    if opened == 0 or held == 0:
        print("lost", ino, opened, held, flush=True)
    ops += 1
print("ops", ops, flush=True)
"""


def test_stress_no_held_object_is_removed(tmp_path):
    """Workers open, write, map and close objects (creating them again when gone) while
    reaps judge every object an orphan (the worst a wrong /proc pass could say), with
    and without the quarantine. A file removed while a worker held it shows st_nlink 0
    to that worker: none may, but for one the result said was removed at the last
    instant (an open already under way, which the lease cannot see)."""
    d = SHM / "stress"
    d.mkdir()
    n = 40
    until = time.time() + 8
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(d), str(n), str(s),
                                 str(until)], stdout=subprocess.PIPE, text=True)
               for s in range(4)]  # fmt: skip
    store = Store(tmp_path / "state", Config())
    removed: dict[int, str] = {}
    reaps = 0
    monkey = pytest.MonkeyPatch()
    monkey.setattr(posixfs, "SHM_DIR", str(d))
    try:
        while time.time() < until:
            objs = [obj(d / e) for e in os.listdir(d)]
            posixrm.remember(objs)
            batch = store.open_batch(time.time()) if reaps % 2 else None
            for r in reap(objs, batch=batch):
                if r.action is Action.REMOVED:
                    removed[r.verdict.obj.id] = r.reason
            reaps += 1
    finally:
        monkey.undo()
    lost, ops = [], 0
    for w in workers:
        out, _ = w.communicate()
        for line in out.splitlines():
            f = line.split()
            if f[0] == "lost":
                lost.append(int(f[1]))
            else:
                ops += int(f[1])
    said = {i for i, why in removed.items() if "removed while" in why}
    assert ops > 1000 and reaps > 20 and len(removed) > 100, (ops, reaps, len(removed))
    assert set(lost) <= said, f"removed while held, unsaid: {set(lost) - said}"


def test_stress_worker_sees_a_removal_under_it(tmp_path):
    """The stress test's detector works: a file unlinked (without our lease) while a
    worker maps it is reported lost."""
    d = SHM / "detector"
    d.mkdir()
    w = subprocess.Popen([sys.executable, "-c", _WORKER, str(d), "1", "0", str(time.time() + 1)],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 1
    while time.time() < deadline:
        for e in os.listdir(d):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / e)
        time.sleep(random.random() * 0.005)
    out, _ = w.communicate()
    assert "lost" in out


# ---------------------------------------------------------------- message queues

_libc = ctypes.CDLL(None, use_errno=True)


def mq_make(name: str, messages: int) -> int:
    attr = posixrm._MqAttr(0, 4, 64, 0)
    _libc.mq_open.restype = ctypes.c_int
    _libc.mq_open.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                              ctypes.POINTER(posixrm._MqAttr))  # fmt: skip
    fd = _libc.mq_open(f"/{name}".encode(), os.O_RDWR | os.O_CREAT, 0o640, ctypes.byref(attr))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    for _ in range(messages):
        assert _libc.mq_send(fd, b"msg", 3, 0) == 0
    return fd


def mq_obj(dir: Path, name: str, messages: int) -> PosixObject:
    o = obj(dir / name, PosixMqueue, MqAttr(4, 64, messages, 3 * messages))
    posixrm.remember([o])
    return o


@pytest.fixture
def mq_dir(mqueue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(posixfs, "MQUEUE_DIR", str(mqueue_dir))
    return mqueue_dir


def test_a_queue_with_messages_is_kept_unless_no_quarantine(mq_dir, tmp_path):
    os.close(mq_make("full", 2))
    o = mq_obj(mq_dir, "full", 2)
    store = Store(tmp_path / "state", Config())
    (r,) = reap([o], batch=store.open_batch(time.time()))
    assert r.action is Action.KEPT and "holds messages" in r.reason, r
    assert (mq_dir / "full").exists()
    (r,) = reap([o])  # --no-quarantine
    assert r.action is Action.REMOVED, r
    assert not (mq_dir / "full").exists()


def test_a_held_queue_is_refused(mq_dir):
    fd = mq_make("held-q", 0)
    o = mq_obj(mq_dir, "held-q", 0)
    (r,) = reap([o])
    os.close(fd)
    assert r.action is Action.KEPT and r.reason == posixrm.HELD, r


def test_posix_sem_goes_the_same_way():
    path = make("sem.lock", 32)
    o = obj(path, PosixSem)
    posixrm.remember([o])
    (r,) = reap([o])
    assert r.action is Action.REMOVED and not path.exists(), r


# ------------------------------------------------------------ policy, config, log lines


def _verdict(o: Any, state: State, idle: int) -> classify.Verdict:
    return classify.Verdict(o, state, "orphan: nobody holds it", classify.NOBODY, idle)


def test_protect_paths_and_posix_idle_after():
    from shmjanitor import policy
    from shmjanitor.config import parse

    (o,) = read_all(make("PostgreSQL.1234", uid=1500))
    (p,) = read_all(make("psm_0badc0de", uid=1500))
    who = policy.Caller(0, True, 1000, 60000)
    cfg = parse({"protect_paths": ["/dev/shm/PostgreSQL.*"], "min_age": "1m"}, "test")
    d = policy.decide(_verdict(o, State.ORPHAN, 3600), cfg, who)
    assert d is not None and not d.remove
    assert d.reason == "protected path /dev/shm/PostgreSQL.* (protect_paths)"
    d = policy.decide(_verdict(p, State.ORPHAN, 3600), cfg, who)
    assert d is not None and d.remove
    # Idle (owner alive): never reaped by default; with posix_idle_after, once that idle.
    assert policy.decide(_verdict(p, State.IDLE, 10 * 86400), cfg, who) is None
    assert policy.plan([_verdict(p, State.IDLE, 10 * 86400)], cfg, who) == []
    cfg = parse({"posix_idle_after": "7d"}, "test")
    young, old = _verdict(p, State.IDLE, 86400), _verdict(p, State.IDLE, 8 * 86400)
    kept, gone = policy.plan([young, old], cfg, who)
    assert not kept.remove and "younger than posix_idle_after 7d" in kept.reason
    assert gone.remove and "idle longer than posix_idle_after 7d" in gone.reason
    # A System V idle object is not touched by a POSIX key.
    seg = types.SimpleNamespace(kind="shm", key=1, uid=1500, cuid=1500, id=1)
    assert policy.decide(_verdict(seg, State.IDLE, 8 * 86400), cfg, who) is None


def test_config_refuses_a_relative_protect_path():
    from shmjanitor.config import parse
    from shmjanitor.errors import ConfigError

    with pytest.raises(ConfigError, match="protect_paths"):
        parse({"protect_paths": ["PostgreSQL.*"]}, "test")
    assert parse({}, "test").posix_idle_after is None, "off by default"


def test_an_idle_object_under_posix_idle_after_is_removed_though_its_owner_lives(monkeypatch):
    """remove.py asks only an orphan's parties to be still dead: an idle one has a live
    owner by definition, and the lease decides."""
    (o,) = read_all(make("idle-one"))
    alive = (Party("owner", 0, 0, "uid", uid=os.getuid()),)
    monkeypatch.setattr(kinds.of("posix-shm"), "parties", lambda o: alive)
    v = _verdict(o, State.IDLE, 8 * 86400)
    (r,) = remove.execute([remove.Candidate(v, "idle")], dry_run=False, batch=None)
    assert r.action is Action.REMOVED, r


def test_log_lines_and_json_carry_kind_and_an_escaped_path():
    from shmjanitor import report

    bad = "evil\nname\x1b[31m"
    (o,) = read_all(make(bad))
    r = remove.Result(verdict(o), Action.REMOVED, "orphan")
    line = report.log_line(r)
    assert "\n" not in line and "\x1b" not in line
    assert 'kind=posix-shm path="/dev/shm/evil\\nname\\x1b[31m"' in line, line
    assert report.result_json(r)["path"] == f"/dev/shm/{bad}"


def test_an_inode_number_of_both_directories_is_kept(mq_dir):
    """/dev/shm and /dev/mqueue are two file systems: an id read in both cannot be told
    apart by number, and the object is kept rather than guessed."""
    os.close(mq_make("twin", 0))
    q = mq_obj(mq_dir, "twin", 0)
    path = make("twin-file")
    s = obj(path)
    posixrm.remember([s._replace(id=q.id), q])
    (r,) = reap([q])
    assert r.action is Action.KEPT and posixrm.AMBIGUOUS in r.reason, r
    assert (mq_dir / "twin").exists() and path.exists()


# ------------------------------------------------- end to end, through the command line


def cli_json(*args: str) -> tuple[int, dict[str, Any]]:
    from segments import cli

    r = cli(*args, "--json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip() else {}


def test_real_leaks_of_a_killed_job_are_reaped_kept_and_restored(tmp_path, spawn):  # noqa: F811
    """multiprocessing.shared_memory and a Lock of a job killed with SIGKILL (its
    resource_tracker too) stay as orphans: reap -M -S removes them with a copy; files
    held by a mapping (fd closed) or an fd alone are not touched; restore by path gives
    back name, mode, owner and bytes."""
    from test_posix_list import ALICE, LEAK, kill_group, start

    needs_real_root()
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    try:
        p, (shm_name, sem_name) = start(procs, LEAK, uid=ALICE)
        kill_group(p)
    finally:
        for q in procs:
            if q.poll() is None:
                os.killpg(q.pid, signal.SIGKILL)
            q.wait()
    shm, sem = SHM / shm_name.lstrip("/"), SHM / ("sem." + sem_name.lstrip("/"))
    before = {x: (os.stat(x), x.read_bytes()) for x in (shm, sem)}
    mapped, opened = make("mapped", uid=ALICE), make("opened", uid=ALICE)
    spawn(mapped, "map")
    spawn(opened, "fd")
    state = str(tmp_path / "state")
    code, doc = cli_json("reap", "-M", "-S", "--min-age", "0", "--state-dir", state)
    assert code == 0, doc
    got = {r["path"]: r for r in doc["results"]}
    assert set(got) == {str(shm), str(sem)}, got  # the held ones are attached: not considered
    assert {r["action"] for r in got.values()} == {"removed"}
    assert (got[str(shm)]["kind"], got[str(sem)]["kind"]) == ("posix-shm", "posix-sem")
    assert not shm.exists() and not sem.exists() and mapped.exists() and opened.exists()
    for path in (shm, sem):
        code, out = cli_json("restore", str(path), "--state-dir", state)
        assert code == 0 and out["path"] == str(path), out
        s, data = before[path]
        now = os.stat(path)
        assert (now.st_mode, now.st_uid, now.st_gid, now.st_size) == (
            s.st_mode, s.st_uid, s.st_gid, s.st_size)  # fmt: skip
        assert path.read_bytes() == data
    assert shm.read_bytes()[:5] == b"hello"


def test_rm_paths_refuses_a_held_one_without_force_and_numbers_stay_segment_ids(tmp_path, spawn):  # noqa: F811
    from segments import cli

    state = str(tmp_path / "state")
    held = make("held-rm", uid=4321)
    spawn(held, "map")
    r = cli("rm", str(held), "--state-dir", state)
    assert r.exit_code == 1 and held.exists(), r.output
    assert "refused: in use: mapped by" in r.output and "--force" in r.output
    r = cli("rm", str(held), "--force", "--state-dir", state)  # no copy without the lease
    assert r.exit_code == 1 and held.exists() and "--no-quarantine" in r.output, r.output
    r = cli("rm", str(held), "--force", "--no-quarantine", "--state-dir", state)
    assert r.exit_code == 0 and not held.exists(), r.output
    r = cli("rm", "/dev/shm/never-was", "--state-dir", state)
    assert r.exit_code == 1 and "no POSIX object at /dev/shm/never-was" in r.output
    r = cli("rm", "7", "--state-dir", state)
    assert r.exit_code == 1 and "no segment with id 7" in r.output, r.output
    r = cli("rm", "psm_x")
    assert r.exit_code == 2 and "path of a POSIX object" in r.output


def test_reap_logs_kind_and_escaped_path_off_a_terminal(tmp_path):
    from segments import cli

    path = make("evil\x1b[2Jname", uid=4321)
    r = cli("reap", "-M", "--min-age", "0", "--no-quarantine", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("action=removed")]
    assert 'kind=posix-shm path="/dev/shm/evil\\x1b[2Jname"' in line, line
    assert not path.exists()


def test_reap_keeps_a_queue_with_messages_unless_no_quarantine(tmp_path):
    from test_posix_list import MQUEUE

    if not MQUEUE.is_dir():
        pytest.skip("needs /dev/mqueue (the suite's conftest mounts one when it can)")
    fd = mq_make("jobs", 2)
    os.close(fd)
    os.chown(MQUEUE / "jobs", 4321, 4321)
    state = str(tmp_path / "state")
    code, doc = cli_json("reap", "-Q", "--min-age", "0", "--state-dir", state)
    (r,) = doc["results"]
    assert code == 0 and r["action"] == "kept" and "holds messages" in r["reason"], doc
    assert r["path"] == str(MQUEUE / "jobs") and r["kind"] == "posix-mqueue"
    code, doc = cli_json("reap", "-Q", "--min-age", "0", "--no-quarantine", "--state-dir", state)
    assert code == 0 and doc["results"][0]["action"] == "removed", doc
    assert not (MQUEUE / "jobs").exists()
