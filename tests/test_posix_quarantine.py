"""The quarantine of POSIX objects (issue 13, item 5): only the data is copied (holes
stay holes, never more memory than the file uses), and restore gives back the name,
mode, owner and bytes, refused while the name exists. Real files in the test's own
tmpfs on /dev/shm."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import pytest
from test_posix_remove import (  # noqa: F401 (posix_kinds: an autouse fixture)
    SHM,
    mq_dir,
    mq_make,
    mq_obj,
    posix_kinds,
    read_all,
    reap,
    spawn,
    verdict,
)

from shmjanitor import posixrm, quarantine, remove
from shmjanitor.config import Config
from shmjanitor.model import Action
from shmjanitor.quarantine import RestoreError, Store

GiB, MiB, PAGE = 1 << 30, 1 << 20, 4096


def shmem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


def sparse(name: str, size: int, at: int, data: bytes) -> Path:
    path = SHM / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    os.ftruncate(fd, size)
    os.pwrite(fd, data, at)
    os.fchown(fd, 1234, 2345)
    os.close(fd)
    return path


def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state", Config())


def only_entry(st: Store) -> quarantine.Entry:
    (e,) = st.entries()
    return e


def test_a_sparse_gib_with_one_page_is_copied_and_restored_without_allocating(tmp_path):
    """1 GiB long, one page written: the copy reads that page only (SEEK_DATA), the
    file's st_blocks and the kernel's Shmem do not grow, the entry holds one extent,
    and the restored file is as sparse as it was."""
    page = os.urandom(PAGE)
    path = sparse("big", GiB, 512 * MiB, page)
    (o,) = read_all(path)
    blocks, shmem = os.stat(path).st_blocks, shmem_kib()
    assert blocks * 512 == PAGE
    got: list[bytes] = []
    extents = posixrm.save(o, got.append)
    assert extents == [(512 * MiB, PAGE)] and b"".join(got) == page
    assert os.stat(path).st_blocks == blocks, "the copy allocated pages of the file"
    assert shmem_kib() - shmem < 64 * 1024, "the copy allocated shared memory"
    st = store(tmp_path)
    (r,) = reap([o], batch=st.open_batch(time.time()))
    assert r.action is Action.REMOVED and not path.exists(), r
    e = only_entry(st)
    assert e.doc["extents"] == [[512 * MiB, PAGE]] and e.doc["length"] < 2 * PAGE
    quarantine.restore(st, e.name, time.time())
    s = os.stat(path)
    assert (s.st_size, s.st_blocks * 512) == (GiB, PAGE), "restored with its holes"
    assert (s.st_mode & 0o7777, s.st_uid, s.st_gid) == (0o640, 1234, 2345)
    with open(path, "rb") as f:
        f.seek(512 * MiB)
        assert f.read(PAGE) == page
    assert shmem_kib() - shmem < 64 * 1024


def test_restore_gives_back_name_mode_owner_bytes_and_holes_refused_while_the_name_exists(
    tmp_path,
):
    path = sparse("psm_1234abcd", 3 * PAGE, PAGE, b"data in the middle page")
    os.chmod(path, 0o604)
    (o,) = read_all(path)
    st = store(tmp_path)
    (r,) = reap([o], batch=st.open_batch(time.time()))
    assert r.action is Action.REMOVED, r
    e = only_entry(st)
    assert (e.doc["dir"], e.doc["name"], e.doc["st_size"]) == (str(SHM), "psm_1234abcd", 3 * PAGE)
    # Someone made the name again: never replaced.
    path.write_bytes(b"someone else's")
    with pytest.raises(RestoreError, match="exists now"):
        quarantine.restore(st, e.name, time.time())
    assert path.read_bytes() == b"someone else's"
    path.unlink()
    found = st.find_by_path(str(path))
    new_ino, _ = quarantine.restore(st, found, time.time())
    s = os.stat(path)
    assert s.st_ino == new_ino
    assert (s.st_mode & 0o7777, s.st_uid, s.st_gid, s.st_size) == (0o604, 1234, 2345, 3 * PAGE)
    assert s.st_blocks * 512 == PAGE, "holes stay holes"
    data = path.read_bytes()
    assert data[PAGE : PAGE + 23] == b"data in the middle page" and data[:PAGE] == bytes(PAGE)


def test_an_entry_cannot_be_aimed_outside_our_directories():
    for bad in ({"dir": "/etc", "name": "passwd"}, {"dir": str(SHM), "name": "../etc/x"},
                {"dir": str(SHM), "name": ".."}):  # fmt: skip
        doc = {**bad, "st_size": 0, "mtime_ns": 0, "ctime_ns": 0, "atime_ns": 0}
        assert posixrm.check_record(doc) is not None, bad


def test_a_file_written_after_its_copy_is_kept(tmp_path, monkeypatch):
    """A write between the copy and the last instant (the lease is let go after the
    copy): the bytes read again under the lease differ, so it is kept."""
    path = sparse("rewritten", PAGE, 0, b"before")
    (o,) = read_all(path)
    st = store(tmp_path)
    batch = st.open_batch(time.time())
    real = batch.commit

    def commit() -> None:
        real()
        # The same length and, on a kernel with coarse timestamps, maybe the same
        # mtime: only the bytes tell.
        fd = os.open(path, os.O_RDWR)
        os.pwrite(fd, b"after!", 0)
        os.close(fd)
        s = os.stat(path)
        os.utime(path, ns=(s.st_atime_ns, o.mtime_ns))

    monkeypatch.setattr(batch, "commit", commit)
    monkeypatch.setattr(posixrm, "_changed", lambda o, now, forced, since: None)
    (r,) = reap([o], batch=batch)
    assert r.action is Action.KEPT and "bytes are not those saved" in r.reason, r
    assert path.read_bytes().startswith(b"after!")


def test_an_empty_queue_is_saved_as_its_attributes_and_restored(mq_dir, tmp_path):  # noqa: F811
    os.close(mq_make("jobs", 0))
    os.chown(mq_dir / "jobs", 1234, 2345)
    o = mq_obj(mq_dir, "jobs", 0)
    st = store(tmp_path)
    (r,) = reap([o], batch=st.open_batch(time.time()))
    assert r.action is Action.REMOVED and not (mq_dir / "jobs").exists(), r
    e = only_entry(st)
    assert (e.doc["maxmsg"], e.doc["msgsize"], e.doc["extents"]) == (4, 64, [])
    quarantine.restore(st, e.name, time.time())
    s = os.stat(mq_dir / "jobs")
    assert (s.st_mode & 0o777, s.st_uid, s.st_gid) == (0o640, 1234, 2345)
    text = (mq_dir / "jobs").read_text()
    assert "QSIZE:0" in text
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.restype = ctypes.c_int
    libc.mq_open.argtypes = (ctypes.c_char_p, ctypes.c_int)
    fd = libc.mq_open(b"/jobs", os.O_RDONLY)
    attr = posixrm._MqAttr()
    assert fd >= 0 and libc.mq_getattr(fd, ctypes.byref(attr)) == 0
    os.close(fd)
    assert (attr.mq_maxmsg, attr.mq_msgsize) == (4, 64)


def test_a_killed_run_is_settled_by_what_is_still_at_the_names(tmp_path, spawn):  # noqa: F811
    """A run killed before its final index: the next run (which never read these files:
    it finds them by listing the directory) keeps the entry of the file its journal
    says it unlinked, and drops the one its lock note names that is still there."""
    free, held = sparse("free", PAGE, 0, b"free"), sparse("held", PAGE, 0, b"held")
    objs = read_all(free, held)
    st = store(tmp_path)
    batch = st.open_batch(time.time())
    notes: list[bytes] = []
    commit = batch.commit

    def commit_then_open() -> None:  # opened after its copy: kept at the last instant
        commit()
        spawn(held, "fd")

    batch.commit = commit_then_open  # type: ignore[method-assign]
    batch.finish = batch._close  # type: ignore[method-assign]  # killed before the index
    out = remove.execute([remove.Candidate(verdict(o), "orphan") for o in objs], dry_run=False,
                         batch=batch, max_copy=1 << 30, lock_note=notes.append)  # fmt: skip
    assert [r.action for r in out] == [Action.REMOVED, Action.KEPT], out
    assert {e.doc["status"] for e in st.entries()} == {"pending"}
    assert notes[-1].startswith(b"posix-shm %d " % objs[1].id)
    posixrm.remember([])  # a new process: it knows no id of the old run
    said: list[str] = []
    st.note = said.append  # type: ignore[method-assign]
    st.tidy(settle_runs=True, locked=notes[-1].decode())
    (e,) = st.entries()
    assert (e.doc["name"], e.doc["status"]) == ("free", "removed")
    assert any('path="/dev/shm/free"' in s and "settled" in s for s in said), said
