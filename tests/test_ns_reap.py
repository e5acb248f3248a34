"""reap, rm and restore across IPC namespaces (issue 14), with real namespaces: each test
runs in a sealed world (tests/worlds.py), where a few long-lived namespaces (each its
own IPC namespace and /dev/shm and /dev/mqueue, made by tests/ns_holder.py) hold an
attached, an idle and orphan objects of every kind. What is left is checked from inside
each namespace with the C tools (nsenter ipcs) and through its root, not with ours."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from worlds import World, wait_for

HOLDER = str(Path(__file__).with_name("ns_holder.py"))
PY = sys.executable


def make_ns(world: World, tag: str) -> dict[str, Any]:
    """A namespace of its own (IPC, mount: /dev/shm and /dev/mqueue), its objects made."""
    script = ("mount -n -t tmpfs -o mode=1777 none /dev/shm && "
              "mount -n -t mqueue none /dev/mqueue && "
              f"exec {PY} {HOLDER} {tag}")  # fmt: skip
    p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c", script])
    assert p.stdout is not None
    made: dict[str, Any] = json.loads(p.stdout.readline())
    made["proc"] = p
    return made


def own_ns(world: World) -> dict[str, Any]:
    """The same objects in the world's own namespace (the one shmjanitor runs in)."""
    p = world.spawn([PY, HOLDER, "own"])
    assert p.stdout is not None
    made: dict[str, Any] = json.loads(p.stdout.readline())
    made["proc"] = p
    return made


def ids(world: World, pid: int, flag: str) -> set[int]:
    """The ids `ipcs` shows inside the namespace of `pid`."""
    r = world.run(["nsenter", "-t", str(pid), "-i", "ipcs", flag], check=True)
    return {int(line.split()[1]) for line in r.stdout.splitlines()
            if line.startswith("0x")}  # fmt: skip


def files(world: World, pid: int, d: str) -> set[str]:
    r = world.run(["ls", "-A", f"/proc/{pid}/root{d}"])
    return {f"{d}/{n}" for n in r.stdout.split()} if r.returncode == 0 else set()


def reap(world: World, state: Path, *args: str) -> Any:
    return world.run([PY, "-m", "shmjanitor", "reap", "--min-age", "0", "--include-system",
                      "--state-dir", str(state), *args])  # fmt: skip


def left_in(world: World, made: dict[str, Any]) -> dict[str, Any]:
    pid = made["pid"]
    return {
        "shm": ids(world, pid, "-m"), "sem": ids(world, pid, "-s"), "msg": ids(world, pid, "-q"),
        "posix": files(world, pid, "/dev/shm") | files(world, pid, "/dev/mqueue"),
    }  # fmt: skip


def test_reap_all_removes_the_orphans_of_every_namespace_and_nothing_else(world, tmp_path):
    spaces = [own_ns(world), *(make_ns(world, t) for t in "abc")]
    assert len({m["ipc"] for m in spaces}) == 4
    listed = json.loads(world.run([PY, "-m", "shmjanitor", "list", "-A", "--json"]).stdout)
    arrays = {"segments": "shm", "semaphores": "sem", "queues": "msg", "posix": "posix"}
    orphans = Counter(o.get("path", kind) for arr, kind in arrays.items()
                      for o in listed[arr] if o["state"] == "orphan")  # fmt: skip
    # a dry run's log names each namespace (a removal's id is one of its namespace's)
    r = reap(world, tmp_path / "state", "-A", "--dry-run", "-v")
    assert r.returncode == 0, r.stderr
    for m in spaces:
        assert f"ns={m['ipc']}" in r.stdout, r.stdout
    r = reap(world, tmp_path / "state", "-A", "--json")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    results = json.loads(r.stdout)["results"]
    # Exactly the orphans list -A saw, in every namespace; nothing else considered.
    assert {x["action"] for x in results} == {"removed"}, results
    assert Counter(x["kind"] if "path" not in x else x["path"] for x in results) == orphans
    # Every kind's orphan of each namespace of its own: a segment, a set, a queue, two
    # /dev/shm files and a POSIX queue; its attached, idle and held objects stay.
    for m in spaces[1:]:
        left = left_in(world, m)
        assert left["shm"] == {m["shm"]["attached"], m["shm"]["idle"]}, (m["ipc"], left)
        assert left["sem"] == set() and left["msg"] == set(), (m["ipc"], left)
        assert left["posix"] == {m["posix"]["held"]}, (m["ipc"], left)
    # The world's own namespace (shmjanitor's) is also its pid 1's, a PID namespace's
    # first process: processes outside may share it (procs.unseen_ipc_peers), so its
    # pid-less evidence is "cannot know" and those objects stay; its segment orphan (a
    # dead cpid) goes; its attached and idle ones stay.
    own = left_in(world, spaces[0])
    assert own["shm"] == {spaces[0]["shm"]["attached"], spaces[0]["shm"]["idle"]}, own
    assert spaces[0]["posix"]["held"] in own["posix"]


def test_reap_namespace_acts_in_that_namespace_only(world, tmp_path):
    a, b = make_ns(world, "a"), make_ns(world, "b")
    r = reap(world, tmp_path / "state", "--namespace", str(b["pid"]))
    assert r.returncode == 0, r.stderr
    assert left_in(world, b)["shm"] == {b["shm"]["attached"], b["shm"]["idle"]}
    assert left_in(world, b)["posix"] == {b["posix"]["held"]}
    untouched = left_in(world, a)
    assert untouched["shm"] == {a["shm"]["attached"], a["shm"]["idle"], a["shm"]["orphan"]}
    assert untouched["posix"] == {a["posix"]["held"], *a["posix"]["orphans"]}
    # a namespace file, as one bind-mounted under /run would be
    r = reap(world, tmp_path / "state", "--namespace", f"/proc/{a['pid']}/ns/ipc")
    assert r.returncode == 0, r.stderr
    assert left_in(world, a)["msg"] == set()


def test_restore_puts_the_copy_back_into_its_namespace_or_refuses(world, tmp_path):
    state = tmp_path / "state"
    a, b = make_ns(world, "a"), make_ns(world, "b")
    assert reap(world, state, "-A").returncode == 0
    r = world.run(
        [PY, "-m", "shmjanitor", "quarantine", "list", "--json", "--state-dir", str(state)]
    )
    entries = json.loads(r.stdout)["entries"]
    of_b = [e for e in entries if e.get("namespace", {}).get("ipc") == b["ipc"]]
    seg = next(e for e in of_b if e["kind"] == "shm")
    posix = next(e for e in of_b if e.get("path", "").startswith("/dev/shm/torch_"))
    assert seg["id"] == b["shm"]["orphan"]
    for e in (seg, posix):
        r = world.run([PY, "-m", "shmjanitor", "restore", e["entry"], "--json",
                       "--state-dir", str(state)])  # fmt: skip
        assert r.returncode == 0, r.stderr
    new_id = json.loads(world.run([PY, "-m", "shmjanitor", "restore", seg["entry"], "--json",
                                   "--state-dir", str(state)]).stdout or "{}").get("id")  # fmt: skip
    assert new_id is None  # restored once only
    # back in b, with its key; not in a, not in the world's own namespace
    r = world.run(["nsenter", "-t", str(b["pid"]), "-i", "ipcs", "-m"], check=True)
    assert f"0x{seg['key']:08x}" in r.stdout
    for elsewhere in (a["pid"], 1):
        r = world.run(["nsenter", "-t", str(elsewhere), "-i", "ipcs", "-m"], check=True)
        assert f"0x{seg['key']:08x}" not in r.stdout
    assert posix["path"] in files(world, b["pid"], "/dev/shm")
    data = world.run(["cat", f"/proc/{b['pid']}/root{posix['path']}"]).stdout
    assert data == "data of b"
    assert posix["path"] not in files(world, a["pid"], "/dev/shm")
    assert posix["path"] not in files(world, 1, "/dev/shm")
    # b ends: its objects went with it, and a restore into it is refused, said plainly
    world.run(["kill", "-KILL", str(b["pid"])], check=True)
    # gone from its namespace at exit, even while a zombie (exit_task_namespaces)
    wait_for(lambda: world.run(["readlink", f"/proc/{b['pid']}/ns/ipc"]).returncode != 0)
    other = next(e for e in of_b if e["kind"] == "sem")
    r = world.run([PY, "-m", "shmjanitor", "restore", other["entry"], "--state-dir", str(state)])
    assert r.returncode == 1
    assert "no longer exists" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_rm_all_refuses_an_id_that_is_in_several_namespaces(world, tmp_path):
    a, b = make_ns(world, "a"), make_ns(world, "b")
    assert a["shm"]["orphan"] == b["shm"]["orphan"]  # ids are per namespace: both have it
    rm = [PY, "-m", "shmjanitor", "rm", "--state-dir", str(tmp_path / "s")]
    r = world.run([*rm, "-A", "-m", str(a["shm"]["orphan"])])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "2 namespaces" in r.stderr and "nothing removed" in r.stderr
    assert a["shm"]["orphan"] in ids(world, a["pid"], "-m")
    assert b["shm"]["orphan"] in ids(world, b["pid"], "-m")
    r = world.run([*rm, "--namespace", str(b["pid"]), "-m", str(b["shm"]["orphan"])])
    assert r.returncode == 0, r.stderr
    assert b["shm"]["orphan"] not in ids(world, b["pid"], "-m")
    assert a["shm"]["orphan"] in ids(world, a["pid"], "-m")
    # found in one namespace only: -A finds it there
    r = world.run([*rm, "-A", "-m", str(a["shm"]["orphan"])])
    assert r.returncode == 0, r.stderr
    assert a["shm"]["orphan"] not in ids(world, a["pid"], "-m")
    # a POSIX path is per namespace too; an attached segment is refused, in its namespace
    r = world.run([*rm, "-A", "-m", str(a["shm"]["attached"])])
    assert r.returncode == 2, r.stderr  # in a, b and nowhere else? both have id 0
    r = world.run([*rm, "--namespace", str(a["pid"]), "-m", str(a["shm"]["attached"])])
    assert r.returncode == 1 and "refused" in r.stderr, r.stderr
    assert a["shm"]["attached"] in ids(world, a["pid"], "-m")


DRIVER = """
import os, signal, sys, time
from shmjanitor import config, namespaces, reaping
sweep = namespaces.sweep()
victim = int(sys.argv[1])
os.kill(victim, signal.SIGKILL)
while os.path.exists(f"/proc/{victim}"):
    time.sleep(0.01)
cfg = config.load(None).with_overrides(min_age=0, include_system=True)
o = reaping.reap_all(sweep, cfg, dry_run=False, quarantine=True, state_dir=None,
                     hooks=reaping.Hooks(on_note=lambda t: print("NOTE", t)))
print("OK", o.ok, sorted(r.action.value for r in o.results))
"""


def test_a_namespace_that_ends_during_the_run_is_said_not_fatal(world, tmp_path):
    a, b = make_ns(world, "a"), make_ns(world, "b")
    r = world.run([PY, "-c", DRIVER, str(b["pid"])])
    assert r.returncode == 0, r.stderr
    assert f"ipc:[{b['ipc']}]" in r.stdout and "ended before it was entered" in r.stdout
    assert "OK True" in r.stdout
    assert left_in(world, a)["shm"] == {a["shm"]["attached"], a["shm"]["idle"]}


def test_a_pid_in_a_name_is_not_ours_when_a_container_has_its_own_pid_namespace(world, tmp_path):
    """torch_<pid>_... names carry the creator's pid as ITS PID namespace numbers it: in
    a container with its own, pid 412 is not the host's pid 412. A live creator that
    does not hold its file right now must not be judged dead by our /proc's 412."""
    script = (
        "mount -n -t tmpfs -o mode=1777 none /dev/shm && "
        # fork until our pids are past 400: a number no process of the world has
        "while [ $(sh -c 'echo $$') -lt 400 ]; do :; done; "
        "p=$(sh -c 'echo $$'); echo x > /dev/shm/torch_${p}_1_1; echo $p; exec sleep 1000"
    )  # fmt: skip
    p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private", "--pid",
                     "--fork", "--mount-proc", "sh", "-c", script])  # fmt: skip
    assert p.stdout is not None
    inner = int(p.stdout.readline())
    # (the creator here is the sh whose pid is in the name: it exited in its namespace,
    # but another process of that namespace lives; what matters is that our /proc's
    # pid of that number is nobody's, so only the pid namespace check can keep it)
    assert world.run(["test", "-e", f"/proc/{inner}"]).returncode != 0
    listed = json.loads(world.run([PY, "-m", "shmjanitor", "list", "-A", "--json"]).stdout)
    (o,) = [o for o in listed["posix"] if o["name"] == f"torch_{inner}_1_1"]
    assert o["state"] != "orphan", o
    assert o["state"] == "idle", o  # its owner (root) lives: it may be opened again
    r = reap(world, tmp_path / "state", "-A", "--json")
    assert r.returncode == 0, r.stderr
    assert [x for x in json.loads(r.stdout)["results"] if x["action"] == "removed"] == []


def test_explain_namespace_explains_the_object_of_that_namespace(world, tmp_path):
    a, b = make_ns(world, "a"), make_ns(world, "b")
    r = world.run([PY, "-m", "shmjanitor", "explain", "--namespace", str(b["pid"]), "--json",
                   "-m", str(b["shm"]["attached"])])  # fmt: skip
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)
    text = json.dumps(e)
    assert f"--namespace {b['pid']}" in text  # its rm command acts in b, not here
    assert "torch_" not in text
    r = world.run([PY, "-m", "shmjanitor", "explain", "--namespace", str(a["pid"]),
                   a["posix"]["orphans"][0]])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "orphan" in r.stdout
    r = world.run([PY, "-m", "shmjanitor", "explain", "--namespace", str(a["pid"]),
                   b["posix"]["orphans"][0]])  # b's file is not in a  # fmt: skip
    assert r.returncode == 1 and "no POSIX object" in r.stderr, r.stderr


def test_a_removal_in_another_namespace_is_not_credited_to_our_objects_maker(world, tmp_path):
    """Ids start at 0 in every namespace: the history's maker of OUR segment 0 must not
    be said of a container's segment 0 (reap --json's made_by)."""
    state = tmp_path / "state"
    make = ("import sysv_ipc, time; m = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, "
            "sysv_ipc.IPC_CREX, size=4096); print(m.id, flush=True)")  # fmt: skip
    # IPC_PRIVATE: key 0 in both, id 0 in both: the same (kind, id, key) ident
    ours = world.spawn([PY, "-c", make + "; time.sleep(1000)"])  # our 0, its maker alive
    assert ours.stdout is not None and ours.stdout.readline().strip() == "0"
    theirs = world.spawn(["unshare", "--ipc", "sh", "-c",
                          f"{PY} -c '{make}' >/dev/null; echo ok; exec sleep 1000"])  # fmt: skip
    assert theirs.stdout is not None and theirs.stdout.readline().strip() == "ok"
    env = dict(world.env, STATE_DIRECTORY=str(state))
    r = world.run([PY, "-m", "shmjanitor", "list", "--json"], env=env)  # records our maker
    assert json.loads(r.stdout)["segments"][0]["made_by"] is not None, r.stdout
    r = reap(world, state, "-A", "--json")
    assert r.returncode == 0, r.stderr
    (removed,) = [x for x in json.loads(r.stdout)["results"] if x["action"] == "removed"]
    assert removed["id"] == 0 and removed["namespace"]["pid"] != 1, removed
    assert removed["made_by"] is None, removed


def test_a_sweep_records_only_our_namespaces_objects_in_the_history(world, tmp_path):
    """list -A and reap -A see a container's objects, whose ids and keys repeat ours:
    the history (one store, keyed by our namespace) gets a row for ours alone, and a
    container's object is never said to be made by our object's maker."""
    import sqlite3

    state = tmp_path / "state"
    make = ("import sysv_ipc, time; m = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, "
            "sysv_ipc.IPC_CREX, size=4096); print(m.id, flush=True)")  # fmt: skip
    ours = world.spawn([PY, "-c", make + "; time.sleep(1000)"])
    assert ours.stdout is not None and ours.stdout.readline().strip() == "0"
    theirs = world.spawn(["unshare", "--ipc", "sh", "-c",
                          f"{PY} -c '{make}' >/dev/null; echo ok; exec sleep 1000"])  # fmt: skip
    assert theirs.stdout is not None and theirs.stdout.readline().strip() == "ok"
    env = dict(world.env, STATE_DIRECTORY=str(state))
    for _ in range(2):  # the second run reads back what the first recorded
        r = world.run([PY, "-m", "shmjanitor", "list", "-A", "--json"], env=env)
        assert r.returncode == 0, r.stderr
        segments = json.loads(r.stdout)["segments"]
        assert len(segments) == 2, segments
        made = {s["namespace"]["pid"] == 1: s["made_by"] for s in segments}
        assert made[True] is not None and made[False] is None, segments
    db = sqlite3.connect(str(state / "history.sqlite3"))
    try:
        rows = db.execute("SELECT ns, kind, objid FROM objects").fetchall()
    finally:
        db.close()
    here = world.run(["readlink", "/proc/1/ns/ipc"], check=True).stdout.strip()
    assert rows == [(here, "shm", 0)], rows
