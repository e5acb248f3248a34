"""Who waits in msgsnd or msgrcv, on which message queue: one sweep over every task of
/proc for a whole run (kinds/msg.py turns it into each queue's evidence).

The kernel counts a queue's waiting tasks nowhere; a task asleep in a system call shows
in /proc/PID/task/TID/syscall as the call's number and its arguments (fs/proc/base.c,
proc_pid_syscall). That file needs PTRACE_MODE_ATTACH: a task we may not read could be
waiting on any queue its credentials open to it, and is named (Hidden) rather than
assumed idle. Kernel facts are kinds/msg.py's docstring's.
"""

from __future__ import annotations

import errno
import os
import time
from typing import NamedTuple, Optional

from shmjanitor import kernel, procs, sysvtable


class Blocked(NamedTuple):
    """A task waiting in msgrcv or msgsnd on a queue of our IPC namespace."""

    pid: int  # its process (thread group)
    tid: int
    call: str  # "msgrcv" or "msgsnd"
    comm: Optional[str]  # the process's command name


class Cred(NamedTuple):
    """What ipcperms() checks of a task (ipc/util.c), from /proc/PID/task/TID/status."""

    euid: int
    groups: frozenset[int]  # its fsgid and supplementary groups (in_group_p)
    ipc_owner: bool  # CAP_IPC_OWNER in its effective set: every queue is open to it


class Hidden(NamedTuple):
    """A task whose system call cannot be read: it could be waiting on a queue."""

    pid: int
    tid: int
    comm: Optional[str]
    cred: Optional[Cred]  # None: not readable either, so any queue may be open to it
    why: str  # why its syscall file cannot be read ("permission denied", ...)


# The system call numbers of msgsnd and msgrcv, per machine (uname -m), for every ABI a
# task of that kernel may use: the number a task shows is its own ABI's. Numbers of one
# ABI that are unused in another cannot be mistaken; 117 is also x86_64's setresuid,
# which does not sleep, and a wrong "waiting" only keeps a queue.
_IPC = "ipc"  # i386's multiplexer: ipc(call, msqid, ...), MSGSND 11, MSGRCV 12
_IPC_CALLS = {11: "msgsnd", 12: "msgrcv"}
_ASM_GENERIC = {189: "msgsnd", 188: "msgrcv"}  # include/uapi/asm-generic/unistd.h
_CALLS: dict[str, dict[int, str]] = {
    # x86_64 (69, 70); i386 binaries: msgsnd 400, msgrcv 401 (Linux 5.1+) and ipc 117.
    "x86_64": {69: "msgsnd", 70: "msgrcv", 400: "msgsnd", 401: "msgrcv", 117: _IPC},
    # arm64 (asm-generic); 32-bit ARM (EABI) binaries: msgsnd 301, msgrcv 302.
    "aarch64": {**_ASM_GENERIC, 301: "msgsnd", 302: "msgrcv"},
    "riscv64": _ASM_GENERIC,
    "loongarch64": _ASM_GENERIC,
}
_X32_BIT = 0x40000000  # x86_64's x32 ABI: the x86_64 number with this bit set
PROC = "/proc"
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread makes no system call


class Sweep(NamedTuple):
    """Every task of /proc, looked at once: which wait on which queue, which cannot be
    looked at. `started` is time.monotonic() when the sweep began."""

    started: float
    took: float
    blocked: dict[int, tuple[Blocked, ...]]  # by msqid
    hidden: tuple[Hidden, ...]  # tasks of (possibly) our IPC namespace we cannot read
    blind: Optional[str]  # why no waiting task can be seen at all, else None
    threads: dict[int, int]  # tid -> its process, for tasks that are not a leader
    msgmax: Optional[int]  # kernel.msgmax: no message is longer (see _sender_possible)


def sweep(proc: str = PROC) -> Sweep:
    """Read /proc/PID/task/TID/syscall of every task (about 20 us a task here)."""
    started = time.monotonic()
    machine = os.uname().machine
    calls = _CALLS.get(machine, {})
    ours = _ipc_ns("self", proc)
    found: dict[int, list[Blocked]] = {}
    hidden: list[Hidden] = []
    threads: dict[int, int] = {}
    names: dict[int, Optional[str]] = {}
    tasks = 0
    try:
        listing = os.listdir(proc)
    except OSError as e:
        return Sweep(started, 0.0, {}, (), f"{proc} cannot be listed ({e.strerror}): a task "
                     "waiting on it cannot be seen", {}, None)  # fmt: skip
    for name in listing:
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            tids = os.listdir(f"{proc}/{name}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited since the listing
        except OSError as e:  # hidepid=1 lists a process but shuts its directory
            tasks += 1
            h = _hidden(f"{proc}/{name}", pid, pid, e, ours, names, proc)
            if h is not None:
                hidden.append(h)
            continue
        for t in tids:
            tasks += 1
            tid = int(t)
            if tid != pid:
                threads[tid] = pid
            task = f"{proc}/{name}/task/{t}"
            try:
                fd = os.open(f"{task}/syscall", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    line = os.read(fd, 256)
                finally:
                    os.close(fd)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
            except OSError as e:  # EPERM/EACCES: no PTRACE_MODE_ATTACH on it
                h = _hidden(task, pid, tid, e, ours, names, proc)
                if h is not None:
                    hidden.append(h)
                continue
            waits = _waits_on(line, calls, machine == "x86_64")
            if waits is None:
                continue
            msqid, call = waits
            ns = _ipc_ns(f"{name}/task/{t}", proc)
            if ns is not None and ours is not None and ns != ours:
                continue  # that msqid is another namespace's queue
            if pid not in names:
                names[pid] = _comm(f"{proc}/{name}")
            found.setdefault(msqid, []).append(Blocked(pid, tid, call, names[pid]))
    blind = _blind(machine, calls, ours, tasks, proc)
    return Sweep(started, time.monotonic() - started, {k: tuple(v) for k, v in found.items()},
                 tuple(hidden), blind, threads, msgmax())  # fmt: skip


def _waits_on(line: bytes, calls: dict[int, str], x32: bool) -> Optional[tuple[int, str]]:
    """(msqid, "msgrcv"/"msgsnd") when a syscall line shows a task waiting in one.

    The line is "NR ARG0 ... SP PC" (args in hex) for a task asleep in a system call,
    "running" for one that is not asleep, "-1 SP PC" for one asleep outside any. The
    msqid is a C int: the register's upper half is whatever the caller left there.
    """
    fields = line.split()
    if len(fields) < 3 or not calls:
        return None
    try:
        nr = int(fields[0])
        if x32 and nr > 0 and nr & _X32_BIT:
            nr &= ~_X32_BIT
        call = calls.get(nr)
        if call is None:
            return None
        arg = 0
        if call == _IPC:
            call = _IPC_CALLS.get(int(fields[1], 16) & 0xFFFF, "")
            arg = 1
            if not call:
                return None
        msqid = int(fields[1 + arg], 16) & 0xFFFFFFFF
    except (ValueError, IndexError):
        return None
    if msqid >= 0x80000000:
        return None  # negative: EINVAL, it waits on nothing
    return msqid, call


def _hidden(task: str, pid: int, tid: int, err: OSError, ours: Optional[str],
            names: dict[int, Optional[str]], proc: str) -> Optional[Hidden]:  # fmt: skip
    """The task whose syscall we could not read, unless it provably waits on no queue
    of ours: a kernel thread, a zombie, a task of another IPC namespace (when that much
    can be read: /proc/PID/ns needs only PTRACE_MODE_READ)."""
    try:
        with open(f"{task}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        state, flags = fields[0], int(fields[6])
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited meanwhile
    except (OSError, ValueError, IndexError):
        state, flags = b"?", 0
    if flags & PF_KTHREAD or state in (b"Z", b"X", b"x"):
        return None
    ns = _ipc_ns(task[len(proc) + 1 :], proc)
    if ns is not None and ours is not None and ns != ours:
        return None
    if pid not in names:
        names[pid] = _comm(f"{proc}/{pid}")
    why = {errno.EPERM: "not permitted", errno.EACCES: "permission denied"}.get(
        err.errno or 0, err.strerror or str(err)
    )
    return Hidden(pid, tid, names[pid], _cred(f"{task}/status"), why)


def _cred(status: str) -> Optional[Cred]:
    """euid, fsgid and groups, CAP_IPC_OWNER; None when status cannot be read."""
    try:
        with open(status, "rb") as f:
            lines = {k: v.split() for k, _, v in (ln.partition(b":") for ln in f)}
        groups = {int(g) for g in lines[b"Groups"]}
        groups.add(int(lines[b"Gid"][3]))
        return Cred(int(lines[b"Uid"][1]), frozenset(groups),
                    bool(int(lines[b"CapEff"][0], 16) >> kernel.CAP_IPC_OWNER & 1))  # fmt: skip
    except (OSError, ValueError, IndexError, KeyError):
        return None


def _ipc_ns(task: str, proc: str) -> Optional[str]:
    try:
        return os.readlink(f"{proc}/{task}/ns/ipc")
    except OSError:
        return None


def _comm(process: str) -> Optional[str]:
    try:
        with open(f"{process}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="surrogateescape")
    except OSError:
        return None


def msgmax() -> Optional[int]:
    return sysvtable.sysctl_value("msgmax")


def _blind(machine: str, calls: dict[int, str], ours: Optional[str], tasks: int,
           proc: str) -> Optional[str]:  # fmt: skip
    """Why /proc cannot show every task that could wait on a queue of ours, else None:
    unknown system call numbers, another PID namespace's /proc, hidepid hiding tasks, or
    processes of other PID namespaces that may share our IPC namespace
    (procs.unseen_ipc_peers)."""
    if not calls:
        return (f"the system call numbers of msgsnd and msgrcv on this machine ({machine}) "
                "are not known to shmjanitor: a task waiting on it cannot be seen")  # fmt: skip
    if not procs.procfs_is_ours(proc):
        return "/proc shows another PID namespace: a task waiting on it cannot be seen"
    if procs.procfs_hides() and tasks != _all_tasks():
        # hidepid shows a task only to whom may ptrace it (or is in the gid= group):
        # the kernel's count of every thread says whether any was left out. (Tasks that
        # start or end during the sweep make the counts differ too: kept, not removed.)
        return ("/proc is mounted with hidepid and hides tasks from us: one waiting on it "
                "cannot be seen")  # fmt: skip
    unseen = procs.unseen_ipc_peers(proc)
    if unseen is not None:
        return f"{unseen}: one waiting on it cannot be seen"
    return None


def _all_tasks() -> int:
    """Every thread on the machine (/proc/loadavg's total: nr_threads, all namespaces)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[1])
    except (OSError, ValueError, IndexError):
        return -1
