"""What a write lease (fcntl F_SETLEASE, F_WRLCK) proves about a file in /dev/shm, as
this kernel does it (issue 13, item 2; docs/posix-notes.md has the source lines).
Each assertion is the kernel's behaviour: if a kernel behaves otherwise, the test fails
and the notes are wrong for it. Real processes hold real files in the test's tmpfs."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACCOUNTS, needs_real_root
from test_holders import HOLD, fds_on, key, make, spawn  # noqa: F401 (spawn: a fixture)

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)
NONBLOCK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@pytest.fixture(autouse=True)
def _sigio_ignored() -> Iterator[None]:
    """A broken lease sends SIGIO to its holder (fs/locks.c, lease_break_callback ->
    kill_fasync), whose default action is to terminate: this process ignores it while
    it holds leases (see test_sigio_kills_a_lease_holder_that_does_not_ignore_it)."""
    old = signal.signal(signal.SIGIO, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGIO, old)


def lease(path: Path, flags: int = NONBLOCK) -> tuple[int, int]:
    """(fd, 0) with a write lease held on it, or (fd, errno) when refused."""
    fd = os.open(path, flags)
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
    except OSError as e:
        return fd, e.errno
    return fd, 0


@contextlib.contextmanager
def refused_or_granted(path: Path) -> Iterator[int]:
    fd, err = lease(path)
    try:
        yield err
    finally:
        os.close(fd)  # closing the fd releases the lease


def opener(path: Path, flags: str = "os.O_RDWR") -> subprocess.Popen:
    """A process that opens `path` and reports how long open() took and st_nlink."""
    code = (
        "import os, sys, time\n"
        "t = time.monotonic()\n"
        f"fd = os.open(sys.argv[1], {flags})\n"
        "print(round(time.monotonic() - t, 2), os.fstat(fd).st_nlink, flush=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_break(fd: int, timeout: float = 10) -> int:
    """F_GETLEASE once a lease break is pending: no longer F_WRLCK."""
    deadline = time.monotonic() + timeout
    while (now := fcntl.fcntl(fd, F_GETLEASE)) == fcntl.F_WRLCK:
        assert time.monotonic() < deadline, "the opener never reached break_lease()"
        time.sleep(0.01)
    return now


# ---------------------------------------------------------------- when it is granted


def test_tmpfs_grants_a_write_lease_when_nobody_holds_the_file():
    f = make("free")
    with refused_or_granted(f) as err:
        assert err == 0
    fd, err = lease(f)
    assert err == 0 and fcntl.fcntl(fd, F_GETLEASE) == fcntl.F_WRLCK
    os.close(fd)


def test_lease_through_a_read_write_fd_too():
    # check_conflicting_open discounts the lessee's own open, read or write.
    fd, err = lease(make("rw"), os.O_RDWR | os.O_NOFOLLOW)
    assert err == 0
    os.close(fd)


@pytest.mark.parametrize("how", [["fd"], ["fd", "map"]])
def test_another_processes_open_fd_refuses_it(spawn, how):  # noqa: F811
    f = make("held_fd")
    spawn(f, *how)
    with refused_or_granted(f) as err:
        assert err == errno.EAGAIN


@pytest.mark.parametrize("prot,flags", [("rw", "shared"), ("ro", "shared"), ("ro", "private")])
def test_a_mapping_whose_fd_was_closed_refuses_it(spawn, prot, flags):  # noqa: F811
    """The mapping keeps its own reference to the open file (vma->vm_file), so the
    file's i_writecount (opened read-write) or i_readcount (read-only) stays raised
    after close(fd): the lease sees every mapping, shared or private."""
    f = make("mapped_only")
    c = spawn(f, "map", HOLD_PROT=prot, HOLD_MAP=flags)
    assert fds_on(c.pid, key(f)) == []  # the child holds the mapping alone
    with refused_or_granted(f) as err:
        assert err == errno.EAGAIN
    c.p.kill()
    c.p.wait()  # the mapping goes with the process: then the lease is granted
    with refused_or_granted(f) as err:
        assert err == 0


def test_our_own_second_fd_refuses_it():
    # Only the lessee's own open is discounted: the janitor must hold no other fd of
    # the file (a copy in progress, a scan) when it asks.
    f = make("twice")
    other = os.open(f, os.O_RDONLY)
    try:
        with refused_or_granted(f) as err:
            assert err == errno.EAGAIN
    finally:
        os.close(other)


def test_an_o_path_fd_does_not_refuse_it():
    """O_PATH opens return before the read and write counts are raised (fs/open.c,
    do_dentry_open): the lease does not see them. Such an fd gives no access to the
    data, but /proc/self/fd/N can open the file again -- even once it is unlinked."""
    f = make("o_path")
    path_fd = os.open(f, os.O_PATH)
    try:
        fd, err = lease(f)
        assert err == 0
        os.unlink(f)
        os.close(fd)
        again = os.open(f"/proc/self/fd/{path_fd}", os.O_RDWR)
        assert os.fstat(again).st_nlink == 0  # the removed file, opened anew
        os.close(again)
    finally:
        os.close(path_fd)


def test_a_thread_with_its_own_fd_table_refuses_it_though_proc_pid_fd_hides_it():
    """A thread that unshared its fd table (unshare(CLONE_FILES)) holds fds that
    /proc/PID/fd does not list (only /proc/PID/task/TID/fd does): a /proc pass that
    reads each process once misses them; the lease does not."""
    f = make("private_table")
    libc = ctypes.CDLL(None, use_errno=True)
    ready, done, tid = threading.Event(), threading.Event(), []

    def worker() -> None:
        assert libc.unshare(0x400) == 0, ctypes.get_errno()  # CLONE_FILES
        fd = os.open(f, os.O_RDWR)
        tid.append(threading.get_native_id())
        ready.set()
        done.wait()
        os.close(fd)

    t = threading.Thread(target=worker)
    t.start()
    try:
        ready.wait(10)
        pid = os.getpid()
        assert fds_on(pid, key(f)) == []
        assert len(fds_on_task(pid, tid[0], key(f))) == 1
        with refused_or_granted(f) as err:
            assert err == errno.EAGAIN
    finally:
        done.set()
        t.join()


def fds_on_task(pid: int, tid: int, file: tuple[int, int]) -> list[str]:
    d = f"/proc/{pid}/task/{tid}/fd"
    return [fd for fd in os.listdir(d) if _is(f"{d}/{fd}", file)]


def _is(link: str, file: tuple[int, int]) -> bool:
    try:
        st = os.stat(link)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == file


# ---------------------------------------------------------------- while it is held


@pytest.mark.parametrize("flags,pending", [("os.O_RDWR", fcntl.F_UNLCK),
                                           ("os.O_RDONLY", fcntl.F_RDLCK)])  # fmt: skip
def test_an_open_waits_until_the_lease_is_released(flags, pending):
    """open() breaks the lease (do_dentry_open -> break_lease) and sleeps until the
    lessee gives it up (or lease-break-time passes); F_GETLEASE shows the break
    pending: F_UNLCK for an open for writing, F_RDLCK for one for reading."""
    f = make("contended")
    fd, err = lease(f)
    assert err == 0
    p = opener(f, flags)
    try:
        assert wait_for_break(fd) == pending
        time.sleep(0.5)
        assert p.poll() is None, "open() returned while we held the lease"
    finally:
        os.close(fd)
    out, _ = p.communicate(timeout=10)
    waited, nlink = out.split()
    assert float(waited) >= 0.5 and nlink == "1"


def test_a_nonblocking_open_fails_at_once_with_ewouldblock():
    f = make("nonblocking")
    fd, err = lease(f)
    assert err == 0
    try:
        with pytest.raises(BlockingIOError):
            os.open(f, os.O_RDONLY | os.O_NONBLOCK)
        # It still starts the break (__break_lease marks it before it returns).
        assert fcntl.fcntl(fd, F_GETLEASE) == fcntl.F_RDLCK
    finally:
        os.close(fd)


def test_an_open_waiting_is_counted_so_reasserting_the_lease_fails():
    """The opener raised i_readcount / i_writecount before break_lease() put it to
    sleep: asking F_SETLEASE F_WRLCK again re-runs the conflict check and is refused,
    while the lease we hold stays as it was."""
    f = make("reassert")
    fd, err = lease(f)
    assert err == 0
    p = opener(f)
    try:
        wait_for_break(fd)
        with pytest.raises(BlockingIOError):  # EAGAIN
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
        assert p.poll() is None
    finally:
        os.close(fd)
    p.communicate(timeout=10)


def test_unlink_under_the_lease_is_not_blocked_and_a_waiting_opener_gets_the_removed_file():
    """unlink only breaks delegations (try_break_deleg; a lease does not conflict with
    a delegation breaker, leases_conflict). An open() that resolved the name before the
    unlink is waiting in break_lease: when we release, it gets the unlinked file."""
    f = make("unlinked_under_lease")
    fd, err = lease(f)
    assert err == 0
    p = opener(f)
    try:
        wait_for_break(fd)
        os.unlink(f)
        assert not f.exists() and p.poll() is None
        assert fcntl.fcntl(fd, F_GETLEASE) == fcntl.F_UNLCK  # still pending: a witness
    finally:
        os.close(fd)
    out, _ = p.communicate(timeout=10)
    assert out.split()[1] == "0"  # it opened the removed file


def test_rename_under_the_lease_is_not_blocked_and_can_be_undone():
    f = make("renamed_under_lease")
    aside = f.with_name(".aside")
    fd, err = lease(f)
    assert err == 0
    p = opener(f)
    try:
        wait_for_break(fd)
        os.rename(f, aside)
        os.rename(aside, f)  # put back: the waiting opener gets the file at its name
    finally:
        os.close(fd)
    out, _ = p.communicate(timeout=10)
    assert out.split()[1] == "1" and f.exists()


def test_sigio_kills_a_lease_holder_that_does_not_ignore_it():
    f = make("sigio")
    code = (
        "import fcntl, os, signal, sys, time\n"
        "signal.signal(signal.SIGIO, signal.SIG_DFL)\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        f"fcntl.fcntl(fd, {F_SETLEASE}, fcntl.F_WRLCK)\n"
        "print('leased', flush=True)\n"
        "time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(f)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "leased\n"
    with pytest.raises(BlockingIOError):
        os.open(f, os.O_RDONLY | os.O_NONBLOCK)
    assert p.wait(timeout=10) == -signal.SIGIO


# ---------------------------------------------------------------- who may take it


LEASE_AS = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "try:\n"
    f"    fcntl.fcntl(fd, {F_SETLEASE}, fcntl.F_WRLCK)\n"
    "    print('granted')\n"
    "except OSError as e:\n"
    "    print(e.errno)\n"
)


def lease_as(prefix: list[str], path: Path) -> str:
    p = subprocess.run([*prefix, "/usr/bin/python3", "-c", LEASE_AS, str(path)],
                       capture_output=True, text=True, timeout=30, cwd="/")  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_a_lease_needs_the_files_owner_or_cap_lease():
    """vfs_setlease: the caller's fsuid must own the file, or it needs CAP_LEASE."""
    needs_real_root()
    alice = ACCOUNTS["alice"]
    as_alice = ["setpriv", f"--reuid={alice}", f"--regid={alice}", "--clear-groups", "--"]
    no_cap_lease = ["setpriv", "--inh-caps=-lease", "--bounding-set=-lease", "--"]
    roots, alices = make("roots"), make("alices", uid=alice)
    os.chmod(roots, 0o644)  # alice can open it: only the lease is in question
    assert lease_as(as_alice, roots) == str(errno.EACCES)
    assert lease_as(as_alice, alices) == "granted"
    assert lease_as(no_cap_lease, alices) == str(errno.EACCES)
    assert lease_as(no_cap_lease, roots) == "granted"  # root's own file
    assert lease_as([], alices) == "granted"  # root with CAP_LEASE


def test_message_queue_files_take_leases_too(mqueue_dir):
    """A queue opened with mq_open() is an open file description of the queue's inode:
    it refuses the lease as an fd in /dev/shm does."""
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    name = b"/lease_q"
    mqd = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None)
    assert mqd >= 0, os.strerror(ctypes.get_errno())
    q = mqueue_dir / name.decode().lstrip("/")
    try:
        with refused_or_granted(q) as err:
            assert err == errno.EAGAIN
        rt.mq_close(mqd)
        with refused_or_granted(q) as err:
            assert err == 0
    finally:
        rt.mq_unlink(name)


# ---------------------------------------------------------------- a side finding


def test_writes_through_an_existing_mapping_leave_mtime_alone():
    """tmpfs has no page_mkwrite: the write fault that makes a shared page writable
    updates mtime (mm/memory.c, fault_dirty_shared_page), later writes through the
    same mapping do not (nothing ever writes the page back and faults it again). An
    unchanged mtime is no proof of unchanged data while a mapping exists."""
    f = make("mtime", size=8192)
    fd = os.open(f, os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)  # fmt: skip
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    addr = libc.mmap(None, 8192, 3, 1, fd, 0)  # PROT_READ|PROT_WRITE, MAP_SHARED
    os.close(fd)
    assert addr not in (None, 2**64 - 1)
    try:
        ctypes.memset(addr, 1, 16)  # the first write fault of page 0
        before = os.stat(f)
        time.sleep(0.05)  # tmpfs times have nanoseconds; a coarse clock ticks in 4 ms
        ctypes.memset(addr, 2, 16)  # page 0 again: no fault
        same = os.stat(f)
        ctypes.memset(addr + 4096, 3, 16)  # page 1: a write fault
        after = os.stat(f)
    finally:
        libc.munmap(addr, 8192)
    assert f.read_bytes()[:1] == b"\x02"  # the data did change
    assert (same.st_mtime_ns, same.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    assert after.st_mtime_ns > before.st_mtime_ns
