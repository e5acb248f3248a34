"""procs.users: which uids still have a process, with real processes of other uids.

A user is the evidence for an object whose table names no pid (a semaphore set nobody
ever operated on): gone when no process runs as it, and "cannot know" whenever /proc
may not show them all (never taken for gone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import needs_real_root

from shmjanitor import procs

SLEEPER = ["/usr/bin/python3", "-c", "import time; time.sleep(600)"]
HIDEPID_GID = 4242  # a group nobody here is in


def as_uid(uid: int, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def test_a_uid_with_a_live_process_is_alive_and_one_without_is_gone():
    needs_real_root()
    live = subprocess.Popen(as_uid(1001, SLEEPER))
    try:
        time.sleep(0.3)  # setpriv has exec'd the sleeper
        got = procs.users([1001, 1002])
        assert got[1001] == procs.User(1001, True, live.pid)
        assert got[1002] == procs.User(1002, False)
    finally:
        live.kill()
        live.wait()
    assert procs.users([1001])[1001].alive is False  # its last process is gone


def test_a_uid_whose_only_process_is_a_zombie_is_gone():
    needs_real_root()
    gone = subprocess.Popen(as_uid(1003, ["/usr/bin/true"]))
    try:
        for _ in range(100):  # exited, not yet waited for: a zombie
            with open(f"/proc/{gone.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the child did not become a zombie")
        assert procs.users([1003])[1003] == procs.User(1003, False)
    finally:
        gone.wait()


def test_effective_and_saved_uids_count_too():
    # A setuid program (or one that dropped to a uid with setresuid) can act as its
    # saved uid again: it counts as a process of that user.
    needs_real_root()
    argv = ["setpriv", "--ruid=1004", "--euid=1005", "--clear-groups", *SLEEPER]
    p = subprocess.Popen(argv)
    try:
        time.sleep(0.3)
        got = procs.users([1004, 1005])
        assert got[1004].alive is True and got[1005].alive is True, got
    finally:
        p.kill()
        p.wait()


def test_a_survey_whose_parties_are_all_pids_does_not_walk_the_users(monkeypatch):
    # Every segment names pids (cpid, lpid): the /proc walk of users is not paid for.
    from segments import Spec, make

    from shmjanitor import survey

    shmid = make(Spec()).ids[0]
    monkeypatch.setattr(procs, "users", lambda uids: (_ for _ in ()).throw(AssertionError))
    (v,) = survey.take().verdicts
    assert v.obj.id == shmid and v.state.value == "orphan"


# As pid 1 of a new PID and mount namespace with its own /proc: a process of uid 1001,
# then /proc remounted hidepid=2 with a gid root is not in, and users() asked without
# CAP_SYS_PTRACE: 1001's process is hidden, so neither 1001 nor any other uid is gone.
HIDEPID = r"""
import json, subprocess, sys
gid = sys.argv[1]
live = subprocess.Popen(["setpriv", "--reuid=1001", "--regid=1001", "--clear-groups",
                         "/usr/bin/python3", "-c", "import time; time.sleep(600)"])
subprocess.run(["mount", "-o", f"remount,hidepid=2,gid={gid}", "/proc"], check=True)
nocap = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
ask = ("import json\nfrom shmjanitor import procs\n"
       "print(json.dumps({u: v._asdict() for u, v in procs.users([1001, 1002]).items()}))")
p = subprocess.run(nocap + [sys.executable, "-c", ask], capture_output=True, text=True)
seen = subprocess.run(nocap + ["test", "-e", f"/proc/{live.pid}"]).returncode == 0
live.kill()
print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr, "seen": seen}))
"""


def test_hidepid_makes_every_user_unknown_never_gone():
    needs_real_root()
    assert HIDEPID_GID not in os.getgroups()
    p = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc",
         sys.executable, "-c", HIDEPID, str(HIDEPID_GID)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["rc"] == 0, got["err"]
    assert not got["seen"], "hidepid did not hide the process: the test proves nothing"
    users = json.loads(got["out"])
    for uid in ("1001", "1002"):
        assert users[uid]["alive"] is None and users[uid]["note"] == procs.HIDDEN, users
