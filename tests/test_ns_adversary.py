"""Every namespace (issue 14), tried as an attacker and as an unlucky admin would: an
ordinary user (uid 1000) with unprivileged user namespaces, in an IPC and mount
namespace of their own (`unshare --user --map-root-user`, as rootless podman makes),
gives their /dev/shm any shape they like; root's `reap -A --include-system` must remove
nothing but that namespace's own objects, and never follow anything outside it. Every
test runs in a sealed world (tests/worlds.py): -A never sees the machine."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from worlds import World

PY = sys.executable
USER = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
ROOTLESS = [*USER, "unshare", "--user", "--map-root-user", "--ipc", "--mount"]

# Root's files, in the world's /run (a tmpfs of the janitor's own mount namespace) and
# in a directory of the world's own /dev/shm: named as an exited program's leak would be
# (torch_<pid of an exited shell>_...), old, so that reaching them is removing them.
ROOTS_FILES = r"""
dead=$(sh -c 'echo $$')
mkdir -m 0755 /run/victim /dev/shm/rootdir
for d in /run/victim /dev/shm/rootdir; do
    for n in 1 2; do echo "root's $d $n" > $d/torch_${dead}_${n}_x; done
    chmod 0666 $d/torch_${dead}_1_x
    touch -d '2 days ago' $d/*
done
echo $dead
"""


def roots_files(world: World) -> set[str]:
    r = world.sh(ROOTS_FILES, check=True)
    dead = r.stdout.split()[-1]
    return {f"{d}/torch_{dead}_{n}_x" for d in ("/run/victim", "/dev/shm/rootdir") for n in (1, 2)}


def attacker(world: World, script: str, cgroup: Optional[str] = None) -> int:
    """uid 1000 in a user, IPC and mount namespace of their own, after `script` (which
    shapes its /dev/shm); a System V orphan of its own too. Its pid, as the world sees it.
    `cgroup`: a cgroup it makes first in its delegated subtree and moves into."""
    into = (
        []
        if cgroup is None
        else ["sh", "-c", 'mkdir "$0" && echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup]
    )
    p = world.spawn([*USER, *into, *ROOTLESS[len(USER):], "sh", "-c",
                     f"set -e; {script}\nipcmk -M 4096 >/dev/null; echo $$; exec sleep 1000"])  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip().isdigit(), f"the attacker's set-up failed: {line!r}"
    return int(line)


def reap_all(world: World, state: Path, *args: str) -> Any:
    r = world.run([PY, "-m", "shmjanitor", "reap", "-A", "--min-age", "0", "--include-system",
                   "--json", "--state-dir", str(state), *args])  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    return r


def exist(world: World, paths: set[str]) -> set[str]:
    return {p for p in paths if world.run(["test", "-e", p]).returncode == 0}


# An attacker's /dev/shm that is not theirs: a symlink (absolute, relative, climbing out
# with ../), or a bind mount of a directory root owns on a tmpfs of ours (/run), or of
# a directory of our own /dev/shm. The symlinks need a /dev of their own (a tmpfs: the
# world's /dev is not theirs to write).
SHAPES = {
    "absolute symlink": "mount -n -t tmpfs none /dev; ln -s /run/victim /dev/shm",
    "relative symlink": "mount -n -t tmpfs none /dev; ln -s ../run/victim /dev/shm",
    "climbing symlink": "mount -n -t tmpfs none /dev; ln -s ../../../../../run/victim /dev/shm",
    "bind of /run": "mount -n --bind /run/victim /dev/shm",
    "bind of our /dev/shm": "mount -n --bind /dev/shm/rootdir /dev/shm",
    "symlink to our /dev/shm": "mount -n -t tmpfs none /dev; ln -s /dev/shm/rootdir /dev/shm",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_attackers_dev_shm_that_is_not_theirs_is_never_reaped(world, tmp_path, shape):
    mine = roots_files(world)
    pid = attacker(world, SHAPES[shape])
    listed = world.run([PY, "-m", "shmjanitor", "list", "-A", "--json"])
    assert listed.returncode == 0, listed.stderr
    paths = {o["path"] for o in json.loads(listed.stdout)["posix"]}
    assert not any("torch_" in p for p in paths), (shape, paths, listed.stderr)
    r = reap_all(world, tmp_path / "state")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [x for x in results if "path" in x] == [], results
    assert exist(world, mine) == mine, shape
    # its own System V orphan went: it was swept, only its /dev/shm was refused
    assert any(x["action"] == "removed" and x["kind"] == "shm" for x in results), results
    assert world.run(["test", "-e", f"/proc/{pid}"]).returncode == 0


# --namespace PATH as an unlucky admin types it: a FIFO (an open(2) for reading waits
# for a writer: it must not hang), a directory, a plain file, a device, another kind of
# namespace, and -A as an ordinary user.
NOT_IPC = {
    "fifo": "mkfifo /run/f && echo /run/f",
    "directory": "echo /run",
    "regular file": "echo x > /run/r && echo /run/r",
    "net namespace": "echo /proc/self/ns/net",
    "device": "echo /dev/null",
    "missing": "echo /run/nothing",
    "pid 0": "echo 0",
}


@pytest.mark.parametrize("what", sorted(NOT_IPC))
def test_namespace_that_is_not_an_ipc_namespace_is_a_usage_error(world, tmp_path, what):
    path = world.sh(NOT_IPC[what], check=True).stdout.strip()
    for cmd in (["list"], ["reap", "--dry-run"], ["explain", "-m", "0"]):
        r = world.run([PY, "-m", "shmjanitor", *cmd, "--namespace", path], timeout=20)
        assert r.returncode == 2, (what, cmd, r.stdout, r.stderr)
        assert r.stderr.startswith(f"shmjanitor: error: --namespace {path}: "), r.stderr
        assert "Traceback" not in r.stderr


def python_in(world: World, uid: int) -> list[str]:
    """conftest.python_as(uid) inside the world: its readable copy of the package, copied
    into the world's own /run (which hides the suite's)."""
    import shutil

    from conftest import python_as

    argv = python_as(uid)
    venv = Path(argv[-2]).parent.parent
    dst = Path(f"/proc/{world.init}/root/run/py")
    if not dst.exists():
        shutil.copytree(venv, dst, symlinks=True)
    return [*argv[:-2], "/run/py/bin/python", "-I"]


def test_all_namespaces_as_an_ordinary_user_is_refused(world, tmp_path):
    for cmd in (["list"], ["reap", "--dry-run"], ["rm", "-m", "0"]):
        for flag in (["-A"], ["--namespace", "1"]):
            r = world.run([*python_in(world, 1000), "-m", "shmjanitor", *cmd, *flag],
                          env=dict(world.env, STATE_DIRECTORY="/tmp"), timeout=20)  # fmt: skip
            assert r.returncode == 2, (cmd, flag, r.stdout, r.stderr)
            assert "CAP_SYS_ADMIN" in r.stderr and "Traceback" not in r.stderr, r.stderr


# --- names a user chooses -------------------------------------------------------------
# A user's systemd instance (user@UID.service) is delegated its cgroup subtree
# (Delegate=yes): they may make any cgroup below it and move their processes there, as
# rootless podman does (.../user@1000.service/user.slice/libpod-<id>.scope). Its name is
# theirs: any byte but '/' and NUL (cgroup_mkdir refuses a newline; systemd's \x0a
# escape, which container_of undoes, makes one).
CGROUP_V1 = Path("/sys/fs/cgroup/systemd")


@pytest.fixture
def delegated() -> Any:
    """uid 1000's delegated subtree, in the name=systemd hierarchy (no controller: moving
    a process there limits nothing); removed after the test, its processes moved out."""
    if not (CGROUP_V1 / "cgroup.procs").exists():
        pytest.skip("no name=systemd cgroup hierarchy to delegate a subtree of")
    base = CGROUP_V1 / f"shmjt-{os.getpid()}"
    user = base / "user.slice" / "user-1000.slice" / "user@1000.service"
    user.mkdir(parents=True)
    os.chown(user, 1000, 1000)
    for f in ("cgroup.procs", "tasks"):
        os.chown(user / f, 1000, 1000)
    yield str(user)
    for d in sorted(base.rglob("*"), key=lambda p: -len(p.parts)) + [base]:
        if d.is_dir():
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (CGROUP_V1 / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                d.rmdir()


# ESC, BEL, CR, and "\\x0a" as it is (systemd's escape of a newline: unescape_unit's)
EVIL = "e\x1b]0;pwn\x07\r\\x0aX\x1b[2K"


def test_a_container_name_a_user_chose_is_printed_escaped_on_one_line(world, tmp_path, delegated):
    name = f"machine-{EVIL}.scope"
    cg = f"{delegated}/machine.slice/{name}"
    Path(cg).parent.mkdir()
    os.chown(Path(cg).parent, 1000, 1000)
    roots_files(world)
    pid = attacker(world, SHAPES["bind of /run"], cgroup=cg)
    outs = [world.run([PY, "-m", "shmjanitor", "list", "-A"]),
            reap_all(world, tmp_path / "s", "--dry-run"),
            world.run([PY, "-m", "shmjanitor", "reap", "-A", "--min-age", "0", "-v",
                       "--state-dir", str(tmp_path / "s")])]  # fmt: skip
    for r in outs:
        assert r.returncode == 0, r.stderr
        for text in (r.stdout, r.stderr):
            assert not any(c in text for c in "\x1b\x07\r"), text
        # the note that its /dev/shm was refused, and the log line of its removal, are
        # each one line that names it
        assert any(f"pid {pid}" in line and "not read" in line for line in r.stderr.splitlines()), (
            r.stderr
        )
    assert any("container=" in line and "removed" in line for line in outs[2].stdout.splitlines())


SECRET = ("import sysv_ipc; m = sysv_ipc.SharedMemory(0x5EC12E7, sysv_ipc.IPC_CREX, size=4096); "
          "m.write(b'the secret of web'); print(m.id)")  # fmt: skip


def test_restore_never_goes_into_a_later_namespace_that_took_a_containers_name(
    world, tmp_path, delegated
):
    """A machine (root's cgroup machine.slice/machine-web.scope) leaks a segment holding
    a secret; reap --namespace quarantines it; the machine stops. Its IPC namespace's
    inode is given to the next namespace made (nsfs numbers come from one IDA,
    proc_alloc_inum: the lowest free one): here a user's, in a cgroup of their own
    delegated subtree with the same name (.../user@1000.service/machine.slice/
    machine-web.scope). The reuse is made certain by writing the user's inode in the
    quarantine run's record (a hunt for the number works, but not on every try). Root's
    restore must not put the secret into the user's namespace: a name a user can give
    their cgroup is not the container's."""
    base = Path(delegated).parents[2]
    web = base / "machine.slice" / "machine-web.scope"
    web.mkdir(parents=True)
    state = tmp_path / "state"
    p = world.spawn(["sh", "-c", f'echo $$ > {web}/cgroup.procs && exec unshare --ipc sh -c '
                     f'"{PY} -c \\"{SECRET}\\" && echo \\$\\$ && exec sleep 1000"'])  # fmt: skip
    assert p.stdout is not None
    p.stdout.readline()  # the segment's id
    pid = int(p.stdout.readline())
    ipc = os.readlink(f"/proc/{world.init}/root/proc/{pid}/ns/ipc")[5:-1]
    r = world.run([PY, "-m", "shmjanitor", "reap", "--namespace", str(pid), "--min-age", "0",
                   "--include-system", "--json", "--state-dir", str(state)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    entries = json.loads(world.run([PY, "-m", "shmjanitor", "quarantine", "list", "--json",
                                    "--state-dir", str(state)]).stdout)["entries"]  # fmt: skip
    (entry,) = [e for e in entries if e.get("key") == 0x5EC12E7]
    world.run(["kill", "-KILL", str(pid)], check=True)
    mine = f"{delegated}/machine.slice/machine-web.scope"
    Path(mine).parent.mkdir()
    os.chown(Path(mine).parent, 1000, 1000)
    theirs = attacker(world, "true", cgroup=mine)
    later = os.readlink(f"/proc/{world.init}/root/proc/{theirs}/ns/ipc")[5:-1]
    (run,) = (state / "quarantine").glob("*.json")
    text = run.read_text()
    assert f'"ipc_ns": {ipc},' in text and '"container": "machine:web"' in text, text
    run.write_text(text.replace(f'"ipc_ns": {ipc},', f'"ipc_ns": {later},'))
    listed = json.loads(world.run([PY, "-m", "shmjanitor", "list", "-A", "--json"]).stdout)
    assert any(o["cpid"] == 0 or o["uid"] == 1000 for o in listed["segments"])  # theirs is seen
    r = world.run([PY, "-m", "shmjanitor", "restore", entry["entry"], "--state-dir", str(state)])
    assert "Traceback" not in r.stderr
    shown = world.run(["nsenter", "-t", str(theirs), "-i", "ipcs", "-m"], check=True).stdout
    assert "0x05ec12e7" not in shown, (r.stdout, r.stderr)
    assert r.returncode == 1 and "may be another one now" in r.stderr, (r.stdout, r.stderr)


def test_restore_finds_a_root_containers_namespace_by_its_name(world, tmp_path, delegated):
    """The other side: a container root named (its cgroup root's own) is found again by
    its name when the process recorded has exited but the namespace lives on."""
    web = Path(delegated).parents[2] / "machine.slice" / "machine-web.scope"
    web.mkdir(parents=True)
    state = tmp_path / "state"
    p = world.spawn(["sh", "-c", f'echo $$ > {web}/cgroup.procs && exec unshare --ipc sh -c '
                     f'"{PY} -c \\"{SECRET}\\" && sleep 1000 & echo \\$\\$; exec sleep 1000"'])  # fmt: skip
    assert p.stdout is not None
    first = int(p.stdout.readline())
    world.run([PY, "-c", "import time; time.sleep(1)"])  # the segment made, its maker gone
    r = world.run([PY, "-m", "shmjanitor", "reap", "--namespace", str(first), "--min-age", "0",
                   "--include-system", "--json", "--state-dir", str(state)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    entries = json.loads(world.run([PY, "-m", "shmjanitor", "quarantine", "list", "--json",
                                    "--state-dir", str(state)]).stdout)["entries"]  # fmt: skip
    (entry,) = [e for e in entries if e.get("key") == 0x5EC12E7]
    world.run(["kill", "-KILL", str(first)], check=True)
    r = world.run([PY, "-m", "shmjanitor", "restore", entry["entry"], "--state-dir", str(state)])
    assert r.returncode == 0, r.stderr
    left = world.sh(f"cat {web}/cgroup.procs").stdout.split()
    (other,) = [x for x in left if x != str(first)]
    shown = world.run(["nsenter", "-t", other, "-i", "ipcs", "-m"], check=True).stdout
    assert "0x05ec12e7" in shown


# --- pids another PID namespace has --------------------------------------------------

IDLE = ("import sys, sysv_ipc, time; m = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, "
        "size=4096); m.detach(); print(m.id, flush=True); time.sleep(1000)")  # fmt: skip


def test_a_creator_in_a_pid_namespace_we_cannot_see_is_not_judged_dead(world, tmp_path):
    """A namespace of the world, entered from outside it (as a pod's containers share one
    IPC namespace, each in its own PID namespace): the segment's live creator has no pid
    in the world's PID namespace, and the kernel prints its cpid as 0 there. Its segment
    must not be reaped as an orphan."""
    import psutil

    p = world.spawn(["unshare", "--ipc", "sh", "-c", "echo $$; exec sleep 1000"])
    assert p.stdout is not None
    inner = int(p.stdout.readline())
    (outer,) = psutil.Process(p.pid).children()
    outside = subprocess.Popen(["nsenter", "-t", str(outer.pid), "--ipc", PY, "-c", IDLE],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert outside.stdout is not None
        shmid = int(outside.stdout.readline())
        listed = json.loads(world.run([PY, "-m", "shmjanitor", "list", "--namespace",
                                       str(inner), "--json"]).stdout)  # fmt: skip
        (seg,) = [s for s in listed["segments"] if s["id"] == shmid]
        assert seg["cpid"] == 0, seg
        assert seg["state"] != "orphan", seg
        r = world.run([PY, "-m", "shmjanitor", "reap", "--namespace", str(inner), "--min-age",
                       "0", "--include-system", "--json", "--state-dir", str(tmp_path / "s")])  # fmt: skip
        assert r.returncode == 0, r.stderr
        shown = world.run(["nsenter", "-t", str(inner), "-i", "ipcs", "-m", "-i", str(shmid)])
        assert shown.returncode == 0, (r.stdout, shown.stderr)
    finally:
        outside.kill()
        outside.wait()


# --- a child killed mid-reap -----------------------------------------------------------

KILLED_AFTER_RMID = """
import os, signal, sys
from shmjanitor import namespaces
import shmjanitor.kinds.shm as shm
real = shm.rmid
def rmid(id):
    real(id)
    if namespaces.working is not None:  # the child inside the namespace: killed there
        os.kill(os.getpid(), signal.SIGKILL)
shm.rmid = rmid
from shmjanitor.cli import main
sys.argv[0] = "shmjanitor"
main()
"""


def test_a_child_killed_mid_reap_is_exit_1_and_its_run_settles_next_time(world, tmp_path):
    from test_ns_reap import ids, make_ns

    a = make_ns(world, "a")
    state = tmp_path / "state"
    args = ["reap", "--namespace", str(a["pid"]), "--min-age", "0", "--include-system",
            "--state-dir", str(state), "-m"]  # fmt: skip
    r = world.run([PY, "-c", KILLED_AFTER_RMID, *args])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "died without an answer (killed by signal 9)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # removed, and no journal line said so
    assert ids(world, a["pid"], "-m") == {a["shm"]["attached"], a["shm"]["idle"]}
    r = world.run([PY, "-m", "shmjanitor", *args])  # the next run there settles it
    assert r.returncode == 0, r.stderr
    entries = json.loads(world.run([PY, "-m", "shmjanitor", "quarantine", "list", "--json",
                                    "--state-dir", str(state)]).stdout)["entries"]  # fmt: skip
    (e,) = [e for e in entries if e["kind"] == "shm" and e["id"] == a["shm"]["orphan"]]
    r = world.run([PY, "-m", "shmjanitor", "restore", e["entry"], "--state-dir", str(state)])
    assert r.returncode == 0, (e, r.stderr)
    shown = world.run(["nsenter", "-t", str(a["pid"]), "-i", "ipcs", "-m"], check=True).stdout
    assert f"0x{e['key']:08x}" in shown


# --- restore into a namespace that changed its /dev/shm ---------------------------------


@pytest.mark.parametrize("now", ["bind of /run", "absolute symlink"])
def test_restore_into_a_dev_shm_that_is_now_roots_is_refused(world, tmp_path, now):
    mine = roots_files(world)
    dead = next(iter(mine)).split("_")[1]
    pid = attacker(
        world, f"mount -n -t tmpfs none /dev/shm; echo theirs > /dev/shm/torch_{dead}_7_y"
    )
    state = tmp_path / "state"
    r = reap_all(world, state)
    assert r.returncode == 0, r.stderr
    entries = json.loads(world.run([PY, "-m", "shmjanitor", "quarantine", "list", "--json",
                                    "--state-dir", str(state)]).stdout)["entries"]  # fmt: skip
    (e,) = [e for e in entries if e.get("path", "").endswith("_7_y")]
    # the user now gives their namespace root's directory as its /dev/shm
    change = SHAPES[now].replace("mount -n -t tmpfs none /dev;", "mount -n -t tmpfs none /dev &&")
    world.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", f"umount /dev/shm; {change}"],
              check=True)  # fmt: skip
    before = world.sh("ls -A /run/victim /dev/shm/rootdir").stdout
    r = world.run([PY, "-m", "shmjanitor", "restore", e["entry"], "--state-dir", str(state)])
    assert "Traceback" not in r.stderr
    assert world.sh("ls -A /run/victim /dev/shm/rootdir").stdout == before, r.stdout
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "/dev/shm is not one to restore into" in r.stderr, r.stderr
    assert exist(world, mine) == mine


# --- races between the sweep and the child's work ---------------------------------------

RACE = """
import os, signal, subprocess, sys, time
from shmjanitor import config, namespaces, reaping
mode, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sweep = namespaces.sweep(only=int(os.stat(f"/proc/{a}/ns/ipc").st_ino))
if mode == "recycled":  # a's last process exits; its pid is given to one in b's namespace
    os.kill(a, signal.SIGKILL)
    while os.path.exists(f"/proc/{a}"):
        time.sleep(0.01)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(a - 1))
    p = subprocess.Popen(["nsenter", "-t", str(b), "-i", "-m", "sleep", "1000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert p.pid == a, (p.pid, a)
else:  # a's /dev/shm is now a bind of root's directory of /run
    subprocess.run(["nsenter", "-t", str(a), "-m", "sh", "-c",
                    "umount /dev/shm && mount -n --bind /run/victim /dev/shm"], check=True)
cfg = config.load(None).with_overrides(min_age=0, include_system=True)
o = reaping.reap_all(sweep, cfg, dry_run=False, quarantine=True, state_dir=None,
                     hooks=reaping.Hooks(on_note=lambda t: print("NOTE", t)))
done = [(r.action.value, getattr(r.verdict.obj, "path", None)) for r in o.results]
print("OK", o.ok, sorted(done, key=str), flush=True)
if mode == "recycled":
    p.kill()
"""


def test_a_pid_recycled_into_another_namespace_is_not_entered(world, tmp_path):
    from test_ns_reap import left_in, make_ns

    a, b = make_ns(world, "a"), make_ns(world, "b")
    before = left_in(world, b)
    r = world.run([PY, "-c", RACE, "recycled", str(a["pid"]), str(b["pid"])])
    assert r.returncode == 0, r.stderr
    assert "ended before it was entered" in r.stdout and "OK True []" in r.stdout, r.stdout
    assert left_in(world, b) == before


def test_a_dev_shm_replaced_after_the_sweep_is_not_read(world, tmp_path):
    mine = roots_files(world)
    pid = attacker(world, "mount -n -t tmpfs none /dev/shm")
    r = world.run([PY, "-c", RACE, "replaced", str(pid), "0"])
    assert r.returncode == 0, r.stderr
    assert "OK True [('removed', None)]" in r.stdout, r.stdout  # its segment only
    assert exist(world, mine) == mine


def test_what_else_a_user_puts_in_their_own_dev_shm_is_never_followed(world, tmp_path):
    """Their own tmpfs as /dev/shm, holding (each named as an exited program's leak): a
    FIFO, a socket, a symlink to root's file, root's file and /dev/null bind-mounted
    over names of theirs, and a file of theirs with the very name of root's file in our
    /dev/shm (held by a root process). Only their own file goes."""
    mine = roots_files(world)
    dead = next(iter(mine)).split("_")[1]
    held = world.spawn(["sh", "-c", f"echo root > /dev/shm/torch_{dead}_9_x; "
                        f"exec sleep 1000 3</dev/shm/torch_{dead}_9_x"])  # fmt: skip
    mine.add(f"/dev/shm/torch_{dead}_9_x")
    n = f"/dev/shm/torch_{dead}"
    script = (
        f"mount -n -t tmpfs none /dev/shm; mkfifo {n}_3_x; "
        f"/usr/bin/python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('{n}_4_x')\"; "
        f"ln -s /run/victim/torch_{dead}_1_x {n}_5_x; "
        f"touch {n}_6_x {n}_8_x; mount -n --bind /run/victim/torch_{dead}_2_x {n}_6_x; "
        f"mount -n --bind /dev/null {n}_8_x; echo theirs > {n}_9_x"
    )
    pid = attacker(world, script)
    r = reap_all(world, tmp_path / "state")
    assert r.returncode == 0, r.stderr
    posix = [(x["action"], x["path"]) for x in json.loads(r.stdout)["results"] if "path" in x]
    assert posix == [("removed", f"{n}_9_x")], posix
    left = world.run(["nsenter", "-t", str(pid), "-m", "ls", "/dev/shm"]).stdout.split()
    assert sorted(left) == [f"torch_{dead}_{i}_x" for i in (3, 4, 5, 6, 8)], left
    assert exist(world, mine) == mine
    assert world.run(["cat", f"/run/victim/torch_{dead}_2_x"]).stdout.startswith("root's")
    assert world.run(["cat", f"/dev/shm/torch_{dead}_9_x"]).stdout == "root\n"
    held.kill()


# The parent of a restore's child had already looked at its own /dev/shm (as settling a
# pending run of its own namespace does, posixrm's directory fd kept open): the child
# inherits that fd, and must not restore into it.
OPENED_OURS_FIRST = """
import sys
from shmjanitor import posixrm
posixrm.SHM.fd()
from shmjanitor.cli import main
sys.argv[0] = "shmjanitor"
main()
"""


def test_a_posix_restore_goes_into_its_namespace_even_when_ours_was_opened_first(world, tmp_path):
    from test_ns_reap import files, make_ns

    b = make_ns(world, "b")
    state = tmp_path / "state"
    r = world.run([PY, "-m", "shmjanitor", "reap", "--namespace", str(b["pid"]), "--min-age",
                   "0", "--include-system", "--state-dir", str(state)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    entries = json.loads(world.run([PY, "-m", "shmjanitor", "quarantine", "list", "--json",
                                    "--state-dir", str(state)]).stdout)["entries"]  # fmt: skip
    (e,) = [e for e in entries if e.get("path", "").startswith("/dev/shm/torch_")]
    r = world.run([PY, "-c", OPENED_OURS_FIRST, "restore", e["entry"], "--state-dir", str(state)])
    assert r.returncode == 0, r.stderr
    assert e["path"] not in files(world, 1, "/dev/shm"), "restored into ours"
    assert e["path"] in files(world, b["pid"], "/dev/shm")
