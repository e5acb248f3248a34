"""Who holds which file now: one pass over /proc for every object at once.

A process holds a file when it has it open (/proc/PID/fd) or mapped (/proc/PID/maps).
Both are matched by (st_dev, st_ino), never by name: names are reused, and a file is
unlinked under live mappings and fds ("/dev/shm/x (deleted)"). A mapping needs no fd:
mmap() takes its own reference to the open file (mm/vma.c, __mmap_new_file_vma:
`vma->vm_file = get_file(map->file)`), so a mapping whose fd was closed long ago -- the
common case for shm_open + mmap + close -- shows only in maps.

One pass serves any number of objects: each process's fds and maps are read once and
kept only when they are on a file system asked about (the st_dev of /dev/shm,
/dev/mqueue), so the cost is linear in processes plus their fds, not in objects times
processes. /proc lists thread-group leaders only, and the threads of a process share its
maps (CLONE_THREAD needs CLONE_VM) and, unless one unshared it, its fd table: each
process is read once, through its leader -- or through a live thread when the leader
has exited and other threads run (its fd and maps are empty then: exit_files and
exit_mm ran for the leader alone).

What cannot be read means "cannot prove unused", never "unused": a process whose fds or
maps are closed to us (another user's process without CAP_SYS_PTRACE, hidepid=1, a
sandbox's PID 1) is listed in `unreadable`; classes of processes /proc does not list at
all (hidepid=2, another PID namespace's /proc, processes outside our PID namespace) are
named in `unseen`. A process that vanished while we looked holds nothing: its files were
closed and unmapped when it exited. The write lease (docs/posix-notes.md) is the
kernel's own answer for one file, and covers what this pass cannot see.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

from shmjanitor import procs

MAPPED = "mapped"
DENIED = "permission denied"
OUTSIDE = "processes outside this PID namespace are not listed"
# The initial PID namespace's inode number is fixed (include/linux/proc_ns.h,
# PROC_PID_INIT_INO): /proc of that namespace lists every process of the machine.
PROC_PID_INIT_INO = 0xEFFFFFFC

File = tuple[int, int]  # (st_dev, st_ino)


class Holder(NamedTuple):
    """A process that holds a file now: `how` is "fd N" or "mapped"."""

    pid: int
    how: str
    comm: Optional[str]  # as /proc/PID/status Name: shows comm (at most 15 characters)
    uid: Optional[int]  # effective uid, as ps(1) shows USER


class Unreadable(NamedTuple):
    """A process /proc lists but whose fds or maps we may not read."""

    pid: int
    comm: Optional[str]
    why: str


@dataclass(frozen=True)
class Holdings:
    """The pass's answer. A file absent from `held` has no holder among the processes
    read; that proves it unused only when nothing is `unreadable` or `unseen`."""

    held: dict[File, list[Holder]] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)  # why some processes are not listed

    def of(self, dev: int, ino: int) -> list[Holder]:
        return self.held.get((dev, ino), [])

    @property
    def complete(self) -> bool:
        """Every process of the machine was read."""
        return not self.unreadable and not self.unseen


# ---------------------------------------------------------------- pure parsing


def dev_field(dev: int) -> bytes:
    """st_dev as /proc/PID/maps prints it: "%02x:%02x" of major and minor
    (fs/proc/task_mmu.c, show_vma_header_prefix)."""
    return b"%02x:%02x" % (os.major(dev), os.minor(dev))


def mapped_files(maps: bytes, devs: Iterable[int]) -> set[File]:
    """The (dev, ino) of every file on `devs` that a maps text shows mapped.

    A maps line: "start-end perms offset maj:min inode   path". The device field is
    searched for in the whole text at once (bytes.find, in C): most processes map
    nothing of ours, and their text is then skipped without being split into lines.
    A hit is checked to be the fourth field of its line (a path may hold the same
    characters).
    """
    return _mapped(maps, _needles(devs))


Needle = tuple[int, bytes, bytes]  # (st_dev, its maps field, the field between spaces)


def _needles(devs: Iterable[int]) -> list[Needle]:
    return [(dev, text, b" " + text + b" ") for dev in devs for text in (dev_field(dev),)]


def _mapped(maps: bytes, needles: list[Needle]) -> set[File]:
    found = set()
    for dev, text, needle in needles:
        at = maps.find(needle)
        while at >= 0:
            start = maps.rfind(b"\n", 0, at) + 1
            end = maps.find(b"\n", at)
            if end < 0:
                end = len(maps)
            parts = maps[start:end].split(None, 5)
            if len(parts) >= 5 and parts[3] == text and parts[4].isdigit():
                found.add((dev, int(parts[4])))
            at = maps.find(needle, end)
    return found


def status_facts(status: bytes) -> tuple[Optional[str], Optional[int]]:
    """(Name, effective uid) from a /proc/PID/status text: what the pass's _owner reads
    more cheaply, and what tests hold it to."""
    comm = uid = None
    for line in status.splitlines():
        if line.startswith(b"Name:"):
            # The kernel escapes \n and \\ in Name (fs/proc/array.c, proc_task_name).
            comm = line[5:].strip().decode(errors="surrogateescape")
        elif line.startswith(b"Uid:"):
            fields = line.split()
            uid = int(fields[2]) if len(fields) > 2 else None
            break  # Uid: comes after Name:
    return comm, uid


# ---------------------------------------------------------------- the pass over /proc


def scan(devs: Iterable[int], proc: str = "/proc") -> Holdings:
    """Every holder of every file on the file systems `devs` (st_dev values)."""
    wanted = frozenset(devs)
    if not wanted:
        return Holdings()
    look = (wanted, _needles(wanted))
    held: dict[File, list[Holder]] = {}
    unreadable = []
    try:
        names = os.listdir(proc)
    except OSError as e:
        return Holdings(unseen=[f"{proc}: {e.strerror}"])
    for name in names:
        if not name.isdigit():
            continue
        got = _read_process(int(name), f"{proc}/{name}", look)
        if not got:
            continue
        if isinstance(got, Unreadable):
            unreadable.append(got)
            continue
        for key, holder in got:
            held.setdefault(key, []).append(holder)
    return Holdings(held, unreadable, unseen(proc))


def unseen(proc: str = "/proc") -> list[str]:
    """Why some processes of the machine are not listed in `proc` at all."""
    why = []
    try:
        os.readlink(f"{proc}/self")
    except OSError:
        # We are not in /proc's PID namespace: it lists another namespace's processes.
        return [procs.FOREIGN]
    if procs.procfs_hides():
        why.append(procs.HIDDEN)
    if not _lists_everyone(proc):
        why.append(OUTSIDE)
    return why


def _lists_everyone(proc: str) -> bool:
    """Is `proc` the initial PID namespace's /proc? A /proc that names us (/proc/self
    resolves) belongs to our namespace or an ancestor of it; it lists every process
    only if that is the initial one. Our own namespace is asked first (always
    readable); else /proc's PID 1's, which may be closed to us (then: not proven)."""
    for ns in (f"{proc}/self/ns/pid", f"{proc}/1/ns/pid"):
        try:
            if os.stat(ns).st_ino == PROC_PID_INIT_INO:
                return True
        except OSError:
            pass
    return False


Look = tuple[frozenset[int], list[Needle]]  # the devs asked about, and their maps fields


def _read_process(pid: int, base: str, look: Look) -> Union[list[tuple[File, Holder]], Unreadable]:
    try:
        found = _files_of(base, look)
        if found is None:  # no address space: a kernel thread, or a leader that exited
            found = _through_a_thread(pid, base, look)
        if not found:
            return []
        comm, uid = _owner(base)
    except (FileNotFoundError, ProcessLookupError):
        return []  # exited while we looked: its files are closed and unmapped
    except PermissionError:
        return Unreadable(pid, _comm(base), DENIED)
    except OSError as e:
        return Unreadable(pid, _comm(base), e.strerror or str(e))
    return [(key, Holder(pid, how, comm, uid)) for key, how in found]


def _files_of(base: str, look: Look) -> Optional[list[tuple[File, str]]]:
    """The files on the devs of `look` one process (or thread) has open or mapped; None
    when it has no address space (empty maps: a kernel thread, or an exited
    thread-group leader). Raises what reading /proc raised (ENOENT: gone; EACCES:
    closed to us)."""
    devs, needles = look
    maps = read_maps(f"{base}/maps")
    if not maps:
        return None
    found = [(key, MAPPED) for key in sorted(_mapped(maps, needles))]
    fd_dir = f"{base}/fd"
    stat = os.stat
    for fd in os.listdir(fd_dir):
        try:
            # stat through the magic link reaches the open file itself, also when it is
            # unlinked or lives in another mount namespace (no name is resolved).
            st = stat(f"{fd_dir}/{fd}")
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed since the listing (or the process exited: see caller)
        if st.st_dev in devs:
            found.append(((st.st_dev, st.st_ino), f"fd {fd}"))
    return found


def _through_a_thread(pid: int, base: str, look: Look) -> list[tuple[File, str]]:
    """A leader without an address space: if another of its threads runs (the leader
    called pthread_exit), that thread's fd and maps are the process's."""
    for tid in os.listdir(f"{base}/task"):
        if tid != str(pid):
            try:
                found = _files_of(f"{base}/task/{tid}", look)
            except (FileNotFoundError, ProcessLookupError):
                continue  # that thread exited meanwhile: try the next
            if found is not None:
                return found
    return []  # a kernel thread, or a process on its way out


def _owner(base: str) -> tuple[Optional[str], Optional[int]]:
    """(comm, effective uid) of a holder, as /proc/PID/status says them (status_facts),
    read at a third of its cost: status is some 1.4 KiB of text the kernel formats
    (memory, signals, capabilities, cpus) to give us two lines of it. The uid is the
    owner of the /proc/PID directory: for that directory (mode 0555) the kernel always
    reports the task's euid, dumpable or not (fs/proc/base.c, task_dump_owner: "Before
    the /proc/pid/status file was created the only way to read the effective uid of a
    /process was to stat /proc/pid"). comm is the same name status shows, unescaped:
    status escapes "\\n" and "\\\\" in it (proc_task_name(m, p, true) in Name:, false in
    comm_show), and so do we."""
    uid = os.stat(base).st_uid
    fd = os.open(f"{base}/comm", os.O_RDONLY | os.O_CLOEXEC)
    try:
        name = os.read(fd, 64)  # comm is at most 15 bytes and a newline: one read
    finally:
        os.close(fd)
    if name.endswith(b"\n"):
        name = name[:-1]
    if b"\\" in name or b"\n" in name:
        name = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    return name.strip().decode(errors="surrogateescape"), uid  # strip(): as status_facts


def _read(path: str) -> bytes:
    """The whole of a /proc file. Unbuffered: a seq_file hands out at most a page per
    read(2) (fs/seq_file.c, seq_read_iter), so we read until it says end of file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


# The gate VMA (x86-64's vsyscall page) as maps prints it. /proc/PID/maps shows it after
# every other mapping and then ends (fs/proc/task_mmu.c: proc_get_vma hands out
# get_gate_vma(mm) once no VMA is left, at SENTINEL_VMA_GATE; m_next then returns NULL),
# and no mapping of the process can start at its address (VSYSCALL_ADDR, above
# TASK_SIZE_MAX). A text ending in its line is whole: the read that would say end of
# file is one syscall per process saved (1,000 of 4,000 in the benchmark's pass).
GATE = b"ffffffffff600000-ffffffffff601000 "


def read_maps(path: str) -> bytes:
    """The whole of a maps file, as _read reads it, without the last, empty read when
    the text already ends with the gate VMA's line."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            # A read hands out whole lines (seq_read_iter drops a record that does not
            # fit and shows it again next time), so the chunk's last line is complete.
            if chunk.endswith(b"]\n") and chunk.startswith(GATE, chunk.rfind(b"\n", 0, -1) + 1):
                return b"".join(chunks)
    finally:
        os.close(fd)


def _comm(base: str) -> Optional[str]:
    """The command name, when /proc still shows it (hidepid=1 closes it too)."""
    try:
        return _read(f"{base}/comm").rstrip(b"\n").decode(errors="surrogateescape")
    except OSError:
        return None
