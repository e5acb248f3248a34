"""Quarantine and restore: what reap removes is kept, and comes back byte for byte."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import sysv_ipc
from conftest import needs_real_root
from segments import Spec, _fork, attach, cli, make, rows, table

from shmjanitor import remove


def filled(size: int, data: bytes, key: int = 0, mode: int = 0o640, uid: int | None = None) -> int:
    """A segment made, filled with `data` and left by a process that exits (an orphan)."""

    def body() -> list[int]:
        shm = sysv_ipc.SharedMemory(key or sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX,
                                    mode=mode, size=size, init_character=b"\0")  # fmt: skip
        shm.write(data)
        shm.detach()
        return [shm.id]

    return _fork(body, stay=False, uid=uid).ids[0]


def content(shmid: int) -> bytes:
    shm = sysv_ipc.attach(shmid, flags=sysv_ipc.SHM_RDONLY)
    try:
        return bytes(shm.read())
    finally:
        shm.detach()


def reap(state: Path, *extra: str) -> dict:
    r = cli("reap", "--min-age", "0", "--include-system", "--state-dir", str(state), "--json",
            *extra)  # fmt: skip
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def entries(state: Path) -> list[dict]:
    r = cli("quarantine", "list", "--state-dir", str(state), "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["entries"]


def restore(state: Path, entry: str):  # type: ignore[no-untyped-def]
    return cli("restore", entry, "--state-dir", str(state), "--json")


def test_keyed_and_private_segments_come_back_byte_for_byte(tmp_path):
    needs_real_root()
    keyed_bytes, private_bytes = os.urandom(5000), os.urandom(12345)  # not page multiples
    keyed = filled(5000, keyed_bytes, key=0x5EED0001, mode=0o604, uid=1000)
    private = filled(12345, private_bytes, mode=0o600)
    before = {i: r for i, r in rows().items()}
    out = reap(tmp_path)
    assert sorted(r["action"] for r in out["results"]) == ["removed", "removed"]
    assert rows() == {}
    listed = {e["id"]: e for e in entries(tmp_path)}
    assert set(listed) == {keyed, private}
    assert listed[keyed]["key"] == 0x5EED0001 and listed[keyed]["size"] == 5000
    assert listed[keyed]["uid"] == 1000 and listed[keyed]["reason"].startswith("creator")
    assert {"entry", "id", "key", "size", "uid", "removed_at", "reason"} <= set(listed[keyed])

    r = restore(tmp_path, listed[keyed]["entry"])
    assert r.exit_code == 0, r.output
    back = json.loads(r.stdout)
    assert back["key"] == 0x5EED0001
    assert content(back["id"]) == keyed_bytes
    r = restore(tmp_path, listed[private]["entry"])
    assert r.exit_code == 0, r.output
    new_private = json.loads(r.stdout)["id"]
    assert new_private != private and content(new_private) == private_bytes

    now = rows()
    k, p = now[back["id"]], now[new_private]
    header = table().splitlines()[0].split()
    col = {n: header.index(n) for n in ("key", "perms", "size", "uid", "gid")}
    for new, old in ((k, before[keyed]), (p, before[private])):
        for name in ("perms", "size", "uid", "gid"):
            assert new[col[name]] == old[col[name]], name
    assert int(k[col["key"]]) == 0x5EED0001
    assert k[col["uid"]] == "1000" and k[col["perms"]].strip() == "604"


def test_restore_refuses_a_key_in_use_and_twice(tmp_path):
    filled(100, b"old", key=0x5EED0002)
    reap(tmp_path)
    (entry,) = entries(tmp_path)
    squatter = sysv_ipc.SharedMemory(0x5EED0002, sysv_ipc.IPC_CREX, size=10)
    squatter.detach()
    r = restore(tmp_path, entry["entry"])
    assert r.exit_code == 1 and "in use" in r.output and "Traceback" not in r.output
    assert set(rows()) == {squatter.id}  # nothing made, the squatter untouched
    squatter.remove()
    r = restore(tmp_path, entry["entry"])
    assert r.exit_code == 0, r.output
    new_id = json.loads(r.stdout)["id"]
    assert content(new_id)[:3] == b"old"
    assert entries(tmp_path)[0]["restored_as"] == new_id
    r = restore(tmp_path, entry["entry"])
    assert r.exit_code == 1 and "already restored" in r.output and r.stdout == ""


def test_unknown_entry_is_a_clear_error(tmp_path):
    r = restore(tmp_path, "nope.1")
    assert r.exit_code == 1 and "no quarantine entry" in r.output


def test_files_are_private(tmp_path):
    filled(4096, os.urandom(4096))
    state = tmp_path / "state"
    reap(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    q = state / "quarantine"
    assert stat.S_IMODE(q.stat().st_mode) == 0o700
    files = list(q.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_zero_pages_take_no_space_and_random_ones_are_compressed_at_most(tmp_path):
    filled(1 << 20, b"")  # a 1 MiB leak of zero pages
    filled(4096, b"A" * 4096)
    reap(tmp_path)
    assert len(entries(tmp_path)) == 2
    used = sum(f.stat().st_size for f in (tmp_path / "quarantine").iterdir())
    assert used < 4096  # 1 MiB + 4 KiB of segments in under a page of files


def test_failing_save_keeps_the_segment(tmp_path):
    needs_real_root()  # root ignores file modes; a read-only bind mount stops it
    import subprocess
    import sys

    ro = tmp_path / "ro"
    (ro / "quarantine").mkdir(parents=True, mode=0o700)
    ro.chmod(0o700)
    shmid = filled(4096, os.urandom(4096))
    before = table()
    r = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f"mount --bind -o ro {ro} {ro} && exec {sys.executable} -m shmjanitor reap "
         f"--min-age 0 --include-system --state-dir {ro} --json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1 and r.stdout, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert res["action"] == "failed" and "quarantine" in res["reason"]
    assert table() == before and shmid in rows()
    assert "Traceback" not in r.stderr


def test_no_quarantine_writes_nothing_and_dry_run_writes_nothing(tmp_path):
    filled(4096, b"x")
    out = reap(tmp_path, "--dry-run")
    assert [r["action"] for r in out["results"]] == ["would-remove"]
    assert not tmp_path.joinpath("quarantine").exists()
    out = reap(tmp_path, "--no-quarantine")
    assert [r["action"] for r in out["results"]] == ["removed"]
    assert not tmp_path.joinpath("quarantine").exists() and rows() == {}


def test_segment_over_max_bytes_is_kept_unless_no_quarantine(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("quarantine_max_bytes = 1000\n")
    cfg.chmod(0o600)
    filled(4096, b"x")
    out = reap(tmp_path, "--config", str(cfg))
    (res,) = out["results"]
    assert res["action"] == "kept" and "quarantine_max_bytes" in res["reason"]
    dry = reap(tmp_path, "--config", str(cfg), "--dry-run")
    assert dry["results"][0]["action"] == "kept"  # the dry run says what the real run does
    out = reap(tmp_path, "--config", str(cfg), "--no-quarantine")
    assert out["results"][0]["action"] == "removed"


def test_a_full_budget_keeps_the_new_segment_and_evicts_nobody(tmp_path):
    """Issue 10, item 11: one user's large leak must not push another user's copy out
    of the quarantine early. The budget never evicts a run younger than
    quarantine_days: the segment that does not fit is kept, and the run says so."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("quarantine_budget_bytes = 30000\n")
    cfg.chmod(0o600)
    state = tmp_path / "s"
    filled(12000, os.urandom(12000))  # one user's copy: ~12 KB on disk
    out = reap(state, "--config", str(cfg))
    assert out["results"][0]["action"] == "removed", out
    first = {e["entry"] for e in entries(state)}
    big = filled(20000, os.urandom(20000))  # another's leak: would need the first evicted
    r = cli("reap", "--min-age", "0", "--include-system", "--state-dir", str(state),
            "--config", str(cfg), "-v")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "action=kept" in r.stdout and "budget" in r.stdout and "is full" in r.output
    assert big in rows()  # kept, not removed without a copy
    assert {e["entry"] for e in entries(state)} == first  # and nobody's copy was evicted
    used = sum(f.stat().st_size for f in (state / "quarantine").iterdir())
    assert used <= 30000


def test_age_pruning_and_purge(tmp_path):
    filled(100, b"a")
    reap(tmp_path)
    (q,) = list((tmp_path / "quarantine").glob("*.json"))
    doc = json.loads(q.read_text())
    doc["created_at"] -= 8 * 86400  # a run from 8 days ago
    q.write_text(json.dumps(doc))
    filled(100, b"b")
    reap(tmp_path)  # quarantine_days = 7: the old run is pruned
    assert len(entries(tmp_path)) == 1
    r = cli("quarantine", "purge", "--older-than", "1h", "--state-dir", str(tmp_path))
    assert r.exit_code == 0 and "purged 0" in r.output
    r = cli("quarantine", "purge", "--state-dir", str(tmp_path))
    assert r.exit_code == 2 and "--older-than" in r.output
    r = cli("quarantine", "purge", "--all", "--state-dir", str(tmp_path))
    assert r.exit_code == 0 and "purged 1" in r.output and entries(tmp_path) == []


def test_segment_attached_between_copy_and_removal_is_not_removed(tmp_path, monkeypatch):
    shmid = filled(4096, b"precious")
    real_copy = remove.copy_out

    def copy_then_someone_attaches(v, *args):  # type: ignore[no-untyped-def]
        got = real_copy(v, *args)
        attach(v.segment.id)  # a real process attaches right after our copy
        return got

    monkeypatch.setattr(remove, "copy_out", copy_then_someone_attaches)
    out = reap(tmp_path)
    (res,) = out["results"]
    assert res["action"] == "kept" and "attached" in res["reason"], res
    assert shmid in rows() and entries(tmp_path) == []  # no entry for what was not removed


def test_restored_segment_keeps_owner_when_restored_by_root(tmp_path):
    needs_real_root()
    filled(64, b"mine", uid=1001, mode=0o600)
    reap(tmp_path)
    (e,) = entries(tmp_path)
    assert e["uid"] == 1001
    r = restore(tmp_path, e["entry"])
    new = json.loads(r.stdout)["id"]
    s = {x["id"]: x for x in json.loads(cli("list", "--json").stdout)["segments"]}[new]
    assert (s["uid"], s["gid"], s["perms"], s["size"]) == (1001, 1001, 0o600, 64)


@pytest.mark.parametrize("bad", ["--older-than 5x", "--all --older-than 1h"])
def test_purge_bad_flags(tmp_path, bad):
    r = cli("quarantine", "purge", *bad.split(), "--state-dir", str(tmp_path))
    assert r.exit_code == 2


def copies_made(monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    """The ids remove.copy_out attaches to copy, in order (it still copies them)."""
    copied: list[int] = []
    real_copy = remove.copy_out

    def counting_copy(v, *args):  # type: ignore[no-untyped-def]
        copied.append(v.segment.id)
        return real_copy(v, *args)

    monkeypatch.setattr(remove, "copy_out", counting_copy)
    return copied


def test_never_attached_orphan_is_saved_as_zeros_without_attaching(tmp_path, monkeypatch):
    """An ipcmk-style leak (created, never attached) needs no attach to be quarantined:
    its bytes can only be zero. It restores as zero bytes of its size, key and mode."""
    (shmid,) = make(Spec(size=5000, key=0x5EED0002, mode=0o640), uid=1000).ids
    touched = make(Spec(size=4096, touch=True)).ids[0]  # attached once: copied as usual
    copied = copies_made(monkeypatch)
    out = reap(tmp_path)
    assert sorted(r["action"] for r in out["results"]) == ["removed", "removed"], out
    assert copied == [touched]  # the never-attached one was not attached to
    assert rows() == {}
    by_id = {e["id"]: e for e in entries(tmp_path)}
    assert set(by_id) == {shmid, touched}
    r = restore(tmp_path, by_id[shmid]["entry"])
    assert r.exit_code == 0, r.output
    new = json.loads(r.stdout)["id"]
    assert content(new) == bytes(5000)
    seg = {x["id"]: x for x in json.loads(cli("list", "--json").stdout)["segments"]}[new]
    assert (seg["key"], seg["perms"], seg["uid"]) == (0x5EED0002, 0o640, 1000)


def test_never_attached_segment_written_while_saved_is_not_removed(tmp_path, monkeypatch):
    """The zero shortcut holds only while nobody attaches: a process that attaches and
    writes after the decision (before IPC_RMID) keeps the segment and its bytes."""
    (shmid,) = make(Spec(size=4096)).ids
    real_known_zero = remove.known_zero

    def write() -> list[int]:
        shm = sysv_ipc.attach(shmid)
        shm.write(b"written after the scan")
        shm.detach()
        return [shmid]

    def then_someone_writes(v, forced):  # type: ignore[no-untyped-def]
        zero = real_known_zero(v, forced)
        if v.segment.id == shmid:
            _fork(write, stay=False)  # another process attaches, writes, detaches, exits
        return zero

    monkeypatch.setattr(remove, "known_zero", then_someone_writes)
    out = reap(tmp_path)
    (res,) = out["results"]
    assert res["action"] == "kept" and "while it was saved" in res["reason"], res
    assert shmid in rows() and entries(tmp_path) == []
    assert content(shmid).startswith(b"written after the scan")


def test_rm_force_copies_even_a_never_attached_segment(tmp_path, monkeypatch):
    """rm --force skips the in-use checks the zero shortcut rests on: it always copies."""
    maker = make(Spec(size=4096), stay=True)  # creator alive: idle, only --force removes it
    (shmid,) = maker.ids
    copied = copies_made(monkeypatch)
    r = cli("rm", str(shmid), "--force", "--state-dir", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    assert copied == [shmid] and shmid not in rows()
    maker.kill()
