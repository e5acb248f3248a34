"""The one module that removes segments (IPC_RMID). reap and rm both come through here.

For every segment a decision says may go, in order:
  1. re-check it with IPC_STAT (no attach): same key, nobody attached, times unchanged,
     creator still dead; anything different and it is kept ("changed since scan");
  2. dry run: stop here and say "would-remove" (the same path, cut at the last step);
  3. quarantine (unless off): attach read-only, copy, detach, and make the copy durable
     (write, fsync, rename) before anything is removed; a copy that cannot be made or
     saved keeps the segment (fail closed). A segment nobody ever attached to is all
     zero bytes without looking (`known_zero`): its entry is written, no attach is made;
  4. re-check again: after our own detach, nobody else may have attached (lpid is ours;
     for a `known_zero` one: still never attached);
  5. IPC_RMID. EINVAL/EIDRM mean someone else removed it first: "gone", not a failure.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple, Optional

import sysv_ipc

from shmjanitor import kernel
from shmjanitor.classify import Verdict
from shmjanitor.durations import format_size
from shmjanitor.liveness import users_back
from shmjanitor.scan import SHM_DEST

if TYPE_CHECKING:
    from shmjanitor.quarantine import Batch


class Action(str, Enum):
    REMOVED = "removed"
    WOULD_REMOVE = "would-remove"
    KEPT = "kept"
    FAILED = "failed"
    GONE = "gone"  # removed by someone else between our scan and our IPC_RMID

    def __str__(self) -> str:
        return self.value


class Result(NamedTuple):
    verdict: Verdict
    action: Action
    reason: str


class Candidate(NamedTuple):
    """A segment a decision lets go, with the reason it may go."""

    verdict: Verdict
    reason: str


# errno of IPC_STAT / IPC_RMID -> what it means for us (one table, as pyudev keeps one).
_GONE = {errno.EINVAL, errno.EIDRM}
_ERRNO_MEANING = {
    errno.EPERM: "permission denied (needs root or ownership)",
    errno.EACCES: "permission denied (no read permission to re-check it)",
}


def _meaning(e: OSError) -> str:
    return _ERRNO_MEANING.get(e.errno or 0, e.strerror or str(e))


def changed_since_scan(v: Verdict, now: kernel.Stat, forced: bool) -> Optional[str]:
    """Why the segment is no longer what we judged (None when it is the same). Pure."""
    s = v.segment
    if now.key != s.key:
        return f"changed since scan: key is now 0x{now.key:08x}"
    if now.mode & SHM_DEST:
        return "changed since scan: someone else called IPC_RMID"
    if forced:
        return None
    if now.nattch:
        return f"changed since scan: {now.nattch} attached now"
    if (now.atime, now.dtime, now.ctime) != (s.atime, s.dtime, s.ctime):
        return "changed since scan: attached, detached or IPC_SET since"
    if now.cpid != s.cpid or now.uid != s.uid:
        return "changed since scan: owner or creator differ"
    return None


def _stat(v: Verdict) -> tuple[Optional[kernel.Stat], Optional[Result]]:
    """IPC_STAT now; or the result to report when that is impossible.

    Gone is not a failure. Any other error is: we meant to remove it and cannot even
    look at it (e.g. EACCES without CAP_IPC_OWNER), so it is kept and the run says so.
    """
    try:
        return kernel.shm_stat(v.segment.id), None
    except OSError as e:
        if e.errno in _GONE:
            return None, Result(v, Action.GONE, "already gone")
        return None, Result(v, Action.FAILED, f"not removed: cannot re-check it: {_meaning(e)}")


def _recheck(v: Verdict, forced: bool, seen_dead: Optional[set[int]] = None) -> Optional[Result]:
    """None when the segment may still go, else the result to report."""
    now, result = _stat(v)
    if now is None:
        return result
    why = changed_since_scan(v, now, forced)
    if why:
        return Result(v, Action.KEPT, why)
    if not forced:
        back = users_back(v, seen_dead, now)
        if back:
            return Result(v, Action.KEPT, back)
    return None


def _rmid(v: Verdict, reason: str) -> Result:
    try:
        sysv_ipc.remove_shared_memory(v.segment.id)
    except sysv_ipc.ExistentialError:
        return Result(v, Action.GONE, "already gone")
    except sysv_ipc.PermissionsError:
        return Result(v, Action.FAILED, _ERRNO_MEANING[errno.EPERM])
    except sysv_ipc.Error as e:
        return Result(v, Action.FAILED, f"IPC_RMID failed: {e}")
    return Result(v, Action.REMOVED, reason)


def copy_out(v: Verdict, forced: bool) -> tuple[Optional[bytes], Optional[Result]]:
    """Attach read-only, copy the bytes, detach; or the result when the copy is not sound.

    Sound means nobody else was attached while we copied: just before we detach, nattch
    is 1 (us) and lpid is our pid, so nobody attached or detached since our attach.
    """
    try:
        # flags= by name: attach's second positional argument is the address, and
        # SHM_RDONLY there (0x1000) made a read-write attach at address 0x1000.
        shm = sysv_ipc.attach(v.segment.id, flags=sysv_ipc.SHM_RDONLY)
    except sysv_ipc.ExistentialError:
        return None, Result(v, Action.GONE, "already gone")
    except sysv_ipc.Error as e:
        return None, Result(v, Action.FAILED, f"not removed: cannot attach to copy it: {e}")
    try:
        data = bytes(shm.read(v.segment.size))
        now, result = _stat(v)
        if now is None:
            return None, result
        if not forced and (now.nattch != 1 or now.lpid != os.getpid()):
            return None, Result(v, Action.KEPT, (
                "changed since scan: attached by another process while copying"
            ))  # fmt: skip
        return data, None
    finally:
        shm.detach()


def known_zero(v: Verdict, forced: bool) -> bool:
    """Are the segment's bytes all zero, known without attaching to copy them?

    Yes when nobody ever attached to it (atime 0, shown as None) and the kernel holds
    no page of it (rss and swap 0). A System V segment is only ever written through an
    attach, and every attach sets atime (ipc/shm.c, __shm_open: shmat, and the fork of
    an attached process). The re-check before the copy (IPC_STAT: atime unchanged, so
    still 0) and the one after it is saved (`_untouched_since_copy`) show that nobody
    attached in between either. Leaks made by `ipcmk`, or by a program that died before
    its shmat, are like this. Not for rm --force, which skips the in-use checks.
    """
    s = v.segment
    return not forced and s.atime is None and s.rss == 0 and s.swap == 0


def _untouched_since_copy(v: Verdict, forced: bool, zero: bool = False) -> Optional[Result]:
    now, result = _stat(v)
    if now is None:
        return result
    if now.key != v.segment.key or now.mode & SHM_DEST:
        return Result(v, Action.KEPT, "changed since scan: removed or replaced while copying")
    if zero:  # not attached by us either: it must still be never attached
        if now.nattch or now.atime is not None:
            return Result(v, Action.KEPT, (
                "changed since scan: attached by another process while it was saved"
            ))  # fmt: skip
        return None
    if not forced and (now.nattch or now.lpid != os.getpid()):
        return Result(v, Action.KEPT, (
            "changed since scan: attached by another process after it was copied"
        ))  # fmt: skip
    return None


def _save_failed(candidates: Sequence[Candidate], results: dict[int, Result], batch: Batch,
                 e: OSError) -> list[Result]:  # fmt: skip
    """The quarantine could not store a copy: nothing more is removed (fail closed)."""
    batch.abort()
    why = f"not removed: quarantine copy could not be saved ({e.strerror or e})"
    return [
        results.get(c.verdict.segment.id) or Result(c.verdict, Action.FAILED, why)
        for c in candidates
    ]


def execute(
    candidates: Sequence[Candidate], *, dry_run: bool, batch: Optional[Batch],
    max_copy: Optional[int] = None, forced: bool = False,
) -> list[Result]:  # fmt: skip
    """Remove what may go (see the module docstring); a result for every candidate.

    `batch` is an open quarantine batch, or None when quarantine is off for this run or
    this is a dry run. `max_copy` is the largest segment the quarantine copies (None:
    quarantine off); a dry run applies it too, so it shows what the real run would do.
    `forced` (rm --force) skips the in-use checks, never the identity checks.
    """
    results: dict[int, Result] = {}
    copied: list[tuple[Candidate, bool]] = []  # with: saved as known_zero, not attached
    seen_dead: set[int] = set()  # pids found free in this pass (liveness.users_back)
    for c in candidates:
        v = c.verdict
        stopped = _recheck(v, forced, seen_dead)
        if stopped is not None:
            results[v.segment.id] = stopped
            continue
        if max_copy is not None and v.segment.size > max_copy:
            results[v.segment.id] = Result(v, Action.KEPT, (
                f"larger than quarantine_max_bytes ({format_size(v.segment.size)} > "
                f"{format_size(max_copy)}); --no-quarantine removes without a copy"
            ))  # fmt: skip
            continue
        if dry_run:
            results[v.segment.id] = Result(v, Action.WOULD_REMOVE, c.reason)
            continue
        if batch is None:
            results[v.segment.id] = _rmid(v, c.reason)
            continue
        zero = known_zero(v, forced)
        data: Optional[bytes] = None
        if not zero:
            data, stopped = copy_out(v, forced)
            if stopped is not None or data is None:
                results[v.segment.id] = stopped or Result(v, Action.FAILED, "not copied")
                continue
        try:
            refused = batch.add(v, data, c.reason)
        except OSError as e:
            return _save_failed(candidates, results, batch, e)
        if refused:
            results[v.segment.id] = Result(v, Action.KEPT, refused)
            continue
        copied.append((c, zero))

    if batch is not None and not copied:
        batch.abort()  # nothing was copied: leave no empty run behind
    elif batch is not None:
        try:
            batch.commit()
        except OSError as e:
            return _save_failed(candidates, results, batch, e)
        removed: set[int] = set()
        for c, zero in copied:
            v = c.verdict
            stopped = _untouched_since_copy(v, forced, zero)
            if stopped is not None:
                results[v.segment.id] = stopped
                continue
            r = _rmid(v, c.reason)
            results[v.segment.id] = r
            if r.action is Action.REMOVED:
                removed.add(v.segment.id)
        try:
            batch.finish(removed)
        except OSError as e:  # the copies are safe; only the index's final status is not
            import sys

            print(f"shmjanitor: warning: quarantine index not updated: {e}", file=sys.stderr)
    return [results[c.verdict.segment.id] for c in candidates]
