"""Every IPC namespace of the machine, and the /dev/shm and /dev/mqueue each one sees
(issue 14): found from /proc, named as people know them (a container, a unit), and
reached without trusting anything inside a container.

A namespace is named by the inode of /proc/PID/ns/ipc (what `readlink` shows as
ipc:[4026531839]); one pid in it (the lowest seen) says where it is. System V objects
live in the IPC namespace itself; POSIX ones in a file system, which any number of
namespaces may see: each distinct /dev/shm and /dev/mqueue (by device) is read once,
with the first namespace that sees it (our own first).

A container's directories are reached through /proc/PID/root with openat2(2)'s
RESOLVE_IN_ROOT (a symlink in the container resolves inside its root, never ours) and
RESOLVE_NO_MAGICLINKS, and only when they are what they claim to be: a tmpfs for
/dev/shm, an mqueue file system for /dev/mqueue, and not a file system of ours that the
container was given under that name (a bind mount of our /run would make its files look
like a container's leaks to root): one we mount ourselves is a container's only below a
container runtime's own directory (Docker's /var/lib/docker/containers/ID/mounts/shm).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import stat
import struct
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, NamedTuple, Optional

PROC = "/proc"
SHM = "dev/shm"
MQUEUE = "dev/mqueue"
TMPFS_MAGIC = 0x01021994  # include/uapi/linux/magic.h
MQUEUE_MAGIC = 0x19800202
NSFS_MAGIC = 0x6E736673
CLONE_NEWIPC = 0x08000000
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: its CLONE_NEW* type (Linux 4.11)

# Directories where container runtimes mount a container's /dev/shm on the host before
# they bind it into the container (all root's: no user can make a mount there).
RUNTIME_ROOTS = (
    "/var/lib/docker/",  # Docker: containers/ID/mounts/shm
    "/var/lib/containers/",  # Podman (root): storage/overlay-containers/ID/userdata/shm
    "/run/containers/",
    "/var/run/containers/",
    "/run/containerd/",  # containerd CRI: io.containerd.grpc.v1.cri/sandboxes/ID/shm
    "/var/run/containerd/",
    "/var/lib/kubelet/",  # a pod's emptyDir (medium: Memory) on /dev/shm
    "/run/libpod/",
)


class Namespace(NamedTuple):
    """An IPC namespace as a listing names it (JSON "namespace": ipc, container, pid)."""

    ipc: int  # the inode of /proc/PID/ns/ipc
    pid: Optional[int]  # one process in it (the lowest pid seen); None: none seen
    container: Optional[str]  # "docker:3f2a9c1b7d4e", "machine:web", "unit:x.service"
    own: bool = False  # the namespace this shmjanitor runs in

    def as_json(self) -> dict[str, Any]:
        return {"ipc": self.ipc, "container": self.container, "pid": self.pid}

    def said(self) -> str:
        """ "ipc:[4026532312] (docker:3f2a9c1b7d4e, pid 4242)" for reasons and logs."""
        where = ", ".join(x for x in (self.container, self.pid and f"pid {self.pid}") if x)
        return f"ipc:[{self.ipc}]" + (f" ({where})" if where else "")


class Place(NamedTuple):
    """One part of a sweep: a namespace's System V tables (sysv), and the POSIX
    directories first seen through it (reached through pid's root). `shm`/`mqueue` are
    the devices of those directories; None: none to read here (absent, not a tmpfs, or
    read with an earlier place)."""

    ns: Namespace
    sysv: bool
    shm: Optional[int] = None
    mqueue: Optional[int] = None
    pids: tuple[int, ...] = ()  # the processes seen in it, lowest first: where to enter
    nsfile: Optional[str] = None  # --namespace PATH: a namespace file that holds it


class Sweep(NamedTuple):
    places: list[Place]  # ours first, then by their lowest pid
    notes: list[str]  # what could not be reached, and why (one line each)


# --- names people know (pure) -----------------------------------------------------------

# re.M: the text is one path per line (cgroup v1 has one line per hierarchy), and an
# id ends its line as often as it is followed by a "/"
_HEX = r"([0-9a-f]{64})"
_CONTAINERS = (
    (re.compile(r"/docker-" + _HEX + r"\.scope"), "docker"),
    (re.compile(r"/docker/" + _HEX + r"(?:/|$)", re.M), "docker"),
    (re.compile(r"/libpod-(?!conmon-)" + _HEX + r"(?:\.scope)?"), "podman"),
    (re.compile(r"/cri-containerd-" + _HEX + r"\.scope"), "containerd"),
    (re.compile(r"/crio-(?!conmon-)" + _HEX + r"\.scope"), "cri-o"),
    (re.compile(r"/kubepods[^\n]*/" + _HEX + r"(?:/|$)", re.M), "containerd"),
)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
# machinectl and a shell's systemd-nspawn register machine-NAME.scope; the
# systemd-nspawn@NAME.service unit runs it with --keep-unit: the machine is the unit,
# and the units below it (payload/system.slice/...) are the container's own
_MACHINE = re.compile(
    r"/machine\.slice/(?:machine-([^/\n]+)\.scope|systemd-nspawn@([^/\n]+)\.service)"
)
_UNIT = re.compile(r"/([^/\n]+\.(?:service|scope))(?:/|$)", re.M)
# Not a unit to name: a login session's scope, a user's manager, pid 1's scope (the
# machine itself), and the monitors a runtime keeps beside a container, outside it
_NOT_UNITS = ("session-", "user@", "init.scope", "libpod-conmon-", "crio-conmon-")


def unescape_unit(name: str) -> str:
    r"""systemd's unit-name escaping undone: "web\x2d1" -> "web-1" (systemd-escape -u)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def container_of(cgroup: str) -> Optional[str]:
    """The container a process is in, from its /proc/PID/cgroup text: "docker:<12 hex>",
    "podman:...", "containerd:...", "cri-o:..." (with "k8s pod <uid> " before it when
    the path names a pod), "machine:<name>" (systemd-nspawn, machinectl), else the
    systemd unit it runs in ("unit:<name>.service"), else None (a login session's or
    the root cgroup: nothing to name). Pure: the cgroup path is all it reads."""
    # lines end at "\n" alone: a cgroup's name may hold "\r" (and any byte but "/")
    path = "\n".join(line.split(":", 2)[-1] for line in cgroup.split("\n"))
    for rx, runtime in _CONTAINERS:
        m = rx.search(path)
        if m is not None:
            pod = _POD.search(path)
            head = f"k8s pod {pod.group(1).replace('_', '-')} " if pod else ""
            return f"{head}{runtime}:{m.group(1)[:12]}"
    m = _MACHINE.search(path)
    if m is not None:
        return f"machine:{unescape_unit(m.group(1) or m.group(2))}"
    units = [u for u in _UNIT.findall(path) if not u.startswith(_NOT_UNITS)]
    if units:
        return f"unit:{unescape_unit(units[-1])}"
    return None


def cgroup_dirs(cgroup: str, mountinfo: str) -> list[tuple[str, str]]:
    """(mount point, path below it) of each cgroup a /proc/PID/cgroup text names, in the
    cgroup file systems a /proc/self/mountinfo text mounts ("0::/p" in a cgroup2
    mount, "N:memory:/p" in the cgroup mount whose options hold memory). Pure."""
    mounts: list[tuple[str, str, str, set[str]]] = []  # fstype, root, point, options
    for line in mountinfo.splitlines():
        f = line.split(" ")
        t = line.partition(" - ")[2].split(" ")
        if len(f) < 5 or len(t) < 3 or t[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((t[0], _unescape_mount(f[3]), _unescape_mount(f[4]), set(t[2].split(","))))
    out: list[tuple[str, str]] = []
    for line in cgroup.split("\n"):
        if not line:
            continue
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        for fstype, root, point, opts in mounts:
            if (fstype == "cgroup2") != (hid == "0" and ctrls == ""):
                continue
            if fstype == "cgroup" and not set(ctrls.split(",")) <= opts:
                continue
            if path == root or path.startswith(root.rstrip("/") + "/"):
                out.append((point, path[len(root.rstrip("/")) :].strip("/")))
                break
    return out


def given_by_root(pid: int, proc: str = PROC) -> bool:
    """Is every cgroup of `pid` (and every one above it) a directory root owns? A user
    may make cgroups below a subtree delegated to them (user@UID.service: Delegate=yes)
    with any name, "machine.slice/machine-web.scope" or "docker-<id>.scope" as well: a
    container name read from such a path is the user's choice, not the container's.
    False when it cannot be told (a cgroup not in our mounts)."""
    text = _read(f"{proc}/{pid}/cgroup")
    found = cgroup_dirs(text or "", _read(f"{proc}/self/mountinfo") or "")
    if not found:
        return False
    for point, rel in found:
        d = point
        for part in ["", *(x for x in rel.split("/") if x)]:
            d = os.path.join(d, part) if part else d
            try:
                if os.stat(d).st_uid != 0:
                    return False
            except OSError:
                return False
    return True


def _read(path: str) -> Optional[str]:
    """A /proc file's text as the kernel wrote it (newline="": a "\r" in a cgroup's name
    stays one, not a line break)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except OSError:
        return None


def container_of_pid(pid: int, proc: str = PROC) -> Optional[str]:
    text = _read(f"{proc}/{pid}/cgroup")
    return container_of(text) if text is not None else None


# --- reaching a directory inside a process's root ------------------------------------

_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic, 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


@lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = struct.pack("QQQ", flags, 0, resolve)
    fd = _libc().syscall(_SYS_OPENAT2, dirfd, path.encode(), how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _walk(dirfd: int, path: str, flags: int) -> int:
    """openat2's RESOLVE_IN_ROOT where it is missing (before Linux 5.6): each component
    opened with O_NOFOLLOW, so a symlink anywhere is refused (ELOOP), never followed."""
    fd = os.dup(dirfd)
    try:
        for part in path.split("/"):
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)  # fmt: skip
            os.close(fd)
            fd = nxt
        out = os.open(".", flags, dir_fd=fd)
    finally:
        os.close(fd)
    return out


def open_in_root(root: str, path: str) -> int:
    """An fd of the directory `path` (relative) under the root `root` (/proc/PID/root),
    resolved as that process resolves it, never leaving its root. Raises OSError."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return _openat2(rfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
        return _walk(rfd, path, flags)
    finally:
        os.close(rfd)


def fs_type(fd: int) -> int:
    """fstatfs(2)'s f_type of an open fd (the file system's magic number)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first long
    if _libc().fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(struct.unpack_from("l", buf.raw)[0])


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def our_mounts(mountinfo: Optional[str]) -> dict[int, list[str]]:
    """st_dev -> where our own mount namespace mounts that file system (mountinfo's
    major:minor and mount point). Pure."""
    out: dict[int, list[str]] = {}
    for line in (mountinfo or "").splitlines():
        f = line.split(" ")
        if len(f) < 5:
            continue
        major, _, minor = f[2].partition(":")
        try:
            dev = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        out.setdefault(dev, []).append(_unescape_mount(f[4]))
    return out


def foreign_why(dev: int, ours: dict[int, list[str]], ours_dir: str) -> Optional[str]:
    """Why a container's directory on device `dev` is not swept as the container's, or
    None: a file system we mount ourselves anywhere but below a runtime's directory is
    ours (our /run, /tmp, ...), whatever name a container gives it. Pure."""
    where = ours.get(dev)
    if not where:
        return None
    if all(w.startswith(RUNTIME_ROOTS) for w in where):
        return None
    return f"it is the file system mounted here on {where[0]}, not the container's {ours_dir}"


# --- the sweep -------------------------------------------------------------------------


def _ns_inode(pid: str, kind: str, proc: str) -> Optional[int]:
    try:
        link = os.readlink(f"{proc}/{pid}/ns/{kind}")
    except OSError:
        return None
    try:
        return int(link[link.index("[") + 1 : -1])
    except ValueError:
        return None


def own_ipc(proc: str = PROC) -> int:
    return os.stat(f"{proc}/self/ns/ipc").st_ino


def here(proc: str = PROC) -> Namespace:
    """The namespace this shmjanitor runs in, named as a sweep names it (an object whose
    verdict has no namespace is in it): its inode, pid 1 when our PID namespace's pid 1
    shares it (a container's init, the machine's), else our own pid, and the container
    that pid is in. One stat(2) a call; the rest is worked out once per namespace (a
    process may unshare(2) between two listings: the test suite does, per test)."""
    return _here(proc, own_ipc(proc))


@lru_cache(maxsize=8)
def _here(proc: str, ipc: int) -> Namespace:
    pid = 1 if _ns_inode("1", "ipc", proc) == ipc else os.getpid()
    return Namespace(ipc, pid, container_of_pid(pid, proc), own=True)


def _pids(proc: str) -> Iterator[int]:
    for name in os.listdir(proc):
        if name.isdigit():
            yield int(name)


def sweep(proc: str = PROC, only: Optional[int] = None) -> Sweep:
    """Every IPC namespace a process of /proc is in (or only the one whose inode is
    `only`), ours first, and the POSIX directories each is the first to see."""
    me = own_ipc(proc)
    ipc_pids: dict[int, list[int]] = {}
    mnt_of: dict[int, Optional[int]] = {}
    for pid in sorted(_pids(proc)):
        ipc = _ns_inode(str(pid), "ipc", proc)
        if ipc is None:
            continue  # exited, or its namespaces are closed to us (said below if ours)
        ipc_pids.setdefault(ipc, []).append(pid)
        # The mount namespace says where a namespace's POSIX directories are: only asked
        # of other namespaces' processes (ours reads its own /dev/shm), which on a host
        # are a few among thousands: a readlink(2) each saved.
        if ipc != me:
            mnt_of[pid] = _ns_inode(str(pid), "mnt", proc)
    order = [me] + sorted((i for i in ipc_pids if i != me), key=lambda i: ipc_pids[i][0])
    if only is not None:
        order = [i for i in order if i == only]
    ours = our_mounts(_read(f"{proc}/self/mountinfo"))
    claimed: dict[str, set[int]] = {SHM: set(), MQUEUE: set()}
    for rel in (SHM, MQUEUE):  # our own directories are read as ours, always
        with contextlib.suppress(OSError):
            claimed[rel].add(os.stat("/" + rel).st_dev)
    notes: list[str] = []
    places: list[Place] = []
    seen_mnt: set[Optional[int]] = set()
    for ipc in order:
        pids = tuple(ipc_pids.get(ipc, ()))
        ns = Namespace(ipc, pids[0] if pids else None,
                       container_of_pid(pids[0], proc) if pids else None, ipc == me)  # fmt: skip
        if ipc == me:
            places.append(Place(ns, True, None, None, pids))
            seen_mnt.add(_ns_inode("self", "mnt", proc))
            continue
        first = True
        for pid in pids:
            mnt = mnt_of.get(pid)
            if mnt in seen_mnt:
                continue
            seen_mnt.add(mnt)
            found = {rel: _reach(pid, rel, proc, ours, claimed, notes, ns) for rel in (SHM, MQUEUE)}
            if first or found[SHM] is not None or found[MQUEUE] is not None:
                places.append(Place(ns, first, found[SHM], found[MQUEUE], pids))
                first = False
        if first:  # no process of its own mount namespace: its System V tables only
            places.append(Place(ns, True, None, None, pids))
    return Sweep(places, notes)


def _reach(pid: int, rel: str, proc: str, ours: dict[int, list[str]],
           claimed: dict[str, set[int]], notes: list[str], ns: Namespace) -> Optional[int]:  # fmt: skip
    """The device of /rel as `pid` sees it, when it is to be read with this place."""
    try:
        fd = open_in_root(f"{proc}/{pid}/root", rel)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ESRCH, errno.ENOENT):
            return None
        if e.errno != errno.ENOTDIR:
            notes.append(f"/{rel} of {ns.said()} not read: {e.strerror}")
        return None
    try:
        st = os.fstat(fd)
        if st.st_dev in claimed[rel]:
            return None  # read with an earlier namespace (ours, most often)
        magic = TMPFS_MAGIC if rel == SHM else MQUEUE_MAGIC
        if fs_type(fd) != magic:
            notes.append(f"/{rel} of {ns.said()} not read: not a "
                         f"{'tmpfs' if rel == SHM else 'mqueue file system'}")  # fmt: skip
            return None
        why = foreign_why(st.st_dev, ours, "/" + rel)
        if why is not None:
            notes.append(f"/{rel} of {ns.said()} not read: {why}")
            return None
        claimed[rel].add(st.st_dev)
        return st.st_dev
    finally:
        os.close(fd)


NSFS_MAGIC = 0x6E736673


def open_nsfile(path: str) -> Optional[int]:
    """An fd (O_RDONLY, as setns(2) wants) of the namespace file `path`, None when it is
    not one. Looked at through O_PATH first, which opens nothing: an open(2) for reading
    waits for a writer on a FIFO (--namespace /run/f hung for ever) and has effects on
    some devices (a watchdog starts, a tape rewinds); an nsfs file is a regular file on
    the nsfs file system, reopened only then. Raises OSError."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or fs_type(fd) != NSFS_MAGIC:
            return None
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def named(text: str, proc: str = PROC) -> int:
    """The inode of the IPC namespace `--namespace` names: a pid (of a process in it) or
    the path of a namespace file (/proc/PID/ns/ipc, or one bind-mounted under /run).
    Raises ValueError with what to do."""
    path = f"{proc}/{text}/ns/ipc" if text.isdigit() else text
    try:
        fd = open_nsfile(path)
    except OSError as e:
        what = f"no process {text}" if text.isdigit() and e.errno == errno.ENOENT else e.strerror
        raise ValueError(f"{text}: {what}") from None
    if fd is None:
        raise ValueError(f"{text}: not a namespace file (a pid or /proc/PID/ns/ipc)")
    try:
        import fcntl

        if fs_type(fd) != NSFS_MAGIC:
            raise ValueError(f"{text}: not a namespace file (a pid or /proc/PID/ns/ipc)")
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            raise ValueError(f"{text}: not a namespace file (a pid or /proc/PID/ns/ipc)") from None
        if kind != CLONE_NEWIPC:
            raise ValueError(f"{text}: a namespace file, but not of an IPC namespace") from None
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def enter(pids: Sequence[int], ipc: int, proc: str = PROC) -> Optional[int]:
    """An fd of the IPC namespace `ipc`, through the first of `pids` still in it (a
    pid reused meanwhile is in another one: its inode says so); None when none is."""
    for pid in pids:
        try:
            fd = os.open(f"{proc}/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_ino == ipc:
            return fd
        os.close(fd)
    return None


def setns(fd: int, nstype: int = CLONE_NEWIPC) -> None:
    """setns(2) for the calling thread (nstype named: systemd's RestrictNamespaces=
    filter refuses setns(fd, 0) unless every namespace type is allowed)."""
    if _libc().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


# The namespace a sweep's child works in (inside.run sets it): the quarantine records it
# with each run, so that restore can find it again. None: ours, as always.
working: Optional[Namespace] = None


def start_time(pid: int, proc: str = PROC) -> Optional[int]:
    """The start time of a process in clock ticks since boot (/proc/PID/stat field 22):
    with its pid, a name for it that a recycled pid does not have."""
    text = _read(f"{proc}/{pid}/stat")
    if text is None:
        return None
    try:
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def home(ipc: int, container: Optional[str], pid: Optional[int], pid_start: Optional[int],
         posix_dir: Optional[str] = None, proc: str = PROC) -> Place:  # fmt: skip
    """The place of a quarantine run's namespace, to restore into it; ValueError with
    what to do when it is gone or cannot be told from a later one. A namespace's inode
    is reused once it has ended, so it is the same namespace only when the very
    process recorded (its pid and start time) is still in it, or, for a container, when
    the process in it now is of the same container."""
    found = sweep(proc, only=ipc)
    places = found.places
    if not places or places[0].ns.pid is None:
        raise ValueError(f"its IPC namespace ipc:[{ipc}]{f' ({container})' if container else ''} "
                         "no longer exists (no process is in it): its objects went with it")  # fmt: skip
    same_process = pid is not None and pid in places[0].pids and start_time(pid, proc) == pid_start
    # a name a user gave their own cgroup is no proof (given_by_root)
    same_container = (container is not None and places[0].ns.container == container
                      and given_by_root(places[0].ns.pid, proc))  # fmt: skip
    if not (same_process or same_container):
        raise ValueError(f"its IPC namespace ipc:[{ipc}] may be another one now ({places[0].ns.said()}), "
                         "or cannot be told from one: its recorded process has exited and it "
                         "has no container name; restore from inside it (nsenter --ipc "
                         "--target PID shmjanitor restore ...) if you know it is the same")  # fmt: skip
    if posix_dir is not None:
        rel = SHM if posix_dir == "/dev/shm" else MQUEUE
        for p in places:
            if (p.shm if rel == SHM else p.mqueue) is not None:
                return p._replace(sysv=True)
        # its directory is not its own now (a bind of ours, a symlink out, gone): the
        # sweep's note says why; never "does not exist" from an empty place
        why = "; ".join(found.notes) or f"it has no {posix_dir} of its own now"
        raise ValueError(f"its {posix_dir} is not one to restore into: {why}")
    return places[0]
