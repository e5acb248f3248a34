"""Removing, saving and restoring POSIX objects (files of /dev/shm and /dev/mqueue): the
removal half of the kinds.Kind protocol that kinds/posix_*.py import (posixfs.py is the
reading half). remove.py drives these functions; see its docstring for the order.

The lock is a write lease (docs/posix-notes.md, section 2): `fcntl(F_SETLEASE, F_WRLCK)`
is granted only while no open file description of the inode exists but ours -- no fd
and no mapping (even one whose fd was closed), in any process of any namespace -- and
while we hold it, a new open() of the file waits in break_lease() until we let go. So:

    stat      fstatat of the object's name from its directory's fd, no symlink followed
    lock      SIGIO ignored; open(name, O_RDONLY|O_NOFOLLOW|O_NONBLOCK) from the dir fd;
              fstat must be the same inode; F_SETLEASE F_WRLCK. EAGAIN: held (kept).
              EACCES/EINVAL (not the owner and no CAP_LEASE, or fs.leases-enable=0):
              a fresh holders.scan of its file system instead, which must be complete
    busy_now  F_GETLEASE still F_WRLCK (an opener would have broken it); a copy made
              earlier is read again under the lease and must be the same bytes
    rmid      F_SETLEASE F_WRLCK again (refused once an opener waits: kept), the name
              must still be the inode, unlinkat; then once more: an opener that got in
              between gets the removed file, and users_after_rmid says so
    unlock    close the lease's fd: a waiting opener goes on, with the file at its name

A lease dies with its process: a run killed at any point leaves no lock behind, only
(at worst) the one object it had just unlinked without a journal line, which its lock
note names (remove._note_format: "posix-shm INO 0 MODE").

The kinds' objects know their directory; the functions that get only an id (stat, lock,
...) look the name up in a run-local map (`remember`, called by the reader) and, for an
id it does not hold (a killed run's note, a pending quarantine entry), in one listing of
the directory. /dev/shm and /dev/mqueue are two file systems whose inode numbers may be
equal: the plain names serve all three kinds and keep an object whose number both
directories had (AMBIGUOUS); the `mq_` ones are bound to /dev/mqueue alone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import stat as st
import zlib
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import holders, posixfs

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)
# O_NONBLOCK: another process's lease on it fails our open at once (EWOULDBLOCK)
# instead of making us wait lease-break-time (45 s); it never blocks on a fifo either.
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20

HELD = "held by a process (the kernel refused a write lease)"
OPENED = "opened by a process at the last instant (the kernel broke our write lease): kept"


class Now(NamedTuple):
    """The object as stat() finds it now (a kinds.Kind.stat answer)."""

    id: int  # st_ino
    dev: int
    mode: int  # st_mode & 0o7777
    uid: int
    gid: int
    st_size: int
    used_bytes: int  # st_blocks * 512
    mtime_ns: int
    ctime_ns: int
    regular: bool
    key: int = 0
    nlink: int = 1  # st_nlink: its names (hard links)


def _now(s: os.stat_result) -> Now:
    return Now(s.st_ino, s.st_dev, s.st_mode & 0o7777, s.st_uid, s.st_gid, s.st_size,
               s.st_blocks * 512, s.st_mtime_ns, s.st_ctime_ns, st.S_ISREG(s.st_mode), 0, s.st_nlink)  # fmt: skip


def _gone(what: str = "gone") -> OSError:
    # EINVAL is every kind's "already gone" (kinds.Kind.stat; remove._GONE).
    return OSError(errno.EINVAL, what)


def _kept(why: str) -> OSError:
    # EAGAIN with the reason as its strerror: kept, said as it is (remove.py).
    return OSError(errno.EAGAIN, why)


def _one_name(nlink: int) -> None:
    """A file with several names (hard links: tmpfs allows them, and fs.protected_hardlinks
    lets a user link to any file they may read and write) is kept: unlinking one name
    frees nothing, and the name unlinked need not be the one judged -- the run finds an
    inode's name by its number, so a user's link could make root unlink another user's
    or a protected name (protect_paths) and record the wrong one."""
    if nlink != 1:
        raise _kept(f"it has {nlink} names (hard links): removing one frees nothing, and "
                    "need not remove the name judged; kept")  # fmt: skip


class Place:
    """One directory of objects (/dev/shm or /dev/mqueue): its fd, the names of the ids
    the run read, and the leases we hold on them."""

    def __init__(self, path: Callable[[], str]) -> None:
        self._path = path
        self.names: dict[int, str] = {}
        self.leases: dict[int, int] = {}  # id -> the fd holding its lease
        self.late: dict[int, int] = {}  # id -> openers that got the removed file
        self.no_lease: dict[int, str] = {}  # id -> why no lease could be taken
        self._fd = -1
        self._listed = False

    @property
    def path(self) -> str:
        return self._path()

    def reset(self, names: bool = True) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        if names:
            self.names.clear()
        self._listed = False

    def knows(self, id: int) -> bool:
        try:
            self.name(id)
        except OSError:
            return False
        return True

    def fd(self) -> int:
        if self._fd < 0:
            real = posixfs.open_path(self.path)
            try:
                if real is None:
                    raise FileNotFoundError
                self._fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise _gone(f"{self.path} does not exist") from None
        return self._fd

    def name(self, id: int) -> bytes:
        name = self.names.get(id)
        if name is None and not self._listed:
            # An id the run did not read (a killed run's lock note, a pending quarantine
            # entry): the directory is listed once, not once per id.
            self._listed = True
            with os.scandir(self.fd()) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        self.names.setdefault(e.inode(), os.fsdecode(e.name))
            name = self.names.get(id)
        if name is None:
            raise _gone()
        return os.fsencode(name)

    def stat(self, id: int) -> Now:
        """fstatat of its name, no symlink followed. The name naming another inode now
        means ours was removed or renamed: gone (EINVAL)."""
        try:
            s = os.stat(self.name(id), dir_fd=self.fd(), follow_symlinks=False)
        except FileNotFoundError:
            raise _gone() from None
        if s.st_ino != id:
            raise _gone()
        return _now(s)

    def lock(self, id: int, _mode: int = 0) -> None:
        """Take the write lease (the module docstring). The mode is not touched: the
        lease is the lock. Raises OSError: EAGAIN (its reason as strerror) held,
        EINVAL gone."""
        if id in self.leases:
            return  # taken already (save, then the last instant)
        _ignore_sigio()
        name = self.name(id)
        try:
            fd = os.open(name, _OPEN, dir_fd=self.fd())
        except FileNotFoundError:
            raise _gone() from None
        except BlockingIOError:  # another process holds a lease on it (EWOULDBLOCK)
            raise _kept(f"{HELD}: another process holds a lease on it") from None
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink now: not the file we judged
                raise _gone() from None
            raise
        try:
            s = os.fstat(fd)
            if s.st_ino != id or not st.S_ISREG(s.st_mode):
                raise _gone()
            _one_name(s.st_nlink)
        except OSError:
            os.close(fd)
            raise
        try:
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EAGAIN:
                raise _kept(HELD) from None
            if e.errno not in (errno.EACCES, errno.EINVAL):
                raise
            # No lease for us (vfs_setlease: not the owner and no CAP_LEASE; or
            # fs.leases-enable=0): a fresh look at every process instead, with our own
            # fd closed first (it would hold the file). It is weaker: it cannot see an
            # open under way, and it must read every process to prove anything.
            why = "not its owner and no CAP_LEASE" if e.errno == errno.EACCES \
                else "leases are off (fs.leases-enable)"  # fmt: skip
            self._fresh_look(s.st_dev, id, f"no write lease ({why})")
            self.no_lease[id] = why
            return
        self.leases[id] = fd

    def _fresh_look(self, dev: int, id: int, said: str) -> None:
        h = holders.scan([dev])
        held = h.of(dev, id)
        if held:
            who = ", ".join(f"pid {x.pid} ({x.comm}) {x.how}" for x in held[:3])
            raise _kept(f"held by {who}: {said}, a fresh look at /proc found it")
        if not h.complete:
            blocked = [f"pid {u.pid} ({u.comm}) {u.why}" for u in h.unreadable[:3]] + h.unseen
            raise _kept(f"cannot prove nobody holds it: {said}, and a fresh look at /proc "
                        f"is incomplete ({'; '.join(blocked)})")  # fmt: skip

    def unlock(self, id: int, _mode: int = 0) -> None:
        """Let go of its lease: an opener waiting in break_lease() goes on."""
        self.no_lease.pop(id, None)
        fd = self.leases.pop(id, None)
        if fd is not None:
            os.close(fd)

    def busy_now(self, id: int) -> Optional[str]:
        fd = self.leases.get(id)
        if fd is not None and fcntl.fcntl(fd, F_GETLEASE) != fcntl.F_WRLCK:
            return OPENED
        saved = _copies.pop((self.path, id), None)
        if fd is not None and saved is not None and _digest(fd, saved[0]) != saved:
            return "changed since it was copied: its bytes are not those saved; kept"
        return None

    def rmid(self, id: int) -> None:
        """Re-assert the lease, unlink the name, release. Raises OSError: EINVAL gone,
        EAGAIN (its reason as strerror) an opener got in: kept."""
        fd = self.leases.get(id)
        try:
            if fd is not None:
                # A waiting opener raised the open counts: asking again is refused
                # (check_conflicting_open), and F_GETLEASE shows the break pending.
                try:
                    fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
                except BlockingIOError:
                    raise _kept(OPENED) from None
                if fcntl.fcntl(fd, F_GETLEASE) != fcntl.F_WRLCK:
                    raise _kept(OPENED)
            name = self.name(id)
            # rename(2) and link(2) are not stopped by a lease: the name must still be
            # our inode, and its only name.
            now = self.stat(id)  # gone (EINVAL) unless the name is still our inode
            _one_name(now.nlink)
            try:
                os.unlink(name, dir_fd=self.fd())
            except FileNotFoundError:
                raise _gone() from None
            _copies.pop((self.path, id), None)
            if fd is not None:
                # An open that resolved the name before our unlink and reached
                # do_dentry_open() since then waits for our lease, and gets the removed
                # file once we let go (st_nlink 0): its holder keeps the data, and
                # users_after_rmid says so.
                try:
                    fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
                    broken = fcntl.fcntl(fd, F_GETLEASE) != fcntl.F_WRLCK
                except BlockingIOError:
                    broken = True
                if broken:
                    self.late[id] = 1
        finally:
            self.unlock(id)

    def users_after_rmid(self, id: int) -> Optional[int]:
        return self.late.pop(id, None)


def _dir_shm() -> str:
    return posixfs.SHM_DIR


def _dir_mqueue() -> str:
    return posixfs.MQUEUE_DIR


SHM = Place(_dir_shm)
MQUEUE = Place(_dir_mqueue)


def place(dir: str) -> Place:
    return MQUEUE if dir == posixfs.MQUEUE_DIR else SHM


def remember(objects: Iterable[Any]) -> None:
    """The ids of a read and their names (each kind's read() hands over its objects):
    what stat(id) and the rest find them by. A directory read again is opened again
    (it may be another mount by now); the names of earlier reads stay (a name that
    no longer is its id's is "gone" to stat, which compares the inode)."""
    # A kind's read is of one directory: its names are set in one dict.update (a call
    # of place() per object was 3 ms of a list of 10,000 files).
    objects = list(objects)
    for d in dict.fromkeys([o.dir for o in objects]):
        p = place(d)
        p.reset(names=False)
        p.names.update([(o.id, o.name) for o in objects if o.dir == d])
    # An inode number is reused by a later file: no copy outlives the read it was for.
    _copies.clear()
    _saved_empty.clear()


_sigio = False


def _ignore_sigio() -> None:
    """A lease broken by an opener sends SIGIO to its holder (fs/locks.c,
    lease_break_callback -> kill_fasync), whose default action is to terminate."""
    global _sigio
    if not _sigio:
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        _sigio = True


# --- the Kind protocol, for every POSIX kind ------------------------------------------
# The functions given only an id find its directory by the names read (remember): an
# inode number read in both /dev/shm and /dev/mqueue (two file systems) cannot be told
# apart by the id alone, and such an object is kept (the `mq_` names below, bound to
# /dev/mqueue, never are).

AMBIGUOUS = ("its inode number is also one of another directory's files (/dev/shm and "
             "/dev/mqueue are two file systems): not told apart by number; kept")  # fmt: skip


def _which(id: int) -> Place:
    known = [p for p in (SHM, MQUEUE) if id in p.names or id in p.leases]
    if not known:  # an id no read of this process gave (a killed run's): listed once
        known = [p for p in (SHM, MQUEUE) if p.knows(id)]
    if len(known) > 1:
        raise _kept(AMBIGUOUS)
    if not known:
        raise _gone()
    return known[0]


def stat(id: int) -> Now:
    return _which(id).stat(id)


def lock(id: int, mode: int) -> None:
    _which(id).lock(id, mode)


def unlock(id: int, mode: int) -> None:
    for p in (SHM, MQUEUE):
        p.unlock(id, mode)


def busy_now(id: int) -> Optional[str]:
    return mq_busy_now(id) if _which(id) is MQUEUE else SHM.busy_now(id)


def rmid(id: int) -> None:
    _which(id).rmid(id)


def users_after_rmid(id: int) -> Optional[int]:
    late = [n for n in (SHM.users_after_rmid(id), MQUEUE.users_after_rmid(id)) if n]
    return sum(late) if late else None


mq_stat = MQUEUE.stat
mq_lock = MQUEUE.lock
mq_unlock = MQUEUE.unlock
mq_rmid = MQUEUE.rmid
mq_users_after_rmid = MQUEUE.users_after_rmid


def _changed(o: Any, now: Now, forced: bool, since: str) -> Optional[str]:
    if now.id != o.id or now.dev != o.dev or not now.regular:
        return f"changed since {since}: replaced by another file"
    if now.uid != o.uid or now.mode != o.mode:
        return f"changed since {since}: its owner or mode changed"
    if forced:
        return None
    if now.st_size != o.st_size or now.used_bytes != o.used_bytes:
        return f"changed since {since}: its size changed"
    # Any write(2), ftruncate and the first write fault of a new mapping set mtime
    # and ctime (tmpfs: fault_dirty_shared_page); mq_send and mq_receive set both too.
    # A queue's ctime is not compared: reading its file (QSIZE, as we do under the
    # lease) sets it (ipc/mqueue.c, mqueue_read_file).
    if now.mtime_ns != o.mtime_ns or (now.ctime_ns != o.ctime_ns and o.mq is None):
        return f"changed since {since}: modified"
    return None


def changed_since_scan(o: Any, now: Now, forced: bool) -> Optional[str]:
    """Why it is not the file judged: another inode, owner or mode; size or times moved
    (not asked by rm --force). Pure."""
    return _changed(o, now, forced, "scan")


def changed_while_locked(before: Now, locked: Now) -> Optional[str]:
    if before != locked:
        return "changed since scan: modified while the lease was taken"
    return None


def _queue(o: Any) -> bool:
    return bool(o.dir == posixfs.MQUEUE_DIR)


def changed_since_copy(o: Any, now: Now, empty: bool, forced: bool) -> Optional[str]:
    """Why a saved object cannot go: the same checks as at the scan (the copy is
    checked byte for byte under the lease at the last instant, busy_now), and one
    saved as empty must still hold no page. A queue saved as empty is remembered: at
    the last instant it must still hold no message (mq_busy_now)."""
    if _queue(o):
        return mq_changed_since_copy(o, now, empty, forced)
    why = _changed(o, now, forced, "scan")
    if why is None and empty and now.used_bytes:
        why = "changed since scan: written after it was saved as empty"
    return why


def known_empty(o: Any) -> bool:
    """No page (st_blocks 0: every byte reads as zero, tmpfs holes), or a queue with no
    message."""
    if _queue(o):
        return o.mq is not None and o.mq.qsize == 0 and o.mq.curmsgs == 0
    return bool(o.used_bytes == 0)


def save_bound(o: Any) -> int:
    """The pages it really uses: holes are not copied."""
    return 0 if _queue(o) else int(min(o.used_bytes, o.st_size))


def data_size(doc: Mapping[str, Any]) -> int:
    return 0 if doc.get("dir") == posixfs.MQUEUE_DIR else int(doc.get("st_size", 0))


# What save() read, by (dir, id): (extents, crc32) -- the last instant reads it again
# under the lease (busy_now) and removes the file only when the bytes are the same.
_copies: dict[tuple[str, int], tuple[list[tuple[int, int]], int]] = {}


# The most pieces (data extents) a copy may have. A user who writes one page in two of a
# sparse file makes a piece per page: 65,535 within quarantine_max_bytes, each a tuple
# held until the last instant and a record of the index. Measured: a reap of 4 such
# files peaked at 81 MB of memory against 27 MB for one small file (~13 MB a file), and
# every later run loaded their index again; some 36 of them (9 GiB of a 12 GiB
# /dev/shm) would pass the unit's MemoryMax=512M before anything is removed, on every
# run. The pieces are counted no further than this.
MAX_PIECES = 1024


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data of a file: SEEK_DATA/SEEK_HOLE, so a hole is never
    read (tmpfs: shmem_file_llseek walks the page cache; a read of a hole would not
    allocate either, but would hand over zeros)."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after off
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        off = end


def _read(fd: int, extents: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    for off, n in extents:
        while n:
            b = os.pread(fd, min(n, _CHUNK), off)
            if not b:
                raise _kept("changed while it was copied: it got shorter; kept")
            off += len(b)
            n -= len(b)
            yield b


def _digest(fd: int, extents: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    crc = 0
    for b in _read(fd, extents):
        crc = zlib.crc32(b, crc)
    # The file's data extents now must be those read: a page written since is a new
    # extent (or a longer one), even when it is all zeros.
    size = os.fstat(fd).st_size
    return list(islice(_extents(fd, size), MAX_PIECES + 1)), crc


def save(o: Any, write: Callable[[bytes], None]) -> list[tuple[int, int]]:
    """Under the lease, hand its data to `write` (only the extents SEEK_DATA shows) and
    remember what was read; the lease is let go after the copy: a process opening it
    meanwhile waits no longer than the copy. Raises OSError (EAGAIN: held, kept)."""
    if _queue(o):
        return mq_save(o, write)
    p = place(o.dir)
    try:
        p.lock(o.id)
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        # rm --force too: a copy read while someone may write it would be torn.
        raise _kept(f"{e.strerror}; it is copied only under a write lease "
                    "(--no-quarantine removes it without a copy)") from None  # fmt: skip
    try:
        fd = p.leases.get(o.id)
        if fd is None:  # no lease possible, the fresh look found nobody: read by name
            fd = os.open(p.name(o.id), _OPEN, dir_fd=p.fd())
            opened = True
        else:
            opened = False
        try:
            s = os.fstat(fd)
            if s.st_ino != o.id:
                raise _gone()
            extents = list(islice(_extents(fd, s.st_size), MAX_PIECES + 1))
            if len(extents) > MAX_PIECES:
                raise _kept(f"its data is in more than {MAX_PIECES} pieces (a sparse file "
                            "written here and there), each a record of the copy held in "
                            "memory and in the quarantine's index; kept (--no-quarantine "
                            "removes it without a copy)")  # fmt: skip
            crc = 0
            for b in _read(fd, extents):
                crc = zlib.crc32(b, crc)
                write(b)
        finally:
            if opened:
                os.close(fd)
        _copies[(p.path, o.id)] = (extents, crc)
        return extents
    finally:
        p.unlock(o.id)


def record(o: Any) -> str:
    """Its own facts in a quarantine entry: where it was, its length and times (and a
    queue's maxmsg and msgsize)."""
    return mq_record(o) if _queue(o) else _record(o)


def _record(o: Any) -> str:
    return (f'"dir": {json.dumps(o.dir)}, "name": {json.dumps(o.name)}, '
            f'"st_size": {o.st_size}, "mtime_ns": {o.mtime_ns}, "ctime_ns": {o.ctime_ns}, '
            f'"atime_ns": {o.atime_ns}')  # fmt: skip


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_record(doc: Mapping[str, Any]) -> Optional[str]:
    """An entry's place must be one of our two directories and its name one entry of
    it: restore creates exactly that file, so a tampered index cannot aim it anywhere
    else (no "/", no "..", no NUL)."""
    if doc.get("dir") == posixfs.MQUEUE_DIR and "maxmsg" not in doc:
        return "maxmsg missing: a queue's entry"
    return _check_record(doc)


def _check_record(doc: Mapping[str, Any]) -> Optional[str]:
    if doc.get("dir") not in (posixfs.SHM_DIR, posixfs.MQUEUE_DIR):
        return f"dir {doc.get('dir')!r} is not {posixfs.SHM_DIR} or {posixfs.MQUEUE_DIR}"
    name = doc.get("name")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        return "name missing or not a file name"
    for f in ("st_size", "mtime_ns", "ctime_ns", "atime_ns"):
        if not _whole(doc.get(f)):
            return f"{f} missing or not a whole number"
    return None


def same(doc: Mapping[str, Any], now: Now) -> bool:
    """The file an entry recorded: found by its name with the same inode (stat), and
    the same owner."""
    return (now.id, now.uid) == (doc["id"], doc["uid"])


def restore(doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> int:
    """Create the file again at its name, whole: made nameless (O_TMPFILE in its
    directory), given its length, only the stored extents (holes stay holes), its owner
    and mode, and only then linked at its name (linkat: EEXIST while the name exists, a
    restore never replaces a file). A restore killed halfway (SIGKILL, SIGTERM, the OOM
    killer) leaves nothing at the name: the half-made file was root's, mode 0600, where
    the owner's program then got EACCES, and it was kept as root's forever. Its new
    inode number."""
    if doc["dir"] == posixfs.MQUEUE_DIR:
        return mq_restore(doc, data)
    p = place(doc["dir"])
    name = os.fsencode(doc["name"])
    try:  # refused at once while the name exists, before any data is read
        os.stat(name, dir_fd=p.fd(), follow_symlinks=False)
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    except FileNotFoundError:
        pass
    try:
        fd = os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=p.fd())
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
        return _restore_by_name(p, name, doc, data)  # no O_TMPFILE on this file system
    try:
        _fill(fd, doc, data)
        # /proc/self/fd/N of an O_TMPFILE file may be linked (linkat(2), AT_SYMLINK_FOLLOW):
        # a name for it at last, or EEXIST if someone made one meanwhile.
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=p.fd(), follow_symlinks=True)
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _fill(fd: int, doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> None:
    os.ftruncate(fd, doc["st_size"])
    for off, chunk in data:
        os.pwrite(fd, chunk, off)
    os.fchown(fd, doc["uid"], doc["gid"])
    os.fchmod(fd, doc["mode"])  # after fchown, which clears setuid and setgid


def _restore_by_name(p: Place, name: bytes, doc: Mapping[str, Any],
                     data: Iterator[tuple[int, bytes]]) -> int:  # fmt: skip
    """restore where O_TMPFILE is not supported: created at its name (O_EXCL), removed
    again if anything fails (not if we are killed)."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=p.fd())  # fmt: skip
    try:
        _fill(fd, doc, data)
        return os.fstat(fd).st_ino
    except BaseException:
        _unlink_ours(p, name, fd)
        raise
    finally:
        os.close(fd)


def _unlink_ours(p: Place, name: bytes, fd: int) -> None:
    try:
        if os.stat(name, dir_fd=p.fd(), follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            os.unlink(name, dir_fd=p.fd())
    except OSError:
        pass


# --- message queues ----------------------------------------------------------------------


def _qsize(fd: int) -> int:
    """QSIZE of a queue's file, read through our own fd (never a second open: that
    would break our own lease)."""
    text = os.pread(fd, 256, 0).decode("ascii", "replace")
    for field in text.split():
        if field.startswith("QSIZE:"):
            return int(field[6:])
    raise OSError(errno.EIO, f"no QSIZE in {text!r}")


_saved_empty: set[int] = set()  # queues saved as empty: must still be empty at the end


def mq_busy_now(id: int) -> Optional[str]:
    why = MQUEUE.busy_now(id)
    fd = MQUEUE.leases.get(id)
    if why is None and fd is not None and id in _saved_empty and _qsize(fd):
        why = "changed since scan: a message was sent after it was saved as empty; kept"
    return why


def mq_changed_since_copy(o: Any, now: Now, empty: bool, forced: bool) -> Optional[str]:
    if empty:
        _saved_empty.add(o.id)
    return _changed(o, now, forced, "scan")


def mq_save_bound(_o: Any) -> int:
    return 0


def mq_save(o: Any, _write: Callable[[bytes], None]) -> list[tuple[int, int]]:
    """A queue's messages cannot be read without being received (consumed): an empty
    one is saved as its attributes (record), one that holds messages is kept."""
    if o.mq is None:
        raise _kept("its attributes (mq_getattr) could not be read: it cannot be saved; "
                    "kept (--no-quarantine removes it without a copy)")  # fmt: skip
    MQUEUE.lock(o.id)
    try:
        fd = MQUEUE.leases.get(o.id)
        n = _qsize(fd) if fd is not None else (o.mq.qsize or 0)
    finally:
        MQUEUE.unlock(o.id)
    if n:
        raise _kept(f"holds messages ({n} bytes): they cannot be copied without being "
                    "received; kept (--no-quarantine removes it without a copy)")  # fmt: skip
    _saved_empty.add(o.id)
    return []


def mq_data_size(_doc: Mapping[str, Any]) -> int:
    return 0


def mq_record(o: Any) -> str:
    mq = o.mq  # never None here: mq_save keeps a queue whose attributes were not read
    return _record(o) + f', "maxmsg": {mq.maxmsg}, "msgsize": {mq.msgsize}'


def mq_check_record(doc: Mapping[str, Any]) -> Optional[str]:
    why = _check_record(doc)
    if why is None and not all(_whole(doc.get(f)) and doc[f] > 0 for f in ("maxmsg", "msgsize")):
        why = "maxmsg or msgsize missing or not a positive whole number"
    return why


class _MqAttr(ctypes.Structure):
    _fields_ = [("mq_flags", ctypes.c_long), ("mq_maxmsg", ctypes.c_long),
                ("mq_msgsize", ctypes.c_long), ("mq_curmsgs", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]  # fmt: skip


def mq_restore(doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> int:
    """mq_open(O_CREAT|O_EXCL) with its maxmsg and msgsize (EEXIST while the name
    exists), made with its owner and mode at once: our fsuid and fsgid are the owner's
    and the umask 0 for that one call (ipc/mqueue.c, mqueue_get_inode: the new queue is
    current_fsuid()'s, with mode & ~umask). A restore killed between an mq_open as root
    and its fchown left root's 0600 queue at the owner's name. Its new inode."""
    for _ in data:
        raise OSError(errno.EINVAL, "a queue's entry holds no data")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _MqAttr(0, doc["maxmsg"], doc["msgsize"], 0)
    mq_open = libc.mq_open
    mq_open.restype = ctypes.c_int
    mq_open.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_MqAttr))
    name = b"/" + os.fsencode(doc["name"])
    umask = os.umask(0)
    # setfsuid/setfsgid act on this thread alone (and change nothing but file access);
    # gid first: with fsuid no longer 0 we could not choose it.
    libc.setfsgid(doc["gid"])
    libc.setfsuid(doc["uid"])
    try:
        fd = mq_open(name, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, doc["mode"],
                     ctypes.byref(attr))  # fmt: skip
        e = ctypes.get_errno()
    finally:
        libc.setfsuid(os.geteuid())
        libc.setfsgid(os.getegid())
        os.umask(umask)
    if fd < 0:
        raise OSError(e, os.strerror(e))
    try:
        s = os.fstat(fd)
        if (s.st_uid, s.st_gid) != (doc["uid"], doc["gid"]):  # fsuid not ours to set
            os.fchown(fd, doc["uid"], doc["gid"])
        if s.st_mode & 0o7777 != doc["mode"]:
            os.fchmod(fd, doc["mode"])
        ino = s.st_ino
    except BaseException:
        libc.mq_unlink(name)
        raise
    finally:
        os.close(fd)
    return ino
