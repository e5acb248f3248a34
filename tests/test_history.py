"""The history store (issue 15): real programs make real objects, `list` sees them alive,
they are killed, and `list`, `reap` and `leaks` still name them by their command line.

Each test has its own state directory ($STATE_DIRECTORY) and IPC namespace (conftest);
the week of `leaks` is scripted with the history's clock, $SHMJANITOR_NOW.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SUITE_RUN, python_as
from segments import cli, orphans

from shmjanitor import history

ALICE = 1000

# Makes one object of each kind and uses each (a semop, a message), so that the kernel
# names it as a party; holds a POSIX file open; says "ready"; sleeps until killed.
TRAIN = """
import os, sys, time, sysv_ipc
seg = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, 0o600, 8192)
sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, 0o600, 0)
sem.release()
q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600)
q.send(b"epoch 1")
fd = os.open("/dev/shm/train-buf", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
os.write(fd, b"x" * 5000)
print("ready", flush=True)
time.sleep(600)
"""

# A program that leaks COUNT segments of SIZE bytes each time it runs.
LEAKER = """
import sys, time, sysv_ipc
for _ in range(int(sys.argv[2])):
    sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, 0o600, int(sys.argv[3]))
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(d))
    monkeypatch.delenv(history.NOW_ENV, raising=False)
    return d


def start(argv: list[str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line == "ready\n", line
    return p


def kill(p: subprocess.Popen[str]) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(10)


def listed() -> list[dict[str, Any]]:
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for o in doc["segments"]:  # the documented array of segments names no kind
        o["kind"] = "shm"
    return doc["segments"] + doc["semaphores"] + doc["queues"] + doc["posix"]


def rows(state: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(str(state / history.FILE))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_killed_program_is_named_by_its_command_line_in_list_explain_reap_and_leaks(
    state, mqueue_dir
):
    script = SUITE_RUN / "train.py"  # readable by alice (the suite's /run)
    script.write_text(TRAIN)
    p = start([*python_as(ALICE), str(script), "--epochs", "10"])
    try:
        alive = listed()
        assert {o["kind"] for o in alive} == {"shm", "sem", "msg", "posix-shm"}, alive
    finally:
        kill(p)
    after = listed()
    assert {o["kind"] for o in after} == {"shm", "sem", "msg", "posix-shm"}
    for o in after:
        assert o["state"] == "orphan", o
        made = o["made_by"]
        assert made is not None, o
        assert made["command"].endswith(f"{script} --epochs 10"), made
        assert made["user"] == "alice" and made["exe"], made
        assert "made by `" in o["reason"] and "train.py --epochs 10` (alice" in o["reason"], o
    for o in after:  # explain reads the store (without writing to it) for each kind
        flag = {"shm": "-m", "sem": "-s", "msg": "-q"}.get(o["kind"])
        what = [flag, str(o["id"])] if flag else [o["path"]]
        r = cli("explain", *what, "--json")
        assert r.exit_code == 0, r.output
        made = json.loads(r.stdout)["made_by"]
        assert made is not None and made["command"].endswith(f"{script} --epochs 10"), made
        assert "made by `" in made["said"] and made["user"] == "alice", made
        r = cli("explain", *what, "--format", "plain")
        assert "train.py --epochs 10` (alice" in r.stdout, r.stdout
    r = cli("leaks", "--json", "--since", "1h")
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)["leaks"]
    assert row["command"].endswith("train.py --epochs 10") and row["leaked"] == 4, row
    r = cli("reap", "--min-age", "0", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert [x["action"] for x in results] == ["removed"] * 4, results
    assert all(x["made_by"]["user"] == "alice" for x in results), results
    r = cli("leaks", "--json", "--by", "user")
    (row,) = json.loads(r.stdout)["leaks"]
    assert (row["user"], row["leaked"], row["removed"]) == ("alice", 4, 4), row
    r = cli("leaks", "--by", "user", "--format", "plain")
    assert r.stdout.splitlines()[1].split() == ["4", row_size(row), "4", row_size(row), "0",
                                                "alice"], r.stdout  # fmt: skip


def row_size(row: dict[str, Any]) -> str:
    from shmjanitor.durations import format_size

    return format_size(row["leaked_bytes"])


def test_reap_log_line_says_who_made_it(state):
    p = start([sys.executable, "-c", LEAKER, "leaky-job", "1", "4096"])
    listed()
    kill(p)
    r = cli("reap", "--min-age", "0", "--include-system")  # off a terminal: log lines
    assert r.exit_code == 0, r.output
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("action=removed")]
    assert 'made_by="made by `' in line and "leaky-job 1 4096` (root" in line, line


def test_a_restored_object_is_counted_restored(state):
    p = start([sys.executable, "-c", LEAKER, "leaky-job", "2", "4096"])
    listed()
    kill(p)
    r = cli("reap", "--min-age", "0", "--include-system", "--json")  # copies to state/
    (first, _) = sorted(x["id"] for x in json.loads(r.stdout)["results"])
    r = cli("restore", "--id", str(first))
    assert r.exit_code == 0, r.output
    r = cli("leaks", "--json")
    (row,) = json.loads(r.stdout)["leaks"]
    assert row["command"].endswith("leaky-job 2 4096"), row
    assert (row["leaked"], row["removed"], row["restored"]) == (2, 2, 1), row


def test_a_maker_never_seen_alive_is_null(state):
    orphans(1)
    (o,) = listed()
    assert o["made_by"] is None and "made by" not in o["reason"]


# ------------------------------------------------------------- a broken store


def test_a_corrupt_database_is_set_aside_and_reap_still_works(state):
    state.mkdir(mode=0o700)
    (state / history.FILE).write_bytes(b"not a database, at all" * 500)
    ids = orphans(2)
    r = cli("reap", "--min-age", "0", "--include-system", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(x["id"] for x in json.loads(r.stdout)["results"]) == sorted(ids)
    assert "set aside as history.sqlite3.corrupt-" in r.output, r.output
    (aside,) = state.glob(f"{history.FILE}.corrupt-*")
    assert aside.read_bytes().startswith(b"not a database")
    # the new store has this run's rows: the two segments, removed
    assert rows(state, "SELECT count(*) FROM objects WHERE removed_at IS NOT NULL") == [(2,)]


def test_a_damaged_page_is_set_aside_too(state):
    orphans(300)  # a few pages of rows
    assert listed()
    history.forget()  # as at the end of a run: the WAL written back into the file
    path = state / history.FILE
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[2 * page : 3 * page] = b"\xff" * page  # a table's page, garbage
    path.write_bytes(bytes(data))
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    assert "set aside" in r.output, r.output
    assert rows(state, "SELECT count(*) FROM objects") == [(300,)]


def test_an_unwritable_state_directory_costs_the_history_not_the_list(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("STATE_DIRECTORY", str(blocker / "state"))  # ENOTDIR
    orphans(1)
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["segments"]) == 1
    notes = [ln for ln in r.output.splitlines() if "history not recorded" in ln]
    assert len(notes) == 1, r.output  # said once


def test_an_object_gone_between_runs_is_marked_gone(state):
    """Unchanged objects are not read back (history._digest): one removed by somebody
    else, and one made by a live process, are still seen."""
    import sysv_ipc

    ids = orphans(3)
    listed()
    listed()  # nothing changed: the digest matches
    sysv_ipc.remove_shared_memory(ids[0])
    listed()
    gone = rows(state, "SELECT objid FROM objects WHERE gone_at IS NOT NULL")
    assert gone == [(ids[0],)]
    p = start([sys.executable, "-c", LEAKER, "late", "1", "4096"])
    try:
        made = [o for o in listed() if o["made_by"] is not None]
        assert [o["made_by"]["command"].split()[-3:] for o in made] == [["late", "1", "4096"]]
    finally:
        kill(p)


@pytest.mark.parametrize("quarantine", [False, True])
def test_a_reap_marks_removed_exactly_what_it_removed(state, quarantine):
    """Its removals are marked by runs of row ids (history.row_runs): the segments a live
    process keeps attached, between removed ones, are not marked removed or gone. Fails
    when a run of rows spans a gap (row_runs merging ids that are not consecutive)."""
    ids = orphans(7)
    keep = [ids[1], ids[4], ids[5]]
    holder = start([sys.executable, "-c", "import sys, time, sysv_ipc\n"
                    "for id in sys.argv[1:]: sysv_ipc.attach(int(id))\n"
                    "print('ready', flush=True)\ntime.sleep(600)", *map(str, keep)])  # fmt: skip
    try:
        args = ["reap", "--min-age", "0", "--include-system"]
        args += [] if quarantine else ["--no-quarantine"]
        r = cli(*args)
        assert r.exit_code == 0, r.output
        gone = {i for i in ids if i not in keep}
        said = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("action=removed")]
        assert {int(w[1].removeprefix("id=")) for w in said} == gone
        removed = rows(state, "SELECT objid, quarantined, gone_at IS NOT NULL FROM objects "
                       "WHERE removed_at IS NOT NULL ORDER BY objid")  # fmt: skip
        assert removed == [(i, int(quarantine), 1) for i in sorted(gone)]
        kept = rows(state, "SELECT objid FROM objects WHERE removed_at IS NULL AND gone_at "
                    "IS NULL ORDER BY objid")  # fmt: skip
        assert kept == [(i,) for i in sorted(keep)]
    finally:
        kill(holder)


def test_row_runs():
    assert history.row_runs([]) == []
    assert history.row_runs([(5, 0), (3, 0), (4, 0)]) == [(3, 5, 0)]
    assert history.row_runs([(1, 1), (2, 1), (4, 1), (5, 0), (6, 0)]) == [
        (1, 2, 1), (4, 4, 1), (5, 6, 0)]  # fmt: skip


def test_two_runs_at_once_lose_no_rows(state):
    orphans(400)  # long enough a transaction that the runs overlap
    env = {**os.environ}
    n = 6
    procs = [subprocess.Popen([sys.executable, "-m", "shmjanitor", "list", "--json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(n)]  # fmt: skip
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert not any(errs), errs  # nobody gave up on the store
    assert rows(state, "SELECT count(*) FROM runs") == [(n,)]
    assert rows(state, "SELECT count(*), count(DISTINCT objid) FROM objects") == [(400, 400)]


# ------------------------------------------------------------------ leaks


DAY = 86400


def test_leaks_ranks_a_scripted_week(state, tmp_path, monkeypatch):
    """Three programs leak at different rates over a week (the clock injected), one
    leaked before it: `leaks --since 7d --json` ranks them by objects leaked, and counts
    what a reap at the end removed."""
    script = tmp_path / "leaker.py"
    script.write_text(LEAKER)
    t0 = 1_700_000_000.0

    def at(t: float) -> None:
        monkeypatch.setenv(history.NOW_ENV, str(t))

    def leak(name: str, count: int, size: int, t: float) -> None:
        at(t)
        p = start([sys.executable, str(script), name, str(count), str(size)])
        assert listed()  # seen alive: its maker recorded
        kill(p)
        at(t + 3600)
        listed()  # found orphaned

    # name: (segments a run, bytes each, days it runs)
    week = {"a": (3, 4096, range(7)), "b": (1, 8192, range(7)), "c": (2, 1 << 20, (0, 2, 4, 6))}
    leak("old", 5, 4096, t0 - 10 * DAY)  # before the week: not a leak of the week
    for day in range(7):
        for name, (count, size, days) in week.items():
            if day in days:
                leak(name, count, size, t0 + day * DAY)
    end = t0 + 6 * DAY + 7200
    at(end)
    r = cli("reap", "--min-age", "0", "--include-system", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["removed"] == 5 + 21 + 7 + 8
    r = cli("leaks", "--since", "7d", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["until"] == end and doc["since"] == end - 7 * DAY
    got = [(x["command"].split()[-3], x["leaked"], x["leaked_bytes"], x["removed"])
           for x in doc["leaks"]]  # fmt: skip
    assert got == [
        ("a", 21, 21 * 4096, 21),
        ("c", 8, 8 << 20, 8),  # fewer objects than a, more bytes: ranked by objects
        ("b", 7, 7 * 8192, 7),
        ("old", 0, 0, 5),  # leaked before the week, removed in it
    ], got
    # a day ago: only the last day's leaks (a and c ran on day 6, b too)
    r = cli("leaks", "--since", "1d", "--json")
    got = [(x["command"].split()[-3], x["leaked"]) for x in json.loads(r.stdout)["leaks"]]
    assert got[:3] == [("a", 3), ("c", 2), ("b", 1)], got


def test_leaks_without_history_says_so(tmp_path):
    r = cli("leaks", "--state-dir", str(tmp_path / "none"))
    assert r.exit_code == 1
    assert "no history yet" in r.output


# ------------------------------------------------------------ pure parts


@pytest.mark.parametrize(("cgroup", "unit"), [
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
    ("0::/system.slice/docker-0123abcd.scope\n", "docker-0123abcd.scope"),
    ("0::/\n", None),
    ("12:pids:/x\n1:name=systemd:/system.slice/cron.service\n", "cron.service"),
])  # fmt: skip
def test_the_unit_is_the_last_component_of_the_cgroup(cgroup, unit):
    assert history.unit_of(cgroup) == unit


def test_old_rows_are_pruned(state, monkeypatch):
    orphans(2)
    monkeypatch.setenv(history.NOW_ENV, str(time.time()))
    listed()
    assert cli("reap", "--min-age", "0", "--include-system").exit_code == 0
    assert rows(state, "SELECT count(*) FROM objects") == [(2,)]
    monkeypatch.setenv(history.NOW_ENV, str(time.time() + 91 * DAY))  # default: 90 days
    listed()
    assert rows(state, "SELECT count(*) FROM objects") == [(0,)]


def test_a_store_of_an_older_release_loses_the_indexes_that_only_cost(state):
    """Every index costs each insert and each removal (32,000 of each in a big reap):
    a store made with the two older indexes has them dropped, and its rows are still
    read, marked removed and pruned through the ones that remain."""
    orphans(2)
    listed()
    history.forget()  # as a new run would, open the store afresh
    db = sqlite3.connect(str(state / history.FILE))
    db.executescript(
        "CREATE INDEX objects_live ON objects(ns, kind) WHERE gone_at IS NULL;"
        "CREATE INDEX objects_gone ON objects(gone_at);"
        "DROP INDEX objects_gone_at;"
    )
    db.close()
    assert cli("reap", "--min-age", "0", "--include-system").exit_code == 0
    names = {n for (n,) in rows(state, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"objects_live", "objects_gone"}.isdisjoint(names)
    assert {"objects_ident", "objects_gone_at", "objects_made"} <= names
    assert rows(state, "SELECT count(*) FROM objects WHERE removed_at IS NOT NULL") == [(2,)]


def test_a_run_that_leaves_without_teardown_still_closes_the_store(state):
    """cli._leave skips the interpreter's teardown (os._exit) but runs the exit
    handlers: the store is closed (its WAL checkpointed and deleted, as closing the last
    connection does), and every byte of a long output is written, exit code kept."""
    orphans(300)
    r = subprocess.run([sys.executable, "-m", "shmjanitor", "list", "--json"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["segments"]) == 300
    assert sorted(os.listdir(state)) == [history.FILE]  # no -wal, no -shm left
    bad = subprocess.run([sys.executable, "-m", "shmjanitor", "list", "--bogus"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "no such option" in bad.stderr
