"""An adversarial review of issue 12 (semaphore sets and message queues): ways a user or
an unlucky admin could make the janitor harm an object or lie about one, each found by
hand in private namespaces and kept here as a test that failed before its fix.

Objects are real, made by real processes that have exited (orphans), in the suite's
private IPC namespace (conftest.py).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import sysv_ipc
from segments import cli, run_on_pty

from shmjanitor import kernel

# A process that makes one object and exits, leaving it an orphan: a set whose values
# are given (SETALL: the process is each semaphore's sempid), or a queue with messages.
_MAKE_SET = """
import sys
from shmjanitor import kernel
values = tuple(int(v) for v in sys.argv[2:])
semid = kernel.sem_create(int(sys.argv[1]), len(values), 0o640)
kernel.sem_setall(semid, values)
print(semid)
"""
_MAKE_QUEUE = """
import sys
from shmjanitor import kernel
msqid = kernel.msg_create(int(sys.argv[1]), 0o640)
for m in sys.argv[2:]:
    mtype, _, text = m.partition(":")
    kernel.msg_send(msqid, int(mtype), text.encode())
print(msqid)
"""


def made_set(key: int, *values: int) -> int:
    out = subprocess.run([sys.executable, "-c", _MAKE_SET, str(key), *map(str, values)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout)


def made_queue(key: int, *messages: str) -> int:
    """A queue with these messages ("MTYPE:TEXT"), its sender gone."""
    out = subprocess.run([sys.executable, "-c", _MAKE_QUEUE, str(key), *messages],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout)


def quarantined(state: Path) -> tuple[list[dict[str, Any]], str]:
    r = cli("quarantine", "list", "--json", "--state-dir", str(state))
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    return json.loads(r.stdout)["entries"], r.output


def ids(table: str) -> set[int]:
    with open(f"/proc/sysvipc/{table}") as f:
        return {int(line.split()[1]) for line in f.read().splitlines()[1:] if line.strip()}


# --- rm --force of a queue that changes while it is copied --------------------------------


def test_rm_force_of_a_queue_sent_to_while_it_is_copied_keeps_it_and_its_run_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force skips the in-use checks, and so the check that nobody used the queue while
    its messages were copied. A message sent meanwhile made a copy of two messages under
    an entry that records one: the next command found the run's index "damaged" (its
    extents past qnum * 16 + cbytes) and set the whole run aside, the other queue's
    good copy with it; the busy queue was gone with no copy to restore."""
    state = tmp_path / "state"
    busy = made_queue(0x12C0, "1:one")
    other = made_queue(0x12C1, "5:kept safe")
    real_copy = kernel.msg_copy

    def copy(msqid: int, index: int, bufsz: int) -> Any:
        if msqid == busy and index == 0:  # a sender at work while we copy: a real process
            sender = "import sysv_ipc; sysv_ipc.MessageQueue(0x12C0).send(b'two', type=2)"
            subprocess.run([sys.executable, "-c", sender], check=True)
        return real_copy(msqid, index, bufsz)

    monkeypatch.setattr(kernel, "msg_copy", copy)
    r = cli("rm", "-q", str(busy), "-q", str(other), "--force", "--state-dir", str(state),
            "--json")  # fmt: skip
    monkeypatch.undo()
    results = {x["id"]: x for x in json.loads(r.stdout)["results"]}
    assert r.exit_code == 1, r.output  # the busy one was not removed: the job is not done
    assert results[busy]["action"] == "kept", results
    assert "sent or received while it was saved" in results[busy]["reason"], results
    assert busy in ids("msg") and other not in ids("msg")

    entries, said = quarantined(state)
    assert "damaged" not in said, said
    assert [(e["kind"], e["id"]) for e in entries] == [("msg", other)]
    back = cli("restore", entries[0]["entry"], "--state-dir", str(state))
    assert back.exit_code == 0, back.output
    assert sysv_ipc.MessageQueue(0x12C1).receive(block=False) == (b"kept safe", 5)


# --- tampered quarantine entries of sets and queues ---------------------------------------


def _reaped(state: Path) -> tuple[Path, dict[str, Any]]:
    """A set (values 1, 2, 3) and a queue (two messages) reaped into `state`: its index
    file and document."""
    made_set(0x5E7, 1, 2, 3)
    made_queue(0x3E5, "4:abc", "9:" + "z" * 100)
    r = cli("reap", "--min-age", "0", "--include-system", "--state-dir", str(state), "--json")
    assert r.exit_code == 0, r.output
    assert [x["action"] for x in json.loads(r.stdout)["results"]] == ["removed"] * 2
    (index,) = (state / "quarantine").glob("*.json")
    return index, json.loads(index.read_text())


def _entry(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    (e,) = [e for e in doc["entries"] if e["kind"] == kind]
    return e


def _set(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda e: e.update(fields)


@pytest.mark.parametrize(("kind", "tamper"), [
    # a set of 4 where 3 were saved: restore made a set of 4, a value 0 added
    ("sem", _set(nsems=4, sempid=[0, 0, 0, 0])),
    # no extents: restore made the set with every value 0, without reading its copy
    ("sem", _set(extents=[])),
    # 32-bit kernel fields out of range: restore said "key 0x100000000" and made
    # another key, or died of an internal error (a traceback's one line, exit 70)
    ("sem", _set(key=(1 << 32) + 0x5E7)),
    ("sem", _set(uid=1 << 32)),
    ("msg", _set(cgid=1 << 32)),
    ("msg", _set(qbytes=1 << 64)),
], ids=["sem-nsems", "sem-no-extents", "sem-key", "sem-uid", "msg-cgid", "msg-qbytes"])  # fmt: skip
def test_a_tampered_entry_of_a_set_or_a_queue_is_set_aside_as_damaged(
    tmp_path: Path, kind: str, tamper: Callable[[dict[str, Any]], None]
) -> None:
    index, doc = _reaped(tmp_path)
    tamper(_entry(doc, kind))
    index.write_text(json.dumps(doc))
    entries, said = quarantined(tmp_path)
    assert entries == [] and "is damaged" in said, said
    assert list((tmp_path / "quarantine").glob("*.json.damaged")), said
    assert ids("sem") == ids("msg") == set()  # nothing was made


def test_restore_of_an_entry_claiming_a_huge_set_says_damaged_and_allocates_nothing(
    tmp_path: Path,
) -> None:
    """nsems and extents changed together (the entry is consistent, its data is not):
    restore allocated nsems * 2 bytes before reading a byte (4 GiB here) and died of
    MemoryError, exit 70. The data is read first and found short: damaged, exit 1."""
    index, doc = _reaped(tmp_path)
    e = _entry(doc, "sem")
    nsems = (1 << 31) - 1
    e.update(nsems=nsems, sempid=[], extents=[[0, 2 * nsems]])
    index.write_text(json.dumps(doc))
    entries, _ = quarantined(tmp_path)
    (name,) = [x["entry"] for x in entries if x["kind"] == "sem"]

    def small() -> None:  # 1 GiB of address space: the interpreter and a little more
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = subprocess.run([sys.executable, "-m", "shmjanitor", "restore", name, "--state-dir",
                        str(tmp_path)], capture_output=True, text=True, preexec_fn=small)  # fmt: skip
    assert r.returncode == 1, r
    assert "damaged" in r.stderr and "internal error" not in r.stderr, r.stderr
    assert ids("sem") == set()


# --- which kind a table row is ------------------------------------------------------------


def test_tables_of_sets_or_queues_alone_still_name_their_kind(tmp_path: Path) -> None:
    """The KIND column appeared only when a table held two kinds: a reap that removed
    semaphore sets alone, or a quarantine of queues alone, showed "removed 0 0x..." as
    a segment's row would read. A table of segments alone stays as it was."""
    made_set(0x5E8, 1)
    env = {**os.environ, "NO_COLOR": "1"}
    argv = [sys.executable, "-m", "shmjanitor", "reap", "--dry-run", "--min-age", "0",
            "--include-system", "--state-dir", str(tmp_path)]  # fmt: skip
    status, out = run_on_pty(argv, env)
    assert status == 0, out
    head, row = out.splitlines()[:2]
    assert head.split()[:3] == ["ACTION", "ID", "KIND"] and row.split()[2] == "sem", out

    made_queue(0x3E6, "1:x")
    r = cli("reap", "--min-age", "0", "--include-system", "-q", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    r = cli("quarantine", "list", "--state-dir", str(tmp_path))
    head, row = r.stdout.splitlines()[:2]
    assert head.split()[:3] == ["ENTRY", "ID", "KIND"] and row.split()[2] == "msg", r.output


# --- restore --id and --key name one kind --------------------------------------------------


def test_restore_by_id_or_key_finds_the_kind_it_is_told(tmp_path: Path) -> None:
    """Ids and keys are per kind. `restore --id 0`, "the entry of the segment that had
    this id", restored a semaphore set 0 when no segment 0 was there to take, and saw
    a segment and a set of one id as the same object."""
    semid = made_set(0x5E9, 7)
    msqid = made_queue(0x3E7, "1:x")
    r = cli("reap", "--min-age", "0", "--include-system", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert semid == msqid == 0  # one id, two kinds

    said = cli("restore", "--id", "0", "--state-dir", str(tmp_path))
    assert said.exit_code == 1, said.output
    assert "no quarantine entry for id 0 of a segment (a message queue and a semaphore set " \
        "had it: ids and keys are per kind)" in said.output  # fmt: skip
    assert ids("sem") == ids("msg") == set()  # neither the set nor the queue was made

    r = cli("restore", "--id", "0", "-s", "--state-dir", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    assert kernel.sem_getall(json.loads(r.stdout)["id"], 1) == (7,) and ids("msg") == set()
    r = cli("restore", "--key", "0x3e7", "-q", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert sysv_ipc.MessageQueue(0x3E7).receive(block=False) == (b"x", 1)

    for wrong in (["--id", "0", "-s", "-q"], ["somehandle", "-s"]):
        r = cli("restore", *wrong, "--state-dir", str(tmp_path))
        assert r.exit_code == 2 and "-m, -s or -q" in r.output, r.output
