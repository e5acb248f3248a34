"""The one module that removes segments (IPC_RMID). reap and rm both come through here.

For every segment a decision says may go, in order:
  1. re-check it with IPC_STAT (no attach): same segment, nobody attached, times and
     lpid unchanged, creator and last user still dead (liveness.users_back); anything
     different and it is kept ("changed since scan");
  2. dry run: stop here and say "would-remove" (the same path, cut before any change);
  3. quarantine (unless off): attach read-only, copy the bytes that exist (segcopy:
     never a page the segment does not hold), detach, while nobody else attaches; the
     copies are made durable, with an index of `pending` entries, before anything is
     removed; a copy that cannot be saved keeps the segment (fail closed). A segment
     nobody ever attached to is all zero bytes without looking (`known_zero`);
  4. the last instant (`_last_instant`): IPC_STAT (nobody attached since the scan, or
     since our copy), IPC_SET its mode to 000 so that no unprivileged process can
     attach any more, IPC_STAT again (nobody attached in between), IPC_RMID, and IPC_STAT
     once more: a segment still there was attached by a privileged process at the last
     instant, which is said ("removed while attached"). A check that fails puts the
     mode back and keeps the segment;
  5. the quarantine journals each removal the moment IPC_RMID succeeds, then it is
     reported (`on_result`: the log line; a run killed in between has it said when the
     next run settles it). The segment about to be locked is noted in the reaper's lock
     file first: if the run is killed, the next one puts its mode back, and knows it
     is the one segment this run may have removed without a journal line. EINVAL/EIDRM mean someone else removed it first:
     "gone", not a failure.

A `Stop` set by SIGINT or SIGTERM ends the run after the current segment: the rest
are kept ("interrupted"), and what was done is recorded as usual.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

from shmjanitor import kernel, segcopy
from shmjanitor.classify import Verdict
from shmjanitor.durations import format_size
from shmjanitor.errors import SaveFailed
from shmjanitor.liveness import users_back
from shmjanitor.model import Action
from shmjanitor.scan import SHM_DEST

if TYPE_CHECKING:
    from shmjanitor.quarantine import Batch


class Result(NamedTuple):
    verdict: Verdict
    action: Action
    reason: str


class Candidate(NamedTuple):
    """A segment a decision lets go, with the reason it may go."""

    verdict: Verdict
    reason: str


class Stop:
    """Set from a signal handler; the removal loop stops after the current segment."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """SIGINT and SIGTERM (Ctrl-C; systemd's stop or TimeoutStartSec) ask for a stop
    instead of killing us halfway through a segment. The handlers are put back after."""
    stop = Stop()

    def handler(signum: int, _frame: object) -> None:
        if stop.signum is None:
            stop.signum = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# errno of IPC_STAT / IPC_SET / IPC_RMID / shmat -> what it means for us (one table).
_GONE = {errno.EINVAL, errno.EIDRM}
_ERRNO_MEANING = {
    errno.EPERM: "permission denied: only its owner, its creator or root may remove it",
    errno.EACCES: "permission denied: its mode does not let us read it, and it is read "
    "to check nobody uses it before it goes (root can)",
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
    # Times are whole seconds: an attach and detach within the second of the scan leaves
    # them as they were, but not lpid, the pid of the last shmat/shmdt.
    if (now.atime, now.dtime, now.ctime, now.lpid) != (s.atime, s.dtime, s.ctime, s.lpid):
        return "changed since scan: attached, detached or IPC_SET since"
    if now.cpid != s.cpid or now.uid != s.uid:
        return "changed since scan: owner or creator differ"
    # IPC_SET moves ctime only to a later second (ctime is in seconds): within the scan's
    # second only the mode shows it (e.g. the quarantine putting back the mode a killed
    # run's last-instant lock had set, after this run's survey saw the lock's 000).
    if now.mode & 0o777 != s.perms:
        return "changed since scan: mode changed (IPC_SET) since"
    return None


def untouched_since_copy(v: Verdict, now: kernel.Stat, zero: bool, forced: bool) -> Optional[str]:
    """Why a segment we copied cannot go now (None when nobody touched it since). Pure.

    After our own detach, lpid is ours; anyone else's attach or detach since would show
    as their lpid. A segment saved as zeros without attaching must still be unattached
    ever (atime unset).
    """
    if now.key != v.segment.key or now.mode & SHM_DEST or now.cpid != v.segment.cpid:
        return "changed since scan: removed or replaced while copying"
    if zero:
        if now.nattch or now.atime is not None:
            return "changed since scan: attached by another process while it was saved"
        return None
    if not forced and (now.nattch or now.lpid != os.getpid()):
        return "changed since scan: attached by another process after it was copied"
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
        return None, Result(v, Action.FAILED, f"not removed: {_meaning(e)}")


def _stat_failed(v: Verdict, e: OSError) -> Result:
    if e.errno in _GONE:
        return Result(v, Action.GONE, "already gone")
    if e.errno == errno.EACCES:
        return Result(v, Action.FAILED, f"not removed: cannot re-check it: {_meaning(e)}")
    return Result(v, Action.FAILED, f"not removed: {_meaning(e)}")


def _recheck(v: Verdict, forced: bool, seen_dead: Optional[set[int]] = None) -> Optional[Result]:
    """None when the segment may still go, else the result to report."""
    now, result = _stat(v)
    if now is None:
        return result
    why = changed_since_scan(v, now, forced)
    if why is None and not forced:
        why = users_back(v, seen_dead, now)
    return Result(v, Action.KEPT, why) if why else None


@lru_cache(maxsize=1)
def lock_mode() -> int:
    """The mode a segment gets for its last instant: 000 when we can still look at it
    (CAP_IPC_OWNER: root), else 0400, since IPC_STAT needs read permission even for the
    owner (ipc/util.c, ipcperms). With 0400 only the owner's own processes could still
    attach, read-only; without CAP_SYS_ADMIN we only remove segments we own anyway."""
    return 0 if kernel.has_cap(kernel.CAP_IPC_OWNER) else 0o400


def _put_mode_back(shmid: int, mode: int) -> None:
    try:
        kernel.shm_stat(shmid)
        kernel.set_mode_after_stat(shmid, mode)
    except OSError:
        pass  # gone meanwhile: nothing to put back


def undo_left_lock(note: str) -> Optional[str]:
    """Put back the mode of the segment a killed run left locked (see lock.Held); what
    was done, in words, or None. The note is "ID KEY MODE" (MODE in octal).

    Only that segment, only if it is still the same one (same key) and still has the
    lock's mode: a mode its owner set since is theirs.
    """
    try:
        shmid, key, mode = (int(x, 8 if i == 2 else 10) for i, x in enumerate(note.split()))
    except ValueError:
        return None  # no note (the run ended well), or not one we wrote
    try:
        now = kernel.shm_stat(shmid)
    except OSError:
        return None  # removed, as it was meant to be
    if now.key != key or now.mode & 0o777 != lock_mode() or mode == lock_mode():
        return None
    try:
        kernel.set_mode_after_stat(shmid, mode)
    except OSError as e:
        return f"segment {shmid} was left locked (mode 000) by a run that was killed; " \
               f"its mode {mode:03o} could not be put back: {_meaning(e)}"  # fmt: skip
    return (f"segment {shmid} (key 0x{key:08x}) was left locked by a run that was killed "
            f"before removing it; its mode {mode:03o} is put back")  # fmt: skip


def _last_instant(v: Verdict, reason: str, forced: bool, *, copied: bool = False,
                  zero: bool = False, seen_dead: Optional[set[int]] = None,
                  lock_note: Callable[[bytes], None] = lambda _t: None) -> Result:  # fmt: skip
    """Check, lock, check, remove, and check the kernel's answer (module docstring, 4)."""
    s = v.segment
    shmid = s.id
    if not copied and not forced:
        # Liveness first (kill(2), /proc reads: the slow part), so that nothing but a
        # pure comparison stands between the IPC_STAT below and the IPC_SET that locks.
        why = users_back(v, seen_dead)
        if why:
            return Result(v, Action.KEPT, why)
    if not forced:
        # Said before the lock: a run killed between IPC_SET and IPC_RMID leaves the
        # segment locked, and the next holder of the reaper lock puts the mode back.
        lock_note(b"%d %d %o" % (shmid, s.key, s.perms))
    try:
        before = kernel.shm_stat(shmid)
    except OSError as e:
        return _stat_failed(v, e)
    if copied:
        why = untouched_since_copy(v, before, zero, forced)
    else:
        why = changed_since_scan(v, before, forced)
    if why:
        return Result(v, Action.KEPT, why)
    if not forced:
        # From here on only a process with CAP_IPC_OWNER can attach (ipcperms): the
        # window between our last look and IPC_RMID is closed for everyone else (for a
        # reaper without it, for everyone but the owner's own read-only attaches).
        try:
            kernel.set_mode_after_stat(shmid, lock_mode())
            locked = kernel.shm_stat(shmid)
        except OSError as e:
            return _stat_failed(v, e)
        if locked.nattch or locked.mode & SHM_DEST or (
            locked.key, locked.atime, locked.dtime, locked.lpid
        ) != (before.key, before.atime, before.dtime, before.lpid):  # fmt: skip
            _put_mode_back(shmid, before.mode)
            return Result(v, Action.KEPT, (
                "changed since scan: attached at the last instant; its mode was put back"
            ))  # fmt: skip
    try:
        kernel.shm_rmid(shmid)
    except OSError as e:
        if e.errno in _GONE:
            return Result(v, Action.GONE, "already gone")
        if not forced:
            _put_mode_back(shmid, before.mode)
        return Result(v, Action.FAILED, f"not removed: IPC_RMID: {_meaning(e)}")
    # IPC_RMID frees a segment nobody is attached to at once (ipc/shm.c, do_shm_rmid);
    # one still there has users, who attached after our last look (only a privileged
    # process could, once the mode was 000). The kernel frees it at their last detach.
    nattch = kernel.shm_nattch(shmid)
    if forced or not nattch:
        return Result(v, Action.REMOVED, reason)
    return Result(v, Action.REMOVED, (
        f"{reason}; removed while {nattch} attached: a privileged process attached at "
        "the last instant; it keeps its mapping until it detaches"
        + ("; the quarantine copy may miss its last writes" if copied else "")
    ))  # fmt: skip


def known_zero(v: Verdict, forced: bool) -> bool:
    """Are the segment's bytes all zero, known without attaching to copy them?

    Yes when nobody ever attached to it (atime 0, shown as None) and the kernel holds
    no page of it (rss and swap 0). A System V segment is only ever written through an
    attach, and every attach sets atime (ipc/shm.c, __shm_open: shmat, and the fork of
    an attached process). The re-check before the save (atime unchanged, so still 0)
    and the one at the last instant (`untouched_since_copy`) show that nobody attached
    in between either. Not for rm --force, which skips the in-use checks.
    """
    s = v.segment
    return not forced and s.atime is None and s.rss == 0 and s.swap == 0


class _Abandon(Exception):
    """Raised inside a copy to drop it; `result` says why."""

    def __init__(self, result: Result) -> None:
        self.result = result


def copy_out(v: Verdict, forced: bool, batch: Batch, reason: str) -> Optional[Result]:
    """Attach read-only, save the bytes that exist into `batch`, detach. None when the
    copy is saved; else the result to report (kept: budget, changed; failed; gone).

    Sound means nobody else was attached while we copied: just before we detach, nattch
    is 1 (us) and lpid is our pid, so nobody attached or detached since our attach.
    Raises OSError when the quarantine's disk fails (then nothing more is removed).
    """
    try:
        addr = kernel.shm_attach_ro(v.segment.id)
    except OSError as e:
        if e.errno in _GONE:
            return Result(v, Action.GONE, "already gone")
        return Result(v, Action.FAILED, f"not removed: cannot attach to copy it: {_meaning(e)}")
    try:

        def copier(write: Callable[[bytes], None]) -> list[tuple[int, int]]:
            try:
                extents = segcopy.copy(addr, v.segment.size, write)
            except OSError as e:
                failed = Result(v, Action.FAILED, f"not removed: cannot copy it: {e}")
                raise _Abandon(failed) from None
            now, result = _stat(v)
            if now is None:
                assert result is not None
                raise _Abandon(result)
            if not forced and (now.nattch != 1 or now.lpid != os.getpid()):
                raise _Abandon(Result(v, Action.KEPT, (
                    "changed since scan: attached by another process while copying"
                )))  # fmt: skip
            return extents

        try:
            refused = batch.save(v, reason, copier)
        except _Abandon as a:
            return a.result
        return Result(v, Action.KEPT, refused) if refused else None
    finally:
        kernel.shm_detach(addr)


def _save_failed(candidates: Sequence[Candidate], results: dict[int, Result], batch: Batch,
                 e: OSError, on_result: Callable[[Result], None]) -> list[Result]:  # fmt: skip
    """The quarantine could not store a copy: nothing more is removed (fail closed)."""
    batch.abort()
    why = f"not removed: quarantine copy could not be saved ({e.strerror or e})"
    out = []
    for c in candidates:
        r = results.get(c.verdict.segment.id)
        if r is None:
            r = Result(c.verdict, Action.FAILED, why)
            on_result(r)
        out.append(r)
    return out


def _ignore(_r: Result) -> None:
    pass


def execute(
    candidates: Sequence[Candidate], *, dry_run: bool, batch: Optional[Batch],
    max_copy: Optional[int] = None, forced: bool = False,
    on_result: Callable[[Result], None] = _ignore, stop: Optional[Stop] = None,
    lock_note: Callable[[bytes], None] = lambda _t: None,
) -> list[Result]:  # fmt: skip
    """Remove what may go (see the module docstring); a result for every candidate.

    `batch` is an open quarantine batch, or None when quarantine is off for this run or
    this is a dry run. `max_copy` is the largest segment the quarantine copies (None:
    quarantine off); a dry run applies it too, so it shows what the real run would do.
    `forced` (rm --force) skips the in-use checks, never the identity checks.
    `on_result` hears each result the moment it is final (a removal: right after its
    IPC_RMID and the quarantine's journal line).
    """
    results: dict[int, Result] = {}
    stop = stop if stop is not None else Stop()  # a Stop not yet set is falsy

    def done(r: Result) -> None:
        results[r.verdict.segment.id] = r
        on_result(r)

    def interrupted(v: Verdict) -> Result:
        return Result(v, Action.KEPT, f"not removed: interrupted by {stop.name}")

    copied: list[tuple[Candidate, bool, int]] = []  # with: saved as zeros, entry number
    seen_dead: set[int] = set()  # pids found free in this pass (liveness.users_back)
    for c in candidates:
        v = c.verdict
        if stop:
            done(interrupted(v))
            continue
        if batch is None and not dry_run:  # quarantine off: straight to the last instant
            done(_last_instant(v, c.reason, forced, seen_dead=seen_dead, lock_note=lock_note))
            continue
        stopped = _recheck(v, forced, seen_dead)
        if stopped is not None:
            done(stopped)
            continue
        if max_copy is not None and v.segment.size > max_copy:
            done(Result(v, Action.KEPT, (
                f"larger than quarantine_max_bytes ({format_size(v.segment.size)} > "
                f"{format_size(max_copy)}); --no-quarantine removes without a copy"
            )))  # fmt: skip
            continue
        if dry_run or batch is None:
            done(Result(v, Action.WOULD_REMOVE, c.reason))
            continue
        zero = known_zero(v, forced)
        n = batch.count
        try:
            if zero:
                refused = batch.save(v, c.reason, None)
                stopped = Result(v, Action.KEPT, refused) if refused else None
            else:
                stopped = copy_out(v, forced, batch, c.reason)
        except SaveFailed as e:  # this copy only: the data file was cut back
            stopped = Result(v, Action.FAILED, f"not removed: quarantine copy could not be "
                             f"saved ({e.strerror or e})")  # fmt: skip
        except OSError as e:
            return _save_failed(candidates, results, batch, e, on_result)
        if stopped is not None:
            done(stopped)
            continue
        copied.append((c, zero, n))

    if batch is None:
        return [results[c.verdict.segment.id] for c in candidates]
    if not copied:
        batch.abort()  # nothing was copied: leave no empty run behind
        return [results[c.verdict.segment.id] for c in candidates]
    try:
        batch.commit()
    except OSError as e:
        return _save_failed(candidates, results, batch, e, on_result)
    try:
        for c, zero, n in copied:
            if stop:
                done(interrupted(c.verdict))
                continue
            r = _last_instant(c.verdict, c.reason, forced, copied=True, zero=zero,
                              lock_note=lock_note)  # fmt: skip
            if r.action is Action.REMOVED:
                batch.removed(n)  # journalled at once, before the log line
            done(r)
    finally:
        try:
            batch.finish()
        except OSError as e:  # the copies are safe and the run is settled next time
            import sys

            print(f"shmjanitor: warning: quarantine index not updated: {e}", file=sys.stderr)
    return [results[c.verdict.segment.id] for c in candidates]
