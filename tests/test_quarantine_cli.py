"""The quarantine's commands: short handles, restore by old id or key, purge one entry
or see what purge would do, and a state directory that must exist (issue 11, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from segments import Spec, cli, make, rows

from shmjanitor.config import Config
from shmjanitor.quarantine import SHORT, Store, check_index


def rm(state: Path, *args: str) -> None:
    r = cli("rm", "--state-dir", str(state), *args)
    assert r.exit_code == 0, r.output


def entries(state: Path) -> list[dict]:
    r = cli("quarantine", "list", "--json", "--state-dir", str(state))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["entries"]


def test_entries_have_short_handles_that_restore(tmp_path):
    a, b = make(Spec(key=0xA1), Spec(key=0xB2)).ids
    rm(tmp_path, str(a), str(b))
    got = {e["id"]: e for e in entries(tmp_path)}
    for e in got.values():
        assert len(e["short"]) >= SHORT and int(e["short"], 16) >= 0
        assert len(e["entry"]) > len(e["short"])  # the full name, unchanged in the JSON
    listed = cli("quarantine", "list", "--state-dir", str(tmp_path)).stdout.splitlines()
    assert listed[0].split() == ["ENTRY", "ID", "KEY", "SIZE", "OWNER", "REMOVED", "STATUS",
                                 "REASON"]  # fmt: skip
    assert {line.split()[0] for line in listed[1:]} == {e["short"] for e in got.values()}
    assert all(len(line.split(maxsplit=7)) == 8 for line in listed[1:])
    # The handle shown, and the full name, both restore.
    r = cli("restore", got[a]["short"], "--state-dir", str(tmp_path))
    assert r.exit_code == 0 and r.stdout.startswith(f"restored {got[a]['short']} as id "), r.output
    r = cli("restore", got[b]["entry"], "--state-dir", str(tmp_path), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["key"] == 0xB2, r.output
    assert sorted(int(f[0]) for f in rows().values()) == [0xA1, 0xB2]  # the kernel's key


def test_a_handle_too_short_or_unknown_is_refused(tmp_path):
    rm(tmp_path, str(make(Spec()).ids[0]))
    (e,) = entries(tmp_path)
    for wrong in (e["short"][: SHORT - 1], "ffffffffff", "nonsense"):
        r = cli("restore", wrong, "--state-dir", str(tmp_path))
        assert r.exit_code == 1 and "no quarantine entry" in r.output, r.output


def test_restore_by_old_id_or_key_and_refuse_when_ambiguous(tmp_path):
    first = make(Spec(key=0x5EED, size=100)).ids[0]
    rm(tmp_path, str(first))
    other = make(Spec(size=200)).ids[0]
    rm(tmp_path, str(other))
    second = make(Spec(key=0x5EED, size=300)).ids[0]
    rm(tmp_path, str(second))
    by_id = {e["id"]: e for e in entries(tmp_path)}
    # Two entries had key 0x5eed, neither restored: both named, nothing done.
    r = cli("restore", "--key", "0x5eed", "--state-dir", str(tmp_path))
    assert r.exit_code == 1 and rows() == {}
    assert "2 quarantine entries match key 0x00005eed" in r.output
    assert by_id[first]["short"] in r.output and by_id[second]["short"] in r.output
    # One old id: that one.
    r = cli("restore", "--id", str(other), "--state-dir", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    assert [f[3] for f in rows().values()] == ["200"]  # the size column of the kernel's table
    # Restore one of the two by handle, remove it again for good: then only the other
    # entry of that key is left to restore, and --key takes it.
    r = cli("restore", by_id[first]["short"], "--state-dir", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    # (its creator is this process, alive: only --force removes it)
    assert cli("rm", "--no-quarantine", "--force", str(json.loads(r.stdout)["id"])).exit_code == 0
    r = cli("restore", "--key", str(0x5EED), "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert sorted(f[3] for f in rows().values()) == ["200", "300"]
    r = cli("restore", "--id", "424242", "--state-dir", str(tmp_path))
    assert r.exit_code == 1 and "no quarantine entry for id 424242" in r.output


def test_purge_dry_run_changes_nothing(tmp_path):
    rm(tmp_path, str(make(Spec()).ids[0]), str(make(Spec()).ids[0]))
    before = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    handles = sorted(e["short"] for e in entries(tmp_path))
    r = cli("quarantine", "purge", "--all", "--dry-run", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert sorted(line.split()[2] for line in lines[:-1]) == handles
    assert lines[-1] == "would purge 2 entries"
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == before
    r = cli("quarantine", "purge", "--older-than", "1d", "--dry-run", "--state-dir", str(tmp_path))
    assert r.stdout == "would purge 0 entries\n"
    r = cli("quarantine", "purge", "--all", "--state-dir", str(tmp_path))
    assert r.stdout == "purged 2 entries\n" and entries(tmp_path) == []


def test_purge_one_entry_rewrites_its_run_and_drops_an_empty_run(tmp_path):
    a, b = make(Spec(key=0xA), Spec(key=0xB)).ids
    rm(tmp_path, str(a), str(b))  # one run, two entries
    qdir = tmp_path / "quarantine"
    (index,) = qdir.glob("*.json")
    got = {e["id"]: e for e in entries(tmp_path)}
    r = cli("quarantine", "purge", got[a]["short"], "--state-dir", str(tmp_path))
    assert r.exit_code == 0 and r.stdout == "purged 1 entry\n", r.output
    doc = check_index(json.loads(index.read_text()))  # still an index we wrote
    assert [e["id"] for e in doc["entries"]] == [b]
    assert index.stat().st_mode & 0o777 == 0o600
    assert [e["id"] for e in entries(tmp_path)] == [b]
    r = cli("restore", got[b]["short"], "--state-dir", str(tmp_path))  # its bytes still there
    assert r.exit_code == 0, r.output
    r = cli("quarantine", "purge", got[b]["entry"], "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert [p.name for p in qdir.iterdir()] == [".lock"]  # the run went whole with its last entry
    r = cli("quarantine", "purge", got[b]["short"], "--state-dir", str(tmp_path))
    assert r.exit_code == 1 and "no quarantine entry" in r.output


def test_purge_of_a_pending_entry_is_refused(tmp_path):
    rm(tmp_path, str(make(Spec()).ids[0]))
    store = Store(tmp_path, Config())
    (entry,) = store.entries()
    pending = entry._replace(doc={**entry.doc, "status": "pending"})
    with pytest.raises(Exception, match="pending"):
        store.drop_entry(pending)
    assert len(store.entries()) == 1


@pytest.mark.parametrize("command", [["quarantine", "list"], ["quarantine", "purge", "--all"],
                                     ["restore", "abcdef"]])  # fmt: skip
def test_a_named_state_directory_must_exist(tmp_path, command):
    missing = tmp_path / "nonexistent"
    r = cli(*command, "--state-dir", str(missing))
    assert r.exit_code == 2 and r.stdout == ""
    assert r.output.strip() == f"shmjanitor: state directory {missing}: does not exist"
    afile = tmp_path / "afile"
    afile.write_text("")
    r = cli(*command, "--state-dir", str(afile))
    assert r.exit_code == 2 and "not a directory" in r.output
    assert not missing.exists()  # looking never creates it


def test_an_existing_empty_state_directory_is_an_empty_quarantine(tmp_path):
    r = cli("quarantine", "list", "--state-dir", str(tmp_path))
    assert r.exit_code == 0 and r.stdout == "" and "quarantine is empty" in r.output
