"""Semaphore sets and message queues end to end, as a user meets them: real objects of
real processes in every state, through the command line (list, reap, quarantine list,
restore), and `list --json` field by field against lsipc.

Every object is made by a process of alice (uid 1000, an ordinary account) unless a test
says otherwise, in the suite's private IPC namespace (conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pytest
import sysv_ipc
from conftest import python_as
from segments import cli

from shmjanitor import waiters

ALICE = 1000

# A process of alice that makes one object, says its id, then does what it is told.
SEM_SCRIPT = """
import sys, time, sysv_ipc
s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600, 0)  # SETVAL 0: sempid is ours
what = sys.argv[1]
if what in ("operate", "stay"):
    s.release()  # a semop: value 1, otime set
print(s.id, flush=True)
if what == "wait":
    s.acquire()  # value 0: waits (semncnt 1) until the set is removed or released
elif what == "stay":
    time.sleep(3600)
"""

MSG_SCRIPT = """
import sys, time, sysv_ipc
q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600)
what = sys.argv[1]
if what in ("send", "stay"):
    q.send(b"hello\\x00world", type=7)
    q.send(b"", type=3)
    q.send(bytes(range(256)), type=7)
print(q.id, flush=True)
if what == "read":
    q.receive(type=99)  # no such message: waits in msgrcv, never the last receiver
elif what == "stay":
    time.sleep(3600)
"""


class Proc:
    def __init__(self, script: str, what: str, uid: Optional[int] = ALICE) -> None:
        self.p = subprocess.Popen([*python_as(uid), "-c", script, what],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line.strip().isdigit(), f"the maker said {line!r}"
        self.id = int(line)
        self.what = what
        if what in ("wait", "read"):
            _until_waiting(self.p.pid)

    def exited(self) -> Optional[int]:
        return self.p.poll()

    def finish(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def _until_waiting(pid: int) -> None:
    """Until the process sleeps in a system call (semop, msgrcv), as /proc shows it."""
    for _ in range(500):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            raise AssertionError("the waiter exited") from None
        if state == "S" and Path(f"/proc/{pid}/wchan").read_text() not in ("", "0"):
            wchan = Path(f"/proc/{pid}/wchan").read_text()
            if "sem" in wchan or "msg" in wchan:
                return
        time.sleep(0.01)
    raise AssertionError("the waiter never waited")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    made: list[Proc] = []
    yield made
    for p in made:
        p.finish()


def ipcmk(flag: str, uid: Optional[int] = ALICE) -> int:
    """An object made by ipcmk (semget/msgget only: never operated on, never used)."""
    prefix = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                     "--clear-groups", "--"]  # fmt: skip
    out = subprocess.run([*prefix, "ipcmk", flag, *(["1"] if flag == "-S" else [])],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(out.split()[-1])


def listed(*flags: str) -> dict[str, dict[int, dict[str, Any]]]:
    r = cli("list", "--json", *flags)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    return {k: {o["id"]: o for o in doc[k]} for k in ("semaphores", "queues") if k in doc}


def states(arr: str, *flags: str) -> dict[int, str]:
    return {i: o["state"] for i, o in listed(*flags)[arr].items()}


def reap(state_dir: Path, *flags: str) -> dict[str, Any]:
    r = cli("reap", "--min-age", "0", "--state-dir", str(state_dir), "--json", *flags)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def sem_ids() -> set[int]:
    return _ids("/proc/sysvipc/sem")


def msg_ids() -> set[int]:
    return _ids("/proc/sysvipc/msg")


def _ids(table: str) -> set[int]:
    with open(table) as f:
        return {int(line.split()[1]) for line in f.read().splitlines()[1:] if line.strip()}


def entry_of(state_dir: Path, kind: str, oid: int) -> str:
    r = cli("quarantine", "list", "--json", "--state-dir", str(state_dir))
    assert r.exit_code == 0, r.output
    entries = json.loads(r.stdout)["entries"]
    found = [e for e in entries if e.get("kind", "shm") == kind and e["id"] == oid]
    assert len(found) == 1, entries
    return str(found[0]["entry"])


# --- semaphore sets ----------------------------------------------------------------------


def test_semaphore_sets_in_every_state_and_a_reap_that_removes_only_orphans(
    procs: list[Proc], tmp_path: Path
) -> None:
    # Bob's: nobody ever operated on it, and bob has no process left (alice has: below).
    never = ipcmk("-S", uid=1001)
    gone = Proc(SEM_SCRIPT, "operate")  # its last operator exited
    procs.append(gone)
    assert gone.p.wait(10) == 0
    idle = Proc(SEM_SCRIPT, "stay")  # its last operator lives
    waiting = Proc(SEM_SCRIPT, "wait")  # a process waits on it now
    rootish = ipcmk("-S", uid=None)  # root's: root has processes, which made it unknown
    alices = ipcmk("-S")  # alice has processes (idle, waiting): which made it, unknown
    procs += [idle, waiting]

    seen = listed("-s")["semaphores"]
    assert {i: seen[i]["state"] for i in (never, gone.id, idle.id, waiting.id, rootish,
                                          alices)} == {
        never: "orphan", gone.id: "orphan", idle.id: "idle", waiting.id: "attached",
        rootish: "unknown", alices: "unknown",
    }  # fmt: skip
    assert "creating user bob (1001) has no process left" in seen[never]["reason"]
    assert "creating user alice (1000) has processes" in seen[alices]["reason"]
    assert f"{gone.p.pid} exited" in seen[gone.id]["reason"]
    assert f"{idle.p.pid}" in seen[idle.id]["reason"] and "alive" in seen[idle.id]["reason"]
    assert seen[waiting.id]["waiters"] == 1
    assert all(o["kind"] == "sem" for o in seen.values())

    out = reap(tmp_path / "state", "-s")
    removed = {r["id"] for r in out["results"] if r["action"] == "removed"}
    assert removed == {never, gone.id}
    assert all(r["kind"] == "sem" for r in out["results"])
    left = sem_ids()
    assert {idle.id, waiting.id, rootish, alices} <= left and not {never, gone.id} & left
    # The waiter still waits: its set was never removed (EIDRM would have ended it).
    assert waiting.exited() is None and idle.exited() is None


def test_a_reaped_set_comes_back_with_its_values_key_mode_and_owner(
    procs: list[Proc], tmp_path: Path
) -> None:
    gone = Proc(SEM_SCRIPT, "operate")
    procs.append(gone)
    assert gone.p.wait(10) == 0
    row = next(r for r in _rows("/proc/sysvipc/sem") if int(r[1]) == gone.id)
    key = int(row[0]) & 0xFFFFFFFF
    state = tmp_path / "state"
    out = reap(state, "-s")
    assert [r["action"] for r in out["results"] if r["id"] == gone.id] == ["removed"]
    assert gone.id not in sem_ids()

    name = entry_of(state, "sem", gone.id)
    r = cli("restore", name, "--state-dir", str(state))
    assert r.exit_code == 0, r.output
    back = sysv_ipc.Semaphore(key)
    assert back.value == 1  # the release() the maker did
    assert (back.mode & 0o777, back.uid, back.gid) == (0o600, ALICE, ALICE)
    # Restored once: a second restore is refused, and nothing else was made.
    again = cli("restore", name, "--state-dir", str(state))
    assert again.exit_code != 0 and "already restored" in again.output
    assert len(sem_ids()) == 1


def _rows(table: str) -> list[list[str]]:
    with open(table) as f:
        return [line.split() for line in f.read().splitlines()[1:] if line.strip()]


# --- message queues ----------------------------------------------------------------------


@pytest.fixture
def tasks_visible() -> None:
    """Waiting tasks are seen only where /proc shows every task that could share our IPC
    namespace (scripts/test's own PID namespace; see waiters._blind)."""
    blind = waiters.sweep().blind
    if blind is not None:
        pytest.skip(f"needs scripts/test's PID namespace: {blind}")


def test_queues_in_every_state_and_a_reap_that_removes_only_orphans(
    procs: list[Proc], tmp_path: Path, tasks_visible: None
) -> None:
    never = ipcmk("-Q")  # nobody ever sent or received
    gone = Proc(MSG_SCRIPT, "send")  # its last sender exited, messages left on it
    procs.append(gone)
    assert gone.p.wait(10) == 0
    idle = Proc(MSG_SCRIPT, "stay")  # its last sender lives
    reader = Proc(MSG_SCRIPT, "read")  # waits in msgrcv: in no field of the table
    procs += [idle, reader]

    seen = listed("-q")["queues"]
    assert {i: seen[i]["state"] for i in (never, gone.id, idle.id, reader.id)} == {
        never: "orphan", gone.id: "orphan", idle.id: "idle", reader.id: "attached",
    }  # fmt: skip
    assert seen[reader.id]["blocked"] == 1 and str(reader.p.pid) in seen[reader.id]["reason"]
    assert seen[gone.id]["msgs"] == 3 and seen[reader.id]["lrpid"] == 0

    out = reap(tmp_path / "state", "-q")
    removed = {r["id"] for r in out["results"] if r["action"] == "removed"}
    assert removed == {never, gone.id}
    assert all(r["kind"] == "msg" for r in out["results"])
    assert {idle.id, reader.id} <= msg_ids() and not {never, gone.id} & msg_ids()
    assert reader.exited() is None  # still waiting: its queue was kept


def test_a_reaped_queue_comes_back_with_its_messages_in_order(
    procs: list[Proc], tmp_path: Path, tasks_visible: None
) -> None:
    gone = Proc(MSG_SCRIPT, "send")
    procs.append(gone)
    assert gone.p.wait(10) == 0
    key = next(int(r[0]) & 0xFFFFFFFF for r in _rows("/proc/sysvipc/msg") if int(r[1]) == gone.id)
    state = tmp_path / "state"
    out = reap(state, "-q")
    assert [r["action"] for r in out["results"] if r["id"] == gone.id] == ["removed"]

    r = cli("restore", entry_of(state, "msg", gone.id), "--state-dir", str(state))
    assert r.exit_code == 0, r.output
    q = sysv_ipc.MessageQueue(key)
    assert (q.mode & 0o777, q.uid, q.gid, q.current_messages) == (0o600, ALICE, ALICE, 3)
    got = [q.receive(block=False) for _ in range(3)]
    assert got == [(b"hello\x00world", 7), (b"", 3), (bytes(range(256)), 7)]


def test_rm_refuses_a_queue_a_reader_waits_on_and_removes_an_orphan(
    procs: list[Proc], tmp_path: Path, tasks_visible: None
) -> None:
    reader = Proc(MSG_SCRIPT, "read")
    procs.append(reader)
    never = ipcmk("-Q")
    state = ["--state-dir", str(tmp_path / "state")]
    refused = cli("rm", "-q", str(reader.id), *state)
    assert refused.exit_code == 1 and "in use" in refused.output
    assert reader.id in msg_ids() and reader.exited() is None
    done = cli("rm", "-q", str(never), *state)
    assert done.exit_code == 0, done.output
    assert never not in msg_ids()


# --- lsipc, field by field --------------------------------------------------------------

SEM_COLUMNS = "KEY,ID,OWNER,PERMS,CUID,CUSER,CGID,CGROUP,UID,USER,GID,GROUP,CTIME,NSEMS,OTIME"
MSG_COLUMNS = ("KEY,ID,OWNER,PERMS,CUID,CUSER,CGID,CGROUP,UID,USER,GID,GROUP,CTIME,"
               "USEDBYTES,MSGS,SEND,RECV,LSPID,LRPID")  # fmt: skip


def _lsipc(flag: str, columns: str) -> list[dict[str, Any]]:
    out = subprocess.run(["lsipc", flag, "--json", "-b", "--time-format=iso", "-o", columns],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    doc = json.loads(out)
    return list(doc["semaphores" if flag == "-s" else "messages"])


def _iso(t: Optional[int]) -> Optional[str]:
    return None if t is None else datetime.fromtimestamp(t).astimezone().isoformat()


def _rwx(perms: int) -> str:
    return "".join(c if perms >> (8 - i) & 1 else "-" for i, c in enumerate("rwxrwxrwx"))


def _shared(ours: dict[str, Any]) -> dict[str, Any]:
    """Our JSON's shared fields as lsipc writes them."""
    return {
        "key": f"0x{ours['key']:08x}", "id": str(ours["id"]), "owner": ours["owner"],
        "perms": _rwx(ours["perms"]), "cuid": str(ours["cuid"]), "cgid": str(ours["cgid"]),
        "uid": str(ours["uid"]), "gid": str(ours["gid"]),
    }  # fmt: skip


def test_list_json_agrees_with_lsipc_field_by_field(procs: list[Proc]) -> None:
    ipcmk("-S")
    ipcmk("-Q")
    ipcmk("-S", uid=None)
    for script, what in ((SEM_SCRIPT, "operate"), (SEM_SCRIPT, "stay"), (MSG_SCRIPT, "send"),
                         (MSG_SCRIPT, "stay")):  # fmt: skip
        procs.append(Proc(script, what))
    for p in procs:
        if p.what in ("operate", "send"):
            assert p.p.wait(10) == 0
    ours = listed()
    sems, queues = _lsipc("-s", SEM_COLUMNS), _lsipc("-q", MSG_COLUMNS)
    assert len(sems) == len(ours["semaphores"]) == 4
    assert len(queues) == len(ours["queues"]) == 3
    for theirs in sems:
        o = ours["semaphores"][int(theirs["id"])]
        mine = {**_shared(o), "nsems": str(o["nsems"]), "otime": _iso(o["otime"]),
                "ctime": _iso(o["ctime"])}  # fmt: skip
        assert {k: theirs[k] for k in mine} == mine
    for theirs in queues:
        o = ours["queues"][int(theirs["id"])]
        mine = {**_shared(o), "usedbytes": str(o["usedbytes"]), "msgs": str(o["msgs"]),
                "send": _iso(o["send"]), "recv": _iso(o["recv"]), "lspid": str(o["lspid"]),
                "lrpid": str(o["lrpid"]), "ctime": _iso(o["ctime"])}  # fmt: skip
        assert {k: theirs[k] for k in mine} == mine


def test_killing_the_last_operator_makes_a_set_an_orphan(procs: list[Proc]) -> None:
    idle = Proc(SEM_SCRIPT, "stay")
    procs.append(idle)
    assert states("semaphores", "-s")[idle.id] == "idle"
    os.kill(idle.p.pid, signal.SIGKILL)
    idle.p.wait()
    assert states("semaphores", "-s")[idle.id] == "orphan"


def test_a_user_with_no_process_here_may_have_some_in_a_pid_namespace_we_cannot_see():
    """A pod's containers share an IPC namespace, not a PID namespace: where our pid 1
    shares our IPC namespace, a user with no process in our /proc may have some in the
    others, so a set nobody operated on is unknown there, never an orphan."""
    code = ("from shmjanitor import procs; u = procs.users([65534])[65534]; "
            "print(u.alive, u.note)")  # fmt: skip
    pod = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                          code], capture_output=True, text=True)  # fmt: skip
    assert pod.stdout.startswith("None processes outside this PID namespace share"), pod
    inside = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                             'unshare --ipc "$@"; exit $?', "sh", sys.executable, "-c", code],
                            capture_output=True, text=True)  # fmt: skip
    assert inside.stdout == "False None\n", inside


def test_a_user_who_comes_back_before_the_removal_keeps_a_set_nobody_operated_on():
    """users_back, for a user party: bob had no process at the survey; one of his starts
    before the removal: the set is kept. A pass trusts "no process" for USER_GONE_FOR
    seconds only, then looks again."""
    from shmjanitor import liveness, survey

    semid = ipcmk("-S", uid=1001)
    (v,) = [v for v in survey.take(kinds=("sem",)).verdicts if v.obj.id == semid]
    assert v.state.value == "orphan"
    assert liveness.users_back(v, set(), gone_users={}) is None
    bobs = subprocess.Popen(["setpriv", "--reuid=1001", "--regid=1001", "--clear-groups",
                             "--", "sleep", "60"])  # fmt: skip
    try:
        time.sleep(0.2)  # setpriv has become bob's sleep
        said = liveness.users_back(v, set(), gone_users={})
        assert said is not None and "creating user bob (1001) has processes" in said
        # Found gone a moment ago in this pass: trusted; found gone long ago: looked at again.
        assert liveness.users_back(v, set(), gone_users={1001: time.monotonic()}) is None
        stale = {1001: time.monotonic() - liveness.USER_GONE_FOR - 0.1}
        assert liveness.users_back(v, set(), gone_users=stale) == said
    finally:
        bobs.kill()
        bobs.wait()
