"""Issue 10: the reap's last instant, the quarantine's truth, and what a user controls.

Each test reproduces one numbered item of the issue with real segments and processes in
the test's private IPC namespace (and, where a file system must fill up, a private
mount namespace of a subprocess). The quarantine always lives in a temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional

import pytest
import sysv_ipc
from conftest import needs_real_root
from segments import Spec, _fork, attach, cli, make, rows
from test_quarantine import entries, filled, reap, restore

from shmjanitor import kernel, remove, survey

JANITOR = [sys.executable, "-m", "shmjanitor"]


def mode_of(shmid: int) -> int:
    return kernel.shm_stat(shmid).mode


def try_attach_as(shmid: int, uid: Optional[int]) -> str:
    """A process (as `uid`, or root) tries to attach; "attached" (it stays attached
    until the test ends) or the name of the error the kernel gave."""

    def body() -> list[str]:
        try:
            shm = sysv_ipc.attach(shmid)
        except sysv_ipc.Error as e:
            return [type(e).__name__]
        _keep.append(shm)
        return ["attached"]

    return str(_fork(body, stay=True, uid=uid).ids[0])


_keep: list[object] = []


# --- item 6: the last instant --------------------------------------------------------------


def test_no_quarantine_attach_between_scan_and_removal_is_kept(tmp_path, monkeypatch):
    """An attach after the survey, without a copy to notice it: the re-check keeps it."""
    shmid = filled(4096, b"in use")
    real_take = survey.take

    def take_then_someone_attaches(*a, **k):  # type: ignore[no-untyped-def]
        sv = real_take(*a, **k)
        attach(shmid)  # a real process attaches right after we looked
        return sv

    monkeypatch.setattr(survey, "take", take_then_someone_attaches)
    out = reap(tmp_path, "--no-quarantine")
    (res,) = out["results"]
    assert res["action"] == "kept" and res["reason"] == "changed since scan: 1 attached now", res
    assert shmid in rows()


def test_no_quarantine_attach_and_detach_between_scan_and_removal_is_kept(tmp_path, monkeypatch):
    """Attached and detached again (nattch back to 0): the times give it away."""
    shmid = filled(4096, b"in use")
    real_take = survey.take

    def take_then_someone_uses_it(*a, **k):  # type: ignore[no-untyped-def]
        sv = real_take(*a, **k)
        _fork(lambda: [sysv_ipc.attach(shmid).detach()], stay=True)  # a live user, gone by now
        return sv

    monkeypatch.setattr(survey, "take", take_then_someone_uses_it)
    out = reap(tmp_path, "--no-quarantine")
    (res,) = out["results"]
    assert res["action"] == "kept", res
    assert res["reason"] == "changed since scan: attached, detached or IPC_SET since", res
    assert shmid in rows()


def test_no_quarantine_mode_changed_in_the_second_of_the_scan_is_kept(tmp_path, monkeypatch):
    """An IPC_SET (a chmod by its owner) after the survey, in the same second: ctime,
    in whole seconds, does not move; the mode itself shows the change."""
    time.sleep(1.02 - time.time() % 1)  # early in a second: all of it happens in one
    shmid = filled(4096, b"in use", mode=0o644)
    real_take = survey.take

    def take_then_owner_chmods(*a, **k):  # type: ignore[no-untyped-def]
        sv = real_take(*a, **k)
        kernel.shm_stat(shmid)
        kernel.set_mode_after_stat(shmid, 0o600)
        return sv

    monkeypatch.setattr(survey, "take", take_then_owner_chmods)
    out = reap(tmp_path, "--no-quarantine")
    (res,) = out["results"]
    assert res["action"] == "kept" and "mode changed" in res["reason"], res
    assert kernel.shm_stat(shmid).mode & 0o777 == 0o600


@pytest.mark.parametrize("quarantine", [True, False])
def test_attach_just_before_the_lock_keeps_the_segment_and_its_mode(tmp_path, monkeypatch,
                                                                    quarantine):  # fmt: skip
    """A process attaches between our last IPC_STAT and the IPC_SET that locks the
    segment: the look after the lock sees it, the mode is put back, nothing removed."""
    shmid = filled(4096, b"last instant", mode=0o644)
    real_set = kernel.set_mode_after_stat
    seen: list[int] = []

    def attach_first(target: int, mode: int) -> None:
        if target == shmid and mode == remove.lock_mode() and not seen:
            seen.append(int(try_attach_as(shmid, None) == "attached"))
            kernel.shm_stat(target)  # our buffer again: the attacher's fork used its own
        real_set(target, mode)

    monkeypatch.setattr(kernel, "set_mode_after_stat", attach_first)
    out = reap(tmp_path, *([] if quarantine else ["--no-quarantine"]))
    (res,) = out["results"]
    assert seen == [1]
    assert res["action"] == "kept" and "attached at the last instant" in res["reason"], res
    st = kernel.shm_stat(shmid)
    assert not st.mode & 0o1000 and st.mode & 0o777 == 0o644  # not removed, mode put back
    assert entries(tmp_path) == []


def test_unprivileged_attach_after_the_lock_is_refused_and_the_segment_goes(tmp_path, monkeypatch):
    """Between the lock (mode 000) and IPC_RMID an ordinary user's shmat fails with
    EACCES: the segment goes, and nobody was using it when it went."""
    needs_real_root()
    shmid = filled(4096, b"locked", mode=0o666)
    real_rmid = kernel.shm_rmid
    tried: list[str] = []

    def someone_tries_first(target: int) -> None:
        if target == shmid:
            tried.append(try_attach_as(shmid, 1000))
        real_rmid(target)

    monkeypatch.setattr(kernel, "shm_rmid", someone_tries_first)
    out = reap(tmp_path)
    (res,) = out["results"]
    assert tried == ["PermissionsError"], tried
    assert res["action"] == "removed" and "while" not in res["reason"], res
    assert shmid not in rows()  # destroyed at once: nobody attached


def test_privileged_attach_after_the_lock_is_reported(tmp_path, monkeypatch):
    """Root (CAP_IPC_OWNER) can still attach after the lock; the IPC_STAT after IPC_RMID
    sees it and the result says so instead of pretending nothing happened."""
    shmid = filled(4096, b"locked")
    real_rmid = kernel.shm_rmid
    tried: list[str] = []

    def root_attaches_first(target: int) -> None:
        if target == shmid:
            tried.append(try_attach_as(shmid, None))
        real_rmid(target)

    monkeypatch.setattr(kernel, "shm_rmid", root_attaches_first)
    out = reap(tmp_path)
    (res,) = out["results"]
    assert tried == ["attached"]
    assert res["action"] == "removed" and "removed while 1 attached" in res["reason"], res
    assert "may miss its last writes" in res["reason"]
    st = kernel.shm_stat(shmid)  # still there for its user, marked for removal
    assert st.mode & 0o1000 and st.nattch == 1


# --- item 8 and 15: a full disk, and the free-space floor -----------------------------------


def in_tiny_tmpfs(state: Path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run `script` (sh) with a fresh tmpfs of `size` mounted on the quarantine of
    `state`, in a private mount namespace (the test's IPC namespace is inherited)."""
    (state / "quarantine").mkdir(mode=0o700, parents=True)
    state.chmod(0o700)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc",
         f"mount -t tmpfs -o size={size},mode=0700 none {state}/quarantine\n{script}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_full_disk_while_saving_fails_cleanly_and_the_next_run_works(tmp_path):
    needs_real_root()  # mount
    # Incompressible, and as large as the tmpfs: it passes the free-space check (the
    # floor is 0 here) and the compressed copy, a few bytes larger, cannot fit.
    big = filled(1 << 20, os.urandom(1 << 20))
    cfg = tmp_path / "c.toml"
    cfg.write_text("quarantine_min_free_bytes = 0\n")  # let it reach ENOSPC
    state, out = tmp_path / "state", tmp_path / "out"
    out.mkdir()
    janitor = " ".join(JANITOR)
    flags = f"--min-age 0 --include-system --config {cfg} --state-dir {state} --json"
    p = in_tiny_tmpfs(state, "1m", textwrap.dedent(f"""
        rc=0; {janitor} reap {flags} > {out}/1.json 2> {out}/1.err || rc=$?; echo $rc > {out}/1.rc
        ls -A {state}/quarantine > {out}/1.ls
        ipcmk -M 4096 > /dev/null          # a small never-attached leak
        rc=0; {janitor} reap {flags} > {out}/2.json 2> {out}/2.err || rc=$?; echo $rc > {out}/2.rc
    """))  # fmt: skip
    assert p.returncode == 0, p.stderr
    first = json.loads((out / "1.json").read_text())
    assert (out / "1.rc").read_text().strip() == "1", json.dumps(first["results"])
    (res,) = first["results"]
    assert res["action"] == "failed" and "No space left on device" in res["reason"], res
    assert "Traceback" not in (out / "1.err").read_text()
    assert big in rows()  # kept: no copy, no removal
    assert (out / "1.ls").read_text() == ".lock\n"  # no temporary file left to fill the disk
    # The next run: the big one fails again (alone: the file is cut back after it), and
    # the 4 KiB leak made meanwhile is saved and removed.
    second = json.loads((out / "2.json").read_text())
    assert (out / "2.rc").read_text().strip() == "1", (out / "2.err").read_text()
    got = {r["id"]: r["action"] for r in second["results"]}
    assert got.pop(big) == "failed" and list(got.values()) == ["removed"], json.dumps(second)
    assert big in rows()


def test_the_free_space_floor_keeps_the_segment(tmp_path):
    shmid = filled(4096, os.urandom(4096))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"quarantine_min_free_bytes = {1 << 60}\n")  # more than any disk has
    cfg.chmod(0o600)
    out = reap(tmp_path / "s", "--config", str(cfg))
    (res,) = out["results"]
    assert res["action"] == "kept" and "not enough free space" in res["reason"], res
    assert shmid in rows()


# --- item 10 and 17: copy only what exists ------------------------------------------------


def sparse(size: int, flags: int = 0, written: int = 1) -> int:
    """A segment of `size` bytes (SHM_NORESERVE | flags) with `written` pages written
    by its creator, which then exits."""

    def body() -> list[int]:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
        shmid = _shmget(size, 0o10000 | flags)  # SHM_NORESERVE
        addr = libc.shmat(shmid, None, 0)
        for page in range(written):
            ctypes.memmove(addr + page * 1009 * 4096 % size, b"x", 1)
        kernel.shm_detach(addr)
        return [shmid]

    return int(_fork(body, stay=False).ids[0])


def _shmget(size: int, flags: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
    shmid = int(libc.shmget(0, size, 0o1000 | 0o2000 | 0o600 | flags))
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    return shmid


def rss(shmid: int) -> int:
    header = Path("/proc/sysvipc/shm").read_text().splitlines()[0].split()
    return int(rows()[shmid][header.index("rss")])


def test_a_sparse_segment_is_copied_without_allocating_its_holes(tmp_path, monkeypatch):
    """12 segments of 64 MiB with 3 pages written: the copy reads 3 pages of each and
    the kernel allocates nothing more (rss of each segment right after our copy)."""
    ids = [sparse(64 << 20, written=3) for _ in range(12)]
    assert all(rss(i) == 3 * 4096 for i in ids)
    after_copy: dict[int, int] = {}
    real_copy = remove.copy_out

    def copy_and_measure(v, *args):  # type: ignore[no-untyped-def]
        got = real_copy(v, *args)
        after_copy[v.segment.id] = rss(v.segment.id)
        return got

    monkeypatch.setattr(remove, "copy_out", copy_and_measure)
    out = reap(tmp_path)
    assert [r["action"] for r in out["results"]] == ["removed"] * 12, out
    assert after_copy == {i: 3 * 4096 for i in ids}
    by_id = {e["id"]: e for e in entries(tmp_path)}
    r = restore(tmp_path, by_id[ids[0]]["entry"])
    new = json.loads(r.stdout)["id"]
    assert rss(new) <= 3 * 4096  # it comes back sparse too
    shm = sysv_ipc.attach(new, flags=sysv_ipc.SHM_RDONLY)
    try:
        for page in range(3):
            at = page * 1009 * 4096 % (64 << 20)
            assert shm.read(1, at) == b"x"
    finally:
        shm.detach()


def test_a_hugetlb_segment_without_free_huge_pages_does_not_kill_the_reaper(tmp_path):
    """SHM_HUGETLB | SHM_NORESERVE with no free huge pages: a read of its page faults
    with SIGBUS. Attached once by its creator (so not "never attached"), never written."""
    shm_hugetlb, shm_noreserve = 0o4000, 0o10000
    try:
        shmid = _fork(lambda: [_hugetlb_touched_never(shm_hugetlb | shm_noreserve)],
                      stay=False).ids[0]  # fmt: skip
    except RuntimeError as e:
        pytest.skip(f"no SHM_HUGETLB here: {e}")
    p = subprocess.run([*JANITOR, "reap", "--min-age", "0", "--include-system", "--json",
                        "--state-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert p.returncode == 0, (p.returncode, p.stderr)  # 135 was SIGBUS
    (res,) = json.loads(p.stdout)["results"]
    assert res["id"] == shmid and res["action"] == "removed", res
    (e,) = entries(tmp_path)
    assert e["id"] == shmid


def _hugetlb_touched_never(flags: int) -> int:
    shmid = _shmget(2 << 20, flags)
    kernel.shm_detach(kernel.shm_attach_ro(shmid))
    return shmid


# --- item 13 and 14: what a user controls in the state directory ----------------------------


def test_an_existing_state_dir_is_never_chmodded_and_an_open_one_is_refused(tmp_path):
    shared = tmp_path / "lib"  # like /var/lib: ours, 0755, others' directories inside
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    filled(4096, b"a")
    out = reap(shared)
    assert [r["action"] for r in out["results"]] == ["removed"]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # left as it was
    assert stat.S_IMODE((shared / "quarantine").stat().st_mode) == 0o700  # ours: private

    open_dir = tmp_path / "tmp"  # like /tmp: anyone may plant files in it
    open_dir.mkdir()
    open_dir.chmod(0o1777)
    shmid = filled(4096, b"b")
    r = cli("reap", "--min-age", "0", "--include-system", "--state-dir", str(open_dir))
    assert r.exit_code == 1 and "too open" in r.output, r.output
    assert shmid in rows() and stat.S_IMODE(open_dir.stat().st_mode) == 0o1777


def test_a_planted_index_is_set_aside_not_trusted(tmp_path):
    needs_real_root()
    filled(4096, b"real")
    reap(tmp_path)
    (real,) = entries(tmp_path)
    q = tmp_path / "quarantine"
    # An index another user put there (say while the directory was open): a root-owned
    # 0666 segment with a chosen key, if it were believed.
    planted = json.loads((q / f"{real['entry'].rsplit('.', 1)[0]}.json").read_text())
    planted["run"] = "20200101T000000.000000Z-1"
    for e in planted["entries"]:
        e.update(key=0x5EED, mode=0o666, uid=0)
    path = q / "20200101T000000.000000Z-1.json"
    path.write_text(json.dumps(planted))
    os.chown(path, 1000, 1000)
    r = cli("quarantine", "list", "--json", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert [e["entry"] for e in json.loads(r.stdout)["entries"]] == [real["entry"]]
    assert "set aside" in r.output and not path.exists()
    assert (q / "20200101T000000.000000Z-1.json.damaged").exists()
    r = restore(tmp_path, "20200101T000000.000000Z-1.0")
    assert r.exit_code == 1 and "no quarantine entry" in r.output
    assert all(int(row[0]) != 0x5EED for row in rows().values())


def test_a_data_file_that_is_a_symlink_is_never_opened(tmp_path):
    filled(4096, os.urandom(4096))
    reap(tmp_path)
    (e,) = entries(tmp_path)
    data = tmp_path / "quarantine" / f"{e['entry'].rsplit('.', 1)[0]}.data"
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(4096))
    data.unlink()
    data.symlink_to(secret)
    r = restore(tmp_path, e["entry"])
    assert r.exit_code == 1 and "data file unusable" in r.output, r.output
    assert r.stdout == "" and len(r.output.splitlines()) == 1, r.output  # one line, stderr
    assert "Traceback" not in r.output and rows() == {}  # nothing made


# --- item 18: damaged quarantines, and sizes -----------------------------------------------


@pytest.mark.parametrize("index", [
    '{"version": 1}', "[]", '"text"', "{not json",
    '{"version": 2, "run": "r", "created_at": "yesterday", "entries": []}',
    '{"version": 2, "run": "r", "created_at": 1, "entries": [{"n": 0}]}',
    '{"version": 1, "run": "r", "created_at": 1, "entries": [{"n": 0, "id": 1, "key": 0,'
    ' "size": 1, "mode": 384, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "cpid": 1,'
    ' "lpid": 1, "ctime": 1, "removed_at": 1, "offset": 0, "length": 0, "crc32": 0,'
    ' "reason": "x", "removed": true}]}',
])  # fmt: skip
def test_a_damaged_index_is_set_aside_and_blocks_nothing(tmp_path, index):
    filled(4096, b"good")
    reap(tmp_path)
    (good,) = entries(tmp_path)
    bad = tmp_path / "quarantine" / "20200101T000000.000000Z-1.json"
    bad.write_text(index)
    bad.chmod(0o600)
    r = cli("quarantine", "list", "--json", "--state-dir", str(tmp_path))
    assert r.exit_code == 0 and "damaged" in r.output and "Traceback" not in r.output, r.output
    said = r.output[len(r.stdout) :] if r.output.startswith(r.stdout) else r.output
    assert len([ln for ln in said.splitlines() if "damaged" in ln]) == 1, said  # said once
    assert [e["entry"] for e in json.loads(r.stdout)["entries"]] == [good["entry"]]
    assert not bad.exists() and bad.with_name(bad.name + ".damaged").exists()
    shmid = filled(4096, b"next")
    out = reap(tmp_path)  # the next reap works
    assert [(x["id"], x["action"]) for x in out["results"]] == [(shmid, "removed")]
    r = cli("quarantine", "purge", "--all", "--state-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == [".lock"]  # the store's flock


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_data_file_is_said_damaged_on_restore(tmp_path, how):
    filled(64 << 10, os.urandom(64 << 10))
    reap(tmp_path)
    (e,) = entries(tmp_path)
    data = tmp_path / "quarantine" / f"{e['entry'].rsplit('.', 1)[0]}.data"
    blob = bytearray(data.read_bytes())
    if how == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0x40
    data.write_bytes(bytes(blob))
    r = restore(tmp_path, e["entry"])
    assert r.exit_code == 1 and "damaged" in r.output and "Traceback" not in r.output, r.output
    assert r.stdout == "" and len(r.output.splitlines()) == 1, r.output  # one line, stderr
    assert rows() == {}  # the half-made segment was removed again


def test_restore_larger_than_shmmax_says_so(tmp_path):
    filled(64 << 10, os.urandom(64 << 10))
    reap(tmp_path)
    (e,) = entries(tmp_path)
    Path("/proc/sys/kernel/shmmax").write_text("4096")  # our IPC namespace's own limit
    r = restore(tmp_path, e["entry"])
    assert r.exit_code == 1 and "kernel.shmmax" in r.output and "Traceback" not in r.output
    assert r.stdout == "" and len(r.output.splitlines()) == 1, r.output  # one line, stderr


def test_a_one_tib_never_attached_segment_is_saved_and_restored_without_its_bytes(tmp_path):
    Path("/proc/sys/kernel/shmmax").write_text(str(1 << 41))
    Path("/proc/sys/kernel/shmall").write_text(str(1 << 30))
    # Never attached: its bytes can only be zero. SHM_NORESERVE, as a program asking for
    # that much would: the kernel's overcommit check refuses 1 TiB of reserved memory.
    (shmid,) = make(Spec(size=1 << 40, mode=0o600 | 0o10000)).ids
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"quarantine_max_bytes = {1 << 41}\n")  # "the limit raised"
    out = reap(tmp_path / "s", "--config", str(cfg))
    assert [r["action"] for r in out["results"]] == ["removed"], out
    (e,) = entries(tmp_path / "s")
    r = restore(tmp_path / "s", e["entry"])
    assert r.exit_code == 0, r.output
    new = json.loads(r.stdout)["id"]
    assert kernel.shm_stat(new).size == 1 << 40 and rss(new) == 0


def test_signals_are_restored_after_a_run():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with remove.stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.name == "SIGTERM"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
