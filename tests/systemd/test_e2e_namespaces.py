"""End to end with a real container (issue 14): a systemd-nspawn machine leaks a System V
segment and a /dev/shm file and keeps others in use; from the host side, `list -A` names
the machine and `reap -A` clears its orphans while its running program keeps its own.
Then the timer's service inside the machine, with all_namespaces = true, reaps the
orphan of a namespace of the machine's own, once the drop-in lets it in.

SAFETY: `-A` enters every IPC namespace that a process of /proc is in. The machine is
booted INSIDE a sealed world (tests/worlds.py), and every host-side command runs there:
the world's /proc shows its own pid 1 (a private IPC namespace), the machine's
processes, and nothing of the machine's or the suite's namespaces.

    python -m pytest -m e2e tests/systemd      # or tests/systemd/run-e2e
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .nspawn import Container, NspawnUnavailable, unavailable_reason
from .test_e2e import CA_INSIDE, HOST_CA, VENV, host_ipc_ns, host_table, pip_env, stage_project

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# A program of bob's that keeps what it made: a System V segment attached, a /dev/shm
# file mapped. Runs in the machine (its python3: ctypes only).
HOLDER = r"""
import ctypes, mmap, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 8192, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
assert shmid >= 0 and libc.shmat(shmid, None, 0) != ctypes.c_void_p(-1).value
fd = os.open("/dev/shm/psm_held", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
os.ftruncate(fd, 8192)
held = mmap.mmap(fd, 8192)
with open(os.path.expanduser("~/held.id"), "w") as f:
    f.write(str(shmid))
signal.pause()
"""
LEAK_FILE = (
    "import os; fd = os.open('/dev/shm/psm_leak', os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600); "
    "os.write(fd, b'x' * 100)"
)


def cgroup_roots() -> list[Path]:
    """The hierarchies systemd-nspawn keeps its cgroup in: the cgroup2 one and, on a
    hybrid host, the named name=systemd one."""
    roots = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, opts = fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts):
                roots.append(Path(fields[4]))
    return roots


def remove_cgroups(dirs: list[Path]) -> None:
    """rmdir each tree, deepest first (a cgroup goes once its processes have)."""
    for top in dirs:
        for _ in range(50):
            if not top.exists():
                break
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            try:
                top.rmdir()
            except OSError:
                time.sleep(0.1)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Container]]:
    """A world, and a machine booted inside it, in the cgroup systemd-machined gives a
    registered machine (machine.slice/machine-NAME.scope, NAME escaped as a unit name):
    this host's PID 1 is not systemd, so nspawn runs --register=no and the test puts it
    where a systemd host would."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    from conftest import HOST_IPC_NS
    from worlds import World

    name = f"shmjt-ns-{secrets.token_hex(3)}"  # pytest's pid is 2 in every scripts/test
    scope = "machine-" + name.replace("-", "\\x2d") + ".scope"
    cgroups = [root / "machine.slice" / scope for root in cgroup_roots()]
    made = [d.parent for d in cgroups if not d.parent.exists()]
    for d in cgroups:
        d.mkdir(parents=True, exist_ok=True)
    state = tmp_path_factory.mktemp("state")
    world = World(HOST_IPC_NS, dict(os.environ, STATE_DIRECTORY=str(state)))
    c = None
    try:
        # nspawn enters its cgroup before it starts: its pid, written from the world,
        # counts in the world's PID namespace (cgroup.procs takes the writer's pids).
        enter = 'for d; do [ "$d" = -- ] && break; echo $$ > "$d/cgroup.procs" || exit 1; ' \
                'shift; done; shift; exec "$@"'  # fmt: skip
        prefix = world.argv(["sh", "-c", enter, "sh", *map(str, cgroups), "--"])
        binds = {CA_INSIDE: str(HOST_CA)} if HOST_CA.exists() else {}
        try:
            c = Container.boot(binds_ro=binds, name=name, prefix=prefix)
        except NspawnUnavailable as e:
            pytest.skip(f"cannot boot a container here: {e}")
        c.run("useradd --create-home --uid 1000 alice && useradd --create-home --uid 1001 bob")
        yield world, c
    finally:
        if c is not None:
            c.teardown()
        world.close()
        remove_cgroups(cgroups)
        for d in made:  # machine.slice, if no other test's machine is in it now
            with contextlib.suppress(OSError):
                d.rmdir()


def janitor(world: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's shmjanitor, run in the world: the host side."""
    return world.run([sys.executable, "-m", "shmjanitor", *args])


def sysv_ids(c: Container) -> dict[int, int]:
    """id -> nattch of the machine's segments, read inside it."""
    lines = c.run("cat /proc/sysvipc/shm").stdout.splitlines()[1:]
    return {int(ln.split()[1]): int(ln.split()[6]) for ln in lines if ln.strip()}


def test_host_lists_and_reaps_a_containers_leaks(machine: tuple[Any, Container]) -> None:
    world, c = machine
    host_ns = host_ipc_ns()
    host_before = host_table(host_ns)
    inside = os.stat(f"/proc/{c.leader}/ns/ipc").st_ino
    ours = int(world.run(["stat", "-L", "-c", "%i", "/proc/self/ns/ipc"], check=True).stdout)

    # -- in the machine: alice leaks (her programs exit), bob's program keeps its own --
    out = c.run(["ipcmk", "-M", "4096", "-p", "0600"], user="alice").stdout
    leaked = int(re.search(r"Shared memory id: (\d+)", out).group(1))  # type: ignore[union-attr]
    c.run(["python3", "-c", LEAK_FILE], user="alice")
    c.run(["systemd-run", "--uid=bob", "--unit=shmjt-holder", "python3", "-c", HOLDER])
    for _ in range(100):
        if c.run("test -s /home/bob/held.id", check=False).returncode == 0:
            break
        time.sleep(0.1)
    held = int(c.run("cat /home/bob/held.id").stdout)
    assert sysv_ids(c) == {leaked: 0, held: 1}

    # -- the host lists every namespace: the machine's objects, named by it ------------
    r = janitor(world, "list", "-A", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    objects = listed["segments"] + listed["posix"]
    # The seal held: only the world's namespace and the machine's were entered.
    assert {o["namespace"]["ipc"] for o in objects} <= {ours, inside}
    assert os.stat(host_ns).st_ino not in {o["namespace"]["ipc"] for o in objects}
    theirs = [o for o in objects if o["namespace"]["ipc"] == inside]
    assert {o["namespace"]["container"] for o in theirs} == {f"machine:{c.name}"}, theirs
    segs = {s["id"]: s["state"] for s in listed["segments"] if s["namespace"]["ipc"] == inside}
    assert segs == {leaked: "orphan", held: "attached"}, listed["segments"]
    files = {p["path"]: p["state"] for p in listed["posix"] if p["namespace"]["ipc"] == inside}
    assert files == {"/dev/shm/psm_leak": "orphan", "/dev/shm/psm_held": "attached"}, files

    # -- the host reaps every namespace: the orphans go, what bob's program holds stays -
    r = janitor(world, "reap", "-A", "--min-age", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    removed = [ln for ln in r.stdout.splitlines() if "action=removed" in ln]
    assert len(removed) == 2, r.stdout
    assert all(f'container="machine:{c.name}"' in ln for ln in removed), r.stdout
    assert sysv_ids(c) == {held: 1}
    assert c.run("ls /dev/shm").stdout.split() == ["psm_held"]
    assert c.run("systemctl is-active shmjt-holder").stdout.strip() == "active"

    # The machine's own table was never touched.
    assert host_table(host_ns) == host_before


def test_timer_service_sweeps_the_machines_namespaces(machine: tuple[Any, Container]) -> None:
    """Inside the machine, the timer's service with all_namespaces = true: refused by
    the unit's RestrictNamespaces=yes (a note, nothing read), let in by the drop-in."""
    _, c = machine
    src = stage_project(Path(c.root, "root/shmjanitor"))
    assert src.exists()
    c.run(f"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet /root/shmjanitor",
          env=pip_env(), timeout=600)  # fmt: skip
    c.run(f"{VENV}/bin/shmjanitor install-units")
    c.write("/etc/shmjanitor.toml", 'min_age = "0"\nall_namespaces = true\n', mode=0o644)
    # A service of the machine in an IPC namespace of its own (PrivateIPC=), where
    # alice's program leaked a segment and exited; the service's sleep keeps it alive.
    c.run(["systemd-run", "--unit=shmjt-leaky", "--uid=alice", "-p", "PrivateIPC=yes",
           "sh", "-c", "ipcmk -M 4096 -p 0600 && exec sleep infinity"])  # fmt: skip
    pid = leaky_pid(c)

    def table() -> str:
        return c.run(["nsenter", "-t", pid, "-i", "cat", "/proc/sysvipc/shm"]).stdout

    assert len(table().splitlines()) == 2, table()

    c.run("systemctl start shmjanitor.service")
    journal = c.journal("shmjanitor.service")
    assert "not read: setns: Operation not permitted" in journal, journal
    assert len(table().splitlines()) == 2, journal  # not reaped: it could not get in
    # doctor reads the unit's lines as this systemd does (RestrictNamespaces=yes: no
    # type allowed), and says what the run exited 0 over.
    assert doctor_says(c) == "warning"

    c.run("mkdir -p /etc/systemd/system/shmjanitor.service.d")
    c.write("/etc/systemd/system/shmjanitor.service.d/all-namespaces.conf",
            (REPO / "systemd/all-namespaces.conf").read_text())  # fmt: skip
    c.run("systemctl daemon-reload")
    c.run("systemctl start shmjanitor.service")
    journal = c.journal("shmjanitor.service")
    assert c.run("systemctl show -p Result shmjanitor.service").stdout.strip() == (
        "Result=success"
    ), journal
    assert len(table().splitlines()) == 1, journal  # the header alone: reaped
    removed = [ln for ln in journal.splitlines() if "action=removed" in ln]
    assert any('container="unit:shmjt-leaky.service"' in ln for ln in removed), journal
    # systemd merged the drop-in's line into the unit's as doctor does: ipc alone.
    shown = c.run("systemctl show -p RestrictNamespaces --value shmjanitor.service")
    assert shown.stdout.split() == ["ipc"], shown.stdout
    assert doctor_says(c) == "ok"


def doctor_says(c: Container) -> str:
    """The severity of doctor's all_namespaces finding inside the machine."""
    r = c.run(f"{VENV}/bin/shmjanitor doctor --json", check=False)
    found = {f["check"]: f for f in json.loads(r.stdout)["findings"]}
    return str(found["all_namespaces"]["severity"])


def leaky_pid(c: Container) -> str:
    for _ in range(100):
        pid = c.run("systemctl show -p MainPID --value shmjt-leaky", check=False).stdout.strip()
        if pid not in ("", "0"):
            return pid
        time.sleep(0.1)
    raise AssertionError("shmjt-leaky.service did not start")
