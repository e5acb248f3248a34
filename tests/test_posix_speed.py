"""The shortcuts issue 13's speed clause took (item 7) say what the slow ways said: each
test puts a real object or process through the fast path and the plain one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACCOUNTS, needs_real_root

from shmjanitor import holders

SHM = Path("/dev/shm")
ALICE = ACCOUNTS["alice"]

# A holder with an odd command name (a backslash, a newline, a trailing space: what
# /proc/PID/status escapes or its parser strips) that then gives up root for an
# effective uid of alice's, keeping root as its real and saved uid: the kernel makes
# it non-dumpable (commit_creds: euid changed), which makes its /proc/PID files root's.
ODD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDWR)
libc.prctl(15, b"a\\b\nc ", 0, 0, 0)  # PR_SET_NAME
os.setresuid(0, int(sys.argv[2]), 0)
print("ready", libc.prctl(3, 0, 0, 0, 0), fd, flush=True)  # PR_GET_DUMPABLE
sys.stdin.read()
"""


@pytest.fixture
def odd_holder() -> Iterator[tuple[int, int, Path]]:
    needs_real_root()
    path = SHM / "held"
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o666))
    p = subprocess.Popen([sys.executable, "-c", ODD, str(path), str(ALICE)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    ready, dumpable, fd = p.stdout.readline().split()
    assert (ready, dumpable) == ("ready", "0")
    yield p.pid, int(fd), path
    p.kill()
    p.wait()


def test_a_holders_name_and_uid_are_what_its_status_says(odd_holder):
    """holders reads comm and the owner of /proc/PID, not the 1.4 KiB of status: the
    same name (escaped as status escapes it, stripped as status_facts strips it) and
    the effective uid, though the process is not dumpable (its /proc/PID/comm is then
    root's: only the directory carries the euid)."""
    pid, fd, path = odd_holder
    status = Path(f"/proc/{pid}/status").read_bytes()
    assert holders.status_facts(status) == ("a\\\\b\\nc", ALICE)
    assert os.stat(f"/proc/{pid}/comm").st_uid == 0
    st = os.stat(path)
    (h,) = holders.scan([st.st_dev]).of(st.st_dev, st.st_ino)
    assert (h.pid, h.how, h.comm, h.uid) == (pid, f"fd {fd}", *holders.status_facts(status))
