"""Every IPC namespace (issue 14), the reading half: `list -A` and `list --namespace`
on real namespaces made inside a sealed world (tests/worlds.py), never outside one: a
sweep enters every IPC namespace its /proc shows.

Each namespace is made as a container runtime would (unshare --ipc --mount, a fresh
tmpfs on /dev/shm and mqueue on /dev/mqueue) and holds objects of every kind in each
state: attached (a process attached, waiting in semop or msgrcv, or holding the file),
idle (its creator lives) and orphan (its creator exited). What a sweep says of them is
read two ways: through the command line, and through a small driver that calls
survey.take_all(namespaces.sweep()) inside the world and prints each verdict with its
namespace (the JSON "namespace" member is the renderer's, not yet on main).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Optional

import pytest
from conftest import REAL_ROOT, python_as
from worlds import World, wait_for

from shmjanitor import namespaces

PY = sys.executable  # root's interpreter: every process of a world is root's

# Makes the objects of one namespace, in every state, and prints what it made (JSON)
# once every object is in its state. argv: a key base (distinct per namespace, so that
# an object of one namespace can never pass for one of another).
MAKER = r"""
import ctypes, json, mmap, os, sys, time
import _posixshmem, sysv_ipc

base = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]
RW = os.O_CREAT | os.O_EXCL | os.O_RDWR

def mq_open(name):
    fd = libc.mq_open(name.encode(), RW, 0o600, ctypes.byref(Attr(0, 4, 64, 0)))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "mq_open " + name)
    return fd

def make(role, hold):
    # role: 0 attached, 10 idle, 20 orphan; hold: keep the POSIX objects open/mapped
    me = os.getpid()
    out = []
    shm = sysv_ipc.SharedMemory(base + role, sysv_ipc.IPC_CREX, 0o600, 4096)
    if not hold:
        shm.detach()
    out.append(("shm", shm.key))
    if role:  # the waiters of an attached set and queue are processes of their own
        s = sysv_ipc.Semaphore(base + role + 1, sysv_ipc.IPC_CREX, 0o600, 0)
        s.release()  # a semop: sempid is the creator
        q = sysv_ipc.MessageQueue(base + role + 2, sysv_ipc.IPC_CREX, 0o600)
        q.send(b"left behind")  # lspid: the creator
        out += [("sem", s.key), ("msg", q.key)]
    tag = f"{me}_{base}_{role}"
    fd = _posixshmem.shm_open(f"/torch_{tag}", RW, 0o600)
    os.ftruncate(fd, 4096)
    sem = os.open(f"/dev/shm/sem.loky-{me}-{base}-{role}", RW, 0o600)
    os.ftruncate(sem, 32)
    mq = mq_open(f"/torch_{tag}")
    out += [("posix-shm", f"torch_{tag}"), ("posix-sem", f"sem.loky-{me}-{base}-{role}"),
            ("posix-mqueue", f"torch_{tag}")]
    if hold:
        keep = [mmap.mmap(fd, 4096), mmap.mmap(sem, 32), mq, shm]
    else:
        for f in (fd, sem, mq):
            os.close(f)
    return out

def child(job, *args):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            answer = job(*args)
            os.write(w, json.dumps(answer).encode())
            os.close(w)
            if args and args[0] == 20:
                os._exit(0)  # the orphans' creator exits
            while True:
                time.sleep(1000)
        finally:
            os._exit(1)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    return pid, json.loads(data)

def waiter(what):
    if what == "sem":
        s = sysv_ipc.Semaphore(base + 1, sysv_ipc.IPC_CREX, 0o600, 0)
        return ("sem", s.key), s.acquire
    q = sysv_ipc.MessageQueue(base + 2, sysv_ipc.IPC_CREX, 0o600)
    return ("msg", q.key), lambda: q.receive(type=99)

def waiting(pid):
    for _ in range(500):
        with open(f"/proc/{pid}/wchan") as f:
            w = f.read()
        if "sem" in w or "msg" in w:
            return
        time.sleep(0.01)
    raise SystemExit(f"{pid} never waited: {w!r}")

made = {"ipc": os.stat("/proc/self/ns/ipc").st_ino, "objects": [], "pids": {}}
for role, name in ((0, "attached"), (10, "idle"), (20, "orphan")):
    pid, objs = child(make, role, role == 0)
    made["pids"][name] = pid
    made["objects"] += [[k, i, name] for k, i in objs]
    if role == 20:
        os.waitpid(pid, 0)  # gone, not a zombie: its pid is dead
for what in ("sem", "msg"):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        obj, block = waiter(what)
        os.write(w, json.dumps(obj).encode())
        os.close(w)
        block()
        os._exit(0)
    os.close(w)
    obj = json.loads(os.read(r, 4096))
    waiting(pid)
    made["pids"][what + " waiter"] = pid
    made["objects"].append([obj[0], obj[1], "attached"])
print(json.dumps(made), flush=True)
"""

# Inside a namespace: its own /dev/shm and /dev/mqueue, as a runtime gives them.
FRESH = "mount -n -t tmpfs -o mode=1777 none /dev/shm && mount -n -t mqueue none /dev/mqueue"

# What a sweep says, printed as JSON by a driver run inside the world: every verdict
# with its namespace, and the sweep's notes. argv[1]: an IPC inode to read alone, or "".
DRIVER = r"""
import json, sys
from shmjanitor import namespaces, survey
only = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None
sv = survey.take_all(namespaces.sweep(only=only))
def pid(o):
    if hasattr(o, "cpid"):
        return o.cpid
    if hasattr(o, "lspid"):
        return o.lspid
    if getattr(o, "sempid", None):
        return max(o.sempid)
    return None
print(json.dumps({"notes": list(sv.notes), "objects": [{
    "kind": v.obj.kind, "key": v.obj.key, "name": getattr(v.obj, "name", None),
    "mode": v.obj.mode, "state": str(v.state), "ipc": v.ns.ipc, "own": v.ns.own,
    "pid": pid(v.obj), "reason": v.reason,
} for v in sv.verdicts]}))
"""

POSIX = ("posix-shm", "posix-sem", "posix-mqueue")


def ident(o: dict[str, Any]) -> Any:
    return o["name"] if o["kind"] in POSIX else o["key"]


def spawn_ns(world: World, base: int) -> dict[str, Any]:
    """A long-lived IPC + mount namespace of the world holding the MAKER's objects."""
    p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c",
                     f'{FRESH} && "$0" -c "$1" "$2" && exec sleep 1000', PY, MAKER, str(base)])  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, f"the namespace {base} did not start (exit {p.poll()})"
    made: dict[str, Any] = json.loads(line)
    return made


def drive(world: World, only: Optional[int] = None) -> dict[str, Any]:
    r = world.run([PY, "-c", DRIVER, "" if only is None else str(only)])
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def by_ns(seen: dict[str, Any]) -> dict[int, dict[tuple[str, Any], dict[str, Any]]]:
    out: dict[int, dict[tuple[str, Any], dict[str, Any]]] = {}
    for o in seen["objects"]:
        key = (o["kind"], ident(o))
        assert key not in out.setdefault(o["ipc"], {}), f"listed twice: {o}"
        out[o["ipc"]][key] = o
    return out


def shj(world: World, *args: str, **kw: Any) -> Any:
    return world.run([PY, "-m", "shmjanitor", *args], **kw)


# --- 1. several namespaces, every kind, every state ----------------------------------


def test_every_namespace_is_listed_with_its_own_objects_in_their_states(world: World) -> None:
    made = [spawn_ns(world, base) for base in (1000, 2000, 3000)]
    assert len({m["ipc"] for m in made}) == 3
    # one object of the world's own namespace too: ours, listed first, as ours
    world.run([PY, "-c", "import sysv_ipc; sysv_ipc.SharedMemory(4242, sysv_ipc.IPC_CREX, "
                         "0o600, 4096).detach()"], check=True)  # fmt: skip
    seen = drive(world)
    assert seen["notes"] == []
    listed = by_ns(seen)
    own = [ipc for ipc, objs in listed.items() if any(o["own"] for o in objs.values())]
    assert len(own) == 1 and own[0] not in {m["ipc"] for m in made}
    assert set(listed[own[0]]) == {("shm", 4242)}
    assert seen["objects"][0]["own"], "ours first"
    for m in made:
        want = {(k, i): state for k, i, state in m["objects"]}
        got = {key: o["state"] for key, o in listed[m["ipc"]].items()}
        assert got == want, (m["ipc"], {k: listed[m["ipc"]][k]["reason"] for k in got})
        assert len(want) == 3 * 6  # every kind in every state
    # the command line agrees: every object of every namespace, exit 0, nothing noted
    r = shj(world, "list", "-A", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    counts: dict[str, int] = {}
    for o in seen["objects"]:
        counts[o["kind"]] = counts.get(o["kind"], 0) + 1
    arrays = {"shm": "segments", "sem": "semaphores", "msg": "queues"}
    for kind, n in counts.items():
        array = arrays.get(kind)
        if array is not None:
            assert len(doc[array]) == n, (kind, doc[array])
    posix = sorted(o["name"] for a in doc.values() if isinstance(a, list) for o in a
                   if isinstance(o, dict) and o.get("kind") in POSIX)  # fmt: skip
    assert posix == sorted(o["name"] for o in seen["objects"] if o["kind"] in POSIX)
    # listing changed nothing: every object is still there, with its mode
    r = shj(world, "list", "-A")
    assert r.returncode == 0, r.stderr
    again = drive(world)
    assert {(o["ipc"], o["kind"], ident(o), o["mode"]) for o in again["objects"]} == {
        (o["ipc"], o["kind"], ident(o), o["mode"]) for o in seen["objects"]
    }


SMALL_QUEUE = r"""
import ctypes, os
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.mq_open(b"/shared", os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(Attr(0, 1, 8, 0)))
assert fd >= 0, os.strerror(ctypes.get_errno())
"""


def test_a_dev_shm_seen_by_two_namespaces_is_read_once(world: World) -> None:
    """A pod's way: two IPC namespaces, one /dev/shm (B's mount namespace is a copy of
    A's, with the same tmpfs): its files are listed once, with the first (lowest pid)."""
    # a small queue: touch(1) would make one of the default size, which RLIMIT_MSGQUEUE
    # (per uid, over every namespace) may refuse while a previous test's namespaces
    # are still being freed
    a = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c",
                     f'{FRESH} && touch /dev/shm/torch_1_shared && "$0" -c "$1" && '
                     'echo $$ && exec sleep 1000', PY, SMALL_QUEUE])  # fmt: skip
    assert a.stdout is not None
    line = a.stdout.readline()
    assert line, f"A did not start: exit {a.wait()}"
    pid_a = int(line)
    b = world.spawn(["nsenter", "-t", str(pid_a), "-m", "--", "unshare", "--ipc", "--mount",
                     "--propagation", "private", "sh", "-c",
                     '"$0" -c "$1" 777 && echo $$ && exec sleep 1000', PY, SHM_ONLY])  # fmt: skip
    assert b.stdout is not None
    line = b.stdout.readline()
    assert line, f"B did not start: exit {b.wait()}"
    pid_b = int(line)
    ipc = {}
    for pid in (pid_a, pid_b):
        r = world.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/ipc"], check=True)
        ipc[pid] = int(r.stdout)
    seen = drive(world)
    assert seen["notes"] == []
    got = sorted((o["ipc"], o["kind"], ident(o)) for o in seen["objects"])
    assert got == sorted([(ipc[pid_a], "posix-shm", "torch_1_shared"),
                          (ipc[pid_a], "posix-mqueue", "shared"),
                          (ipc[pid_b], "shm", 777)])  # fmt: skip


# --- 2. process facts stay in our PID namespace ----------------------------------------

# A namespace with its own PID namespace: its pid 1 (this script) makes one creator,
# which makes objects of every System V kind and a POSIX file whose name carries its
# pid (as PyTorch's do: the pid in ITS namespace), then lives until killed.
INNER = r"""
import json, os, sys, time, sysv_ipc, _posixshmem
base = int(sys.argv[1])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    shm = sysv_ipc.SharedMemory(base, sysv_ipc.IPC_CREX, 0o600, 4096)
    shm.detach()
    s = sysv_ipc.Semaphore(base + 1, sysv_ipc.IPC_CREX, 0o600, 0)
    s.release()
    q = sysv_ipc.MessageQueue(base + 2, sysv_ipc.IPC_CREX, 0o600)
    q.send(b"x")
    os.close(_posixshmem.shm_open(f"/torch_{os.getpid()}_inner", os.O_CREAT | os.O_RDWR, 0o600))
    os.write(w, b"made")
    while True:
        time.sleep(1000)
os.close(w)
assert os.read(r, 4) == b"made"
print(json.dumps({"inner": pid, "ipc": os.stat("/proc/self/ns/ipc").st_ino}), flush=True)
while True:  # pid 1: reap the creator when it is killed (no zombie)
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1000)
"""


def nspid(pid: int) -> list[int]:
    """The NSpid line of /proc/PID/status: its pid in each PID namespace, ours first."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError("no NSpid")


def test_pids_are_the_worlds_not_the_containers(world: World) -> None:
    p = world.spawn(["unshare", "--ipc", "--pid", "--fork", "--mount-proc", "--mount",
                     "--propagation", "private", "sh", "-c",
                     f'{FRESH} && exec "$0" -c "$1" 5000', PY, INNER])  # fmt: skip
    assert p.stdout is not None
    made = json.loads(p.stdout.readline())
    # the creator as this test's /proc sees it: NSpid is (ours, ..., the world's, its own)
    import psutil

    creator = [c for c in psutil.Process(p.pid).children(recursive=True)
               if nspid(c.pid)[-1] == made["inner"] and len(nspid(c.pid)) >= 3]  # fmt: skip
    assert len(creator) == 1, creator
    ours, in_world, inner = nspid(creator[0].pid)[0], *nspid(creator[0].pid)[-2:]
    assert inner == made["inner"] and in_world != inner
    seen = drive(world)
    objs = by_ns(seen)[made["ipc"]]
    sysv = {k: o for k, o in objs.items() if k[0] in ("shm", "sem", "msg")}
    assert set(sysv) == {("shm", 5000), ("sem", 5001), ("msg", 5002)}
    for o in sysv.values():  # cpid, sempid, lspid: the world's number, the reader's
        assert o["pid"] == in_world, o
        assert o["state"] == "idle", o
    # the POSIX file's name carries the creator's pid in ITS namespace, not ours: that
    # pid says nothing here (another process, or none), so it must not make it orphan
    named = objs[("posix-shm", f"torch_{inner}_inner")]
    assert named["state"] != "orphan", named
    os.kill(ours, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(ours))
    seen = drive(world)
    objs = by_ns(seen)[made["ipc"]]
    for k in (("shm", 5000), ("sem", 5001), ("msg", 5002)):
        assert objs[k]["state"] == "orphan", objs[k]
        assert objs[k]["pid"] == in_world


# --- 3. --namespace ----------------------------------------------------------------------

SHM_ONLY = (
    "import os, sys, sysv_ipc\n"
    "sysv_ipc.SharedMemory(int(sys.argv[1]), sysv_ipc.IPC_CREX, 0o600, 4096).detach()\n"
)


def shm_ns(world: World, key: int) -> tuple[int, int]:
    """A namespace holding one idle segment of `key`: (its process's pid in the world,
    its IPC inode)."""
    p = world.spawn(["unshare", "--ipc", "sh", "-c",
                     f'"$0" -c "$1" {key} && echo $$ && exec sleep 1000', PY, SHM_ONLY])  # fmt: skip
    assert p.stdout is not None
    pid = int(p.stdout.readline())
    r = world.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/ipc"], check=True)
    return pid, int(r.stdout)


def keys(r: Any) -> set[int]:
    assert r.returncode == 0, r.stderr
    return {o["key"] for o in json.loads(r.stdout)["segments"]}


def test_namespace_lists_only_that_namespace(world: World) -> None:
    a, _ = shm_ns(world, 111)
    b, _ = shm_ns(world, 222)
    world.run([PY, "-c", SHM_ONLY, "333"], check=True)  # the world's own
    assert keys(shj(world, "list", "-A", "--json", "-m")) == {111, 222, 333}
    assert keys(shj(world, "list", "--namespace", str(a), "--json", "-m")) == {111}
    assert keys(shj(world, "list", "--namespace", "1", "--json", "-m")) == {333}  # ours
    assert keys(shj(world, "list", "--namespace", f"/proc/{b}/ns/ipc", "--json", "-m")) == {222}


def test_namespace_file_with_nobody_in_it(world: World) -> None:
    """unshare --ipc=FILE bind-mounts the namespace on FILE: it outlives its processes."""
    world.sh("mkdir /run/ipcns && touch /run/ipcns/x", check=True)
    r = world.run(["unshare", "--ipc=/run/ipcns/x", PY, "-c", SHM_ONLY, "444"])
    assert r.returncode == 0, r.stderr
    ipc = int(world.run(["stat", "-L", "-c", "%i", "/run/ipcns/x"], check=True).stdout)
    out = drive(world)
    assert ipc not in {o["ipc"] for o in out["objects"]}, "no process is in it: -A cannot see it"
    r = shj(world, "list", "--namespace", "/run/ipcns/x", "--json", "-m")
    assert keys(r) == {444}
    assert json.loads(r.stdout)["segments"][0]["state"] == "orphan"  # its creator exited


@pytest.mark.parametrize(
    "value", ["999999", "/run/plain", "/proc/1/ns/net", "/run/nothing", "/run/fifo", "/run"]
)
def test_namespace_bad_values_are_usage_errors(world: World, value: str) -> None:
    # a FIFO: open(2) would wait for a writer forever (it did, before the S_ISREG check)
    world.sh("touch /run/plain && mkfifo /run/fifo", check=True)
    r = shj(world, "list", "--namespace", value, timeout=20)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"shmjanitor: error: --namespace {value}: "), lines
    assert [ln for ln in lines if ln.startswith("shmjanitor:")] == lines[:1]
    assert r.stdout == ""


def test_all_namespaces_and_one_namespace_are_exclusive(world: World) -> None:
    r = shj(world, "list", "-A", "--namespace", "1")
    assert r.returncode == 2 and "choose one" in r.stderr and "Traceback" not in r.stderr


def test_all_namespaces_needs_cap_sys_admin(world: World) -> None:
    # root without CAP_SYS_ADMIN (setpriv drops it from the bounding set: the exec'd
    # interpreter never has it), and an ordinary uid
    runs = [["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--",
             PY, "-m", "shmjanitor"]]  # fmt: skip
    if REAL_ROOT:  # an ordinary uid, through python_as: this checkout wherever it lives
        runs.append([*python_as(1000), "-m", "shmjanitor"])
    for prefix in runs:
        for args in (["-A"], ["--namespace", "1"]):
            r = world.run([*prefix, "list", *args], cwd="/")
            assert r.returncode == 2, (prefix, r.stdout, r.stderr)
            assert r.stderr.count("\n") == 1 and "CAP_SYS_ADMIN" in r.stderr, r.stderr
            assert r.stdout == ""


# --- 4. a namespace that ends during the run --------------------------------------------

# Runs `list -A -m` with namespaces.sweep wrapped: once the sweep has found the
# namespace argv[1], its processes are killed before anything enters it.
VANISH = r"""
import os, sys, time
from shmjanitor import namespaces
victim = int(sys.argv[1])
real = namespaces.sweep
def sweep(*a, **k):
    found = real(*a, **k)
    pids = [p for place in found.places if place.ns.ipc == victim for p in place.pids]
    assert pids, "the victim was not found"
    for p in pids:
        os.kill(p, 9)
    while any(namespaces.enter([p], victim) is not None for p in pids):
        time.sleep(0.01)
    return found
namespaces.sweep = sweep
sys.argv = ["shmjanitor", "list", "-A", "-m", "--json"]
from shmjanitor.cli import main
main()
"""


def test_a_namespace_that_ends_before_it_is_read_is_a_note(world: World) -> None:
    _, keep = shm_ns(world, 555)
    _, gone = shm_ns(world, 666)
    r = world.run([PY, "-c", VANISH, str(gone)])
    assert r.returncode == 0, r.stderr
    assert keys(r) == {555}
    assert f"ipc:[{gone}]" in r.stderr and "ended before it was read" in r.stderr, r.stderr
    assert str(keep) not in r.stderr
    assert "Traceback" not in r.stderr


# --- 5. containment: a container's /dev/shm is read only where it is its own ------------

CHROOT = r"""
import os, sys, time
os.chroot(sys.argv[1])
os.chdir("/")
print(os.getpid(), flush=True)
while True:
    time.sleep(1000)
"""


def chrooted(world: World, root: str, setup: str) -> int:
    """A namespace whose process lives chrooted in `root` (made by `setup`, a script
    run in the world first): its pid in the world."""
    world.sh(setup, check=True)
    p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private",
                     PY, "-c", CHROOT, root])  # fmt: skip
    assert p.stdout is not None
    return int(p.stdout.readline())


# A tmpfs of the world below a runtime's directory (as Docker's mounts/shm are): what a
# sweep reads as a container's /dev/shm when the container names it as its own.
DECOYS = (
    "mkdir -p /run/containerd/decoy && mount -n -t tmpfs none /run/containerd/decoy && "
    "touch /run/containerd/decoy/torch_4_decoy"
)


@pytest.mark.parametrize("target", ["/run/containerd/decoy", "../../../run/containerd/decoy"])
def test_a_symlinked_dev_shm_is_resolved_inside_the_containers_root(
    world: World, target: str
) -> None:
    root = "/run/ctr"
    pid = chrooted(world, root, f"{DECOYS} && mkdir -p {root}/dev && ln -s {target} {root}/dev/shm")
    seen = drive(world)
    names = {o["name"] for o in seen["objects"]}
    assert "torch_4_decoy" not in names, "followed the container's symlink out of its root"
    ipc = int(world.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/ipc"], check=True).stdout)
    assert seen["notes"] == [], seen["notes"]  # inside its root: no /dev/shm at all
    # the same decoys are read when they are a container's own /dev/shm (a runtime's
    # mount, as Docker's mounts/shm): what the symlink would have reached out of its root
    root2 = "/run/containerd/ctr2"
    pid2 = chrooted(world, root2, f"mkdir -p {root2}/dev/shm && "
                    f"mount -n --bind /run/containerd/decoy {root2}/dev/shm")  # fmt: skip
    ipc2 = int(world.run(["stat", "-L", "-c", "%i", f"/proc/{pid2}/ns/ipc"], check=True).stdout)
    seen = drive(world)
    assert [(o["ipc"], o["name"]) for o in seen["objects"]] == [(ipc2, "torch_4_decoy")]
    assert ipc != ipc2


def test_our_run_bound_on_a_containers_dev_shm_is_not_read(world: World) -> None:
    world.sh("touch /run/torch_4_ours", check=True)
    p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c",
                     "mount -n --bind /run /dev/shm && echo $$ && exec sleep 1000"])  # fmt: skip
    assert p.stdout is not None
    pid = int(p.stdout.readline())
    seen = drive(world)
    assert "torch_4_ours" not in {o["name"] for o in seen["objects"]}
    ipc = int(world.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/ipc"], check=True).stdout)
    assert seen["notes"] == [
        f"/dev/shm of ipc:[{ipc}] (pid {pid}) not read: it is the file system mounted "
        "here on /run, not the container's /dev/shm"
    ], seen["notes"]
    r = shj(world, "list", "-A", "-M")
    assert r.returncode == 0 and "torch_4_ours" not in r.stdout
    assert "not read: it is the file system mounted here on /run" in r.stderr


@pytest.mark.parametrize("how", ["ramfs", "ext4 bind"])
def test_a_dev_shm_that_is_not_a_tmpfs_is_not_read(world: World, tmp_path: Any, how: str) -> None:
    # ramfs: a file system no mount of ours shows, so only the type check refuses it;
    # an ext4 directory bound there is refused too (and is also one of ours)
    src = tmp_path / "dir"
    src.mkdir()
    (src / "torch_4_disk").touch()
    mount = ("mount -n -t ramfs none /dev/shm && touch /dev/shm/torch_4_disk" if how == "ramfs"
             else f"mount -n --bind {src} /dev/shm")  # fmt: skip
    p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c",
                     f"{mount} && echo $$ && exec sleep 1000"])  # fmt: skip
    assert p.stdout is not None
    pid = int(p.stdout.readline())
    seen = drive(world)
    assert "torch_4_disk" not in {o["name"] for o in seen["objects"]}
    ipc = int(world.run(["stat", "-L", "-c", "%i", f"/proc/{pid}/ns/ipc"], check=True).stdout)
    assert [n for n in seen["notes"] if f"ipc:[{ipc}]" in n] == [
        f"/dev/shm of ipc:[{ipc}] (pid {pid}) not read: not a tmpfs"
    ], seen["notes"]


# --- 6. container_of: names from real cgroup lines (pure) -------------------------------

H = "3f2a9c1b7d4e" + "0123456789abcdef" * 3 + "0123"  # a 64-hex container id
POD = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718"


@pytest.mark.parametrize("cgroup,name", [
    # Docker, systemd cgroup driver (cgroup v2) and cgroupfs driver (v1, several lines)
    (f"0::/system.slice/docker-{H}.scope\n", f"docker:{H[:12]}"),
    ("".join(f"{n}:{c}:/docker/{H}\n" for n, c in ((12, "pids"), (4, "memory"))) + "0::/\n",
     f"docker:{H[:12]}"),
    (f"0::/docker/{H}\n", f"docker:{H[:12]}"),
    # Podman: root and rootless; conmon (its monitor, outside the container) is not it
    (f"0::/machine.slice/libpod-{H}.scope/container\n", f"podman:{H[:12]}"),
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{H}.scope\n",
     f"podman:{H[:12]}"),
    (f"0::/machine.slice/libpod-conmon-{H}.scope\n", None),
    # containerd (CRI) pods, systemd driver and cgroupfs driver
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}"
     f".slice/cri-containerd-{H}.scope\n", f"k8s pod {POD} containerd:{H[:12]}"),
    (f"0::/kubepods/besteffort/pod{POD}/{H}\n", f"k8s pod {POD} containerd:{H[:12]}"),
    # cri-o, and its conmon
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}"
     f".slice/crio-{H}.scope\n", f"k8s pod {POD} cri-o:{H[:12]}"),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/crio-conmon-{H}.scope\n", None),
    # systemd-nspawn: a machine scope (machinectl, nspawn from a shell) and the
    # systemd-nspawn@ service (--keep-unit: the machine is the unit); \x2d is "-"
    ("0::/machine.slice/machine-web\\x2d1.scope/payload\n", "machine:web-1"),
    ("0::/machine.slice/systemd-nspawn@web\\x2d1.service/payload/system.slice/x.service\n",
     "machine:web-1"),
    # a service; a login session's scope, pid 1's, the root cgroup: nothing to name
    ("0::/system.slice/postgresql@15-main.service\n", "unit:postgresql@15-main.service"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", None),
    ("0::/init.scope\n", None),
    ("0::/\n", None),
    ("", None),
])  # fmt: skip
def test_container_of(cgroup: str, name: Optional[str]) -> None:
    assert namespaces.container_of(cgroup) == name
