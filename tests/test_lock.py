"""One reaper at a time per IPC namespace (shmjanitor.lock).

The suite's reapers lock in $RUNTIME_DIRECTORY, a directory of the suite's
(conftest._private_runtime_directory), never in the machine's /run/shmjanitor.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from segments import Spec, make, rows

from shmjanitor import lock
from shmjanitor.errors import StateDirError

JANITOR = [sys.executable, "-m", "shmjanitor"]
REAP = ["reap", "--min-age", "0", "--include-system", "--no-quarantine", "--json"]


def test_the_lock_is_named_after_the_ipc_namespace(ipcns):
    ino = os.stat("/proc/self/ns/ipc").st_ino
    assert ipcns == f"ipc:[{ino}]"
    path = lock.default_path()
    assert path == Path(os.environ["RUNTIME_DIRECTORY"]) / f"ipc-{ino}.lock"


def test_a_reaper_in_another_ipc_namespace_does_not_wait_for_ours(tmp_path):
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text("lock_timeout = 0\n")
    ours = make(Spec()).ids
    with lock.held(lock.default_path(), 5):  # our namespace's reaper is busy
        here = subprocess.run([*JANITOR, *REAP, "--config", str(cfg)],
                              capture_output=True, text=True)  # fmt: skip
        # A container's reaper: its own IPC namespace, with an orphan of its own.
        there = subprocess.run(
            ["unshare", "--ipc", "sh", "-c",
             f'ipcmk -M 64 >/dev/null && exec "$0" -m shmjanitor {" ".join(REAP)} '
             f"--config {cfg}", sys.executable],
            capture_output=True, text=True,
        )  # fmt: skip
    assert here.returncode == 1 and "another shmjanitor" in here.stderr
    assert set(rows()) == set(ours)  # ours waits for our lock
    assert there.returncode == 0, there.stderr
    assert '"removed":1' in there.stdout  # theirs went ahead


def test_runtime_directory_counts_only_when_it_is_ours(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "ROOT_LOCK_DIR", tmp_path / "run-shmjanitor")
    ino = lock.ipc_namespace()
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/other:{tmp_path}/x/shmjanitor")
    (tmp_path / "x").mkdir()
    assert lock.default_path() == tmp_path / "x" / "shmjanitor" / f"ipc-{ino}.lock"
    # A wrapper unit's own RuntimeDirectory= is not where the timer's reaper locks.
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/other")
    if os.geteuid() == 0:
        assert lock.default_path() == tmp_path / "run-shmjanitor" / f"ipc-{ino}.lock"
        assert stat.S_IMODE((tmp_path / "run-shmjanitor").stat().st_mode) == 0o700
    assert not (tmp_path / "other").exists()


def test_a_lock_directory_open_to_others_is_refused_not_fixed(tmp_path, monkeypatch):
    run = tmp_path / "shmjanitor"
    run.mkdir()
    run.chmod(0o777)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    with pytest.raises(StateDirError, match=r"mode 0777.*not writable by others: remove it"):
        lock.default_path()
    assert stat.S_IMODE(run.stat().st_mode) == 0o777  # not chmod'ed behind anyone's back
    run.rmdir()
    run.symlink_to(tmp_path)
    with pytest.raises(StateDirError, match="not a directory"):
        lock.default_path()
