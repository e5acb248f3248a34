"""The job epilogs of deploy/epilog/ (issue 16, item 2), played for real: a job of alice's
(her processes, test accounts of conftest) leaks an object of every kind, the job ends
(its processes are killed), and the example epilog runs as slurmd or a PBS MOM runs it:
as root, with SLURM_JOB_USER and SLURM_JOB_UID, or with the epilogue's argv. Everything
of alice's that nobody holds is removed (copied to the quarantine, each removal logged);
bob's leaks and alice's segment that a live process of bob's used last stay. While
alice has another job (a live process), nothing is removed: shmjanitor says so with
exit 75, which the epilogs turn into 0 so that Slurm does not drain the node.

Everything happens in the test's own IPC namespace, /dev/shm and /dev/mqueue
(conftest); the epilogs' logger(1) is a stand-in on PATH that appends to a file, so no
line reaches the machine's syslog, and the quarantine is the test's (STATE_DIRECTORY).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
from conftest import ACCOUNTS, MQUEUE, needs_real_root, python_as

from shmjanitor import procs

REPO = Path(__file__).resolve().parent.parent
EPILOGS = REPO / "deploy" / "epilog"
SHMJANITOR = str(Path(sys.executable).parent / "shmjanitor")
ALICE, BOB = ACCOUNTS["alice"], ACCOUNTS["bob"]

# A job that leaks one object of each kind, then waits to be killed: a System V segment
# (written), semaphore set (operated on) and queue (a message in it); a POSIX shared
# memory object and a named semaphore (Python's multiprocessing, the spawn context's
# Lock: the fork context's unlinks its name at once) and an empty POSIX queue; plus a
# segment anyone may attach (`shared`), for another user's process to use last.
JOB = r"""
import ctypes, json, multiprocessing, os, sys
from multiprocessing import shared_memory
import sysv_ipc
seg = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
seg.write(b"job data")
seg.detach()
shared = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o666, size=4096)
shared.detach()
sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600, initial_value=1)
sem.acquire()
mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600)
mq.send(b"partial result", type=1)
shm = shared_memory.SharedMemory(create=True, size=8192)
shm.buf[:5] = b"hello"
lock = multiprocessing.get_context("spawn").Lock()
class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]
libc = ctypes.CDLL(None, use_errno=True)
name = sys.argv[1].encode()
q = libc.mq_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600,
                 ctypes.byref(MqAttr(0, 4, 64, 0)))
if q < 0:
    raise OSError(ctypes.get_errno(), "mq_open")
print(json.dumps({"shm": seg.id, "shared": shared.id, "sem": sem.id, "msg": mq.id,
                  "posix-shm": "/dev/shm/" + shm.name.lstrip("/"),
                  "posix-sem": "/dev/shm/sem." + lock._semlock.name.lstrip("/"),
                  "posix-mqueue": "/dev/mqueue/" + name.decode().lstrip("/")}), flush=True)
sys.stdin.read()
"""

# Another user's process that attaches a segment and detaches (it is the last user,
# lpid) and lives on: the segment is idle because of it, whoever owns it.
USE = r"""
import sys, sysv_ipc
s = sysv_ipc.attach(int(sys.argv[1]))
s.detach()
print("used", flush=True)
sys.stdin.read()
"""

KINDS = ("shm", "sem", "msg", "posix-shm", "posix-sem", "posix-mqueue")


class Leaks(NamedTuple):
    alice: dict[str, Any]  # kind -> id (System V) or path (POSIX); "shared": a segment id
    bob: dict[str, Any]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:  # type: ignore[type-arg]
    """Processes a test starts, each a session of its own: killed, group and all."""
    ps: list[subprocess.Popen] = []  # type: ignore[type-arg]
    yield ps
    for p in ps:
        end(p)


def end(p: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """The job ends: SIGKILL for its whole process group (multiprocessing's
    resource_tracker too, which would unlink the POSIX names when its pipe closes)."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def run_as(started: list, uid: int, code: str, *args: str) -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    p = subprocess.Popen([*python_as(uid), "-c", code, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd="/", start_new_session=True)  # fmt: skip
    started.append(p)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, f"process as uid {uid} failed: exit {p.wait()}"
    return p, line


def gone(uid: int) -> None:
    """Wait until `uid` has no process left (the killed job's zombies reaped)."""
    for _ in range(100):
        if procs.users([uid])[uid].alive is False:
            return
        time.sleep(0.05)
    raise AssertionError(f"uid {uid} still has processes")


@pytest.fixture
def leaks(started: list) -> Leaks:  # type: ignore[type-arg]
    """alice's job and bob's each leaked one object of every kind and ended; a process
    of bob's that lives on used alice's `shared` segment last."""
    needs_real_root()
    assert MQUEUE.is_dir(), "conftest mounts an mqueue on /dev/mqueue"
    jobs = {}
    for who, uid in (("alice", ALICE), ("bob", BOB)):
        p, line = run_as(started, uid, JOB, f"/job-{who}")
        jobs[who] = (p, json.loads(line))
    for p, _ in jobs.values():
        end(p)
    gone(ALICE)
    run_as(started, BOB, USE, str(jobs["alice"][1]["shared"]))
    return Leaks(jobs["alice"][1], jobs["bob"][1])


class Env(NamedTuple):
    log: Path  # what the epilog sent to syslog
    state: Path  # the quarantine's state directory
    env: dict[str, str]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """The environment an epilog runs in here: shmjanitor of this checkout, the test's
    state directory, and a logger(1) on PATH that appends its input to a file."""
    bin_dir, log, state = tmp_path / "bin", tmp_path / "syslog", tmp_path / "state"
    bin_dir.mkdir()
    logger = bin_dir / "logger"
    # As logger(1): options, then the message as arguments or, without any, stdin.
    logger.write_text(
        "#!/bin/sh\n"
        "tag=; while [ $# -gt 0 ]; do case $1 in -t) tag=$2; shift 2;; --) shift; break;;"
        " *) break;; esac; done\n"
        f'if [ $# -gt 0 ]; then echo "$tag: $*" >> {log}; '
        f'else sed "s/^/$tag: /" >> {log}; fi\n'
    )
    logger.chmod(0o755)
    e = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SHMJANITOR=SHMJANITOR,
             STATE_DIRECTORY=str(state))  # fmt: skip
    return Env(log, state, e)


def slurm(e: Env, user: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """slurmd's Epilog=: as root, the job's user and uid in the environment."""
    env = dict(e.env, SLURM_JOB_ID="4242", SLURM_JOB_USER=user,
               SLURM_JOB_UID=str(ACCOUNTS[user]))  # fmt: skip
    return subprocess.run([str(EPILOGS / "slurm-epilog.sh")], env=env, capture_output=True,
                          text=True, cwd="/", timeout=120)  # fmt: skip


def pbs(e: Env, user: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """The MOM's epilogue: as root; job id, user, group, job name, session id, limits,
    resources used, queue, account, exit code."""
    argv = ["4242.pbs-server", user, user, "train", "31337", "walltime=01:00:00",
            "cput=00:00:10", "batch", "lab", "0"]  # fmt: skip
    return subprocess.run([str(EPILOGS / "pbs-epilogue.sh"), *argv], env=e.env,
                          capture_output=True, text=True, cwd="/", timeout=120)  # fmt: skip


EPILOG = [pytest.param(slurm, id="slurm"), pytest.param(pbs, id="pbs")]


def present(e: Env) -> set[tuple[str, Any]]:
    """Every object there is, as (kind, id) for System V and (kind, path) for POSIX."""
    r = subprocess.run([SHMJANITOR, "list", "--json"], env=e.env, capture_output=True,
                       text=True, check=True)  # fmt: skip
    doc = json.loads(r.stdout)
    sysv = {"segments": "shm", "semaphores": "sem", "queues": "msg"}  # segments name no kind
    out = {(kind, o["id"]) for a, kind in sysv.items() for o in doc[a]}
    return out | {(o["kind"], o["path"]) for o in doc["posix"]}


def objects(leak: dict[str, Any]) -> set[tuple[str, Any]]:
    return {(k, leak[k]) for k in KINDS}


@pytest.mark.parametrize("epilog", EPILOG)
def test_the_epilog_removes_every_kind_of_the_users_leaks_and_nothing_else(
    leaks: Leaks, env: Env, epilog: Callable[[Env, str], Any]
) -> None:
    shared = ("shm", leaks.alice["shared"])
    before = present(env)
    assert objects(leaks.alice) | objects(leaks.bob) | {shared} <= before, before

    done = epilog(env, "alice")

    assert done.returncode == 0, (done.stdout, done.stderr, env.log.read_text())
    after = present(env)
    assert not objects(leaks.alice) & after, "alice's leaks nobody holds are removed"
    assert objects(leaks.bob) <= after, "bob's leaks stay: only the job's user's are reaped"
    assert shared in after, "idle: a live process of bob's used it last"
    log = env.log.read_text()
    removed = [ln for ln in log.splitlines() if "action=removed" in ln]
    assert sorted(ln.split(" kind=")[1].split()[0] for ln in removed) == sorted(KINDS), log
    assert all("owner=alice" in ln for ln in removed), log
    assert all(ln.startswith("shmjanitor-epilog[4242") for ln in log.splitlines()), log
    q = subprocess.run([SHMJANITOR, "quarantine", "list", "--json"], env=env.env,
                       capture_output=True, text=True, check=True)  # fmt: skip
    entries = json.loads(q.stdout)["entries"]
    assert sorted(e["kind"] for e in entries) == sorted(KINDS), entries


@pytest.mark.parametrize("epilog", EPILOG)
def test_while_the_user_has_another_job_nothing_is_removed_and_the_node_is_not_drained(
    leaks: Leaks,
    env: Env,
    epilog: Callable[[Env, str], Any],
    started: list,  # type: ignore[type-arg]
) -> None:
    other, _ = run_as(started, ALICE, "print('running', flush=True); import sys; sys.stdin.read()")
    before = present(env)

    done = epilog(env, "alice")

    assert done.returncode == 0, "75 (another job) must not drain a Slurm node"
    assert present(env) == before, "nothing removed, of any kind"
    log = env.log.read_text()
    assert f"alice (uid {ALICE}) still has a process (pid {other.pid} " in log, log
    assert "nothing removed" in log and "action=removed" not in log, log
    # shmjanitor's own status, as documented: 75.
    direct = subprocess.run([SHMJANITOR, "reap", "--owner", "alice", "--if-owner-gone"],
                            env=env.env, capture_output=True, text=True)  # fmt: skip
    assert direct.returncode == 75, (direct.stdout, direct.stderr)
    assert "still has a process" in direct.stderr and present(env) == before

    # The other job ends: its own epilog removes what both jobs left.
    end(other)
    gone(ALICE)
    done = epilog(env, "alice")
    assert done.returncode == 0, (done.stdout, done.stderr, env.log.read_text())
    assert not objects(leaks.alice) & present(env)


def test_the_epilog_and_its_ancestors_are_not_the_users_other_job(leaks: Leaks, env: Env) -> None:
    """An epilog whose ancestry is the user's (a setuid wrapper, `su` from a job script,
    a TaskEpilog's helper): a process whose real uid is alice's runs shmjanitor as root
    and waits for it. It is no other job of hers, and nor is shmjanitor itself (whose
    real uid is hers too): her leaks go, the POSIX ones as well (idle while any process
    of hers lives, as the owner may open them again by name)."""
    code = ("import os, subprocess, sys; os.setresuid(int(sys.argv[1]), 0, 0);"
            " sys.exit(subprocess.run(sys.argv[2:]).returncode)")  # fmt: skip
    argv = [sys.executable, "-c", code, str(ALICE), SHMJANITOR, "reap", "--owner", "alice",
            "--if-owner-gone"]  # fmt: skip
    done = subprocess.run(argv, env=env.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    after = present(env)
    assert not objects(leaks.alice) & after, done.stdout
    assert objects(leaks.bob) <= after


def test_if_owner_gone_needs_an_owner(env: Env) -> None:
    r = subprocess.run([SHMJANITOR, "reap", "--if-owner-gone"], env=env.env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "--if-owner-gone needs --owner USER" in r.stderr, r.stderr
    r = subprocess.run([SHMJANITOR, "reap", "--owner", "nosuchuser", "--if-owner-gone"],
                       env=env.env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "no such user" in r.stderr, r.stderr
