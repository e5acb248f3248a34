"""Every test runs in a private IPC namespace of its own, so the suite never sees or
touches the machine's segments, and every leak a test makes dies with its namespace.

At import, the pytest process leaves the machine's IPC namespace (unshare(2); without
root, inside a new user namespace where we are root). Then the autouse fixture `ipcns`
gives each test a fresh, empty one. Helpers to make real segments live in segments.py.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def _leave_host_namespace() -> None:
    if os.geteuid() == 0:
        _unshare(CLONE_NEWIPC)
        return
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER | CLONE_NEWIPC)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


HOST_IPC_NS = os.readlink("/proc/self/ns/ipc")
_leave_host_namespace()
# Whether this process may map other uids (real root, not root of a user namespace):
# tests that drop to an ordinary account need it.
REAL_ROOT = os.geteuid() == 0 and Path("/proc/self/uid_map").read_text().split()[:3] == [
    "0", "0", "4294967295",
]  # fmt: skip


def fresh_ipc_namespace() -> str:
    """Move this process into a new, empty IPC namespace; returns its name."""
    _unshare(CLONE_NEWIPC)
    name = os.readlink("/proc/self/ns/ipc")
    assert name != HOST_IPC_NS
    assert Path("/proc/sysvipc/shm").read_text().count("\n") == 1, "namespace not empty"
    return name


@pytest.fixture(autouse=True)
def ipcns() -> Iterator[str]:
    from segments import reap_children

    name = fresh_ipc_namespace()
    try:
        yield name
    finally:
        reap_children()


@pytest.fixture(autouse=True)
def _pin_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich reads these; pinning them keeps table output stable whatever runs the suite.
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("LINES", "50")
    monkeypatch.delenv("NO_COLOR", raising=False)


def needs_real_root() -> None:
    if not REAL_ROOT:
        pytest.skip("needs real root (to act as other uids); run the suite as root")


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Reapers of the suite (in-process, and subprocesses that inherit the environment)
    take their lock in a directory of the suite's, never in the machine's
    /run/shmjanitor: $RUNTIME_DIRECTORY, as systemd's RuntimeDirectory= passes it."""
    run = tmp_path_factory.mktemp("run") / "shmjanitor"
    run.mkdir(mode=0o700)
    old = os.environ.get("RUNTIME_DIRECTORY")
    os.environ["RUNTIME_DIRECTORY"] = str(run)
    yield
    if old is None:
        del os.environ["RUNTIME_DIRECTORY"]
    else:
        os.environ["RUNTIME_DIRECTORY"] = old
