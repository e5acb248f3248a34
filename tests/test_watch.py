"""`shmjanitor watch` (issue 15 item 5): real programs make real objects and exit before
any `list` runs; the watch, polling meanwhile, is what names them afterwards.

Each test has its own state directory ($STATE_DIRECTORY) and IPC namespace (conftest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sysv_ipc
from conftest import SUITE_RUN, python_as
from segments import cli

from shmjanitor import history
from shmjanitor.watch import Watcher, parse_interval, tokens

ALICE = 1000

# Makes a segment and a POSIX file, uses them for a second, and exits by itself: a
# program an hourly timer never sees alive. Run as alice, whose last process it is: both
# objects are orphans once it exits.
QUICK = """
import os, sys, time, sysv_ipc
seg = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, 0o600, 8192)
fd = os.open("/dev/shm/quick-buf", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
os.write(fd, b"x" * 5000)
time.sleep(1)
"""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(d))
    monkeypatch.delenv(history.NOW_ENV, raising=False)
    return d


def start_watch(interval: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "shmjanitor", "watch", "--interval", interval],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)  # its first poll is done: what follows is new to it
    assert p.poll() is None, p.stderr.read() if p.stderr else ""
    return p


def stop(p: subprocess.Popen[str]) -> tuple[int, str]:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    return p.returncode, err


def listed() -> list[dict[str, Any]]:
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    return doc["segments"] + doc["posix"]


def test_a_program_that_exits_within_2s_is_named_after_watch_saw_it(state):
    script = SUITE_RUN / "quick.py"
    script.write_text(QUICK)
    w = start_watch("0.2s")
    try:
        began = time.monotonic()
        subprocess.run([*python_as(ALICE), str(script), "--quick"], check=True, timeout=10)
        assert time.monotonic() - began < 2.5  # it lived about a second
        time.sleep(0.5)  # a poll after its exit: nothing more to see, nothing lost
    finally:
        rc, err = stop(w)
    assert rc == 0, err
    after = listed()
    assert len(after) == 2, after  # its segment and its file, left behind
    for o in after:
        assert o["state"] == "orphan", o
        made = o["made_by"]
        assert made is not None, o
        assert made["command"].endswith(f"{script} --quick"), made
        assert made["user"] == "alice", made
    r = cli("leaks", "--json", "--since", "1h")
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)["leaks"]
    assert row["command"].endswith(f"{script} --quick") and row["leaked"] == 2, row


def test_watch_stops_cleanly_on_sigterm_between_polls(state):
    w = start_watch("60s")  # asleep until the next poll, a minute away
    began = time.monotonic()
    rc, err = stop(w)
    assert rc == 0 and err == "", err
    assert time.monotonic() - began < 5  # the signal ended the wait, not the interval


def test_a_poll_with_nothing_new_writes_nothing(state):
    seg = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, 0o600, 4096)
    try:
        seg.attach()  # lpid is ours: a poll that looked at it again would write it down
        notes: list[str] = []
        w = Watcher(state, notes.append)
        assert w.poll() == 1  # the first poll: the segment, its maker alive (this test)
        db, wal = state / history.FILE, state / f"{history.FILE}-wal"

        def files() -> list[tuple[int, int]]:
            return [(p.stat().st_size, p.stat().st_mtime_ns) for p in (db, wal) if p.exists()]

        before = files()
        time.sleep(0.05)
        assert w.poll() == 0  # the same table
        assert files() == before
        # A changed table (nattch 2, a new atime) with no new id: still nothing written.
        again = sysv_ipc.SharedMemory(seg.key)
        again.attach()
        time.sleep(0.05)
        assert w.poll() == 0
        assert files() == before
        again.detach()
        assert notes == []
        (made,) = [o["made_by"] for o in listed()]
        assert made is not None and made["command"], made
    finally:
        seg.detach()
        seg.remove()


def test_tokens_and_interval_parse_as_documented():
    text = (
        "       key      shmid perms\n    -12345          7   600\n\n         0          8   600\n"
    )
    assert set(tokens(text)) == {("-12345", "7"), ("0", "8")}
    assert parse_interval("5s") == 5 and parse_interval("500ms") == 0.5
    assert parse_interval("0.2s") == pytest.approx(0.2) and parse_interval("1m") == 60
    for bad in ("0", "-1s", "fast", "2d"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_watch_refuses_a_bad_interval_with_exit_2(state):
    r = cli("watch", "--interval", "soon")
    assert r.exit_code == 2 and "--interval" in r.output, r.output
    assert not os.path.exists(state / history.FILE)
