"""A sealed world for tests of every namespace (issue 14): `list -A` and `reap -A` enter
every IPC namespace a process of /proc is in, so they must only ever run where /proc
shows no process of the machine's own namespaces.

The suite's PID namespace does show one: its pid 1 (scripts/test's bash) stays in the
machine's IPC namespace, and so would be swept. A World is a PID namespace of its own,
with its own /proc, whose pid 1 is already in a private IPC namespace and a private
mount namespace with a fresh /dev/shm, /dev/mqueue and /run: every process it shows
descends from that pid 1. Its pid 1 checks that on start (no process of the machine's
IPC namespace, not the machine's /dev/shm) and refuses to start otherwise.

Commands run inside with nsenter (its IPC, mount and PID namespaces: the command is
forked into the world's PID namespace and sees its /proc).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Optional

import psutil

_INIT = r"""
# The suite's own directory of /run (conftest.SUITE_RUN: python_as's copy of this
# checkout, readable by every uid) stays visible under the world's fresh /run: bound on
# /dev/shm for a moment (about to get a tmpfs of its own), then moved.
keep=/run/shmjt-suite
kept=
if [ -d "$keep" ]; then mount -n --bind "$keep" /dev/shm && kept=1 || exit 99; fi
mount -n -t tmpfs -o mode=0755 none /run || exit 99
if [ -n "$kept" ]; then mkdir "$keep" && mount -n --move /dev/shm "$keep" || exit 99; fi
mount -n -t tmpfs -o mode=1777,nosuid,nodev none /dev/shm || exit 99
if [ -d /dev/mqueue ]; then mount -n -t mqueue -o nosuid,nodev,noexec none /dev/mqueue || exit 99; fi
for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/ns/ipc" 2>/dev/null)" = "$MACHINE_IPC" ]; then
        echo "UNSAFE: $p is in the machine's IPC namespace"; exit 98
    fi
done
echo ready
exec sleep infinity
"""


class World:
    """A sealed PID + IPC + mount namespace; `run` and `spawn` commands in it."""

    def __init__(self, machine_ipc: str, env: Optional[dict[str, str]] = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.env["MACHINE_IPC"] = machine_ipc
        # A world shares the machine's /var/lib: shmjanitor's state (the history a
        # `list` writes, the quarantine) goes to a directory of its own, always.
        if not self.env.get("STATE_DIRECTORY"):
            self._state = tempfile.mkdtemp(prefix="shmjt-world-state.")
            self.env["STATE_DIRECTORY"] = self._state
        self._unshare = subprocess.Popen(
            ["unshare", "--ipc", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child", "--mount-proc", "sh", "-c", _INIT],
            stdout=subprocess.PIPE, text=True, env=self.env,
        )  # fmt: skip
        assert self._unshare.stdout is not None
        line = self._unshare.stdout.readline().strip()
        if line != "ready":
            self._unshare.kill()
            raise RuntimeError(f"the world did not start: {line or self._unshare.wait()}")
        kids = psutil.Process(self._unshare.pid).children()
        assert len(kids) == 1, kids
        self.init = kids[0].pid  # its pid 1, as our /proc numbers it
        self._spawned: list[subprocess.Popen[Any]] = []

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-i", "-m", "-p", "--", *cmd]

    def run(
        self, cmd: Sequence[str], check: bool = False, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("env", self.env)
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, check=check,
                              timeout=kw.pop("timeout", 120), **kw)  # fmt: skip

    def spawn(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        """A long-lived process in the world (killed with it)."""
        kw.setdefault("env", self.env)
        kw.setdefault("stdout", subprocess.PIPE)
        p = subprocess.Popen(self.argv(cmd), text=True, **kw)
        self._spawned.append(p)
        return p

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], **kw)

    def close(self) -> None:
        for p in self._spawned:
            p.kill()
        self._unshare.kill()  # --kill-child: its pid 1 goes, and the world with it
        self._unshare.wait()
        for p in self._spawned:
            p.wait()
        assert self._unshare.stdout is not None
        self._unshare.stdout.close()
        if getattr(self, "_state", None):
            shutil.rmtree(self._state, ignore_errors=True)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
