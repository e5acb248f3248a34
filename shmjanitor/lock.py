"""One reaper at a time per IPC namespace: flock on a lock file; a second one waits, bounded.

The lock is per IPC namespace because segments are: a reaper in a container (or under
`unshare --ipc`) sees and removes only its namespace's segments, so it neither races
nor needs to wait for the host's reaper. The namespace is named by the inode of
/proc/self/ns/ipc, the number `readlink /proc/self/ns/ipc` shows (ipc:[4026531839]).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shmjanitor.errors import LockTimeout, StateDirError

ROOT_LOCK_DIR = Path("/run/shmjanitor")


def ipc_namespace(ns: str = "/proc/self/ns/ipc") -> int:
    """The inode that names our IPC namespace."""
    try:
        return os.stat(ns).st_ino
    except OSError as e:
        raise StateDirError(
            f"cannot tell which IPC namespace this is: {ns}: {e.strerror}"
        ) from None


def _runtime_directory() -> Path | None:
    """Our directory from $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=shmjanitor).

    Only an entry named shmjanitor counts: a wrapper unit with a RuntimeDirectory= of its
    own passes its variable on to us, and a lock there would not exclude the timer's
    reaper, which locks in /run/shmjanitor.
    """
    for entry in os.environ.get("RUNTIME_DIRECTORY", "").split(":"):
        if entry and os.path.basename(entry.rstrip("/")) == "shmjanitor":
            return Path(entry)
    return None


def _lock_dir(path: Path) -> Path:
    """Create `path` 0700, or check that an existing one is ours and closed to others.

    An existing directory is never chmod'ed: one that others can write is not ours to fix
    (a planted lock file could be a symlink, or a lock that makes every reaper wait).
    """
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise StateDirError(f"lock directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"lock directory {path}: not a directory; remove it")
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(
            f"lock directory {path}: owned by uid {st.st_uid} with mode "
            f"{stat.S_IMODE(st.st_mode):04o}; it must be ours and not writable by others: "
            f"remove it (it is made again, 0700)"
        )
    return path


def default_path() -> Path:
    """The lock of this IPC namespace: in $RUNTIME_DIRECTORY under systemd, in
    /run/shmjanitor for root, in $XDG_RUNTIME_DIR (or the state dir) otherwise."""
    name = f"ipc-{ipc_namespace()}.lock"
    runtime = _runtime_directory()
    if runtime is not None:
        return _lock_dir(runtime) / name
    if os.geteuid() == 0:
        return _lock_dir(ROOT_LOCK_DIR) / name
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / f"shmjanitor-{name}"
    from shmjanitor.quarantine import _private_dir, default_state_dir

    return _private_dir(default_state_dir()) / f"reap-{name}"


_NOTE_AT = 32  # the pid line comes first; the note after it, at a fixed offset
_NOTE_LEN = 96


class Held:
    """A held lock, and a note it keeps for the next holder.

    The note says which segment the holder has just locked for its last instant (mode
    000 between IPC_SET and IPC_RMID, remove._last_instant). A holder killed there
    leaves it; the next one, which can only come once the flock is free, puts that
    segment's mode back (remove.undo_left_lock). One segment is locked at a time, so
    one note is enough; it is written with one pwrite, no fsync (a power cut takes
    the segments with it).
    """

    def __init__(self, fd: int, previous: str) -> None:
        self._fd = fd
        self.previous = previous

    def note(self, text: bytes) -> None:
        # One pwrite per segment a reap removes: kept cheap (no context manager).
        try:  # noqa: SIM105
            os.pwrite(self._fd, text[: _NOTE_LEN - 1].ljust(_NOTE_LEN - 1) + b"\n", _NOTE_AT)
        except OSError:  # a lock file we cannot write: the note is best effort
            pass


@contextmanager
def held(path: Path, timeout: float) -> Iterator[Held]:
    """Hold an exclusive flock on `path`, waiting up to `timeout` seconds for it."""
    try:
        # O_NOFOLLOW: in a shared directory a planted symlink must not redirect us.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StateDirError(f"cannot open lock file {path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LockTimeout(
                        f"another shmjanitor (pid {holder}) has held {path} for over "
                        f"{timeout:g}s; try again later or raise lock_timeout"
                    ) from None
                time.sleep(0.05)
        previous = os.pread(fd, _NOTE_LEN, _NOTE_AT).decode(errors="replace").strip()
        # Our pid in the first line (for the message of one who waits too long); the
        # note stays as it is until we lock a segment ourselves: a command that only
        # repairs must leave the next reap what the killed run left (its settle needs it).
        os.pwrite(fd, f"{os.getpid()}".encode().ljust(_NOTE_AT - 1) + b"\n", 0)
        yield Held(fd, previous)
    finally:
        os.close(fd)  # closing releases the flock
