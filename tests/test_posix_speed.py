"""The shortcuts issue 13's speed clause took (item 7) say what the slow ways said: each
test puts a real object or process through the fast path and the plain one."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACCOUNTS, needs_real_root

from shmjanitor import holders, kinds, shapes, survey
from shmjanitor.classify import State, classify_all
from shmjanitor.model import Party
from shmjanitor.posixfs import PosixShm
from shmjanitor.procs import Proc
from shmjanitor.scan import Segment

SHM = Path("/dev/shm")
ALICE = ACCOUNTS["alice"]

# A holder with an odd command name (a backslash, a newline, a trailing space: what
# /proc/PID/status escapes or its parser strips) that then gives up root for an
# effective uid of alice's, keeping root as its real and saved uid: the kernel makes
# it non-dumpable (commit_creds: euid changed), which makes its /proc/PID files root's.
ODD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDWR)
libc.prctl(15, b"a\\b\nc ", 0, 0, 0)  # PR_SET_NAME
os.setresuid(0, int(sys.argv[2]), 0)
print("ready", libc.prctl(3, 0, 0, 0, 0), fd, flush=True)  # PR_GET_DUMPABLE
sys.stdin.read()
"""


@pytest.fixture
def odd_holder() -> Iterator[tuple[int, int, Path]]:
    needs_real_root()
    path = SHM / "held"
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o666))
    p = subprocess.Popen([sys.executable, "-c", ODD, str(path), str(ALICE)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    ready, dumpable, fd = p.stdout.readline().split()
    assert (ready, dumpable) == ("ready", "0")
    yield p.pid, int(fd), path
    p.kill()
    p.wait()


def test_a_holders_name_and_uid_are_what_its_status_says(odd_holder):
    """holders reads comm and the owner of /proc/PID, not the 1.4 KiB of status: the
    same name (escaped as status escapes it, stripped as status_facts strips it) and
    the effective uid, though the process is not dumpable (its /proc/PID/comm is then
    root's: only the directory carries the euid)."""
    pid, fd, path = odd_holder
    status = Path(f"/proc/{pid}/status").read_bytes()
    assert holders.status_facts(status) == ("a\\\\b\\nc", ALICE)
    assert os.stat(f"/proc/{pid}/comm").st_uid == 0
    st = os.stat(path)
    (h,) = holders.scan([st.st_dev]).of(st.st_dev, st.st_ino)
    assert (h.pid, h.how, h.comm, h.uid) == (pid, f"fd {fd}", *holders.status_facts(status))


# --- the POSIX JSON encoder --------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_ODD_NAMES = [b"plain", b"a\nb", b'quote"back\\slash', "\u00e9t\u00e9".encode(), b"\xff\xfe",
              b"tab\there", b"torch_4242_1_2", b"psm_0a1b", b"sem.mp-x", b"sem.\x1b[31mred"]  # fmt: skip


def test_the_posix_json_encoder_writes_what_json_dumps_writes():
    """PosixJson writes its text by hand, sharing parts between objects (owner, verdict,
    a cached quiet clause): it must be json.dumps of posix_json, byte for byte, for
    odd names, holders (an fd and a mapping), a queue's attributes, a name's pid,
    other owners and modes, and every object of a run (the shared parts reused)."""
    for i, name in enumerate(_ODD_NAMES):
        fd = os.open(SHM / os.fsdecode(name), os.O_CREAT | os.O_RDWR, 0o600 + i)
        os.ftruncate(fd, 4096 * i)
        os.fchown(fd, ALICE if i % 2 else 0, i)
        os.close(fd)
    attr = (ctypes.c_long * 8)(0, 4, 32, 0)
    q = _libc.mq_open(b'/q"x', os.O_CREAT | os.O_RDWR, 0o640, attr)
    assert q >= 0 and _libc.mq_send(q, b"hi", 2, 0) == 0
    held = subprocess.Popen([sys.executable, "-c", HOLD, str(SHM / "plain")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert held.stdout is not None and held.stdout.readline().startswith("ready")
        sv = survey.take(kinds=["posix-shm", "posix-sem", "posix-mqueue"])
    finally:
        held.kill()
        held.wait()
        os.close(q)
    assert len(sv.verdicts) == len(_ODD_NAMES) + 1
    assert any(v.obj.holders for v in sv.verdicts) and any(v.obj.mq for v in sv.verdicts)
    assert any(v.obj.name_pid for v in sv.verdicts)
    for name in sv.kinds:
        kind, encode = kinds.of(name), shapes.of(name).encoder()
        for v in sv.of(name) * 2:  # twice: the second time from the shared parts
            want = json.dumps(shapes.posix_json(kind, v), separators=(",", ":"))
            assert encode(v) == want


def test_made_by_of_posix_objects_is_what_the_plain_lookup_gives():
    """list --json's made_by works out a POSIX object's ident (its path, fsencoded) only
    for a (kind, inode) the history knows, and encodes each distinct maker once: the
    text must be what looking every object up by its full ident writes. Here one file
    is known by its ident, one by its inode under another name (a file made again under
    that inode: not its maker), two share one maker's record, and one is unknown."""
    from shmjanitor.history import MadeBy, ident

    for name in ("known", "renamed", "twin-a", "twin-b", "unknown", "sem.known"):
        os.close(os.open(SHM / name, os.O_CREAT | os.O_RDWR, 0o600))
    sv = survey.take(kinds=["posix-shm", "posix-sem"])
    by_name = {v.obj.name: v.obj for v in sv.verdicts}
    maker = MadeBy('cmd "x"\n', "/bin/x", "alice", None, 1.5, 1.0, None)
    made = {ident(by_name["known"]): maker, ident(by_name["sem.known"]): maker,
            ident(by_name["twin-a"]): maker._replace(command="twin"),
            ident(by_name["twin-b"]): maker._replace(command="twin"),
            ident(by_name["renamed"])[:3] + (b"/dev/shm/other",): maker}  # fmt: skip
    known = shapes._known(made)
    seen = 0
    for name in sv.kinds:
        plain, encode = shapes.of(name).encoder(), shapes._with_made_by(
            shapes.of(name).encoder(), made, known)  # fmt: skip
        for v in sv.of(name) * 2:  # twice: the second time from the encoded makers
            m = made.get(ident(v.obj))
            tail = json.dumps(m and m.as_json(), separators=(",", ":"))
            want = f'{plain(v)[:-1]},"made_by":{tail}}}'
            assert encode(v) == want, v.obj.name
            seen += m is not None
    assert seen == 2 * 4  # known, sem.known, twin-a, twin-b; not renamed, unknown


def test_a_posix_objects_key_size_and_last_used_are_what_the_properties_say():
    """PosixShm and PosixSem take key and size from class attributes (size: the
    used_bytes field's own getter), not PosixObject's properties; last_used compares
    by hand: the same numbers, for a sparse file, a written one and a queue."""
    from shmjanitor.posixfs import PosixObject

    fd = os.open(SHM / "sparse", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 1 << 20)
    os.pwrite(fd, b"x", 4096)
    os.close(fd)
    fd = os.open(SHM / "sem.x", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"s" * 32)  # a sem_t: 32 bytes long, a page used
    os.close(fd)
    attr = (ctypes.c_long * 8)(0, 4, 32, 0)
    q = _libc.mq_open(b"/q", os.O_CREAT | os.O_RDWR, 0o600, attr)
    assert q >= 0 and _libc.mq_send(q, b"hi", 2, 0) == 0
    os.close(q)
    os.utime(SHM / "sparse", ns=(10**9, 10**9))  # ctime (now) after mtime and atime
    # atime after ctime (utime sets ctime to now): the latest of the three is atime
    os.utime(SHM / "sem.x", ns=(time.time_ns() + 10**12, 2_000_000_000))
    objs = survey.read(("posix-shm", "posix-sem", "posix-mqueue")).objects
    assert {o.kind for o in objs} == {"posix-shm", "posix-sem", "posix-mqueue"}
    for o in objs:
        assert o.size == PosixObject.size.fget(o) and o.key == PosixObject.key.fget(o) == 0
        assert o.last_used == max(o.mtime_ns, o.ctime_ns, o.atime_ns) // 1_000_000_000
    assert {o.name: (o.size, o.st_size) for o in objs if o.mq is None} == {
        "sparse": (4096, 1 << 20), "sem.x": (4096, 32)}  # fmt: skip


HOLD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
fd = os.open(sys.argv[1], os.O_RDWR)
libc.mmap(None, 4096, 3, 1, fd, 0)
os.dup(fd)
print("ready", flush=True)
sys.stdin.read()
"""


# --- maps read without its empty last read ----------------------------------------------

MANY_MAPS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
fd = os.open(sys.argv[1], os.O_RDWR)
for i in range(400):  # every other page: 400 VMAs the kernel cannot merge
    libc.mmap(None, 4096, 1 + 2 * (i % 2), 1, fd, 4096 * i)
os.close(fd)
print("ready", flush=True)
sys.stdin.read()
"""


def test_maps_read_to_its_gate_line_is_the_whole_text(monkeypatch):
    """read_maps stops at the gate VMA's line (the last one the kernel shows) instead of
    asking once more for end of file: the same text as reading to the end, for a
    process whose maps take many reads (400 mappings of a file in /dev/shm), and one
    read fewer."""
    path = SHM / "many"
    with open(path, "wb") as f:
        f.truncate(4096 * 400)
    p = subprocess.Popen([sys.executable, "-c", MANY_MAPS, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        maps = f"/proc/{p.pid}/maps"
        whole = holders._read(maps)
        assert whole.count(b"\n") > 400 and len(whole) > 8 * 4096
        if not whole.splitlines()[-1].startswith(holders.GATE):
            pytest.skip("no vsyscall gate VMA here (not x86-64, or vsyscall=none)")
        reads: list[int] = []
        real = os.read
        monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real(fd, n))
        assert holders.read_maps(maps) == whole
        chunks = len(reads)
        reads.clear()
        assert holders._read(maps) == whole and len(reads) == chunks + 1
        st = os.stat(path)
        assert len(holders.mapped_files(whole, [st.st_dev])) == 1
    finally:
        p.kill()
        p.wait()


# --- classify: a parties tuple the object before had ------------------------------------


def test_one_parties_tuple_shared_by_two_kinds_is_said_in_each_kinds_words():
    """classify_all reuses what the object before said when its parties are the very
    same tuple, and only for the same kind: a segment and a POSIX file given one tuple
    (an alive creator) say "may attach again" and "may open it again", in either order."""
    seg = Segment(key=1, id=1, mode=0o600, size=4096, cpid=4242, lpid=0, nattch=0, uid=0,
                  gid=0, cuid=0, cgid=0, atime=None, dtime=None, ctime=NOW - 60, rss=0,
                  swap=0)  # fmt: skip
    f = PosixShm(7, "f", "/dev/shm", 1, 0o600, 0, 0, 4096, 4096, *[(NOW - 60) * 10**9] * 3)
    ps = (Party("creator", 4242, float(NOW - 100), "cpid"),)
    facts = {4242: Proc(4242, True, NOW - 100, "server")}
    for objects in ([seg, f, seg], [f, seg, f]):
        verdicts = classify_all(objects, facts, NOW, parties=[ps] * 3)
        for o, v in zip(objects, verdicts):
            assert v.state is State.IDLE, v
            verb = "attach" if o is seg else "open it"
            assert f"alive, may {verb} again; " in v.reason, v.reason


NOW = 1_700_010_000
