"""The suite leaves no trace on the machine: every test runs in private namespaces.

At import, the pytest process leaves the machine's IPC and mount namespaces (unshare(2);
without root, inside a new user namespace where we are root). In its own mount namespace
(a slave of the machine's: nothing mounted here propagates back) it gets
- a private /run: an overlay whose writes land in a tmpfs of ours, so the reaper's lock
  file, systemd-nspawn's and PostgreSQL's run-time files never reach the machine's /run;
- the test accounts of ACCOUNTS, in copies of /etc/passwd and /etc/group bind-mounted
  over the real ones: they exist for every process of the suite and for nothing else,
  and vanish with it even on SIGKILL;
- a fresh tmpfs on /dev/shm and a fresh mqueue on /dev/mqueue per test (where the
  machine has no /dev/mqueue, a /dev of our own that has one: _private_dev).
The autouse fixture `ipcns` gives each test a fresh, empty IPC namespace with those.
`scripts/test` also runs the suite in its own PID namespace with its own /proc.
Helpers to make real segments live in segments.py; `python_as` runs Python as another uid.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_SLAVE = 2, 4, 8, 4096, 16384, 1 << 19
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def _mount(source: str, target: str, fstype: Optional[str], flags: int = 0, data: str = "") -> None:
    fs = fstype.encode() if fstype else None
    if _libc.mount(source.encode(), target.encode(), fs, flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def _leave_host_namespace() -> None:
    if os.geteuid() == 0:
        _unshare(CLONE_NEWIPC | CLONE_NEWNS)
        return
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER | CLONE_NEWIPC | CLONE_NEWNS)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


HOST_IPC_NS = os.readlink("/proc/self/ns/ipc")
# The machine's own directories, opened before we leave its mount namespace: for tests
# that prove (by reading only) that what the suite writes does not reach the machine.
MACHINE_VIEW = {d: os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in ("/dev/shm", "/run", "/etc")}
_leave_host_namespace()
# Whether this process may map other uids (real root, not root of a user namespace):
# tests that drop to an ordinary account need it.
REAL_ROOT = os.geteuid() == 0 and Path("/proc/self/uid_map").read_text().split()[:3] == [
    "0", "0", "4294967295",
]  # fmt: skip

# Ordinary accounts for tests that need a name (protect_owners, OWNER columns). Any
# account of the machine with one of these uids or names is hidden from the suite, so
# names and uids are the same on every machine. Raw uids need no account: setuid(2)
# takes any number.
ACCOUNTS = {"alice": 1000, "bob": 1001, "carol": 1002}
# The suite's own directory in its private /run: world-readable, gone with the suite.
SUITE_RUN = Path("/run/shmjt-suite")
MQUEUE = Path("/dev/mqueue")
PY_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
_ours: set[str] = set()  # mount points where the top mount is one this process made


def _remount(target: str, fstype: str, flags: int, data: str = "") -> None:
    """Replace our previous mount on `target` (never the machine's) by a fresh one."""
    if target in _ours and _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
    _ours.discard(target)
    _mount(fstype, target, fstype, flags, data)
    _ours.add(target)


def _private_run() -> None:
    """Overlay the machine's /run with a tmpfs of ours: reads see the machine's files,
    writes (and deletions, as whiteouts) stay here. Mounts below /run are hidden from
    the suite; none of the tests needs them. The tmpfs is mounted on /dev/shm just long
    enough to make the overlay: overlayfs keeps a private clone of its upper mount."""
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
    _ours.add("/dev/shm")
    # /var/lib too: `list` and `reap` write their history (and reap its quarantine) in
    # the default state directory, /var/lib/shmjanitor for root, when a test's own
    # environment names none; here that lands in the tmpfs, not on the machine.
    for target, name in (("/run", "run"), ("/var/lib", "varlib")):
        st = os.stat(target)
        for d in ("upper", "work"):
            os.mkdir(f"/dev/shm/{name}-{d}", 0o700)
        os.chmod(f"/dev/shm/{name}-upper", stat.S_IMODE(st.st_mode))
        opts = f"lowerdir={target},upperdir=/dev/shm/{name}-upper,workdir=/dev/shm/{name}-work"
        if REAL_ROOT:
            os.chown(f"/dev/shm/{name}-upper", st.st_uid, st.st_gid)
        else:  # root of a user namespace: the merged /run is ours, so the reaper can lock
            opts += ",userxattr"  # no trusted.* xattrs here (Linux >= 5.11)
        _mount("overlay", target, "overlay", 0, opts)
    SUITE_RUN.mkdir(mode=0o755)


def _install_accounts() -> None:
    uids = {str(u) for u in ACCOUNTS.values()}
    for table, line in (
        ("passwd", "{n}:x:{u}:{u}:shmjanitor tests:/nonexistent:/usr/sbin/nologin"),
        ("group", "{n}:x:{u}:"),
    ):
        real = Path("/etc", table)
        kept = []
        for ln in real.read_text().splitlines():
            f = ln.split(":")
            if len(f) < 3 or (f[0] not in ACCOUNTS and f[2] not in uids):
                kept.append(ln)
        ours = SUITE_RUN / table
        ours.write_text(
            "\n".join(kept + [line.format(n=n, u=u) for n, u in ACCOUNTS.items()]) + "\n"
        )
        ours.chmod(0o644)
        _mount(str(ours), str(real), None, MS_BIND)


def _private_dev() -> None:
    """A /dev of our own with a /dev/mqueue, where the machine has none.

    The machine's /dev is its devtmpfs, shared even from our mount namespace: a mkdir
    there would make /dev/mqueue on the machine. So a tmpfs of ours goes over /dev (in
    our mount namespace only: it is a slave, nothing propagates back), holding a bind
    mount of each entry of the machine's /dev (reached through an fd opened before: the
    covered mount and its submounts stay reachable from it), a symlink for each of its
    symlinks, and empty shm and mqueue directories for _fresh_dev_mounts to mount on.
    Terminals get a devpts instance of their own, as a container's: the kernel finds a
    pty's instance from /dev/ptmx's own directory (fs/devpts/inode.c, path_pts), which a
    bind mount of the machine's ptmx would not lead to.
    """
    if MQUEUE.is_dir():
        return
    old = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        names = os.listdir(old)
        _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=0755")
        for name in names:
            if name in ("shm", "mqueue", "pts", "ptmx"):
                continue
            st = os.stat(name, dir_fd=old, follow_symlinks=False)
            new = f"/dev/{name}"
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=old), new)
                continue
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(new, 0o755)
            else:
                os.close(os.open(new, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            try:
                _mount(f"/proc/self/fd/{old}/{name}", new, None, MS_BIND | MS_REC)
            except OSError:
                if REAL_ROOT:
                    raise
                # root of a user namespace may not bind some entries: the suite needs few
        os.mkdir("/dev/pts", 0o755)
        _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
        os.symlink("pts/ptmx", "/dev/ptmx")
        os.mkdir("/dev/shm", 0o1777)
        os.chmod("/dev/shm", 0o1777)
        os.mkdir(str(MQUEUE), 0o755)
    finally:
        os.close(old)


def _private_mounts() -> None:
    _mount("none", "/", None, MS_REC | MS_SLAVE)
    _private_dev()
    try:
        _private_run()
    except OSError:
        if REAL_ROOT:
            raise
        # An old kernel refuses overlayfs to a user namespace; then the machine's /run
        # is simply not writable to us, and the tests that need accounts skip anyway.
    else:
        _install_accounts()
        _hide_machine_config()
    _fresh_dev_mounts()


def _hide_machine_config() -> None:
    """An empty file over the machine's /etc/shmjanitor.toml, if it has one: a test that
    runs list or reap without --config must not take the machine's policy, least of all
    all_namespaces = true, which would sweep every namespace the suite's /proc shows
    (outside scripts/test's PID namespace: the machine's own)."""
    real = Path("/etc/shmjanitor.toml")
    if not real.exists():
        return
    empty = SUITE_RUN / "shmjanitor.toml"
    empty.write_text("")
    empty.chmod(0o644)
    _mount(str(empty), str(real), None, MS_BIND)


def _fresh_dev_mounts() -> None:
    """An empty /dev/shm, and /dev/mqueue showing this IPC namespace's queues.

    POSIX shared memory is files in whatever tmpfs is on /dev/shm, in no namespace: a
    tmpfs per test is how its leaks die with the test. An mqueue mount shows the queues
    of the IPC namespace that mounted it, so it is remade after each unshare (/dev is
    our own when the machine has no /dev/mqueue: _private_dev).
    """
    _remount("/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if MQUEUE.is_dir():
        _remount(str(MQUEUE), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


_private_mounts()


def fresh_ipc_namespace() -> str:
    """Move this process into a new, empty IPC namespace (with a fresh /dev/shm and
    /dev/mqueue to match); returns its name."""
    _unshare(CLONE_NEWIPC)
    name = os.readlink("/proc/self/ns/ipc")
    assert name != HOST_IPC_NS
    assert Path("/proc/sysvipc/shm").read_text().count("\n") == 1, "namespace not empty"
    _fresh_dev_mounts()
    return name


@pytest.fixture(autouse=True)
def ipcns() -> Iterator[str]:
    from segments import reap_children

    name = fresh_ipc_namespace()
    try:
        yield name
    finally:
        reap_children()


@pytest.fixture
def mqueue_dir(tmp_path: Path) -> Iterator[Path]:
    """An mqueue file system of this test's IPC namespace: /dev/mqueue where the
    machine has one (remade per test), else one mounted on a directory of the test."""
    if MQUEUE.is_dir():
        yield MQUEUE
        return
    d = tmp_path / "mqueue"
    d.mkdir()
    _mount("mqueue", str(d), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    try:
        yield d
    finally:
        _libc.umount2(str(d).encode(), MNT_DETACH)


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


# ------------------------------------------------------------ Python as another uid


def python_as(uid: Optional[int]) -> list[str]:
    """argv prefix that runs Python as `uid` (no groups, no capabilities) with this
    checkout's shmjanitor importable; None: this interpreter, as we are.

        subprocess.run([*python_as(1000), "-m", "shmjanitor", "reap", "--json"])

    Works wherever the checkout and the venv live: the package and its dependencies are
    copied once per session to a world-readable directory of the suite's /run, and run
    by an interpreter of the same minor version that `uid` can execute (the venv's may
    sit under /root, 0700). Skips without real root.
    """
    if uid is None:
        return [sys.executable]
    needs_real_root()
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return [*prefix, _readable_python(), "-I"]  # -I: not the caller's cwd or PYTHON*


@functools.cache
def _readable_python() -> str:
    """The copy's interpreter, chosen by trying each as uid 65534: what works for a uid
    with no account and no group works for any uid."""
    venv = _readable_venv()
    base = getattr(sys, "_base_executable", sys.executable)
    # A system interpreter first: its whole tree is readable by every uid by design.
    tried = []
    for cand in (f"/usr/bin/python{PY_VERSION}", f"/usr/local/bin/python{PY_VERSION}", base):
        if not os.path.isfile(cand):
            continue
        (venv / "bin/python").unlink(missing_ok=True)
        (venv / "bin/python").symlink_to(cand)
        (venv / "pyvenv.cfg").write_text(
            f"home = {os.path.dirname(cand)}\ninclude-system-site-packages = false\n"
        )
        probe = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             str(venv / "bin/python"), "-I", "-c", _PROBE, str(venv), PY_VERSION],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        if probe.returncode == 0:
            return str(venv / "bin/python")
        tried.append(f"{cand}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.fail(
        f"no Python {PY_VERSION} that other uids can run with shmjanitor's dependencies "
        f"(install python{PY_VERSION}; scripts/ci-deps does on Debian): " + "; ".join(tried)
    )


# Right interpreter version (the copied C extensions are built for it), and every import
# comes from the copy.
_PROBE = """
import sys, shmjanitor, psutil, sysv_ipc, typer
assert "%d.%d" % sys.version_info[:2] == sys.argv[2], sys.version
assert shmjanitor.__file__.startswith(sys.argv[1]), shmjanitor.__file__
"""


@functools.cache
def _readable_venv() -> Path:
    """A venv skeleton holding copies of shmjanitor and every distribution it needs."""
    import shmjanitor

    venv = SUITE_RUN / "python"
    site = venv / "lib" / f"python{PY_VERSION}" / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    shutil.copytree(Path(shmjanitor.__file__).parent, site / "shmjanitor",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for dist in _requirements("shmjanitor"):
        for f in dist.files or []:
            rel = Path(str(f))
            if rel.parts[0] == ".." or rel.is_absolute():
                continue  # scripts in bin/: not needed
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f.locate(), site / rel)
    for p in [venv, *venv.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(stat.S_IMODE(mode) | 0o444 | (0o111 if p.is_dir() or mode & 0o100 else 0))
    return venv


def _requirements(name: str) -> list:  # type: ignore[type-arg]
    """The installed distributions `name` needs, recursively (not `name` itself)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo, out = {canonicalize_name(name)}, [name], []
    while todo:
        for spec in metadata.distribution(todo.pop()).requires or []:
            req = Requirement(spec)
            key = canonicalize_name(req.name)
            if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
                continue
            seen.add(key)
            todo.append(req.name)
            out.append(metadata.distribution(req.name))
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Any]:
    """A sealed world (tests/worlds.py) for tests that sweep every namespace: its /proc
    shows no process of the machine's namespaces, nor of the suite's own."""
    from worlds import World

    env = dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state"))
    w = World(HOST_IPC_NS, env)
    try:
        yield w
    finally:
        w.close()
