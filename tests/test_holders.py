"""Who holds which file in /dev/shm (issue 13, item 2): real processes holding real
files in the test's own tmpfs, found by one pass over /proc and matched by device and
inode. Each holder is a Python child that prints "ready" once it holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import psutil
import pytest
from conftest import ACCOUNTS, needs_real_root, python_as

from shmjanitor import holders, procs
from shmjanitor.holders import MAPPED, Holder, Holdings, Unreadable

SHM = Path("/dev/shm")

# A holder. argv: path, then words: fd (keep the fd open), map (a MAP_SHARED mapping),
# unlink (unlink the file once held), thread (a second thread opens and maps),
# leader-exits (the main thread calls pthread_exit; the other thread goes on).
# mmap through ctypes: the mmap module keeps a dup() of the fd open (CPython's
# mmap.mmap), which would turn every "mapping only" into "mapping and fd".
HOLD = r"""
import ctypes, os, sys, threading, time
path, how = sys.argv[1], set(sys.argv[2:])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
PROT = {"ro": 1}.get(os.environ.get("HOLD_PROT"), 3)
FLAGS = {"private": 2}.get(os.environ.get("HOLD_MAP"), 1)
def hold():
    fd = os.open(path, os.O_RDONLY if PROT == 1 else os.O_RDWR)
    if "map" in how and libc.mmap(None, 4096, PROT, FLAGS, fd, 0) in (None, 2**64 - 1):
        raise OSError(ctypes.get_errno(), "mmap")
    if "fd" not in how:
        os.close(fd)
    if "unlink" in how:
        os.unlink(path)
    print("ready", threading.get_native_id(), flush=True)
    while True:
        time.sleep(60)
if "thread" in how or "leader-exits" in how:
    threading.Thread(target=hold, daemon=True).start()
    if "leader-exits" in how:
        time.sleep(0.2)
        libc.pthread_exit(None)  # ctypes drops the GIL first: the thread goes on
    time.sleep(3600)
else:
    hold()
"""


class Child:
    def __init__(self, p: subprocess.Popen, tid: int) -> None:
        self.p, self.pid, self.tid = p, p.pid, tid


@pytest.fixture
def spawn() -> Iterator:
    """spawn(path, *words, uid=None, env=None) -> Child, killed at the end."""
    started: list[subprocess.Popen] = []

    def start(path: Path, *how: str, uid: Optional[int] = None, **env: str) -> Child:
        argv = [*python_as(uid), "-c", HOLD, str(path), *how]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/",
                             env={**os.environ, **env})  # fmt: skip
        started.append(p)
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert line[:1] == ["ready"], f"holder failed: {p.wait()}"
        return Child(p, int(line[1]))

    yield start
    for p in started:
        p.kill()
        p.wait()


def make(name: str, size: int = 4096, uid: Optional[int] = None) -> Path:
    path = SHM / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
    os.ftruncate(fd, size)
    if uid is not None:
        os.fchown(fd, uid, uid)
    os.close(fd)
    return path


def key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def scan() -> Holdings:
    return holders.scan([os.stat(SHM).st_dev])


def fds_on(pid: int, file: tuple[int, int]) -> list[str]:
    """The child's fds that are `file` (to prove what a test's holder holds)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) == file:
            out.append(fd)
    return out


# ---------------------------------------------------------------- pure parsing

# /proc/PID/maps, one field per column: start-end perms offset dev inode path.
MAPS = b"""\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1311                       /usr/bin/python3.11
7f1c2a000000-7f1c2a001000 rw-s 00000000 00:1a 7                          /dev/shm/psm_1a2b (deleted)
7f1c2a001000-7f1c2a002000 rw-s 00000000 00:1a 7                          /dev/shm/psm_1a2b (deleted)
7f1c2a002000-7f1c2a003000 r--s 00001000 00:1a 42                         /dev/shm/torch_99_x
7f1c2a003000-7f1c2a004000 r--s 00000000 00:1b 42                         /other/tmpfs/file
7f1c2a004000-7f1c2a005000 rw-s 00000000 00:05 3                          /SYSV00000000 (deleted)
7f1c2a005000-7f1c2a006000 r--p 00000000 08:01 99                         /data/a 00:1a 5 b
7f1c2a006000-7f1c2a007000 rw-p 00000000 00:00 0                          [heap]
7f1c2a007000-7f1c2a008000 r--s 00000000 103:1a0 8                        /dev/mqueue/q"""


def test_maps_are_matched_by_device_and_inode_not_by_name():
    shm, other, mq = os.makedev(0, 0x1A), os.makedev(0, 0x1B), os.makedev(0x103, 0x1A0)
    # Two mappings of one file: one entry. Inode 42 on 00:1b is another file than 42 on
    # 00:1a. The path "/data/a 00:1a 5 b" holds our device field but is not on it.
    assert holders.mapped_files(MAPS, [shm]) == {(shm, 7), (shm, 42)}
    assert holders.mapped_files(MAPS, [shm, other]) == {(shm, 7), (shm, 42), (other, 42)}
    assert holders.mapped_files(MAPS, [mq]) == {(mq, 8)}  # %02x is a minimum width
    assert holders.mapped_files(MAPS, []) == set()
    assert holders.mapped_files(b"", [shm]) == set()


def test_dev_field_is_what_maps_prints():
    assert holders.dev_field(os.makedev(0, 0x1A)) == b"00:1a"
    assert holders.dev_field(os.makedev(0x103, 0x1A0)) == b"103:1a0"
    # The real thing: our own interpreter's mapping of its executable file.
    exe = os.stat(f"/proc/{os.getpid()}/exe")
    maps = Path(f"/proc/{os.getpid()}/maps").read_bytes()
    assert (exe.st_dev, exe.st_ino) in holders.mapped_files(maps, [exe.st_dev])


def test_status_facts():
    status = (
        b"Name:\tpt_main_thread\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1001\t1001\n"
    )
    assert holders.status_facts(status) == ("pt_main_thread", 1001)  # effective, as ps
    assert holders.status_facts(b"") == (None, None)


# ---------------------------------------------------------------- real holders


def test_fd_only(spawn):
    f = make("psm_fd")
    c = spawn(f, "fd")
    (fd,) = fds_on(c.pid, key(f))
    assert scan().of(*key(f)) == [Holder(c.pid, f"fd {fd}", _comm(c.pid), 0)]


def test_mapping_only_with_the_fd_closed(spawn):
    f = make("psm_map")
    c = spawn(f, "map")
    assert fds_on(c.pid, key(f)) == []  # it holds no fd: only the mapping
    assert scan().of(*key(f)) == [Holder(c.pid, MAPPED, _comm(c.pid), 0)]


@pytest.mark.parametrize("prot,flags", [("ro", "shared"), ("ro", "private")])
def test_read_only_and_private_mappings_count(spawn, prot, flags):
    f = make("ro_map")
    c = spawn(f, "map", HOLD_PROT=prot, HOLD_MAP=flags)
    assert [h.pid for h in scan().of(*key(f))] == [c.pid]


def test_fd_and_mapping_are_two_entries(spawn):
    f = make("both")
    c = spawn(f, "fd", "map")
    (fd,) = fds_on(c.pid, key(f))
    assert sorted(h.how for h in scan().of(*key(f))) == sorted([f"fd {fd}", MAPPED])


def test_unlinked_file_still_mapped_is_found_by_inode_and_its_reused_name_is_not(spawn):
    f = make("sem.mp-reused")
    old = key(f)
    c = spawn(f, "map", "unlink")
    assert not f.exists()
    fresh = make("sem.mp-reused")  # the same name, another file: nobody holds it
    held = scan()
    assert [h.pid for h in held.of(*old)] == [c.pid]
    assert held.of(*key(fresh)) == []
    assert (os.stat(SHM).st_dev, old[1]) in held.held and key(fresh) not in held.held


def test_a_thread_holds_for_its_process_read_once(spawn):
    f = make("threaded")
    c = spawn(f, "fd", "map", "thread")
    assert c.tid != c.pid  # the holder is a second thread, not the main one
    found = scan().of(*key(f))
    # Reported once per way, under the process (tgid); the thread's tid is not listed
    # by /proc and its fd table and mappings are the process's.
    assert {h.pid for h in found} == {c.pid} and len(found) == 2


def test_main_thread_exited_while_a_thread_holds(spawn):
    """pthread_exit() in main: the leader is a zombie whose /proc/PID/fd and maps are
    empty (exit_files, exit_mm ran for it alone) while its other thread holds the file.
    Reading the leader only would call the file unheld: it must be read through the
    live thread. Revert _through_a_thread (return []) and this fails."""
    f = make("leader_gone")
    c = spawn(f, "fd", "map", "leader-exits")
    deadline = time.monotonic() + 10
    while "State:\tZ" not in Path(f"/proc/{c.pid}/status").read_text():
        assert time.monotonic() < deadline, "the main thread did not exit"
        time.sleep(0.01)
    assert os.listdir(f"/proc/{c.pid}/fd") == [] and not Path(f"/proc/{c.pid}/maps").read_bytes()
    found = scan().of(*key(f))
    assert {h.pid for h in found} == {c.pid} and {h.how.split()[0] for h in found} == {"fd", MAPPED}


def test_a_zombie_holds_nothing():
    f = make("zombie")
    pid = os.fork()
    if pid == 0:  # open, then exit: a zombie until we wait
        os.open(f, os.O_RDWR)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held = scan()
        assert held.of(*key(f)) == [] and pid not in [u.pid for u in held.unreadable]
    finally:
        os.waitpid(pid, 0)


def test_files_on_other_file_systems_are_not_reported(spawn, tmp_path):
    ours, elsewhere = make("ours"), tmp_path / "elsewhere"
    elsewhere.write_bytes(b"x" * 4096)
    assert os.stat(elsewhere).st_dev != os.stat(SHM).st_dev
    spawn(elsewhere, "fd", "map")
    spawn(ours, "fd")
    assert {dev for dev, _ in scan().held} == {os.stat(SHM).st_dev}


def test_holder_of_another_uid(spawn):
    needs_real_root()
    uid = ACCOUNTS["bob"]
    f = make("bobs", uid=uid)
    c = spawn(f, "map", uid=uid)
    (h,) = scan().of(*key(f))
    assert (h.pid, h.how, h.uid) == (c.pid, MAPPED, uid)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


# ---------------------------------------------------------------- what cannot be read

NO_PTRACE = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
SCAN = r"""
import json, os, sys
from shmjanitor import holders
h = holders.scan([os.stat("/dev/shm").st_dev])
print(json.dumps({"held": [[d, i, [list(x) for x in hs]] for (d, i), hs in h.held.items()],
                  "unreadable": [list(u) for u in h.unreadable], "unseen": h.unseen}))
"""


def scan_as(prefix: list[str]) -> dict:
    p = subprocess.run([*prefix, sys.executable, "-c", SCAN], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_process_closed_to_us_blocks_the_proof(spawn):
    """Root without CAP_SYS_PTRACE may not read the fds and maps of a process with
    more capabilities or another uid (ptrace_may_access, PTRACE_MODE_READ_FSCREDS):
    its file is not in `held`, and the process is named as unreadable."""
    needs_real_root()
    f = make("hidden_holder", uid=ACCOUNTS["carol"])
    c = spawn(f, "map", uid=ACCOUNTS["carol"])
    got = scan_as(NO_PTRACE)
    assert [c.pid, _comm(c.pid), holders.DENIED] in got["unreadable"]
    assert all(i != key(f)[1] for _, i, _ in got["held"])
    # The control: with CAP_SYS_PTRACE the same pass reads it.
    assert [h.pid for h in scan().of(*key(f))] == [c.pid]


HIDEPID = r"""
import json, os, subprocess, sys
holder = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
holder.stdout.readline()
subprocess.run(["mount", "-o", "remount,hidepid=2,gid=4242", "/proc"], check=True)
scan = subprocess.run(%r + [sys.executable, "-c", %r], capture_output=True, text=True)
print(json.dumps({"pid": holder.pid, "rc": scan.returncode, "out": scan.stdout, "err": scan.stderr}))
holder.kill()
"""


def test_hidepid_hides_holders_and_says_so():
    """hidepid=2 (invisible) takes other users' processes out of /proc's listing for
    whoever fails ptrace_may_access: no pid to name, so `unseen` says why."""
    needs_real_root()
    f = make("under_hidepid", uid=ACCOUNTS["alice"])
    holder = [*python_as(ACCOUNTS["alice"]), "-c", HOLD, str(f), "map"]
    p = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc", sys.executable, "-c",
         HIDEPID % (NO_PTRACE, SCAN), *holder],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["rc"] == 0, got["err"]
    seen = json.loads(got["out"])
    assert procs.HIDDEN in seen["unseen"]
    assert all(i != key(f)[1] for _, i, _ in seen["held"])
    assert got["pid"] not in [u[0] for u in seen["unreadable"]]  # not even listed


def test_processes_outside_our_pid_namespace_are_unseen():
    """A PID namespace's own /proc lists none of the processes outside it, and they may
    hold the same files (a tmpfs is in no PID namespace)."""
    p = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc",
                        sys.executable, "-c", SCAN], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert holders.OUTSIDE in json.loads(p.stdout)["unseen"]


def test_proc_of_a_namespace_we_are_not_in_is_foreign():
    inner = subprocess.Popen(["unshare", "--pid", "--fork", "--mount", "--mount-proc",
                              "sleep", "60"])  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:  # the sleep, as pid 1 of the new namespace, behind its own /proc:
            # unshare's child mounts that /proc and then execs sleep, so once it is
            # named sleep, the /proc under its root is the new namespace's.
            kids = psutil.Process(inner.pid).children()
            if kids and Path(f"/proc/{kids[0].pid}/comm").read_text() == "sleep\n":
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc = f"/proc/{kids[0].pid}/root/proc"
        assert Path(proc, "1/comm").read_text() == "sleep\n"
        got = holders.scan([os.stat(SHM).st_dev], proc=proc)
        assert got.unseen == [procs.FOREIGN] and not got.complete
    finally:
        inner.kill()
        inner.wait()


def test_complete_only_when_nothing_is_unreadable_or_unseen():
    assert Holdings().complete
    assert not Holdings(unreadable=[Unreadable(1, None, holders.DENIED)]).complete
    assert not Holdings(unseen=[holders.OUTSIDE]).complete
    assert holders.scan([]) == Holdings()  # nothing asked: no pass at all


# ---------------------------------------------------------------- lsof as the oracle


def test_same_held_files_as_lsof(spawn):
    if shutil.which("lsof") is None:
        pytest.skip("lsof is not installed")
    files = [make(f"obj{i}") for i in range(12)]
    spawn(files[0], "fd")
    spawn(files[1], "map")
    spawn(files[2], "fd", "map")
    spawn(files[3], "map", "thread")
    spawn(files[4], "map", HOLD_PROT="ro", HOLD_MAP="private")
    p = subprocess.run(["lsof", "-n", "-F", "pfi", "+D", str(SHM)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    lsof = {int(ln[1:]) for ln in p.stdout.splitlines() if ln.startswith("i")}
    ours = {ino for _, ino in scan().held}
    assert ours == lsof == {key(f)[1] for f in files[:5]}
