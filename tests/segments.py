"""Real segments made by real processes, for tests (always inside the test's namespace).

Each maker forks: the child creates the segment(s) and reports their ids through a
pipe, then exits (leaving orphans) or stays alive until the test ends (idle/attached).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import sysv_ipc

_children: list[int] = []


@dataclass
class Spec:
    """What one segment should be; `key` None means IPC_PRIVATE."""

    size: int = 4096
    key: Optional[int] = None
    mode: int = 0o600
    touch: bool = False  # attach and detach once after creating (sets atime/dtime/lpid)


@dataclass
class Maker:
    """A forked process that made some segments; pid is the segments' cpid."""

    pid: int
    ids: list[int] = field(default_factory=list)
    alive: bool = True

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.alive = False


def _fork(body, stay: bool, uid: Optional[int] = None) -> Maker:  # type: ignore[no-untyped-def]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            result = body()
            os.write(w, json.dumps(result).encode() + b"\n")
            os.close(w)
            if stay:
                while True:
                    time.sleep(3600)
        except BaseException as e:  # report, never run the parent's pytest in the child
            try:
                os.write(w, json.dumps({"error": repr(e)}).encode() + b"\n")
            finally:
                code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline()
    result = json.loads(line) if line else {"error": "child died"}
    if isinstance(result, dict) and "error" in result:
        os.waitpid(pid, 0)
        raise RuntimeError(f"segment maker failed: {result['error']}")
    m = Maker(pid, result if isinstance(result, list) else [], alive=stay)
    if stay:
        _children.append(pid)
    else:
        os.waitpid(pid, 0)
    return m


_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)


def _create(spec: Spec) -> int:
    """shmget(2) as ipcmk does it: created, never attached (sysv_ipc always attaches)."""
    key = 0 if spec.key is None else spec.key
    if key >= 0x80000000:
        key -= 1 << 32  # key_t is a signed int
    shmid = _libc.shmget(key, spec.size, sysv_ipc.IPC_CREX | spec.mode)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    if spec.touch:
        sysv_ipc.attach(shmid).detach()
    return int(shmid)


def make(*specs: Spec, stay: bool = False, uid: Optional[int] = None) -> Maker:
    """Segments created by one process that then exits (orphans) or stays (idle)."""
    return _fork(lambda: [_create(s) for s in (specs or (Spec(),))], stay, uid)


def attach(shmid: int, uid: Optional[int] = None) -> Maker:
    """A live process attached to `shmid` until the test ends (or .kill())."""

    def body() -> list[int]:
        seg = sysv_ipc.attach(shmid)
        _keep.append(seg)
        return [shmid]

    return _fork(body, True, uid)


_keep: list[object] = []


def orphans(n: int, size: int = 4096, uid: Optional[int] = None) -> list[int]:
    return make(*[Spec(size=size) for _ in range(n)], uid=uid).ids


def reap_children() -> None:
    while _children:
        pid = _children.pop()
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def table() -> str:
    with open("/proc/sysvipc/shm") as f:
        return f.read()


def rows() -> dict[int, list[str]]:
    """The kernel's rows by shmid, fields as printed."""
    lines = table().splitlines()
    header = lines[0].split()
    i = header.index("shmid")
    return {int(line.split()[i]): line.split() for line in lines[1:] if line.strip()}


class Ran(NamedTuple):
    exit_code: int
    stdout: str  # what the command printed on stdout alone
    output: str  # stdout and stderr together


def cli(*args: str) -> Ran:
    """Run the CLI in-process (same namespace); stdout apart, and everything together.

    click < 8.2 (the one Python 3.9 gets) mixes stderr into stdout unless told not to,
    and then leaves it out of `output`; click >= 8.2 keeps them apart by itself.
    """
    from typer.testing import CliRunner

    from shmjanitor.cli import app

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
        r = runner.invoke(app, list(args))
        return Ran(r.exit_code, r.stdout, r.output)
    r = runner.invoke(app, list(args))
    return Ran(r.exit_code, r.stdout, r.stdout + r.stderr)


def list_json() -> dict[int, dict]:  # type: ignore[type-arg]
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    return {s["id"]: s for s in json.loads(r.stdout)["segments"]}


def mark_dest(shmid: int) -> None:
    sysv_ipc.remove_shared_memory(shmid)


def make_named(comm: bytes, *specs: Spec) -> Maker:
    """Segments made by a live process that first renamed itself to `comm`, as any
    process may (prctl(PR_SET_NAME), or a write to /proc/self/comm; 15 bytes at most)."""

    def body() -> list[int]:
        with open("/proc/self/comm", "wb") as f:
            f.write(comm)
        return [_create(s) for s in (specs or (Spec(),))]

    return _fork(body, True)


def make_given_to(owner: int, *specs: Spec, uid: Optional[int] = None) -> Maker:
    """Orphans made by `uid` (None: us) that then gave them to `owner` with IPC_SET, as
    root's `shmjanitor restore` or a setuid helper does: cuid stays the creator's."""

    def body() -> list[int]:
        ids = [_create(s) for s in (specs or (Spec(),))]
        for shmid in ids:
            seg = sysv_ipc.attach(shmid)
            seg.uid = owner
            seg.detach()
        return ids

    return _fork(body, False, uid)


def run_on_pty(argv: list[str], env: dict[str, str], columns: int = 120) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal `columns` wide (as a person
    at a terminal sees it); its exit status and everything it wrote."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    p = subprocess.Popen(argv, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(timeout=60), out.decode().replace("\r\n", "\n")
