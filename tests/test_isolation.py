"""The suite's own isolation (tests/conftest.py): what a test writes never reaches the
machine, and what a test needs (accounts, Python as another uid) the suite makes itself.

The machine's side is read through directories conftest opened before it left the
machine's mount namespace (MACHINE_VIEW); nothing here writes to the machine.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import ACCOUNTS, MACHINE_VIEW, REAL_ROOT, SUITE_RUN, needs_real_root, python_as


def machine_has(directory: str, name: str) -> bool:
    return name in os.listdir(MACHINE_VIEW[directory])


@pytest.mark.parametrize("turn", ["first", "second"])
def test_dev_shm_is_an_empty_tmpfs_of_each_test(turn):
    # The same name in both turns: the first one's file must not survive into the second.
    assert os.listdir("/dev/shm") == []
    assert os.stat("/dev/shm").st_dev != os.fstat(MACHINE_VIEW["/dev/shm"]).st_dev
    Path("/dev/shm/isolation-probe").write_text(turn)
    assert not machine_has("/dev/shm", "isolation-probe")


def test_posix_shm_of_a_child_process_stays_in_the_suite():
    name = f"isolation-{uuid.uuid4().hex}"
    # What shm_open(3) does, as a child would leak it (PostgreSQL's DSM files, say).
    subprocess.run(["sh", "-c", f"echo leak > /dev/shm/{name}"], check=True)
    assert os.path.exists(f"/dev/shm/{name}")
    assert not machine_has("/dev/shm", name)


def test_run_is_the_suites_own():
    if not REAL_ROOT:
        pytest.skip("without real root the machine's /run is not writable: nothing to hide")
    name = f"shmjanitor-isolation-{uuid.uuid4().hex}"
    Path("/run", name).write_text("probe")
    assert not machine_has("/run", name)
    # The reaper's lock (/run/shmjanitor.lock for root): in the suite's /run only.
    r = subprocess.run(
        [*python_as(None), "-m", "shmjanitor", "reap", "--min-age", "0", "--no-quarantine"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    made = [p for p in Path("/run").iterdir() if p.name.startswith("shmjanitor")]
    assert made, "the reaper made no lock under /run"
    for p in made:
        ours = p.lstat()
        try:
            machine = os.lstat(p.name, dir_fd=MACHINE_VIEW["/run"])
        except FileNotFoundError:
            continue
        assert (ours.st_dev, ours.st_ino) != (machine.st_dev, machine.st_ino), p


def test_the_suites_accounts_exist_for_the_suite_only():
    needs_real_root()
    for name, uid in ACCOUNTS.items():
        assert pwd.getpwnam(name).pw_uid == uid and pwd.getpwuid(uid).pw_name == name
    # Other programs see them too (setpriv and id read /etc/passwd themselves) ...
    r = subprocess.run(
        ["setpriv", "--reuid=bob", "--regid=bob", "--clear-groups", "id", "-un"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert r.stdout == "bob\n"
    # ... and the machine does not.
    fd = os.open("passwd", os.O_RDONLY, dir_fd=MACHINE_VIEW["/etc"])
    with open(fd) as f:
        assert "shmjanitor tests" not in f.read()


def test_python_as_runs_this_checkout_as_another_uid():
    r = subprocess.run(
        [*python_as(ACCOUNTS["alice"]), "-c",
         "import os, shmjanitor; print(os.getuid(), os.getgid(), os.getgroups(),"
         " shmjanitor.__file__)"],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    uid, gid, groups, where = r.stdout.split(" ", 3)
    assert (uid, gid, groups) == ("1000", "1000", "[]")
    copy = Path(where.strip())
    assert copy.is_relative_to(SUITE_RUN)  # not the checkout, which may be unreadable
    import shmjanitor

    here = Path(shmjanitor.__file__).parent
    for module in here.glob("*.py"):
        assert (copy.parent / module.name).read_bytes() == module.read_bytes(), module


_libc = ctypes.CDLL(None, use_errno=True)


def test_mqueue_dir_shows_this_tests_queues(mqueue_dir):
    assert os.listdir(mqueue_dir) == []
    fd = _libc.mq_open(b"/isolation-probe", os.O_CREAT | os.O_RDWR, 0o600, None)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
    assert os.listdir(mqueue_dir) == ["isolation-probe"]
