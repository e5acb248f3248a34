"""Thin calls into the kernel that sysv_ipc does not offer: shmctl(IPC_STAT) without
attaching (attaching would change nattch, lpid and atime), and our capabilities."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple, Optional

IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
SHM_RDONLY = 0o10000
SHM_NORESERVE = 0o10000  # a shmget flag; the same bits as SHM_RDONLY, a shmat flag
CAP_IPC_OWNER = 15
CAP_SYS_ADMIN = 21


class _IpcPerm(ctypes.Structure):
    # glibc's struct ipc_perm on 64-bit Linux (x86_64, aarch64, riscv64, ...).
    _fields_ = [
        ("key", ctypes.c_int),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("cuid", ctypes.c_uint32),
        ("cgid", ctypes.c_uint32),
        ("mode", ctypes.c_uint16),
        ("pad1", ctypes.c_uint16),
        ("seq", ctypes.c_uint16),
        ("pad2", ctypes.c_uint16),
        ("reserved1", ctypes.c_ulong),
        ("reserved2", ctypes.c_ulong),
    ]


class _ShmidDs(ctypes.Structure):
    _fields_ = [
        ("perm", _IpcPerm),
        ("segsz", ctypes.c_size_t),
        ("atime", ctypes.c_long),
        ("dtime", ctypes.c_long),
        ("ctime", ctypes.c_long),
        ("cpid", ctypes.c_int),
        ("lpid", ctypes.c_int),
        ("nattch", ctypes.c_ulong),
        ("reserved4", ctypes.c_ulong),
        ("reserved5", ctypes.c_ulong),
    ]


# The same struct as a struct.Struct, native alignment: one unpack_from gives every field
# (reading ctypes fields one by one and building a struct per call cost ~30 us a call;
# reap re-checks every segment once or three times, 32,000 of them in issue 5).
_SHMID_DS = struct.Struct("@iIIIIHHHHLLNllliiLLL")
# Checked once, at import: the re-check needs this layout (64-bit Linux).
_LAYOUT_OK = ctypes.sizeof(ctypes.c_long) == 8 and _SHMID_DS.size == ctypes.sizeof(_ShmidDs)

_libc = ctypes.CDLL(None, use_errno=True)
# No argtypes: two Python ints pass as C ints and the buffer as its address, as shmctl
# wants; ctypes' per-call argument conversion would cost more than the system call.
_shmctl = _libc.shmctl
_shmctl.restype = ctypes.c_int
# One buffer for every call, filled by the kernel and unpacked at once. Not thread-safe;
# nothing in shmjanitor calls shm_stat from two threads.
_buf = ctypes.create_string_buffer(_SHMID_DS.size)
_unpack = _SHMID_DS.unpack_from


class Stat(NamedTuple):
    """What shmctl(IPC_STAT) says of a segment now (the fields a re-check compares)."""

    key: int
    mode: int
    size: int
    uid: int
    cuid: int
    cpid: int
    lpid: int
    nattch: int
    atime: Optional[int]
    dtime: Optional[int]
    ctime: int


_new_stat = tuple.__new__


def shm_stat(shmid: int) -> Stat:
    """IPC_STAT one segment. Raises OSError: EINVAL/EIDRM gone, EACCES no read permission."""
    if not _LAYOUT_OK:
        raise OSError(errno.ENOSYS, "the re-check needs 64-bit Linux")
    if _shmctl(shmid, IPC_STAT, _buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    (key, uid, _gid, cuid, _cgid, mode, _p1, _seq, _p2, _r1, _r2, segsz, atime, dtime, ctime,
     cpid, lpid, nattch, _r4, _r5) = _unpack(_buf)  # fmt: skip
    # tuple.__new__ directly: the NamedTuple's own __new__ is a Python frame (0.7 -> 0.3 us).
    return _new_stat(Stat, (key & 0xFFFFFFFF, mode, segsz, uid, cuid, cpid, lpid, nattch,
                            atime or None, dtime or None, ctime))  # fmt: skip


# Offset of ipc_perm.mode in the buffer (after key, uid, gid, cuid, cgid: five 4-byte ints).
_MODE_AT = 20
_mode = struct.Struct("@H")


def set_mode_after_stat(shmid: int, mode: int) -> None:
    """IPC_SET the permission bits of `shmid` to `mode`, right after `shm_stat(shmid)`.

    IPC_SET writes uid, gid and mode together (ipc/util.c, ipc_update_perm), so they
    come from the buffer the IPC_STAT just filled: call this with no other shm_stat in
    between (nothing in shmjanitor runs two at once). IPC_SET also sets ctime to now.
    Raises OSError: EPERM not ours, EINVAL/EIDRM gone.
    """
    _mode.pack_into(_buf, _MODE_AT, mode & 0o777)
    if _shmctl(shmid, IPC_SET, _buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000


def shm_create(key: int, size: int, mode: int) -> int:
    """shmget(key, size, IPC_CREAT | IPC_EXCL | mode): a new segment of zero pages (none
    allocated until written). Raises OSError: EEXIST key in use, EINVAL size outside
    [shmmin, shmmax], ENOSPC/ENOMEM limits."""
    signed = key - (1 << 32) if key >= 0x80000000 else key  # key_t is a signed int
    # SHM_NORESERVE: no swap is reserved for pages never written, so a large sparse
    # segment can be made again where the overcommit heuristic would refuse it.
    shmid = _libc.shmget(signed, size, IPC_CREAT | IPC_EXCL | SHM_NORESERVE | (mode & 0o777))
    if shmid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(shmid)


def shm_rmid(shmid: int) -> None:
    """IPC_RMID. Raises OSError: EINVAL/EIDRM gone, EPERM neither ours nor privileged."""
    if _shmctl(shmid, IPC_RMID, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def shm_attach_ro(shmid: int) -> int:
    """shmat(shmid, NULL, SHM_RDONLY): the address. Attaching never allocates a page; only
    touching one does (raises OSError as shmat's errno)."""
    addr = _libc.shmat(shmid, None, SHM_RDONLY)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def shm_detach(addr: int) -> None:
    if _libc.shmdt(ctypes.c_void_p(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def resident_pages(addr: int, length: int) -> bytes:
    """mincore(2) over a mapping: one byte per page, bit 0 set when the page is in memory.

    For a shared memory mapping this is the segment's own page cache, whatever our
    mapping has touched: a page never written is absent (a hole) and reading it would
    make the kernel allocate it (or, for SHM_HUGETLB without free huge pages, SIGBUS).
    Swapped-out pages are absent too, so this alone cannot tell a hole from swap.
    """
    pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    vec = ctypes.create_string_buffer(max(1, pages))
    if _libc.mincore(ctypes.c_void_p(addr), length, vec) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return vec.raw[:pages]


def shm_nattch(shmid: int) -> Optional[int]:
    """nattch of `shmid`, or None when it is gone (EINVAL/EIDRM) or cannot be looked at.

    After IPC_RMID: a segment nobody is attached to is gone at once; one still there has
    users. Without an exception per call, as reap asks this of every segment it removes.
    """
    if _shmctl(shmid, IPC_STAT, _buf) != 0:
        return None
    return int(_unpack(_buf)[17])


def has_cap(cap: int, status: Path = Path("/proc/self/status")) -> bool:
    """Whether capability number `cap` is in our effective set."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def has_cap_sys_admin(status: Path = Path("/proc/self/status")) -> bool:
    """CAP_SYS_ADMIN in our effective set: what IPC_RMID on others' segments needs."""
    return has_cap(CAP_SYS_ADMIN, status)


def pid_exists(pid: int) -> bool:
    """kill(pid, 0): ESRCH means no such process; EPERM means it exists but is not ours."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- semaphores ---
# semctl(2) for the sem kind (kinds/sem.py): IPC_STAT/IPC_SET of struct semid64_ds, the
# per-semaphore facts (GETNCNT, GETZCNT, GETPID), GETALL/SETALL, semget and IPC_RMID.

GETPID = 11  # include/uapi/linux/sem.h
GETALL = 13
GETNCNT = 14
GETZCNT = 15
SETALL = 17

# struct semid64_ds after its ipc64_perm (the same 48 bytes as _IpcPerm above): x86_64
# keeps a pad word after each time (arch/x86/include/uapi/asm/sembuf.h); aarch64, riscv64
# and loongarch64 use asm-generic/sembuf.h, without. glibc's struct semid_ds is the
# kernel's on each (bits/types/struct_semid_ds.h), and semctl passes it as it is.
_SEM_TIMES = {"x86_64": "qQqQQQQ", "aarch64": "qqQQQ", "riscv64": "qqQQQ", "loongarch64": "qqQQQ"}
_SEMID_DS = struct.Struct("@iIIIIHHHHLL" + _SEM_TIMES.get(os.uname().machine, ""))
_SEM_LAYOUT_OK = ctypes.sizeof(ctypes.c_long) == 8 and os.uname().machine in _SEM_TIMES
_semctl = _libc.semctl  # variadic: the 4th argument (union semun) is passed as it comes
_semctl.restype = ctypes.c_int
# The same, without errno: -1 says only that a call failed (sem_waits_and_pids, and
# kinds/sem.py's read of a table of sets of one, ask again through _semctl for why).
semctl_no_errno = _semctl_fast = ctypes.CDLL(None).semctl
_semctl_fast.restype = ctypes.c_int
# The IPC_STAT buffer, kept for the IPC_SET that follows it (sem_set_mode_after_stat).
# Larger than any layout above: the kernel writes its whole struct into it.
_sem_buf = ctypes.create_string_buffer(128)
_SEM_MODE_AT = 20  # ipc64_perm.mode: after key, uid, gid, cuid, cgid (little-endian)
# Where ctime and nsems are among the unpacked fields (otime is the 12th on every
# machine): x86_64's pad word after each time moves them.
_PADDED = _SEM_TIMES.get(os.uname().machine, "").startswith("qQ")
_CTIME, _NSEMS = (13, 15) if _PADDED else (12, 13)


class SemStat(NamedTuple):
    """What semctl(IPC_STAT) says of a semaphore set now."""

    key: int  # unsigned 32-bit
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    otime: Optional[int]  # the latest semop of any of its semaphores; None: never
    ctime: int  # creation, or the last SETVAL, SETALL or IPC_SET
    nsems: int


def _sem_error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def sem_stat(semid: int) -> SemStat:
    """IPC_STAT one set (it needs read permission: ipc/sem.c, semctl_stat). Raises
    OSError: EINVAL/EIDRM gone, EACCES no read permission, ENOSYS unknown layout."""
    if not _SEM_LAYOUT_OK:
        raise OSError(errno.ENOSYS, f"semid_ds of {os.uname().machine} is not known here")
    if _semctl(semid, 0, IPC_STAT, _sem_buf) != 0:
        raise _sem_error()
    f = _SEMID_DS.unpack_from(_sem_buf)
    return _new_stat(SemStat, (f[0] & 0xFFFFFFFF, f[5], f[1], f[2], f[3], f[4],
                               f[11] or None, f[_CTIME], f[_NSEMS]))  # fmt: skip


def sem_stat_row(semid: int) -> tuple[Any, ...]:
    """sem_stat as the first ten fields of kinds/sem.py's SemSet: key (unsigned), semid,
    the mode's 0o777 bits, nsems, uid, gid, cuid, cgid, otime (None: never), ctime. For
    reap's re-checks, two per set: no NamedTuple built, and ctypes' errno swap only
    when the call failed, to say why. Raises OSError as sem_stat does."""
    if not _SEM_LAYOUT_OK or _semctl_fast(semid, 0, IPC_STAT, _sem_buf) != 0:
        sem_stat(semid)  # again, with errno: raises the OSError that says why
    f = _SEMID_DS.unpack_from(_sem_buf)
    return (f[0] & 0xFFFFFFFF, semid, f[5] & 0o777, f[_NSEMS], f[1], f[2], f[3], f[4],
            f[11] or None, f[_CTIME])  # fmt: skip


def sem_set_mode_after_stat(semid: int, mode: int) -> None:
    """IPC_SET the permission bits of `semid` to `mode`, right after `sem_stat(semid)`:
    uid, gid and mode are written together (ipc/util.c, ipc_update_perm), so they come
    from that IPC_STAT's buffer. Sets ctime to now. Raises OSError: EPERM not ours,
    EINVAL/EIDRM gone."""
    _mode.pack_into(_sem_buf, _SEM_MODE_AT, mode & 0o777)
    if _semctl(semid, 0, IPC_SET, _sem_buf) != 0:
        raise _sem_error()


def sem_set_owner(semid: int, uid: int, gid: int, mode: int) -> None:
    """IPC_STAT then IPC_SET with this owner and mode (restore). Raises OSError."""
    sem_stat(semid)
    struct.pack_into("@II", _sem_buf, 4, uid, gid)
    sem_set_mode_after_stat(semid, mode)


def sem_waits_and_pids(semid: int, nsems: int) -> tuple[tuple[int, ...], tuple[int, ...],
                                                        tuple[int, ...]]:  # fmt: skip
    """Per semaphore: GETNCNT (waiting to decrease it), GETZCNT (waiting for zero) and
    GETPID (the last to change it, as seen from our PID namespace: 0 when not visible
    or never). Each needs read permission. Raises OSError: EINVAL/EIDRM gone, EACCES.

    One call per fact and semaphore (the kernel has no call for all of them), 96,000
    for 32,000 sets of one: through a handle that does not save errno (ctypes' errno
    swap costs 0.35 us of a 1.1 us call), asked again with it only when one failed.
    """
    call = _semctl_fast
    if nsems == 1:  # the common case, without the lists
        n, z, p = call(semid, 0, GETNCNT), call(semid, 0, GETZCNT), call(semid, 0, GETPID)
        if n < 0 or z < 0 or p < 0:
            return _sem_facts_or_error(semid, nsems)
        return (n,), (z,), (p,)
    ncnt = []
    zcnt = []
    pids = []
    for i in range(nsems):
        n = call(semid, i, GETNCNT)
        z = call(semid, i, GETZCNT)
        p = call(semid, i, GETPID)
        if n < 0 or z < 0 or p < 0:
            return _sem_facts_or_error(semid, nsems)
        ncnt.append(n)
        zcnt.append(z)
        pids.append(p)
    return tuple(ncnt), tuple(zcnt), tuple(pids)


def _sem_facts_or_error(semid: int, nsems: int) -> tuple[tuple[int, ...], tuple[int, ...],
                                                         tuple[int, ...]]:  # fmt: skip
    """The facts again, each call's errno kept: the OSError of the first that fails."""
    facts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i in range(nsems):
        for cmd, out in zip((GETNCNT, GETZCNT, GETPID), facts):
            r = _semctl(semid, i, cmd)
            if r < 0:
                raise _sem_error()
            out.append(r)
    return tuple(facts[0]), tuple(facts[1]), tuple(facts[2])


def sem_getall(semid: int, nsems: int) -> tuple[int, ...]:
    """GETALL: every semaphore's value (read permission). Raises OSError."""
    values = (ctypes.c_ushort * max(1, nsems))()
    if _semctl(semid, 0, GETALL, values) != 0:
        raise _sem_error()
    return tuple(values[:nsems])


def sem_setall(semid: int, values: tuple[int, ...]) -> None:
    """SETALL (write permission; sets each sempid to ours and ctime to now, ipc/sem.c,
    semctl_main). Raises OSError: ERANGE for a value above SEMVMX (32767)."""
    array = (ctypes.c_ushort * max(1, len(values)))(*values)
    if _semctl(semid, 0, SETALL, array) != 0:
        raise _sem_error()


_libc.semget.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)


def sem_create(key: int, nsems: int, mode: int) -> int:
    """semget(key, nsems, IPC_CREAT | IPC_EXCL | mode): a new set, every value 0.
    Raises OSError: EEXIST key in use, EINVAL nsems above SEMMSL, ENOSPC limits."""
    signed = key - (1 << 32) if key >= 0x80000000 else key  # key_t is a signed int
    semid = _libc.semget(signed, nsems, IPC_CREAT | IPC_EXCL | (mode & 0o777))
    if semid < 0:
        raise _sem_error()
    return int(semid)


def sem_rmid(semid: int) -> None:
    """IPC_RMID: the set is gone at once, its waiters fail with EIDRM (ipc/sem.c,
    freeary). Raises OSError: EINVAL/EIDRM gone, EPERM neither ours nor privileged."""
    if _semctl(semid, 0, IPC_RMID) != 0:
        raise _sem_error()


# --- message queues ---
# msgctl/msgget/msgsnd/msgrcv for kinds/msg.py. The buffer is glibc's struct msqid_ds on
# 64-bit Linux, which is the kernel's msqid64_ds (ipc/msg.c, copy_msqid_to_user): the
# ipc_perm above, then msg_stime, msg_rtime, msg_ctime (long), msg_cbytes, msg_qnum,
# msg_qbytes (unsigned long), msg_lspid, msg_lrpid (int), two reserved longs: 120 bytes.

MSG_NOERROR = 0o10000
MSG_COPY = 0o40000  # msgrcv: copy the message at index msgtyp, leave it queued (3.8+)
IPC_NOWAIT = 0o4000

_MSQID_DS = struct.Struct("@iIIIIHHHHLLlllLLLiiLL")
_MSG_LAYOUT_OK = ctypes.sizeof(ctypes.c_long) == 8 and _MSQID_DS.size == 120
_msgctl = _libc.msgctl
_msgctl.restype = ctypes.c_int
_msgctl_no_errno = ctypes.CDLL(None).msgctl  # as semctl_no_errno: -1 only says it failed
_msgctl_no_errno.restype = ctypes.c_int
_msgbuf = ctypes.create_string_buffer(_MSQID_DS.size)
_msg_unpack = _MSQID_DS.unpack_from
_libc.msgget.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.msgsnd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                         ctypes.c_int)  # fmt: skip
_libc.msgrcv.restype = ctypes.c_ssize_t
_MTYPE = struct.Struct("@l")  # struct msgbuf { long mtype; char mtext[]; }
_QBYTES_AT = 88  # offset of msg_qbytes in the buffer
_ulong = struct.Struct("@L")
_qbytes_of = _ulong.unpack_from


class MsgStat(NamedTuple):
    """What msgctl(IPC_STAT) says of a queue now (times None when never)."""

    key: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    stime: Optional[int]
    rtime: Optional[int]
    ctime: int
    cbytes: int
    qnum: int
    qbytes: int
    lspid: int
    lrpid: int


def _msg_fail() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def msg_stat(msqid: int) -> MsgStat:
    """IPC_STAT one queue; its buffer stays for `msg_set_mode_after_stat`. Raises
    OSError: EINVAL/EIDRM gone, EACCES no read permission."""
    if not _MSG_LAYOUT_OK:
        raise OSError(errno.ENOSYS, "the re-check needs 64-bit Linux")
    if _msgctl(msqid, IPC_STAT, _msgbuf) != 0:
        raise _msg_fail()
    (key, uid, gid, cuid, cgid, mode, _p1, _seq, _p2, _r1, _r2, stime, rtime, ctime,
     cbytes, qnum, qbytes, lspid, lrpid, _r4, _r5) = _msg_unpack(_msgbuf)  # fmt: skip
    return _new_stat(MsgStat, (key & 0xFFFFFFFF, mode, uid, gid, cuid, cgid, stime or None,
                               rtime or None, ctime, cbytes, qnum, qbytes, lspid, lrpid))  # fmt: skip


def msg_stat_row(msqid: int) -> tuple[Any, ...]:
    """msg_stat as the first fifteen fields of kinds/msg.py's Queue: key (unsigned),
    msqid, the mode's 0o777 bits, cbytes, qnum, lspid, lrpid, uid, gid, cuid, cgid, stime,
    rtime (None: never), ctime, qbytes. For reap's re-checks, two per queue: no
    NamedTuple built, and ctypes' errno swap only when the call failed, to say why.
    Raises OSError as msg_stat does; its buffer stays for `msg_set_mode_after_stat`."""
    if not _MSG_LAYOUT_OK or _msgctl_no_errno(msqid, IPC_STAT, _msgbuf) != 0:
        msg_stat(msqid)  # again, with errno: raises the OSError that says why
    (key, uid, gid, cuid, cgid, mode, _p1, _seq, _p2, _r1, _r2, stime, rtime, ctime,
     cbytes, qnum, qbytes, lspid, lrpid, _r4, _r5) = _msg_unpack(_msgbuf)  # fmt: skip
    return (key & 0xFFFFFFFF, msqid, mode & 0o777, cbytes, qnum, lspid, lrpid, uid, gid,
            cuid, cgid, stime or None, rtime or None, ctime, qbytes)  # fmt: skip


def msg_qbytes(msqid: int) -> Optional[int]:
    """msg_qbytes of a queue (/proc/sysvipc/msg lacks it), None when we may not read it
    (EACCES) or cannot (not 64-bit). Raises OSError otherwise: EINVAL/EIDRM gone."""
    if not _MSG_LAYOUT_OK:
        return None
    # Without errno first (list asks this of every queue: 32,000 in issue 12), with it
    # only to say why a call failed.
    if _msgctl_no_errno(msqid, IPC_STAT, _msgbuf) == 0:
        return _qbytes_of(_msgbuf, _QBYTES_AT)[0]
    if _msgctl(msqid, IPC_STAT, _msgbuf) != 0:
        err = ctypes.get_errno()
        if err in (errno.EACCES, errno.EPERM):
            return None
        raise OSError(err, os.strerror(err))
    return int(_qbytes_of(_msgbuf, _QBYTES_AT)[0])


def msg_set_mode_after_stat(msqid: int, mode: int) -> None:
    """IPC_SET the permission bits of `msqid`, right after `msg_stat(msqid)`.

    IPC_SET writes uid, gid, mode and msg_qbytes together (ipc/msg.c, msgctl_down):
    all but the mode come from the buffer that IPC_STAT just filled, so the queue's
    owner and limit stay as they were. Raises OSError: EPERM not ours, EINVAL/EIDRM gone.
    """
    _mode.pack_into(_msgbuf, _MODE_AT, mode & 0o777)
    if _msgctl(msqid, IPC_SET, _msgbuf) != 0:
        raise _msg_fail()


_OWNER_AT = 4  # uid, gid: the two unsigned ints after the key
_owner = struct.Struct("@II")


def msg_set(msqid: int, uid: int, gid: int, mode: int, qbytes: int) -> None:
    """IPC_STAT, then IPC_SET owner, mode and msg_qbytes. Raises OSError: EPERM (not
    ours, or qbytes above kernel.msgmnb without CAP_SYS_RESOURCE), EINVAL/EIDRM gone."""
    msg_stat(msqid)
    _owner.pack_into(_msgbuf, _OWNER_AT, uid, gid)
    _mode.pack_into(_msgbuf, _MODE_AT, mode & 0o777)
    _ulong.pack_into(_msgbuf, _QBYTES_AT, qbytes)
    if _msgctl(msqid, IPC_SET, _msgbuf) != 0:
        raise _msg_fail()


def msg_create(key: int, mode: int) -> int:
    """msgget(key, IPC_CREAT | IPC_EXCL | mode): a new, empty queue (key 0 is
    IPC_PRIVATE: always a new one). Raises OSError: EEXIST key in use, ENOSPC msgmni."""
    signed = key - (1 << 32) if key >= 0x80000000 else key  # key_t is a signed int
    msqid = _libc.msgget(signed, IPC_CREAT | IPC_EXCL | (mode & 0o777))
    if msqid < 0:
        raise _msg_fail()
    return int(msqid)


def msg_rmid(msqid: int) -> None:
    """IPC_RMID: the queue and its messages go at once; blocked tasks get EIDRM.
    Raises OSError: EINVAL/EIDRM gone, EPERM neither ours nor privileged."""
    if _msgctl(msqid, IPC_RMID, None) != 0:
        raise _msg_fail()


def msg_copy(msqid: int, index: int, bufsz: int) -> Optional[tuple[int, bytes]]:
    """(mtype, text) of the message at `index` (0 the oldest), left on the queue:
    msgrcv(MSG_COPY | IPC_NOWAIT | MSG_NOERROR). None past the last (ENOMSG).

    The kernel copies into a buffer of min(bufsz, kernel.msgmax) bytes and refuses a
    longer message with EINVAL (ipc/msg.c, copy_msg: MSG_NOERROR does not truncate a
    copy). Without CONFIG_CHECKPOINT_RESTORE it fails with ENOSYS and takes nothing.
    Call only on Linux >= 3.8: older kernels ignore MSG_COPY and would take the message
    of type `index` off the queue. Raises OSError.
    """
    buf = ctypes.create_string_buffer(_MTYPE.size + bufsz)
    n = _libc.msgrcv(msqid, buf, bufsz, index, MSG_COPY | IPC_NOWAIT | MSG_NOERROR)
    if n < 0:
        err = ctypes.get_errno()
        if err == errno.ENOMSG:
            return None
        raise OSError(err, os.strerror(err))
    return _MTYPE.unpack_from(buf)[0], buf.raw[_MTYPE.size : _MTYPE.size + n]


def msg_send(msqid: int, mtype: int, text: bytes) -> None:
    """msgsnd(IPC_NOWAIT): EAGAIN instead of waiting when the queue is full. Raises
    OSError: EINVAL (mtype < 1, or text longer than kernel.msgmax), EAGAIN, EACCES."""
    buf = ctypes.create_string_buffer(_MTYPE.pack(mtype) + text, _MTYPE.size + len(text))
    if _libc.msgsnd(msqid, buf, len(text), IPC_NOWAIT) != 0:
        raise _msg_fail()
