#!/usr/bin/env python3
"""Time shmjanitor against util-linux on N leaked segments, and check the speed targets.

    python benchmarks/bench.py            # N = 32,000 and 4,096; updates docs/benchmarks.md
    python benchmarks/bench.py --quick    # a small N, a few runs, docs left alone
    python benchmarks/bench.py --only sem,msg   # some rows only (shm, sem, msg, posix, history, ns)
    python benchmarks/bench.py --python current # this checkout's own venv, as it is

What is timed is shmjanitor as a lab machine runs it: by default the checkout installed
with pip (not editable) into a fresh venv of /usr/bin/python3, the distribution's
interpreter, as the Ansible role installs it (deploy/ansible: shmjanitor_python). The
interpreter matters: a CPython built without profile-guided optimization and LTO (pyenv's
default build) runs Python code up to twice as slowly as Debian's, and an editable install
imports its finder at every start.

Everything happens in private IPC namespaces: the script re-executes itself under
`unshare --ipc` unless it already runs in one, and keeps each data set (32,000 orphans
of one creator, 32,000 orphans of as many creators, 4,096 orphans, the reap runs) in a
namespace of its own, entered with setns(2) around each command. The machine's own
/proc/sysvipc/shm is never touched. Needs root (setns, setuid to an ordinary account).

The ns row (issue 14) runs `list -A`, which reads every IPC namespace a process of /proc
is in: the run is therefore always sealed (re-executed in a PID namespace of its own,
with its own /proc, whose pid 1 is already in a private IPC namespace and a private
mount namespace with its own /run, /dev/shm and /dev/mqueue), and it refuses to start
when any process its /proc shows is in the IPC namespace it was started in.

Orphans are made as shmjanitor's users leave them: a process of uid 1000 (an ordinary
account, >= UID_MIN, so `reap`'s default policy takes them) creates IPC_PRIVATE
segments of 4 KiB, mode 0600, with shmget(2), and exits.

Each comparison runs A and B alternately (A B A B ...) and reports medians of wall
time; a ratio is A's median over B's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import errno
import fcntl
import os
import platform
import pty
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Optional

CLONE_NEWIPC = 0x08000000
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
ORDINARY_UID = 1000  # >= UID_MIN (1000 on Debian/Fedora): reap's default policy reaps it
SEGMENT_SIZE = 4096
MAX_N = 32000  # the size; IPCMNI (the most a namespace may hold) is 32,768
SMALL_N = 4096
ENV_OUTER_NS = "SHMJANITOR_BENCH_OUTER_IPC_NS"
ENV_OUTER_INIT_NS = "SHMJANITOR_BENCH_OUTER_INIT_IPC_NS"  # pid 1's, as the starter saw it
ENV_OUTER_SHM = "SHMJANITOR_BENCH_OUTER_SHM_DEV"
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"

# Floors, timed for information: the least a Python CLI on typer must do, with none of
# shmjanitor's work. Read the table and int() every field (what any list starts with);
# for reap, also one IPC_STAT (the re-check) and one IPC_RMID per segment.
FLOOR_LIST = """
import typer
rows = [list(map(int, ln.split())) for ln in open('/proc/sysvipc/shm').read().splitlines()[1:]]
"""
FLOOR_REAP = (
    FLOOR_LIST
    + """
import ctypes, sysv_ipc
shmctl, buf = ctypes.CDLL(None).shmctl, ctypes.create_string_buffer(256)  # >= shmid_ds
for row in rows:
    shmctl(row[1], 2, buf)
    sysv_ipc.remove_shared_memory(row[1])
"""
)
# The same floor with the calls issue 10's last instant makes for each segment, and
# nothing else: the lock note's pwrite, IPC_STAT, IPC_SET (the lock; here with the
# mode as it was), IPC_STAT again, IPC_RMID, and IPC_STAT after it (the kernel's answer).
FLOOR_REAP_LAST_INSTANT = (
    FLOOR_LIST
    + """
import ctypes, os
libc = ctypes.CDLL(None)
shmctl, buf = libc.shmctl, ctypes.create_string_buffer(256)  # >= shmid_ds
note = os.memfd_create("lock")  # the lock note: a file of tmpfs, as /run is
for row in rows:
    os.pwrite(note, b"shm %d %d %o" % (row[1], row[0], row[2]), 0)
    shmctl(row[1], 2, buf)
    shmctl(row[1], 1, buf)
    shmctl(row[1], 2, buf)
    shmctl(row[1], 0, None)
    shmctl(row[1], 2, buf)
"""
)
# Issue 12's floors. A list of sets needs each semaphore's last pid and waiters
# (GETPID, GETNCNT, GETZCNT: /proc/sysvipc/sem has neither); a list of queues each
# queue's msg_qbytes (IPC_STAT: not in /proc/sysvipc/msg). A reap adds, per object, the
# lock note, that look again, IPC_SET (the lock), the look once more, and IPC_RMID.
_FLOOR_KIND = """
import typer, ctypes, os
libc = ctypes.CDLL(None)
rows = [list(map(int, ln.split())) for ln in open('/proc/sysvipc/%s').read().splitlines()[1:]]
buf = ctypes.create_string_buffer(256)  # >= semid_ds, msqid_ds
"""
_LOOK = {
    "sem": """
def look(id, n, stat=True):
    if stat:  # reap's re-check (kinds/sem.py stat); list reads the table's fields
        libc.semctl(id, 0, 2, buf)  # IPC_STAT
    for i in range(n):
        libc.semctl(id, i, 11), libc.semctl(id, i, 14), libc.semctl(id, i, 15)
""",
    "msg": """
def look(id, n, stat=True):
    libc.msgctl(id, 2, buf)  # IPC_STAT: msg_qbytes, for list too
""",
}
_CTL = {"sem": "libc.semctl(id, 0, %d, buf)", "msg": "libc.msgctl(id, %d, buf)"}
_NSEMS = {"sem": "row[3]", "msg": "0"}  # /proc/sysvipc/sem: key semid perms nsems ...


def floor_list(kind: str) -> str:
    loop = f"for row in rows:\n    look(row[1], {_NSEMS[kind]}, False)\n"
    return _FLOOR_KIND % kind + _LOOK[kind] + loop


def floor_reap(kind: str) -> str:
    return _FLOOR_KIND % kind + _LOOK[kind] + "\n".join((
        'note = os.memfd_create("lock")  # the lock note: a file of tmpfs, as /run is',
        "for row in rows:",
        f"    id, n = row[1], {_NSEMS[kind]}",
        f'    os.pwrite(note, b"{kind} %d %d %o" % (id, row[0], row[2]), 0)',
        "    look(id, n)",
        "    " + _CTL[kind] % 1 + "  # IPC_SET",
        "    look(id, n)",
        "    " + (_CTL[kind] % 0).replace(", buf", ", None") + "  # IPC_RMID",
        "",
    ))  # fmt: skip


_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.semget.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_libc.msgget.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# --- namespaces -------------------------------------------------------------------------


def _ipc_ns(pid: str = "self") -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/ipc")
    except OSError:
        return None


def ensure_private_namespace() -> None:
    """Re-execute this script sealed, unless it is the sealed run already (then check)."""
    if os.environ.get(ENV_OUTER_NS) is not None:
        check_sealed()
        return
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("bench: needs unshare(1) (util-linux) to run in a private IPC namespace")
    os.environ[ENV_OUTER_NS] = _ipc_ns() or "?"
    os.environ[ENV_OUTER_INIT_NS] = _ipc_ns("1") or "?"  # unreadable in some sandboxes
    os.environ[ENV_OUTER_SHM] = str(os.stat("/dev/shm").st_dev)
    # A private mount namespace too, with its own /run: the reaper takes its lock in
    # /run/shmjanitor, which must stay the machine's as it was. mount -n: without it,
    # libmount writes /run/mount/utab into the machine's /run before the tmpfs hides it.
    # Its own /dev/shm and /dev/mqueue (a mqueue mounted here is the new IPC namespace's):
    # `list -A` reads the POSIX directories of every namespace, ours included.
    # And a PID namespace with its own /proc, whose pid 1 (sh, which does not exec) is in
    # the run's private IPC namespace, outside the data sets' own: then /proc shows every
    # task that could wait on a queue or hold a user's process (procs.unseen_ipc_peers),
    # no process of the machine is read (this machine's own pid 1 cannot be: every queue
    # would be unknown), and `list -A` finds no namespace but the run's.
    script = (
        "mount -n -t tmpfs -o mode=0755 shmjanitor-bench /run"
        " && mount -n -t tmpfs -o mode=1777,nosuid,nodev shmjanitor-bench /dev/shm"
        " && { [ ! -d /dev/mqueue ] || mount -n -t mqueue -o nosuid,nodev,noexec none /dev/mqueue; }"
        ' && "$0" "$@"; exit $?'
    )
    argv = [unshare, "--ipc", "--mount", "--propagation", "private", "--pid", "--fork",
            "--kill-child", "--mount-proc", "sh", "-c", script,
            sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]  # fmt: skip
    os.execv(unshare, argv)


def sealed_why() -> Optional[str]:
    """Why this run is not sealed (None: it is): a process of our /proc in the IPC
    namespace the run was started in (or in its starter's pid 1's), or the starter's
    /dev/shm. `list -A` enters every IPC namespace of /proc: one of those would be the
    machine's."""
    outer = {os.environ.get(ENV_OUTER_NS), os.environ.get(ENV_OUTER_INIT_NS)} - {None, "?"}
    if not outer:
        return "the IPC namespace it was started in is not known"
    if os.getpid() == 1 or _ipc_ns("1") is None:
        return "not in a PID namespace of its own whose pid 1 it can read"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        ns = _ipc_ns(name)
        if ns is None and os.path.exists(f"/proc/{name}"):
            return f"the IPC namespace of process {name} cannot be read"
        if ns in outer:
            return f"process {name} is in the IPC namespace the run was started in ({ns})"
    if str(os.stat("/dev/shm").st_dev) == os.environ.get(ENV_OUTER_SHM):
        return "/dev/shm is the one the run was started with"
    return None


def check_sealed() -> None:
    why = sealed_why()
    if why is not None:
        sys.exit(f"bench: refusing to run, not sealed: {why}")


class Namespace:
    """A fresh IPC namespace kept alive by an open fd; `with ns:` runs code inside it."""

    def __init__(self, shmmni: int) -> None:
        self._home = os.open("/proc/self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
        self.fd = os.open("/proc/self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if shmmni > int(Path("/proc/sys/kernel/shmmni").read_text()):
                Path("/proc/sys/kernel/shmmni").write_text(f"{shmmni}\n")
            # The same room for semaphore sets (SEMMNI, kernel.sem's fourth number) and
            # message queues (msgmni): per IPC namespace, so the machine's stay as they are.
            sem = Path("/proc/sys/kernel/sem").read_text().split()
            if shmmni > int(sem[3]):
                Path("/proc/sys/kernel/sem").write_text(" ".join([*sem[:3], str(shmmni)]))
            if shmmni > int(Path("/proc/sys/kernel/msgmni").read_text()):
                Path("/proc/sys/kernel/msgmni").write_text(f"{shmmni}\n")
        finally:
            self._enter(self._home)

    @staticmethod
    def _enter(fd: int) -> None:
        _check(_libc.setns(fd, CLONE_NEWIPC), "setns(CLONE_NEWIPC)")

    def __enter__(self) -> Namespace:
        self._enter(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        self._enter(self._home)

    def close(self) -> None:
        os.close(self.fd)  # the last reference: the namespace and its segments go
        os.close(self._home)


def table_rows() -> list[list[str]]:
    with open("/proc/sysvipc/shm") as f:
        return [line.split() for line in f.read().splitlines()[1:] if line.strip()]


# --- making orphans ---------------------------------------------------------------------


def _become_ordinary() -> None:
    os.setgroups([])
    os.setgid(ORDINARY_UID)
    os.setuid(ORDINARY_UID)


def _shmget() -> bool:
    return _libc.shmget(0, SEGMENT_SIZE, IPC_CREAT | IPC_EXCL | 0o600) >= 0


def _shmget_written() -> bool:
    """A segment its creator attached, wrote a byte to and detached: it has a page."""
    shmid = _libc.shmget(0, SEGMENT_SIZE, IPC_CREAT | IPC_EXCL | 0o600)
    if shmid < 0:
        return False
    addr = _libc.shmat(shmid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return False
    ctypes.memset(addr, 0x5A, 1)
    return _libc.shmdt(ctypes.c_void_p(addr)) == 0


def _in_child(body: Callable[[], bool]) -> int:
    """Run `body` in a forked child; its pid. The child exits 0 when body returned True."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = body()
        finally:
            os._exit(0 if ok else 1)
    return pid


def _wait_ok(pid: int) -> bool:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def orphans(n: int, written: bool = False) -> None:
    """n orphans of one creator: a child of uid 1000 calls shmget n times and exits.
    `written`: it also attaches each one, writes a byte and detaches."""
    make = _shmget_written if written else _shmget

    def body() -> bool:
        _become_ordinary()
        return all(make() for _ in range(n))

    if not _wait_ok(_in_child(body)):
        raise RuntimeError(f"could not create {n} segments (kernel.shmmni?)")


def _semget() -> bool:
    return _libc.semget(0, 1, IPC_CREAT | IPC_EXCL | 0o600) >= 0


def _msgget() -> bool:
    return _libc.msgget(0, IPC_CREAT | IPC_EXCL | 0o600) >= 0


# kind -> (ipcs/ipcrm's name for it, the maker of one orphan of uid 1000)
KIND_MAKERS = {"sem": ("sem", _semget), "msg": ("msg", _msgget)}


def kind_orphans(kind: str, n: int) -> None:
    """n orphans of `kind` (a set of one semaphore, an empty queue) of one creator of uid
    1000 that exits: nobody ever operated on them and their user has no process left."""
    make = KIND_MAKERS[kind][1]

    def body() -> bool:
        _become_ordinary()
        return all(make() for _ in range(n))

    if not _wait_ok(_in_child(body)):
        raise RuntimeError(f"could not create {n} {kind} objects (kernel.sem, msgmni?)")


def kind_rows(kind: str) -> int:
    with open(f"/proc/sysvipc/{kind}") as f:
        return len([ln for ln in f.read().splitlines()[1:] if ln.strip()])


def orphans_of_distinct_creators(n: int, workers: int) -> None:
    """n orphans, each of its own short-lived process (so n different dead cpids)."""

    def worker(count: int) -> Callable[[], bool]:
        def body() -> bool:
            _become_ordinary()
            return all(_wait_ok(_in_child(_shmget)) for _ in range(count))

        return body

    share = [n // workers + (i < n % workers) for i in range(workers)]
    pids = [_in_child(worker(k)) for k in share if k]
    if not all([_wait_ok(p) for p in pids]):
        raise RuntimeError(f"could not create {n} segments from distinct processes")


# --- running and timing -----------------------------------------------------------------


def shmjanitor_cmd() -> list[str]:
    script = Path(sys.executable).parent / "shmjanitor"
    if script.exists():
        return [str(script)]
    found = shutil.which("shmjanitor")
    return [found] if found else [sys.executable, "-m", "shmjanitor"]


# The interpreter a lab machine runs shmjanitor on: the Ansible role's default
# (deploy/ansible/roles/shmjanitor/defaults/main.yml, shmjanitor_python).
DEPLOYED_PYTHON = "/usr/bin/python3"
CURRENT = "current"  # --python current: this checkout's own environment, as it is


class Install(NamedTuple):
    python: str  # the interpreter the timed Python commands (floors, -c pass) run on
    sj: list[str]  # the shmjanitor command timed
    said: str  # what was timed, for the docs


def _version(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def install(python: str, tmp: Path, say: Callable[[str], None]) -> Install:
    """What is timed: this checkout installed with pip, not editable, into a fresh venv
    of `python` (a copy of the tree is built, so the checkout gets no build files); or,
    for CURRENT, the shmjanitor of the environment this script runs in."""
    if python == CURRENT:
        compile_package()
        return Install(sys.executable, shmjanitor_cmd(),
                       f"this checkout's own environment ({sys.executable}, Python "
                       f"{platform.python_version()})")  # fmt: skip
    venv, src = tmp / "venv", tmp / "src"
    say(f"installing the checkout into a fresh venv of {python} ...")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "build", "*.egg-info", ".*_cache", ".hypothesis"))  # fmt: skip
    for cmd in ([python, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "--no-input", "--disable-pip-version-check",
                 "-q", str(src)]):  # fmt: skip
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(f"bench: {' '.join(cmd)} failed ({p.stderr.strip()[-500:]}); a Debian "
                     "python3 needs the python3-venv package; --python current times this "
                     "checkout's own environment instead")  # fmt: skip
    py = str(venv / "bin" / "python")
    return Install(py, [str(venv / "bin" / "shmjanitor")],
                   f"a fresh venv of {python} (Python {_version(py)}), the checkout installed "
                   "into it by pip, not editable, as the Ansible role installs it")  # fmt: skip


def run(cmd: Sequence[str], out: Optional[Path] = None, ok: Sequence[int] = (0,)) -> float:
    """Wall time of one run of `cmd`, stdout to `out` (or /dev/null); fails loudly on
    an exit status not in `ok`."""
    with open(out or os.devnull, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode()[-2000:]}")
    return elapsed


def run_on_pty(cmd: Sequence[str], cols: int = 160, rows: int = 50) -> tuple[float, int]:
    """Wall time of `cmd` writing to a pseudo-terminal we drain; and the lines it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                         start_new_session=True)  # fmt: skip
    os.close(slave)
    lines = 0
    try:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError as e:  # EIO: every writer has closed the terminal
                if e.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            lines += data.count(b"\n")
        code = p.wait()
        elapsed = time.perf_counter() - t0
    finally:
        os.close(master)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} on a terminal exited {code}")
    return elapsed, lines


def peak_rss_mib(cmd: Sequence[str], out: Path) -> float:
    """Peak RSS of `cmd` as GNU time's %M reports it (KiB), in MiB."""
    gnu_time = "/usr/bin/time"
    if not os.access(gnu_time, os.X_OK):
        raise RuntimeError("needs GNU time at /usr/bin/time (Debian: apt-get install time)")
    report = out.with_suffix(".rss")
    run([gnu_time, "-f", "%M", "-o", str(report), *cmd], out)
    return int(report.read_text().split()[-1]) / 1024


class Pair(NamedTuple):
    a: list[float]
    b: list[float]


def alternate(runs: int, a: Callable[[], float], b: Callable[[], float]) -> Pair:
    """A B A B ...: both see the same machine weather."""
    pair = Pair([], [])
    for _ in range(runs):
        pair.a.append(a())
        pair.b.append(b())
    return pair


class Figure(NamedTuple):
    name: str
    a: str  # what A is
    b: str  # what B is ("" when the target is absolute)
    a_median: float
    b_median: Optional[float]
    unit: str  # "s" or "MiB"
    target: str  # e.g. "<= 0.8x" or "< 1 s"; "-" for a figure shown for information
    holds: Optional[bool]  # None: no target

    @property
    def ratio(self) -> Optional[float]:
        return None if self.b_median is None else self.a_median / self.b_median


def ratio_figure(name: str, a: str, b: str, pair: Pair, limit: Optional[float],
                 strict: bool = False) -> Figure:  # fmt: skip
    """A over B, medians; `limit` None: no target, the figure is for information."""
    am, bm = statistics.median(pair.a), statistics.median(pair.b)
    if limit is None:
        return Figure(name, a, b, am, bm, "s", "-", None)
    r = am / bm
    holds = r < limit if strict else r <= limit
    return Figure(name, a, b, am, bm, "s", f"{'<' if strict else '<='} {limit:g}x", holds)


# --- the benchmark ----------------------------------------------------------------------


# the benchmark's rows: by kind of object, and the cost of the history store (issue 15)
# and every IPC namespace (issue 14)
KINDS = ("shm", "sem", "msg", "posix", "history", "ns")


class Options(NamedTuple):
    n: int
    small_n: int
    runs: int
    workers: int
    docs: Optional[Path]
    only: tuple[str, ...] = KINDS  # the rows run, by kind
    python: str = DEPLOYED_PYTHON  # the interpreter of the venv timed (install), or CURRENT


def compile_package() -> None:
    """Byte-compile the package first, as `pip install` does: an editable install under
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every start."""
    import compileall

    compileall.compile_dir(str(ROOT / "shmjanitor"), quiet=1)


def benchmark(opt: Options, say: Callable[[str], None]) -> tuple[list[Figure], dict[str, str]]:
    notes: dict[str, str] = {}
    figures: list[Figure] = []
    tmp = Path(tempfile.mkdtemp(prefix="shmjanitor-bench-"))
    try:
        inst = install(opt.python, tmp, say)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sj, py = inst.sj, inst.python
    notes["install"] = inst.said
    out = tmp / "out"
    # Every list and reap records history (and reap its clock) in the default state
    # directory unless told: the run's own, never the machine's /var/lib/shmjanitor.
    os.environ["STATE_DIRECTORY"] = str(tmp / "state")
    n, small, runs = opt.n, opt.small_n, opt.runs
    shmmni = max(n, small) + 16

    def timed(ns: Namespace, cmd: Sequence[str], to: Optional[Path] = out) -> Callable[[], float]:
        def go() -> float:
            with ns:
                return run(cmd, to)

        return go

    try:
        if "shm" not in opt.only:  # --only sem,msg,posix: the rows of issues 12, 13 alone
            for kind, flag in (("sem", "-s"), ("msg", "-q")):
                if kind in opt.only:
                    figures += kind_figures(kind, flag, opt, sj, tmp, say, py)
            if "posix" in opt.only:
                figures += posix_figures(opt, sj, tmp, say)
            if "history" in opt.only:
                figures += history_figures(opt, sj, tmp, say)
            if "ns" in opt.only:
                figures += ns_figures(opt, sj, tmp, say)
            return figures, notes
        # Start-up: an empty namespace, shmjanitor vs the interpreter doing nothing.
        empty = Namespace(shmmni)
        say("start-up (empty namespace) ...")
        pair = alternate(runs, timed(empty, [*sj, "list", "--json"]),
                         timed(empty, [py, "-c", "pass"], None))  # fmt: skip
        figures.append(ratio_figure("start-up: list --json, no segments", "shmjanitor",
                                    "python -c pass", pair, 8))  # fmt: skip

        single = Namespace(shmmni)
        with single:
            t0 = time.perf_counter()
            orphans(n)
            notes["create_single"] = f"{time.perf_counter() - t0:.2f} s"
            assert len(table_rows()) == n
        say(f"{n:,} orphans of one creator made in {notes['create_single']}")

        say("list --json vs lsipc -m --json ...")
        pair_json = alternate(runs, timed(single, [*sj, "list", "--json"]),
                              timed(single, ["lsipc", "-m", "--json"]))  # fmt: skip
        figures.append(ratio_figure(f"list --json, {n:,} segments", "shmjanitor list --json",
                                    "lsipc -m --json", pair_json, 0.8))  # fmt: skip
        say("floor for list (read the table, int() every field) vs lsipc -m --json ...")
        pair = alternate(runs, timed(single, [py, "-c", FLOOR_LIST]),
                         timed(single, ["lsipc", "-m", "--json"]))  # fmt: skip
        figures.append(ratio_figure(f"floor: python, typer, read and int(), {n:,} rows",
                                    "floor", "lsipc -m --json", pair, None))  # fmt: skip

        say("list > file vs ipcs -m -p ...")
        pair = alternate(runs, timed(single, [*sj, "list"]),
                         timed(single, ["ipcs", "-m", "-p"]))  # fmt: skip
        figures.append(ratio_figure(f"list to a file, {n:,} segments", "shmjanitor list",
                                    "ipcs -m -p", pair, 1.0))  # fmt: skip

        def peak_rss(ns: Namespace) -> float:
            """The largest peak RSS of `list --json` and `list` in `ns`, up to 3 runs each."""
            rss = []
            for _ in range(max(1, min(runs, 3))):
                with ns:
                    rss.append(peak_rss_mib([*sj, "list", "--json"], out))
                    rss.append(peak_rss_mib([*sj, "list"], out))
            return max(rss)

        say("peak RSS ...")
        rss = peak_rss(single)
        figures.append(Figure(f"peak RSS, list (--json and plain), {n:,} segments",
                              "shmjanitor list", "", rss, None, "MiB", "<= 64 MiB",
                              rss <= 64))  # fmt: skip

        distinct = Namespace(shmmni)
        with distinct:
            t0 = time.perf_counter()
            orphans_of_distinct_creators(n, opt.workers)
            notes["create_distinct"] = f"{time.perf_counter() - t0:.2f} s"
            rows = table_rows()
            assert len(rows) == n
            notes["distinct_cpids"] = f"{len({r[4] for r in rows}):,}"
        say(f"{n:,} orphans of {notes['distinct_cpids']} distinct creators made in "
            f"{notes['create_distinct']}")  # fmt: skip
        say("list --json, distinct creators vs one creator ...")
        pair = alternate(runs, timed(distinct, [*sj, "list", "--json"]),
                         timed(single, [*sj, "list", "--json"]))  # fmt: skip
        figures.append(ratio_figure(f"list --json, {n:,} distinct dead creators",
                                    "distinct creators", "one creator", pair, 1.5))  # fmt: skip
        # The RSS target is measured on one creator's orphans (above); the worst case for
        # memory is this set (a reason and a creator per segment): shown, no target.
        figures.append(Figure(f"peak RSS, list (--json and plain), {n:,} distinct creators",
                              "shmjanitor list", "", peak_rss(distinct), None, "MiB", "-",
                              None))  # fmt: skip
        distinct.close()

        smallns = Namespace(shmmni)
        with smallns:
            orphans(small)
        say(f"list --json at {n:,} vs {small:,} ...")
        pair = alternate(runs, timed(single, [*sj, "list", "--json"]),
                         timed(smallns, [*sj, "list", "--json"]))  # fmt: skip
        figures.append(ratio_figure(f"scaling: list --json, {n:,} vs {small:,}", f"{n:,}",
                                    f"{small:,}", pair, 9))  # fmt: skip

        say(f"list on a terminal, {small:,} segments ...")
        tty = []
        for _ in range(runs):
            with smallns:
                elapsed, lines = run_on_pty([*sj, "list"])
            if lines < small:
                raise RuntimeError(f"list on a terminal wrote {lines} lines for {small} rows")
            tty.append(elapsed)
        t = statistics.median(tty)
        figures.append(Figure(f"list on a terminal, {small:,} segments", "shmjanitor list",
                              "", t, None, "s", "< 1 s", t < 1))  # fmt: skip
        smallns.close()
        single.close()

        reapns = Namespace(shmmni)

        def fresh(cmd: Sequence[str], state: bool = False,
                  written: bool = False) -> Callable[[], float]:  # fmt: skip
            def go() -> float:
                with reapns:
                    orphans(n, written)
                    extra = []
                    if state:
                        extra = ["--state-dir", tempfile.mkdtemp(dir=tmp, prefix="state-")]
                    elapsed = run([*cmd, *extra], out)
                    left = len(table_rows())
                if left:
                    raise RuntimeError(f"{' '.join(cmd)} left {left} of {n} orphans")
                return elapsed

            return go

        reap = [*sj, "reap", "--min-age", "0"]
        say("floor for reap (+ IPC_STAT and IPC_RMID each) vs ipcrm --all=shm ...")
        pair = alternate(runs, fresh([py, "-c", FLOOR_REAP]),
                         fresh(["ipcrm", "--all=shm"]))  # fmt: skip
        figures.append(ratio_figure(f"floor: + IPC_STAT and IPC_RMID each, {n:,} orphans",
                                    "floor", "ipcrm --all=shm", pair, None))  # fmt: skip
        say("floor for reap with issue 10's last instant vs ipcrm --all=shm ...")
        pair = alternate(runs, fresh([py, "-c", FLOOR_REAP_LAST_INSTANT]),
                         fresh(["ipcrm", "--all=shm"]))  # fmt: skip
        figures.append(ratio_figure(f"floor: + the last instant's calls, {n:,} orphans",
                                    "floor", "ipcrm --all=shm", pair, None))  # fmt: skip
        say("reap --no-quarantine vs ipcrm --all=shm (fresh orphans each run) ...")
        pair_nq = alternate(runs, fresh([*reap, "--no-quarantine"]),
                            fresh(["ipcrm", "--all=shm"]))  # fmt: skip
        figures.append(ratio_figure(f"reap --no-quarantine, {n:,} orphans",
                                    "shmjanitor reap", "ipcrm --all=shm", pair_nq, 2.5))  # fmt: skip
        say("reap with quarantine vs --no-quarantine ...")
        pair = alternate(runs, fresh(reap, state=True), fresh([*reap, "--no-quarantine"]))
        figures.append(ratio_figure(f"reap with quarantine, {n:,} orphans", "quarantine",
                                    "--no-quarantine", pair, 2))  # fmt: skip
        # The orphans above were never attached, so their quarantine entries need no
        # copy (remove.known_zero). What a copy costs shows with orphans that were written.
        say("reap with quarantine vs --no-quarantine, orphans written by their creator ...")
        pair = alternate(runs, fresh(reap, state=True, written=True),
                         fresh([*reap, "--no-quarantine"], written=True))  # fmt: skip
        figures.append(ratio_figure(f"reap with quarantine, {n:,} written orphans",
                                    "quarantine", "--no-quarantine", pair, None))  # fmt: skip
        reapns.close()
        for kind, flag in (("sem", "-s"), ("msg", "-q")):
            if kind in opt.only:
                figures += kind_figures(kind, flag, opt, sj, tmp, say, py)
        if "posix" in opt.only:
            figures += posix_figures(opt, sj, tmp, say)
        if "history" in opt.only:
            figures += history_figures(opt, sj, tmp, say)
        empty.close()
        if "ns" in opt.only:  # last: every other data set is gone, ours is empty
            figures += ns_figures(opt, sj, tmp, say)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures, notes


def kind_figures(kind: str, flag: str, opt: Options, sj: list[str], tmp: Path,
                 say: Callable[[str], None], py: str = sys.executable) -> list[Figure]:  # fmt: skip
    """Issue 12's rows for one kind: list --json against ipcs -X -p (and lsipc, for
    information), and the reap of n orphans against the look-then-remove it replaces:
    ipcs -X -p, then ipcrm --all=X."""
    n, runs = opt.n, opt.runs
    out = tmp / f"out-{kind}"
    name = KIND_MAKERS[kind][0]
    figures = []
    listns = Namespace(n + 16)
    with listns:
        kind_orphans(kind, n)
        assert kind_rows(kind) == n

    def in_ns(ns: Namespace, cmd: Sequence[str]) -> Callable[[], float]:
        def go() -> float:
            with ns:
                return run(cmd, out)

        return go

    say(f"{kind}: list --json {flag} vs ipcs {flag} -p ...")
    pair = alternate(runs, in_ns(listns, [*sj, "list", "--json", flag]),
                     in_ns(listns, ["ipcs", flag, "-p"]))  # fmt: skip
    figures.append(ratio_figure(f"{kind}: list --json, {n:,} orphans",
                                f"shmjanitor list --json {flag}", f"ipcs {flag} -p", pair, 1.0))  # fmt: skip
    say(f"{kind}: floor for list vs ipcs {flag} -p ...")
    pair = alternate(runs, in_ns(listns, [py, "-c", floor_list(kind)]),
                     in_ns(listns, ["ipcs", flag, "-p"]))  # fmt: skip
    figures.append(ratio_figure(f"{kind}: floor: python, typer, read, int() and the {kind}ctl "
                                f"calls, {n:,} orphans", "floor", f"ipcs {flag} -p", pair, None))  # fmt: skip
    say(f"{kind}: list --json {flag} vs lsipc {flag} --json ...")
    pair = alternate(runs, in_ns(listns, [*sj, "list", "--json", flag]),
                     in_ns(listns, ["lsipc", flag, "--json"]))  # fmt: skip
    figures.append(ratio_figure(f"{kind}: list --json vs lsipc, {n:,} orphans",
                                f"shmjanitor list --json {flag}", f"lsipc {flag} --json",
                                pair, None))  # fmt: skip
    listns.close()

    reapns = Namespace(n + 16)

    def fresh(cmds: Sequence[Sequence[str]], state: bool = False) -> Callable[[], float]:
        """Fresh orphans, then the commands one after the other: their summed time."""

        def go() -> float:
            with reapns:
                kind_orphans(kind, n)
                elapsed = 0.0
                for cmd in cmds:
                    extra = []
                    if state:
                        extra = ["--state-dir", tempfile.mkdtemp(dir=tmp, prefix="state-")]
                    elapsed += run([*cmd, *extra], out)
                left = kind_rows(kind)
            if left:
                raise RuntimeError(f"{cmds} left {left} of {n} {kind} orphans")
            return elapsed

        return go

    reap = [*sj, "reap", flag, "--min-age", "0"]
    manual = [["ipcs", flag, "-p"], ["ipcrm", f"--all={name}"]]
    say(f"{kind}: floor for reap vs ipcs {flag} -p + ipcrm --all={name} ...")
    pair = alternate(runs, fresh([[py, "-c", floor_reap(kind)]]), fresh(manual))
    figures.append(ratio_figure(f"{kind}: floor: + the last instant's calls, {n:,} orphans",
                                "floor", f"ipcs -p + ipcrm --all={name}", pair, None))  # fmt: skip
    say(f"{kind}: reap {flag} --no-quarantine vs ipcs {flag} -p + ipcrm --all={name} ...")
    pair = alternate(runs, fresh([[*reap, "--no-quarantine"]]), fresh(manual))
    figures.append(ratio_figure(f"{kind}: reap --no-quarantine, {n:,} orphans",
                                "shmjanitor reap", f"ipcs -p + ipcrm --all={name}", pair,
                                1.0))  # fmt: skip
    say(f"{kind}: reap {flag} with quarantine vs --no-quarantine ...")
    pair = alternate(runs, fresh([reap], state=True), fresh([[*reap, "--no-quarantine"]]))
    figures.append(ratio_figure(f"{kind}: reap with quarantine, {n:,} orphans", "quarantine",
                                "--no-quarantine", pair, None))  # fmt: skip
    reapns.close()
    return figures


# --- POSIX objects (issue 13) ------------------------------------------------------------

# A holder farm: N files of 4 KiB in /dev/shm of uid 1000, and P processes of uid 1000,
# half keeping an fd open, half a MAP_SHARED mapping whose fd is closed (ctypes mmap:
# Python's mmap.mmap keeps a dup of the fd). Prints "ready", then waits to be killed.
HOLDER_FARM = r"""
import ctypes, os, signal, sys
N, P, D, UID = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
os.setgroups([]); os.setgid(UID); os.setuid(UID)
for i in range(N):
    fd = os.open(f"{D}/bench.{i:05d}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
r, w = os.pipe()
for k in range(P):
    if os.fork() == 0:
        os.close(r)
        fd = os.open(f"{D}/bench.{(k * (N // P)) % N:05d}", os.O_RDWR)
        if k % 2:
            libc.mmap(None, 4096, 3, 1, fd, 0)
            os.close(fd)
        os.write(w, b"x")
        os.close(w)
        signal.pause()
        os._exit(0)
os.close(w)
got = 0
while got < P:
    got += len(os.read(r, 65536))
print("ready", flush=True)
signal.pause()
"""


def history_figures(opt: Options, sj: list[str], tmp: Path,
                    say: Callable[[str], None]) -> list[Figure]:  # fmt: skip
    """Issue 15's row: what recording history costs `list --json` at n segments, once
    the store knows them (every hourly run after the first: no row changes), against
    the same list without a store ($STATE_DIRECTORY a path that cannot be a directory:
    history.record gives up before opening SQLite). And, for information, the first
    run, which inserts a row per segment."""
    n, runs = opt.n, opt.runs
    out = tmp / "out-history"
    ns = Namespace(n + 16)
    with ns:
        orphans(n)
        assert len(table_rows()) == n
    store = tmp / "history-state"
    without = str(tmp / "out-history-none" / "x")  # under a regular file: ENOTDIR
    Path(without).parent.write_text("")
    cmd = [*sj, "list", "--json"]

    def listed(state: Callable[[], str]) -> Callable[[], float]:
        def go() -> float:
            old = os.environ.get("STATE_DIRECTORY")
            os.environ["STATE_DIRECTORY"] = state()
            try:
                with ns:
                    return run(cmd, out)
            finally:
                if old is not None:
                    os.environ["STATE_DIRECTORY"] = old

        return go

    def first_store() -> str:
        return tempfile.mkdtemp(dir=tmp, prefix="history-first-")

    say(f"history: list --json recording, {n:,} segments, vs without a store ...")
    listed(lambda: str(store))()  # the store learns the segments: later runs change nothing
    pair = alternate(runs, listed(lambda: str(store)), listed(lambda: without))
    figures = [ratio_figure(f"history: list --json recording, {n:,} segments known",
                            "with history", "without", pair, 1.2)]  # fmt: skip
    say("history: the first list --json, a row per segment inserted ...")
    pair = alternate(runs, listed(first_store), listed(lambda: without))
    figures.append(ratio_figure(f"history: first list --json, {n:,} new rows",
                                "with history", "without", pair, None))  # fmt: skip
    ns.close()
    return figures


NS_COUNT, NS_SEGMENTS = 100, 100  # the size: 100 namespaces of 100 segments


def ns_sizes(n: int) -> tuple[int, int]:
    """(namespaces, segments in each): the issue's 100 x 100, or for a small N (the
    suite's test) N/4 x N/4."""
    if n >= 400:
        return NS_COUNT, NS_SEGMENTS
    k = max(2, n // 4)
    return k, k


class NamespaceFarm:
    """`count` IPC namespaces, each held by one long-lived process of its own: a child
    that unshare(2)s its IPC namespace (what `unshare --ipc` does), becomes uid 1000,
    makes `per` segments and stays (pause). Nothing but those processes keeps them."""

    def __init__(self, count: int, per: int) -> None:
        r, w = os.pipe()
        self.pids: list[int] = []
        try:
            for _ in range(count):
                pid = os.fork()
                if pid == 0:
                    ok = False
                    try:
                        os.close(r)
                        if _libc.unshare(CLONE_NEWIPC) == 0:
                            _become_ordinary()
                            ok = all(_shmget() for _ in range(per))
                    finally:
                        os.write(w, b"+" if ok else b"-")
                        if not ok:
                            os._exit(1)
                    while True:
                        signal.pause()
                self.pids.append(pid)
            os.close(w)
            w = -1
            said = b""
            while len(said) < count:
                chunk = os.read(r, count)
                if not chunk:
                    break
                said += chunk
            if said != b"+" * count:
                raise RuntimeError(f"{said.count(b'+')} of {count} namespaces of {per} "
                                   "segments made")  # fmt: skip
        except BaseException:
            self.close()
            raise
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        self.inodes = {os.stat(f"/proc/{pid}/ns/ipc").st_ino for pid in self.pids}
        if len(self.inodes) != count:
            self.close()
            raise RuntimeError(f"{count} holders share {len(self.inodes)} IPC namespaces")

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids = []


def nsenter_loop(pids: Sequence[int], cmd: str) -> list[str]:
    """What admins run today: `cmd` inside each namespace, one nsenter per pid."""
    return ["sh", "-c", f'for pid in "$@"; do nsenter -t "$pid" -i {cmd}; done', "sh",
            *map(str, pids)]  # fmt: skip


def ns_figures(opt: Options, sj: list[str], tmp: Path,
               say: Callable[[str], None]) -> list[Figure]:  # fmt: skip
    """Issue 14's rows: `list -A --json` over 100 IPC namespaces of 100 segments each,
    against a shell loop of `nsenter -t PID -i lsipc -m --json` over one pid per
    namespace (and, for information, of `ipcs -m -p`). Before the timing, list -A must
    show every namespace's segments, and the lsipc loop as many."""
    import json

    count, per = ns_sizes(opt.n)
    out = tmp / "out-ns"
    say(f"ns: {count} IPC namespaces of {per} segments, each held by a process ...")
    farm = NamespaceFarm(count, per)
    try:
        check_sealed()  # -A enters every namespace of /proc: none may be the machine's
        every = [*sj, "list", "-A", "--json"]
        run(every, out)
        segments = json.loads(out.read_text())["segments"]
        if len(segments) != count * per:
            raise RuntimeError(f"list -A showed {len(segments)} segments, not {count * per}")
        lsipc = nsenter_loop(farm.pids, "lsipc -m --json")
        run(lsipc, out)
        seen = out.read_text().count('"id":')
        if seen != count * per:
            raise RuntimeError(f"the lsipc loop showed {seen} segments, not {count * per}")
        say("ns: list -A --json vs the nsenter lsipc loop ...")
        pair = alternate(opt.runs, lambda: run(every, out), lambda: run(lsipc, out))
        name = f"ns: list -A --json, {count} namespaces x {per} segments"
        figures = [ratio_figure(name, "shmjanitor list -A --json",
                                "nsenter -i lsipc -m --json, each", pair, 0.5)]  # fmt: skip
        say("ns: list -A --json vs the nsenter ipcs loop ...")
        ipcs = nsenter_loop(farm.pids, "ipcs -m -p")
        pair = alternate(opt.runs, lambda: run(every, out), lambda: run(ipcs, out))
        figures.append(ratio_figure(f"ns: list -A --json vs ipcs, {count} namespaces x {per}",
                                    "shmjanitor list -A --json", "nsenter -i ipcs -m -p, each",
                                    pair, None))  # fmt: skip
    finally:
        farm.close()
    return figures


class HolderFarm:
    """N files and P holders on a fresh tmpfs mounted on /dev/shm (in the benchmark's
    private mount namespace: the machine's /dev/shm is never touched)."""

    def __init__(self, n: int, p: int) -> None:
        _mount_tmpfs(POSIX_DIR)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_FARM, str(n), str(p), POSIX_DIR, str(ORDINARY_UID)],
            stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            self.close()
            raise RuntimeError(f"the holder farm ({n} files, {p} holders) did not start")

    def close(self) -> None:
        os.killpg(self.proc.pid, 9)
        self.proc.wait()
        _check(_libc.umount2(POSIX_DIR.encode(), 2), f"umount {POSIX_DIR}")  # MNT_DETACH


POSIX_DIR = "/dev/shm"
# lsof +D exits 1 when some file of the directory is open nowhere ("a search item not
# found"): the usual case here, not a failure.
LSOF = ["lsof", "-n", "+D", POSIX_DIR]
POSIX_SIZES = ((1000, 1000), (10000, 1000), (10000, 4000))  # (objects, processes)


def posix_sizes(n: int) -> tuple[tuple[int, int], ...]:
    """The issue's sizes for a full run; for a smaller N (a smoke run, the suite's test)
    the same shape, scaled down: N x N/4, 10N x N/4, 10N x N."""
    if n == MAX_N:
        return POSIX_SIZES
    k = max(4, n)
    return ((k, k // 4), (10 * k, k // 4), (10 * k, k))


def _mount_tmpfs(target: str) -> None:
    if _libc.mount(b"tmpfs", target.encode(), b"tmpfs", 2 | 4, b"mode=1777") != 0:  # nosuid,nodev
        _check(-1, f"mount tmpfs on {target}")


def held_paths_of_lsof() -> set[str]:
    out = subprocess.run(["lsof", "-n", "-F", "n", "+D", POSIX_DIR], capture_output=True,
                         text=True).stdout  # fmt: skip
    return {ln[1:] for ln in out.splitlines() if ln.startswith("n" + POSIX_DIR + "/")}


def held_paths_of_list(sj: list[str]) -> set[str]:
    import json

    out = subprocess.run([*sj, "list", "--json", "-M", "-S", "-Q"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return {o["path"] for o in json.loads(out)["posix"] if o["holders"]}


def posix_figures(opt: Options, sj: list[str], tmp: Path,
                  say: Callable[[str], None]) -> list[Figure]:  # fmt: skip
    """Issue 13's rows: list --json of the POSIX kinds against lsof -n +D /dev/shm, with
    10,000 objects and 1,000 holders, the held set checked equal to lsof's; and how the
    time grows with objects and with processes (1,000 x 1,000, 10,000 x 1,000,
    10,000 x 4,000)."""
    out = tmp / "out-posix"
    figures = []
    medians: dict[tuple[int, int], float] = {}
    sizes = posix_sizes(opt.n)
    for n, p in sizes:
        say(f"posix: {n:,} objects, {p:,} holders ...")
        farm = HolderFarm(n, p)
        try:
            ours, lsof = held_paths_of_list(sj), held_paths_of_lsof()
            if ours != lsof:
                raise RuntimeError(f"list's held objects differ from lsof's: {len(ours)} "
                                   f"vs {len(lsof)}, e.g. {sorted(ours ^ lsof)[:3]}")  # fmt: skip
            pair = alternate(opt.runs, lambda: run([*sj, "list", "--json", "-M", "-S", "-Q"], out),
                             lambda: run(LSOF, out, ok=(0, 1)))  # fmt: skip
        finally:
            farm.close()
        medians[(n, p)] = statistics.median(pair.a)
        limit = 0.5 if (n, p) == sizes[1] else None
        figures.append(ratio_figure(f"posix: list --json, {n:,} objects x {p:,} holders "
                                    f"(held set = lsof's: {len(ours):,})",
                                    "shmjanitor list --json -M -S -Q", "lsof -n +D /dev/shm",
                                    pair, limit))  # fmt: skip
    a, b, c = (medians[s] for s in sizes)
    (n1, p1), (n2, _), (_, p3) = sizes
    figures.append(Figure(f"posix scaling: x10 objects ({n2:,} vs {n1:,}, {p1:,} holders)",
                          "list --json", "", b / a, None, "x", "-", None))  # fmt: skip
    figures.append(Figure(f"posix scaling: x4 holders ({p3:,} vs {p1:,}, {n2:,} objects)",
                          "list --json", "", c / b, None, "x", "-", None))  # fmt: skip
    return figures


# --- output -----------------------------------------------------------------------------


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.1f} MiB" if unit == "MiB" else f"{value * 1000:.0f} ms"


def rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for f in figures:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        vs = f"{f.a} vs {f.b}" if f.b else f.a
        holds = "-" if f.holds is None else "yes" if f.holds else "NO"
        out.append((f.name, vs, _fmt(f.a_median, f.unit), _fmt(f.b_median, f.unit), ratio,
                    f.target, holds))  # fmt: skip
    return out


HEADERS = ("measure", "A vs B", "A median", "B median", "ratio", "target", "holds")


def text_table(figures: Sequence[Figure]) -> str:
    body = [HEADERS, *rows(figures)]
    widths = [max(len(r[i]) for r in body) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body)


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "CPU": model,
        "kernel": platform.release(),
    }


def markdown(figures: Sequence[Figure], notes: dict[str, str], opt: Options,
             command: str) -> str:  # fmt: skip
    m = machine()
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/bench.py` (issue 5); rerun it to update this page:",
        "",
        "```",
        command,
        "```",
        "",
        f"Latest run: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"{m['nproc']} CPUs ({m['CPU']}), Linux {m['kernel']}. Timed: {notes['install']}.",
        f"N = {opt.n:,} and {opt.small_n:,} segments (4 KiB, IPC_PRIVATE, mode 0600, "
        f"orphans of uid {ORDINARY_UID}); medians of {opt.runs} runs, A and B alternating; "
        "ratio = A / B.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(r) + " |" for r in rows(figures)),
        "",
        f"Making {opt.n:,} orphans took {notes.get('create_single', '?')} from one process "
        f"and {notes.get('create_distinct', '?')} from {notes.get('distinct_cpids', '?')} "
        f"distinct processes ({opt.workers} forking in parallel).",
        "",
        "Each command runs as a fresh process with stdout to a file (/dev/null for "
        "`python -c pass` and `ipcrm`); `list` on a terminal is drained from a pty of 160 "
        "columns. Reap runs get fresh orphans before each run, and quarantine runs a fresh "
        "state directory. Peak RSS is GNU time's %M, the largest of the `list --json` and "
        "`list` runs.",
        "",
        "Rows with target `-` are for information. The floors are the least a Python "
        "command on typer does, with none of shmjanitor's work: start the interpreter, "
        "import typer, read `/proc/sysvipc/shm` and `int()` every field; for reap also one "
        "`IPC_STAT` (the re-check) and one `IPC_RMID` per segment; with the last instant's "
        "calls, the ones issue 10's last instant makes per object and nothing else (the "
        "lock note's `pwrite`, `IPC_STAT`, `IPC_SET`, `IPC_STAT`, `IPC_RMID`; for a segment "
        "an `IPC_STAT` after it, for a set `GETPID`, `GETNCNT` and `GETZCNT` with each "
        "look). The sem and msg list floors add the calls their columns need (a set's "
        "`GETPID`, `GETNCNT`, `GETZCNT`; a queue's `IPC_STAT` for `msg_qbytes`). The "
        "floors run on the timed venv's interpreter. A target below its "
        "floor's ratio cannot be met by any change to shmjanitor's Python; the gap between "
        "a floor and the command above it is what our own work costs. The written orphans "
        "were attached and written by their creator, so each quarantine entry needs a real "
        "copy (never-attached ones are saved as zeros without attaching). The peak RSS "
        "of the distinct-creator set is the worst case for memory (a reason and a creator "
        "per segment); the RSS target is measured on one creator's orphans.",
        "",
        "The sem and msg rows (issue 12) use N sets of one semaphore and N empty queues, "
        "made by a process of uid 1000 that exits: nobody ever operated on them and "
        "their user has no process left, so each is an orphan. Their reap is timed "
        "against the look-then-remove it replaces, `ipcs -s -p` (or `-q`) and then "
        "`ipcrm --all=sem` (or `msg`), summed. The whole run is sealed: a PID namespace "
        "of its own with its own /proc, whose pid 1 is in a private IPC namespace (not "
        "the machine's, and outside the data sets' own) and a private mount namespace "
        "with its own /run, /dev/shm and /dev/mqueue; the script refuses to start when "
        "any process its /proc shows is in the IPC namespace it was started from.",
        "",
        "The ns rows (issue 14) make 100 IPC namespaces of 100 segments each (4 KiB, "
        "uid 1000), each held by one long-lived process that unshare(2)d it (what "
        "`unshare --ipc` does), made its segments and stays. `list -A --json` (every "
        "namespace, ours too) is timed against what admins run today, a shell loop of "
        "`nsenter -t PID -i lsipc -m --json` over one pid per namespace (and, for "
        "information, of `ipcs -m -p`); before the timing, list -A must show all 10,000 "
        "segments and the lsipc loop as many. `-A` enters every IPC namespace a process "
        "of /proc is in, which is why the run is sealed: /proc shows no process of the "
        "machine's namespaces.",
        "",
        "The posix rows (issue 13) mount a tmpfs of their own on /dev/shm (in the run's "
        "private mount namespace) and fill it with files of 4 KiB of uid 1000, held by "
        "processes of uid 1000: half keep an fd open, half a MAP_SHARED mapping whose fd "
        "they closed (the usual shm_open, mmap, close). `list --json -M -S -Q` is timed "
        "against `lsof -n +D /dev/shm`, and before the timing the set of files it says "
        "are held is checked equal to lsof's (the figure's name gives its size). The two "
        "scaling rows are list's own medians: x10 objects, and x4 holder processes.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=MAX_N, help="segments in the big data sets")
    ap.add_argument("--small-n", type=int, default=None,
                    help=f"segments in the small one (default {SMALL_N:,}, or N/8)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=5, help="runs of each command (median)")
    ap.add_argument("--quick", action="store_true", help="N=2000, 3 runs: a smoke run")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                    help="parallel forkers making the distinct-creator orphans")  # fmt: skip
    ap.add_argument("--docs", type=Path, default=None,
                    help=f"write the results here (default: {DOCS.relative_to(ROOT)}, "
                    "only for a full run at the default N)")  # fmt: skip
    ap.add_argument("--only", default=",".join(KINDS), metavar="KINDS",
                    help="the rows to run: of shm, sem, msg, posix, history, ns, separated by commas (default: "
                    "all; docs are written only for all)")  # fmt: skip
    ap.add_argument("--python", default=DEPLOYED_PYTHON, metavar="PATH",
                    help=f"time the checkout installed (pip, not editable) into a fresh venv of "
                    f"this interpreter (default {DEPLOYED_PYTHON}, the one the Ansible role "
                    f"installs with), or '{CURRENT}': this checkout's own environment")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.runs = 2000, 3
    if not 1 <= args.n <= MAX_N or args.runs < 1:
        ap.error(f"--n must be 1..{MAX_N} and --runs at least 1")
    small = args.small_n or (SMALL_N if args.n >= SMALL_N * 2 else max(1, args.n // 8))
    only = tuple(k for k in KINDS if k in args.only.split(","))
    if not only or set(args.only.split(",")) - set(only):
        ap.error("--only takes shm, sem, msg, posix, history, ns, separated by commas")
    every = len(only) == len(KINDS)
    docs = args.docs or (DOCS if args.n == MAX_N and args.runs >= 5 and every else None)
    opt = Options(args.n, small, args.runs, args.workers, docs, only, args.python)
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it setns(2)es and creates segments as uid 1000)")
    ensure_private_namespace()

    def say(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    figures, notes = benchmark(opt, say)
    m = machine()
    print(f"{m['nproc']} CPUs ({m['CPU']}), Linux {m['kernel']}; medians of {opt.runs} runs; "
          f"timed: {notes['install']}")  # fmt: skip
    print(text_table(figures))
    if "create_single" in notes:  # the segments' rows ran
        print(f"orphans made: {opt.n:,} by one process in {notes['create_single']}, "
              f"by {notes['distinct_cpids']} processes in {notes['create_distinct']}")  # fmt: skip
    targets = [f for f in figures if f.holds is not None]
    missed = [f.name for f in targets if not f.holds]
    print(f"targets: {len(targets) - len(missed)} of {len(targets)} hold"
          + (f"; missed: {', '.join(missed)}" if missed else ""))  # fmt: skip
    if opt.docs is not None:
        command = "python benchmarks/bench.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        )
        opt.docs.parent.mkdir(parents=True, exist_ok=True)
        opt.docs.write_text(markdown(figures, notes, opt, command))
        print(f"wrote {opt.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
