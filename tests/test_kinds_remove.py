"""The kind-blind removal side (issue 12): lock notes, quarantine entries, results and
the reap/rm kind flags, with real segments. Semaphore sets and queues bring their own
tests with their kinds; here a flag for a kind this build lacks is a usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sysv_ipc
from prometheus_client.parser import text_string_to_metric_families
from segments import Spec, cli, make, rows
from test_adversary import killed_reap, set_mode
from test_quarantine import content, entries, filled, reap, restore

from shmjanitor import kernel, kinds, lock, remove, waiters
from shmjanitor.kinds import shm

# --- the reaper lock's note -------------------------------------------------------------


def locked_as_a_killed_run_leaves_it(shmid: int) -> None:
    set_mode(shmid, remove.lock_mode())


def test_a_killed_run_notes_the_kind_and_the_next_command_undoes_it(tmp_path):
    """Killed between its lock and IPC_RMID: the lock file's note names the kind of the
    object it locked ("shm ID KEY MODE"), and the next command puts that mode back."""
    state = tmp_path / "state"
    shmid = filled(4096, b"x", key=0x5EED0C01, mode=0o660)
    killed_reap("before-rmid", state, "--no-quarantine")
    assert kernel.shm_stat(shmid).mode & 0o777 == remove.lock_mode()
    with open(lock.default_path(), "rb") as f:
        note = f.read()[32:].split(b"\n")[0].strip()
    assert note == b"shm %d %d 660" % (shmid, 0x5EED0C01), note
    state.mkdir(mode=0o700, exist_ok=True)
    entries(state)  # a command that repairs what a killed run left
    assert kernel.shm_stat(shmid).mode & 0o777 == 0o660


def test_an_old_note_of_three_fields_is_a_segments():
    """A run of a version before kinds wrote "ID KEY MODE": still undone, as a segment."""
    (shmid,) = make(Spec(key=0x5EED0C02, mode=0o640)).ids
    locked_as_a_killed_run_leaves_it(shmid)
    said = remove.undo_left_lock(f"{shmid} {0x5EED0C02} 640")
    assert said is not None and said.startswith(f"segment {shmid} (key 0x5eed0c02)"), said
    assert kernel.shm_stat(shmid).mode & 0o777 == 0o640


def test_a_note_is_undone_by_its_own_kind_only(monkeypatch):
    """The note's kind chooses the module that looks and puts the mode back: a note for
    another kind with the same id never touches the segment of that id."""
    (shmid,) = make(Spec(key=0x5EED0C03, mode=0o604)).ids
    locked_as_a_killed_run_leaves_it(shmid)
    asked: list[tuple[str, int]] = []

    class Gone(ModuleType):  # a kind whose object of that id no longer exists
        NOUN = "other object"

        def stat(self, id: int) -> Any:
            asked.append(("stat", id))
            raise OSError(22, "Invalid argument")

        def lock(self, id: int, mode: int) -> None:
            asked.append(("lock", id))

    sys.modules["_test_kind_other"] = Gone("_test_kind_other")
    monkeypatch.setitem(kinds._MODULES, "other", "_test_kind_other")
    try:
        assert remove.undo_left_lock(f"other {shmid} {0x5EED0C03} 604") is None
    finally:
        del sys.modules["_test_kind_other"]
        kinds._loaded.pop("_test_kind_other", None)
    assert asked == [("stat", shmid)]
    assert kernel.shm_stat(shmid).mode & 0o777 == remove.lock_mode()  # not shm's to undo
    assert remove.undo_left_lock(f"shm {shmid} {0x5EED0C03} 604") is not None
    assert kernel.shm_stat(shmid).mode & 0o777 == 0o604


def test_a_note_of_an_unknown_kind_or_malformed_is_left_alone():
    (shmid,) = make(Spec(key=0x5EED0C04, mode=0o600)).ids
    locked_as_a_killed_run_leaves_it(shmid)
    for note in (f"bogus {shmid} {0x5EED0C04} 600", f"shm {shmid} x 600", "", "1 2"):
        assert remove.undo_left_lock(note) is None, note
    assert kernel.shm_stat(shmid).mode & 0o777 == remove.lock_mode()


# --- the quarantine index -----------------------------------------------------------------


def index_of(state: Path) -> Path:
    (index,) = (state / "quarantine").glob("*.json")
    return index


def test_a_segments_entry_has_no_kind_and_lists_and_restores_as_before(tmp_path):
    """Entries of segments are written as before there were kinds (no "kind": an index
    stays what older versions read); listed with kind "shm", restored byte for byte."""
    data = os.urandom(5000)
    filled(5000, data, key=0x5EED0C05)
    reap(tmp_path)
    doc = json.loads(index_of(tmp_path).read_text())
    assert doc["version"] == 2 and "kind" not in doc["entries"][0], doc
    (e,) = entries(tmp_path)
    assert e["kind"] == "shm" and e["key"] == 0x5EED0C05
    r = restore(tmp_path, e["entry"])
    assert r.exit_code == 0, r.output
    assert content(json.loads(r.stdout)["id"]) == data


def test_an_entry_naming_its_kind_restores_and_an_unknown_kind_is_set_aside(tmp_path):
    data = os.urandom(3000)
    filled(3000, data, key=0x5EED0C06)
    reap(tmp_path)
    index = index_of(tmp_path)
    doc = json.loads(index.read_text())
    doc["entries"][0]["kind"] = "shm"  # as a later version may write it
    index.write_text(json.dumps(doc))
    (e,) = entries(tmp_path)
    r = restore(tmp_path, e["entry"])
    assert r.exit_code == 0, r.output
    assert content(json.loads(r.stdout)["id"]) == data

    doc["entries"][0]["kind"] = "bogus"  # a kind this build has no module for
    index.write_text(json.dumps(doc))
    r = cli("quarantine", "list", "--state-dir", str(tmp_path), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["entries"] == [], r.output
    assert "unknown kind 'bogus'" in r.output and "Traceback" not in r.output
    assert list((tmp_path / "quarantine").glob("*.json.damaged"))


def test_settle_of_an_entry_without_kind_uses_the_segment_kind(tmp_path):
    """A run killed right after IPC_RMID, its index written without "kind" and its note
    with one: the settling reap claims the removal (the note names shm, that id, key)."""
    state = tmp_path / "state"
    shmid = filled(4096, b"settled", key=0x5EED0C07, mode=0o600)
    killed_reap("after-rmid", state)
    assert shmid not in rows()
    r = cli("reap", "--min-age", "1d", "--include-system", "--state-dir", str(state))
    assert r.exit_code == 0, r.output
    assert f"action=removed id={shmid} kind=shm key=0x5eed0c07 " in r.output, r.output
    (e,) = entries(state)
    assert e["status"] == "removed" and e["kind"] == "shm"


@pytest.mark.parametrize("stays", [True, False])
def test_an_attach_while_the_copy_is_made_keeps_the_segment(tmp_path, monkeypatch, stays):
    """Another process attaches while we copy (and stays, or detaches again before we
    do): only what save saw while still attached shows it (after our shmdt lpid is
    ours again). The segment is kept, nothing of it is left in the quarantine."""
    from segments import _fork
    from test_trust_quarantine import try_attach_as

    from shmjanitor import segcopy

    shmid = filled(4096, b"in use")
    real_copy = segcopy.copy

    def someone_attaches_meanwhile(addr, size, write):  # type: ignore[no-untyped-def]
        if stays:
            try_attach_as(shmid, None)
        else:
            _fork(lambda: [sysv_ipc.attach(shmid).detach() or shmid], stay=False)
        return real_copy(addr, size, write)

    monkeypatch.setattr(segcopy, "copy", someone_attaches_meanwhile)
    out = reap(tmp_path)
    (res,) = out["results"]
    assert res["action"] == "kept", res
    assert res["reason"] == "changed since scan: attached by another process while copying"
    assert shmid in rows() and entries(tmp_path) == []


# --- results ----------------------------------------------------------------------------------


def test_results_say_their_kind(tmp_path):
    (a,) = make(Spec(key=0x5EED0C08)).ids
    out = reap(tmp_path, "--dry-run")
    (res,) = out["results"]
    assert (res["kind"], res["id"], res["action"]) == ("shm", a, "would-remove"), res
    r = cli("reap", "--min-age", "0", "--include-system", "--state-dir", str(tmp_path))
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("action=")]
    assert line.startswith(f"action=removed id={a} kind=shm key=0x5eed0c08 "), line


def test_metrics_count_every_kind_and_keep_the_segment_series(tmp_path):
    make(Spec(size=1000), Spec(size=24))
    path = tmp_path / "m.prom"
    r = cli("list", "--metrics-file", str(path))
    assert r.exit_code == 0, r.output
    # One namespace (ours): its namespace and container labels left out (test_ns_render.py)
    got = {(s.name, tuple(sorted((k, v) for k, v in s.labels.items()
                                 if k not in ("namespace", "container")))): s.value
           for f in text_string_to_metric_families(path.read_text()) for s in f.samples}  # fmt: skip
    assert got[("shmjanitor_objects", (("kind", "shm"), ("state", "orphan")))] == 2
    assert got[("shmjanitor_object_bytes", (("kind", "shm"), ("state", "orphan")))] == 1024
    assert got[("shmjanitor_segments", (("state", "orphan"),))] == 2
    for name in kinds.names():  # every kind and state, zeros too
        assert ("shmjanitor_objects", (("kind", name), ("state", "removing"))) in got


# --- kind flags -------------------------------------------------------------------------------


def ipcmk_as_alice(*args: str) -> int:
    """A set or queue made by ipcmk as alice (ordinary, and without a process left)."""
    out = subprocess.run(
        ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--", "ipcmk", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[-1])


def test_reap_kind_flags(tmp_path):
    """-m/--shm, -s/--sem, -q/--msg narrow reap to their kinds; combinable; none is
    every kind."""
    if waiters.sweep().blind is not None:
        pytest.skip(
            "a queue is an orphan only where /proc shows every task that could "
            "wait on it (scripts/test's PID namespace)"
        )
    shm_ids = [("shm", i) for i in make(Spec(), Spec()).ids]
    sem = [("sem", ipcmk_as_alice("-S", "1"))]
    msg = [("msg", ipcmk_as_alice("-Q"))]
    for flags, want in ((["-m"], shm_ids), (["--shm"], shm_ids), (["-s"], sem),
                        (["--sem"], sem), (["-q"], msg), (["--msg"], msg),
                        (["-m", "-q"], shm_ids + msg), ([], shm_ids + sem + msg),
                        (["-m", "-s", "-q"], shm_ids + sem + msg)):  # fmt: skip
        out = reap(tmp_path, "--dry-run", *flags)
        got = sorted((r["kind"], r["id"]) for r in out["results"])
        assert got == sorted(want), (flags, out)
    out = reap(tmp_path, "-s", "-q")
    assert sorted((r["kind"], r["id"], r["action"]) for r in out["results"]) == sorted(
        (k, i, "removed") for k, i in sem + msg
    )
    assert set(rows()) == {i for _, i in shm_ids}  # the segments were not asked for


def usage_error(r: Any, says: str) -> None:
    assert r.exit_code == 2 and r.stdout == "", r.output
    first, hint = r.output.splitlines()
    assert first.startswith("shmjanitor: error: ") and says in first, first
    assert hint.startswith("Try '") and hint.endswith(" --help'."), hint


def test_rm_takes_segments_by_every_ipcrm_spelling(tmp_path):
    ids = make(*[Spec() for _ in range(3)], Spec(key=0x5EED0C09), Spec(key=0x5EED0C0A),
               Spec(key=0x5EED0C0B)).ids  # fmt: skip
    a, b, c = ids[:3]
    r = cli("rm", "--no-quarantine", "--json", str(a), "-m", str(b), "--shm", str(c),
            "-M", "0x5eed0c09", "--shm-key", "0x5eed0c0a", "--key", "0x5eed0c0b")  # fmt: skip
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert [(x["kind"], x["id"], x["action"]) for x in results] == [
        ("shm", i, "removed") for i in ids
    ]
    assert rows() == {}


def test_rm_kind_flags_name_ids_and_keys_of_their_kind_only(tmp_path):
    """`rm -s ID` names a semaphore set: a segment with that id is not it."""
    (shmid,) = make(Spec(key=0x5EED0C0C)).ids
    for flag, value in (("-s", str(shmid)), ("-q", str(shmid)), ("-S", "0x5eed0c0c"),
                        ("-Q", "0x5eed0c0c")):  # fmt: skip
        r = cli("rm", "--state-dir", str(tmp_path), flag, value)
        assert r.exit_code == 1 and "no " in r.output and value in r.output, r.output
    assert set(rows()) == {shmid}


@pytest.mark.parametrize("args,says", [
    (["rm"], "name at least one segment, semaphore set or message queue"),
    (["rm", "-m", "x"], "'x' is not a segment id"),
    (["rm", "-s", "-1"], "'-1' is not a"),
    (["rm", "-q", "1.5"], "'1.5' is not a"),
    (["rm", "-M", "0"], "IPC_PRIVATE"),
    (["rm", "-S", "0"], "IPC_PRIVATE"),
    (["rm", "-Q", "zz"], "'zz' is not a key"),
    (["reap", "-x"], "-x"),
])  # fmt: skip
def test_rm_and_reap_kind_usage_errors_are_one_line_and_a_hint(args, says):
    usage_error(cli(*args), says)


def test_the_shm_kind_provides_the_removal_part():
    """What remove.py and quarantine.py call, present on the shm module (kinds.Kind)."""
    for name in ("stat", "changed_since_scan", "lock", "changed_while_locked", "busy_now",
                 "rmid", "users_after_rmid", "known_empty", "save_bound", "save",
                 "changed_since_copy", "record", "check_record", "same", "restore"):  # fmt: skip
        assert callable(getattr(shm, name)), name
    assert shm.NOUN == "segment"
