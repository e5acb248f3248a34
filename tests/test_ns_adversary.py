"""Every namespace (issue 14), tried as an attacker and as an unlucky admin would: an
ordinary user (uid 1000) with unprivileged user namespaces, in an IPC and mount
namespace of their own (`unshare --user --map-root-user`, as rootless podman makes),
gives their /dev/shm any shape they like; root's `reap -A --include-system` must remove
nothing but that namespace's own objects, and never follow anything outside it. Every
test runs in a sealed world (tests/worlds.py): -A never sees the machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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


def attacker(world: World, script: str) -> int:
    """uid 1000 in a user, IPC and mount namespace of their own, after `script` (which
    shapes its /dev/shm); a System V orphan of its own too. Its pid, as the world sees it."""
    p = world.spawn([*ROOTLESS, "sh", "-c",
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
