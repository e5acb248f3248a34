"""Liveness has three answers (alive, dead, cannot know), and a segment is an orphan only
if nobody could be using it. Each case of issue 10 (items 1-5) with real processes and
real segments, the janitor run as its own process inside private namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sysv_ipc
from conftest import needs_real_root
from segments import Spec, _fork, make, rows

from shmjanitor import liveness, procs
from shmjanitor.classify import State
from shmjanitor.survey import take

JANITOR = [sys.executable, "-m", "shmjanitor"]
REAP = ["reap", "--json", "--min-age", "0", "--include-system", "--no-quarantine"]
NO_PTRACE = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
HIDEPID_GID = 4242  # a group nobody here is in


def run(argv: list[str], state: Path, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """A command with the janitor's state directory (its clock record) in `state`."""
    env = {**os.environ, "STATE_DIRECTORY": str(state)}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, **kw)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def segments_of(p: subprocess.CompletedProcess) -> dict[int, dict]:
    assert p.returncode == 0, p.stderr
    return {s["id"]: s for s in json.loads(p.stdout)["segments"]}


def results_of(p: subprocess.CompletedProcess) -> dict[int, dict]:
    assert p.returncode == 0, p.stderr
    return {r["id"]: r for r in json.loads(p.stdout)["results"]}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


# -- 1. hidepid ------------------------------------------------------------------------

# Run as pid 1 of a new PID and mount namespace with its own /proc. Two segments of uid
# 1001 (a creator that stays, one that exited), then /proc remounted hidepid=2 with a
# gid root is not in, and the janitor run as root without CAP_SYS_PTRACE: as the
# shipped unit ran it before this fix.
HIDEPID = r"""
import json, os, subprocess, sys
gid, state = sys.argv[1], sys.argv[2]
MAKER = ("import ctypes, sys, time\n"
         "print(ctypes.CDLL(None).shmget(0, 4096, 0o1600), flush=True)\n"
         "sys.argv[1] == 'stay' and time.sleep(600)\n")
user = ["setpriv", "--reuid=1001", "--regid=1001", "--clear-groups", "/usr/bin/python3", "-c",
        MAKER]
live = subprocess.Popen(user + ["stay"], stdout=subprocess.PIPE, text=True)
live_id = int(live.stdout.readline())
gone_id = int(subprocess.run(user + ["exit"], capture_output=True, text=True, check=True).stdout)
subprocess.run(["mount", "-o", f"remount,hidepid=2,gid={gid}", "/proc"], check=True)
nocap = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
env = {**os.environ, "STATE_DIRECTORY": state}
def janitor(*args):
    p = subprocess.run(nocap + [sys.executable, *args], capture_output=True, text=True, env=env)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
out = {
    "live_id": live_id, "gone_id": gone_id, "live_pid": live.pid,
    "visible": subprocess.run(nocap + ["test", "-e", f"/proc/{live.pid}"]).returncode == 0,
    "list": janitor("-m", "shmjanitor", "list", "--json"),
    "recheck": janitor("-c", sys.argv[3], str(live_id)),
    "reap": janitor("-m", "shmjanitor", "reap", "--json", "--min-age", "0", "--no-quarantine"),
    "left": sorted(int(l.split()[1]) for l in open("/proc/sysvipc/shm").readlines()[1:]),
}
live.kill()
print(json.dumps(out))
"""

# The pre-removal re-check, asked directly: had the survey called the hidden creator
# dead, would the re-check (kill(2) says EPERM: it exists) agree?
RECHECK = r"""
import json, sys
from shmjanitor import liveness, survey
from shmjanitor.classify import State
v = next(v for v in survey.take().verdicts if v.segment.id == int(sys.argv[1]))
print(json.dumps(liveness.users_back(v._replace(state=State.ORPHAN), set())))
"""


def test_hidepid_hides_live_creators_even_from_root_and_they_are_kept(state):
    needs_real_root()
    assert HIDEPID_GID not in os.getgroups()
    p = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc",
         sys.executable, "-c", HIDEPID, str(HIDEPID_GID), str(state), RECHECK],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert not got["visible"], "hidepid did not hide the creator: the test proves nothing"
    for step in ("list", "recheck", "reap"):
        assert got[step]["rc"] == 0 and "Traceback" not in got[step]["err"], got[step]

    listed = {s["id"]: s for s in json.loads(got["list"]["out"])["segments"]}
    live, gone = listed[got["live_id"]], listed[got["gone_id"]]
    assert live["state"] == "unknown", live
    assert f"creator {got['live_pid']} exists but is hidden" in live["reason"]
    # kill(2) is not blinded by hidepid: a creator that exited is still seen dead.
    assert gone["state"] == "orphan" and "exited" in gone["reason"], gone

    reaped = {r["id"]: r for r in json.loads(got["reap"]["out"])["results"]}
    assert got["live_id"] not in reaped
    assert reaped[got["gone_id"]]["action"] == "removed"
    assert got["left"] == [got["live_id"]]

    assert json.loads(got["recheck"]["out"]) == (
        f"changed since scan: creator {got['live_pid']} exists but is hidden "
        "(/proc mounted with hidepid)"
    )


# -- 2. a zombie thread-group leader with live threads ---------------------------------

LEADER = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/shm.h>
#include <unistd.h>

static void *worker(void *arg) { (void)arg; for (;;) pause(); return NULL; }

int main(int argc, char **argv) {
    int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    pthread_t t;
    if (argc > 1 && strcmp(argv[1], "threads") == 0)
        pthread_create(&t, NULL, worker, NULL);
    printf("%d\n", id);
    fflush(stdout);
    pthread_exit(NULL);  /* the worker, if any, goes on under this pid */
}
"""


@pytest.fixture(scope="module")
def leader_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("leader")
    (d / "leader.c").write_text(LEADER)
    try:
        subprocess.run(["gcc", "-pthread", "-o", str(d / "leader"), str(d / "leader.c")],
                       check=True, capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot build the pthread program with gcc: {e}")
    return d / "leader"


def _zombie_leader(program: Path, *args: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([str(program), *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    shmid = int(p.stdout.readline())
    deadline = time.monotonic() + 10
    while "State:\tZ" not in Path(f"/proc/{p.pid}/status").read_text():
        assert time.monotonic() < deadline, "the main thread did not exit"
        time.sleep(0.01)
    return p, shmid


def test_zombie_leader_with_a_running_thread_is_alive_and_kept(leader_program, state):
    p, shmid = _zombie_leader(leader_program, "threads")
    try:
        assert "Threads:\t2" in Path(f"/proc/{p.pid}/status").read_text()
        listed = segments_of(run([*JANITOR, "list", "--json"], state))[shmid]
        assert listed["state"] == "idle", listed
        assert listed["reason"].startswith(f"creator {p.pid} (leader) alive; main thread exited")
        assert shmid not in results_of(run([*JANITOR, *REAP], state))
        assert shmid in rows()
    finally:
        p.kill()
        p.wait()


def test_zombie_leader_alone_is_dead(leader_program, state):
    # The control: with no other thread the same program is a plain zombie (not waited
    # for yet), which has exited and can never attach again.
    p, shmid = _zombie_leader(leader_program)
    try:
        listed = segments_of(run([*JANITOR, "list", "--json"], state))[shmid]
        assert listed["state"] == "orphan" and "zombie" in listed["reason"], listed
    finally:
        p.kill()
        p.wait()


# -- 3. a step of the wall clock -------------------------------------------------------


def _doctored_stat(tmp: Path, btime: int) -> Path:
    text = Path("/proc/stat").read_text()
    lines = [f"btime {btime}" if ln.startswith("btime ") else ln for ln in text.splitlines()]
    path = tmp / "stat"
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_btime(stat: Path, argv: list[str], state: Path) -> subprocess.CompletedProcess:
    """`argv` in a private mount namespace whose /proc/stat says another boot time, as it
    reads after the wall clock was stepped (the janitor computes every start from it)."""
    return run(["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /proc/stat && exec "$@"',
                str(stat), *argv], state)  # fmt: skip


def test_clock_step_recorded_earlier_this_boot_is_cannot_know(tmp_path, state):
    needs_real_root()
    creator = make(Spec(key=0x5EE9), stay=True)
    shmid = creator.ids[0]
    btime = int(procs.boot_time() or 0)
    ctime = int(rows()[shmid][13])
    step = (ctime - btime) // 2  # forward, but the segment stays after the boot time
    if step < 5:
        pytest.skip("booted too recently for a step that keeps ctime after btime")

    # A run before the step records this boot's boot time; it keeps the live creator's.
    assert results_of(run([*JANITOR, *REAP], state)) == {}
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    recorded_boot, recorded = (state / liveness.RECORD).read_text().split()
    assert recorded_boot == boot_id and abs(int(recorded) - btime) <= 1  # slewing: 1 s

    stat = _doctored_stat(tmp_path, btime + step)
    listed = segments_of(_with_btime(stat, [*JANITOR, "list", "--json"], state))[shmid]
    assert listed["state"] == "unknown", listed
    assert "which a step of the clock this boot" in listed["reason"]
    assert shmid not in results_of(_with_btime(stat, [*JANITOR, *REAP], state))
    assert shmid in rows()

    # The control: with no record of this boot, the same step passes for a recycled pid
    # (what the janitor said of every live creator before): the doctoring works.
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    listed = segments_of(_with_btime(stat, [*JANITOR, "list", "--json"], empty))[shmid]
    assert listed["state"] == "orphan" and "pid now used by" in listed["reason"], listed


def test_segment_older_than_the_boot_time_proves_a_step(tmp_path, state):
    needs_real_root()
    creator = make(Spec(key=0x5EEA), stay=True)
    shmid = creator.ids[0]
    ctime = int(rows()[shmid][13])
    stat = _doctored_stat(tmp_path, ctime + 3600)  # no record: the state dir is empty
    listed = segments_of(_with_btime(stat, [*JANITOR, "list", "--json"], state))[shmid]
    assert listed["state"] == "unknown", listed
    assert "the clock was stepped forward at least 1h since" in listed["reason"]
    assert shmid not in results_of(_with_btime(stat, [*JANITOR, *REAP], state))
    assert shmid in rows()


def _record_files(tmp: Path, btime: int) -> tuple[Path, Path]:
    stat, boot = tmp / "stat", tmp / "boot_id"
    stat.write_text(f"cpu  1 2 3\nbtime {btime}\nprocesses 9\n")
    boot.write_text("b-1\n")
    return stat, boot


def test_record_keeps_the_earliest_boot_time_of_this_boot(tmp_path, state):
    stat, boot = _record_files(tmp_path, 1000)
    assert liveness.observe(state, False, stat, boot) == liveness.Clock(1000, 1000)
    assert not (state / liveness.RECORD).exists()  # only reap and rm write it
    assert liveness.observe(state, True, stat, boot) == liveness.Clock(1000, 1000)
    stat.write_text("btime 1600\n")  # stepped forward 10 min
    assert liveness.observe(state, True, stat, boot).step == 600
    stat.write_text("btime 900\n")  # and back, past where it was
    assert liveness.observe(state, True, stat, boot) == liveness.Clock(900, 900)
    assert (state / liveness.RECORD).read_text() == "b-1 900\n"
    boot.write_text("b-2\n")  # another boot: the old record says nothing of this one
    stat.write_text("btime 5000\n")
    assert liveness.observe(state, True, stat, boot) == liveness.Clock(5000, 5000)
    assert (state / liveness.RECORD).read_text() == "b-2 5000\n"
    assert sorted(os.listdir(state)) == [liveness.RECORD]  # no temporary file left


@pytest.mark.parametrize("env", [
    {"STATE_DIRECTORY": "/run/x:/run/y"}, {"XDG_STATE_HOME": "/tmp/xdg"}, {"HOME": "/tmp/h"},
])  # fmt: skip
@pytest.mark.parametrize("euid", [0, 1000])
def test_the_record_lives_where_the_quarantine_does(monkeypatch, env, euid):
    from shmjanitor import quarantine

    for name in ("STATE_DIRECTORY", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert liveness.default_state_dir() == quarantine.default_state_dir()


def test_record_is_never_written_where_the_state_dir_is_missing(tmp_path):
    stat, boot = _record_files(tmp_path, 1000)
    assert liveness.observe(tmp_path / "none", True, stat, boot) == liveness.Clock(1000, 1000)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("plant", ["group-writable", "symlink", "other owner"])
def test_record_not_ours_alone_is_ignored(tmp_path, state, plant):
    stat, boot = _record_files(tmp_path, 1000)
    record = state / liveness.RECORD
    if plant == "symlink":
        (tmp_path / "elsewhere").write_text("b-1 10\n")
        record.symlink_to(tmp_path / "elsewhere")
    else:
        record.write_text("b-1 10\n")
        if plant == "group-writable":
            record.chmod(0o620)
        else:
            needs_real_root()
            os.chown(record, 1001, 1001)
    assert liveness.observe(state, False, stat, boot) == liveness.Clock(1000, 1000)


# -- 4. a live last user ---------------------------------------------------------------


def _user(shmid: int) -> int:
    """A process that attaches to `shmid` once, detaches, and stays alive (lpid)."""

    def body() -> list[int]:
        sysv_ipc.attach(shmid).detach()
        return [shmid]

    return _fork(body, True).pid


def test_live_last_user_keeps_a_segment_whose_creator_exited(state):
    shmid = make(Spec(key=0x1A57)).ids[0]  # made as ipcmk makes them; the maker exited
    user = _user(shmid)
    assert rows()[shmid][5] == str(user) and rows()[shmid][6] == "0"  # lpid, nattch 0
    listed = segments_of(run([*JANITOR, "list", "--json"], state))[shmid]
    assert listed["state"] == "idle", listed
    assert listed["reason"].startswith(f"last user {user} (")
    assert "alive, may attach again; creator" in listed["reason"]
    assert listed["last_user"]["pid"] == user and listed["last_user"]["alive"] is True
    assert shmid not in results_of(run([*JANITOR, *REAP], state))
    assert shmid in rows()

    # Once the last user is gone too, nobody could be using it: it goes.
    os.kill(user, signal.SIGKILL)
    os.waitpid(user, 0)
    done = results_of(run([*JANITOR, *REAP], state))[shmid]
    assert done["action"] == "removed", done
    assert f"last user {user} exited" in done["reason"]


def test_recheck_keeps_it_when_the_last_user_is_alive():
    shmid = make(Spec()).ids[0]
    user = _user(shmid)
    v = next(v for v in take().verdicts if v.segment.id == shmid)
    assert v.state is State.IDLE
    back = liveness.users_back(v._replace(state=State.ORPHAN), set())
    assert back is not None and back.startswith(f"changed since scan: last user {user} (")


# The last user exits, and a new process gets its pid after the last detach: not the
# last user (started after it), so the segment is an orphan, in the survey and in the
# re-check. Run as pid 1 of a new PID namespace, where ns_last_pid hands a pid over.
RECYCLED_LPID = r"""
import json, os, time
import sysv_ipc
from shmjanitor import liveness, survey

def child(body):
    pid = os.fork()
    if pid == 0:
        body(); os._exit(0)
    return pid

r, w = os.pipe()
creator = child(lambda: os.write(w, b"%d" % sysv_ipc.SharedMemory(
    None, sysv_ipc.IPC_CREX, size=4096).id))
shmid = int(os.read(r, 100))
os.waitpid(creator, 0)
user = child(lambda: sysv_ipc.attach(shmid).detach())
os.waitpid(user, 0)
time.sleep(3)  # the new process must start well after the last detach
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(user - 1))
again = child(lambda: time.sleep(60))
v = next(v for v in survey.take().verdicts if v.segment.id == shmid)
print(json.dumps({"user": user, "reused_by": again, "lpid": v.segment.lpid,
                  "state": v.state.value, "reason": v.reason, "user_alive": v.last_user.alive,
                  "back": liveness.users_back(v, set())}))
os.kill(again, 9)
"""


def test_recycled_last_user_pid_is_seen_through():
    p = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", RECYCLED_LPID],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["reused_by"] == got["user"] == got["lpid"], "ns_last_pid did not hand it over"
    assert got["user_alive"] is False
    assert got["state"] == "orphan", got
    assert f"last user {got['user']} exited; pid now used by a process started" in got["reason"]
    assert got["back"] is None  # the re-check agrees: still nobody could be using it


# -- 5. a /proc of another PID namespace -----------------------------------------------

# Pid 1 of namespace A (with its own /proc) uses up pids, then starts namespace B without
# mounting a /proc: in B, /proc still shows A's processes, and B's pid 2 is in A an
# exited process. B makes a segment whose creator stays and one whose creator exited.
FOREIGN_B = r"""
import json, os, subprocess, sys, time
import sysv_ipc

def maker(stay):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=4096)
        shm.detach()
        os.write(w, str(shm.id).encode() + b"\n")
        if stay:
            time.sleep(600)
        os._exit(0)
    os.close(w)
    shmid = int(os.fdopen(r).readline())
    if not stay:
        os.waitpid(pid, 0)
    return pid, shmid

live, live_id = maker(True)
gone, gone_id = maker(False)
def janitor(*args):
    p = subprocess.run([sys.executable, "-m", "shmjanitor", *args], capture_output=True,
                       text=True)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
print(json.dumps({
    "live": live, "live_id": live_id, "gone_id": gone_id,
    "shown_by_proc": os.path.exists(f"/proc/{live}"),
    "list": janitor("list", "--json"),
    "reap": janitor("reap", "--json", "--min-age", "0", "--include-system", "--no-quarantine"),
}))
os.kill(live, 9)
"""


def test_proc_of_another_pid_namespace_is_cannot_know(state):
    needs_real_root()
    outer = 'for i in $(seq 40); do /bin/true; done; exec unshare --pid --fork "$0" -c "$1"'
    p = run(["unshare", "--pid", "--fork", "--mount", "--mount-proc",
             "sh", "-c", outer, sys.executable, FOREIGN_B], state)  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert not got["shown_by_proc"], "that pid is in use in the outer /proc: proves nothing"
    listed = {s["id"]: s for s in json.loads(got["list"]["out"])["segments"]}
    live = listed[got["live_id"]]
    assert live["state"] == "unknown", live
    assert f"creator {got['live']} exists but /proc shows another PID namespace" in live["reason"]
    # kill(2) answers in our own namespace: the creator that exited is seen dead.
    assert listed[got["gone_id"]]["state"] == "orphan", listed[got["gone_id"]]
    reaped = {r["id"]: r for r in json.loads(got["reap"]["out"])["results"]}
    assert got["live_id"] not in reaped
    assert reaped[got["gone_id"]]["action"] == "removed"
    assert got["live_id"] in rows() and got["gone_id"] not in rows()


def test_procfs_is_ours_here():
    assert procs.procfs_is_ours()
