"""One reaper at a time: flock on a lock file; a second one waits, bounded."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shmjanitor.errors import LockTimeout, StateDirError


def default_path() -> Path:
    """/run/shmjanitor.lock for root; $XDG_RUNTIME_DIR (or the state dir) otherwise."""
    if os.geteuid() == 0:
        return Path("/run/shmjanitor.lock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "shmjanitor.lock"
    from shmjanitor.quarantine import _private_dir, default_state_dir

    return _private_dir(default_state_dir()) / "reap.lock"


@contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
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
                        f"{timeout:g} s; try again later or raise lock_timeout"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
