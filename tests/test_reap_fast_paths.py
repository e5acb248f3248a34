"""The fast paths of reap (issue 5) say exactly what the slow ones said.

No timing here: each test pins a shortcut to the plain computation it replaced.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import time
import zlib
from pathlib import Path

import pytest
import sysv_ipc

from shmjanitor import kernel, remove, segcopy
from shmjanitor.classify import Creator, State, Verdict
from shmjanitor.config import Config
from shmjanitor.quarantine import Store, boot_id, ipc_namespace
from shmjanitor.scan import Segment


def _slow_stat(shmid: int) -> kernel.Stat:
    """IPC_STAT read field by field through the ctypes struct (the old shm_stat)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ds = kernel._ShmidDs()
    assert libc.shmctl(shmid, kernel.IPC_STAT, ctypes.byref(ds)) == 0
    p = ds.perm
    return kernel.Stat(p.key & 0xFFFFFFFF, p.mode, ds.segsz, p.uid, p.cuid, ds.cpid, ds.lpid,
                       ds.nattch, ds.atime or None, ds.dtime or None, ds.ctime)  # fmt: skip


def test_shm_stat_unpacks_the_same_fields_as_the_ctypes_struct():
    keyed = sysv_ipc.SharedMemory(0x7EEDBEEF, sysv_ipc.IPC_CREX, mode=0o640, size=12345)
    private = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
    private.detach()  # one attached (nattch 1, no dtime), one detached (nattch 0, dtime)
    try:
        for shm in (keyed, private):
            now = kernel.shm_stat(shm.id)
            assert now == _slow_stat(shm.id)
            assert (now.size, now.cpid, now.lpid) == (shm.size, os.getpid(), os.getpid())
        assert kernel.shm_stat(keyed.id).key == 0x7EEDBEEF
        assert kernel.shm_stat(keyed.id).nattch == 1 and kernel.shm_stat(private.id).nattch == 0
    finally:
        keyed.detach()
        keyed.remove()
        private.remove()
    with pytest.raises(OSError) as e:
        kernel.shm_stat(private.id)
    assert e.value.errno in (errno.EINVAL, errno.EIDRM)


def _verdict(cpid: int, ctime: int, *, shmid: int = 1, atime: int | None = None,
             name: str | None = None, reason: str = "creator exited") -> Verdict:  # fmt: skip
    seg = Segment(key=0, id=shmid, mode=0o600, size=4096, cpid=cpid, lpid=0, nattch=0,
                  uid=1000, gid=1000, cuid=1000, cgid=1000, atime=atime, dtime=None,
                  ctime=ctime, rss=0, swap=0)  # fmt: skip
    return Verdict(seg, State.ORPHAN, reason, Creator(cpid, False, name), 0)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_creator_is_back_asks_once_per_dead_pid_and_always_for_a_live_one(monkeypatch):
    asked: list[int] = []
    real = kernel.pid_exists
    monkeypatch.setattr(kernel, "pid_exists", lambda pid: asked.append(pid) or real(pid))
    dead, alive = _dead_pid(), os.getpid()
    now = int(time.time())  # a ctime after our start: "it could be us"
    seen: set[int] = set()
    for _ in range(3):
        assert not remove.creator_is_back(_verdict(dead, now), seen)
        assert remove.creator_is_back(_verdict(alive, now + 60), seen)
    assert seen == {dead}  # a live pid is never remembered
    assert asked == [dead, alive, alive, alive]
    # Without the set (rm, other callers) every call asks the kernel.
    assert not remove.creator_is_back(_verdict(dead, now))
    assert asked[-1] == dead


def _entry(n: int, v: Verdict, now: int, data: bytes, offset: int, length: int,
           status: str) -> dict:  # fmt: skip
    """An index entry as a plain dict, built the slow way."""
    s = v.segment
    stored = data.rstrip(b"\0")  # these test copies keep their zeros at the end only
    return {
        "n": n, "id": s.id, "key": s.key, "size": s.size, "mode": s.perms, "uid": s.uid,
        "gid": s.gid, "cuid": s.cuid, "cgid": s.cgid, "cpid": s.cpid, "lpid": s.lpid,
        "atime": s.atime, "dtime": s.dtime, "ctime": s.ctime, "creator": v.creator.name,
        "removed_at": now, "reason": v.reason, "encoding": "extents",
        "extents": [[0, len(stored)]] if stored else [], "offset": offset, "length": length,
        "crc32": zlib.crc32(stored), "status": status, "restored_as": None,
        "restored_at": None,
    }  # fmt: skip


def _copier(data: bytes):  # type: ignore[no-untyped-def]
    """A copier as segcopy.copy behaves for `data` whose zeros are all at its end."""
    stored = data.rstrip(b"\0")

    def copier(write):  # type: ignore[no-untyped-def]
        if stored:
            write(stored)
        return [(0, len(stored))] if stored else []

    return copier


def test_index_text_is_exactly_json_dumps(tmp_path: Path):
    now = 1_700_000_000
    batch = Store(tmp_path, Config()).open_batch(now + 0.25)
    tricky = 'quote " back \\ slash, tab \t, été, ☃, \x00 nul'
    verdicts = [
        _verdict(100, 1_600_000_000, shmid=1),
        _verdict(101, 1_600_000_001, shmid=2, atime=1_600_000_002, name="postgres"),
        _verdict(102, 1_600_000_003, shmid=3, name=tricky, reason=tricky),
    ]
    datas = [bytes(4096), os.urandom(4096), b"\1" + bytes(4095)]
    expected, offset = [], 0
    for n, (v, data) in enumerate(zip(verdicts, datas)):
        assert batch.save(v, v.reason, _copier(data)) is None
        expected.append(_entry(n, v, now, data, offset, batch.offset - offset, "pending"))
        offset = batch.offset
    head = {"version": 2, "run": batch.run, "created_at": now, "boot_id": boot_id(),
            "ipc_ns": ipc_namespace(), "pid": os.getpid()}  # fmt: skip
    doc = dict(head, entries=expected)
    assert batch._index_text(False) == json.dumps(doc)
    batch.commit()
    index = tmp_path / "quarantine" / f"{batch.run}.json"
    assert index.read_text() == json.dumps(doc)
    assert json.loads(index.read_text())["entries"][2]["reason"] == tricky
    batch.removed(0)
    batch.removed(2)
    batch.finish()
    doc["entries"] = [dict(expected[0], status="removed"), dict(expected[2], status="removed")]
    assert index.read_text() == json.dumps(doc)
    store = Store(tmp_path, Config())  # and restore reads the copies back from it
    got = [b"".join(piece for _, piece in store.read(e)) for e in store.entries()]
    assert got == [b"", b"\1"]


def test_finish_with_every_entry_removed_keeps_them_all(tmp_path: Path):
    batch = Store(tmp_path, Config()).open_batch(1_700_000_000.0)
    verdicts = [_verdict(100, 1_600_000_000, shmid=i, reason="orphan") for i in range(1, 4)]
    for v in verdicts:
        assert batch.save(v, v.reason, None) is None
    batch.commit()
    for n in range(3):
        batch.removed(n)
    batch.finish()
    written = json.loads((tmp_path / "quarantine" / f"{batch.run}.json").read_text())
    entries = [_entry(n, v, 1_700_000_000, bytes(64), 0, 0, "removed")
               for n, v in enumerate(verdicts)]  # fmt: skip
    assert written["entries"] == entries
    assert not (tmp_path / "quarantine" / f"{batch.run}.journal").exists()


def test_the_quarantine_copy_attaches_read_only_where_the_kernel_chooses(monkeypatch, tmp_path):
    seen: list[tuple[int, str]] = []
    real_copy = segcopy.copy

    def spy(addr, size, write):  # type: ignore[no-untyped-def]
        start = f"{addr:x}-"
        (line,) = [m for m in Path("/proc/self/maps").read_text().splitlines()
                   if m.startswith(start)]  # fmt: skip
        seen.append((addr, line.split()[1]))
        return real_copy(addr, size, write)

    monkeypatch.setattr(segcopy, "copy", spy)
    shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=8192,
                                init_character=b"\0")  # fmt: skip
    shm.write(b"keep me")
    shm.detach()
    batch = Store(tmp_path, Config()).open_batch(time.time())
    try:
        v = _verdict(os.getpid(), 0, shmid=shm.id)
        stopped = remove.copy_out(v, False, batch, "test")
    finally:
        shm.remove()
    assert stopped is None and batch.count == 1
    ((address, perms),) = seen
    assert perms == "r--s"  # read-only, shared: the copy cannot write to the segment
    assert address != 0x1000  # SHM_RDONLY passed as the address, as it once was
    batch.abort()
