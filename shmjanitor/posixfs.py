"""POSIX IPC objects: files in /dev/shm (shm_open, and sem_open's "sem.NAME") and in
/dev/mqueue (mq_open). What the three POSIX kinds (kinds/posix_*.py) share: the object,
read from a directory fd without following a link.

An object is one regular file directly in its directory. Never a directory, socket,
fifo, device or symlink: entries are stat'ed with AT_SYMLINK_NOFOLLOW from the
directory's fd, and anything but S_ISREG is not an object. Its `id` is its inode number
on that file system (the kernel's own number for it: names are reused, inodes of live
files are not), and it has no key (0), as lsipc 2.40 shows none.
"""

from __future__ import annotations

import stat as st
from typing import NamedTuple, Optional

from shmjanitor.holders import Holder

SHM_DIR = "/dev/shm"
MQUEUE_DIR = "/dev/mqueue"


class MqAttr(NamedTuple):
    """mq_getattr's answer for a queue (struct mq_attr), and the QSIZE its file shows."""

    maxmsg: int
    msgsize: int
    curmsgs: int
    qsize: int  # bytes in its messages (the file's QSIZE:), what it holds of RAM


class PosixObject(NamedTuple):
    """One file of /dev/shm or /dev/mqueue, as read once (an fstatat from the directory's
    fd), with who held it during the run's one pass over /proc (holders.scan)."""

    id: int  # st_ino
    name: str  # the directory entry (os.fsdecode: surrogateescape for any byte)
    dir: str  # the directory it was read from ("/dev/shm", "/dev/mqueue")
    dev: int  # st_dev
    mode: int  # st_mode & 0o7777 (the permission bits and setuid/setgid/sticky)
    uid: int
    gid: int
    st_size: int  # the file's length (JSON "size"); a queue's file is 0 long
    used_bytes: int  # st_blocks * 512: what a (sparse) file really takes of RAM
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    holders: tuple[Holder, ...] = ()  # open (fd N) or mapped now, by the pass
    blocked: tuple[str, ...] = ()  # why the pass could not prove it unused (shared)
    name_pid: Optional[int] = None  # a creator pid its name carries (torch_<pid>_...)
    program: Optional[str] = None  # the likely creator, from its name's pattern
    mq: Optional[MqAttr] = None  # a queue's attributes (posix-mqueue only)

    @property
    def kind(self) -> str:
        """The registry's name of its kind: each kind's subclass says its own."""
        raise NotImplementedError("a PosixObject is made as one of its kinds' subclasses")

    @property
    def key(self) -> int:
        return 0  # POSIX objects have names, not keys

    @property
    def perms(self) -> int:
        return self.mode & 0o777

    @property
    def cuid(self) -> int:
        return self.uid  # a file keeps no creator apart from its owner

    @property
    def cgid(self) -> int:
        return self.gid

    @property
    def ctime(self) -> int:
        return self.ctime_ns // 1_000_000_000

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000

    @property
    def atime(self) -> int:
        return self.atime_ns // 1_000_000_000

    @property
    def size(self) -> int:
        """Bytes it holds in the kernel (model.py): the pages a file really uses, or
        the bytes in a queue's messages; never the length of a sparse file."""
        return self.mq.qsize if self.mq is not None else self.used_bytes

    @property
    def last_used(self) -> int:
        """The latest of mtime, ctime and atime: min-age counts from it (issue 13)."""
        return max(self.mtime_ns, self.ctime_ns, self.atime_ns) // 1_000_000_000

    @property
    def path(self) -> str:
        return f"{self.dir}/{self.name}"


def is_object(mode: int) -> bool:
    """A regular file: the only kind of entry that is a POSIX object."""
    return st.S_ISREG(mode)


# One class per kind: remove.py and classify find an object's kind module by its class.
class PosixShm(PosixObject):
    __slots__ = ()

    @property
    def kind(self) -> str:
        return "posix-shm"


class PosixSem(PosixObject):
    """A named semaphore: /dev/shm/sem.NAME (glibc's sem_open), a 32-byte sem_t."""

    __slots__ = ()

    @property
    def kind(self) -> str:
        return "posix-sem"


class PosixMqueue(PosixObject):
    __slots__ = ()

    @property
    def kind(self) -> str:
        return "posix-mqueue"
