"""The one module that removes IPC objects (IPC_RMID), of every kind. reap and rm both
come through here. Kind-blind: what differs between a segment, a semaphore set and a
message queue is asked of its kind module (kinds.Kind, found once per kind and run).

For every object a decision says may go, in order:
  1. re-check it with IPC_STAT (k.stat, never an attach): the same object, unused since
     the scan (k.changed_since_scan: for a segment nobody attached, times and lpid
     unchanged), and every process whose death made it an orphan still dead
     (liveness.users_back); anything different and it is kept ("changed since scan");
  2. dry run: stop here and say "would-remove" (the same path, cut before any change);
  3. quarantine (unless off): k.save copies what it holds (a segment: attached
     read-only, only the bytes that exist, detached) and k.changed_since_copy says
     whether anybody used it meanwhile; the copies are made durable, with an index of
     `pending` entries, before anything is removed; a copy that cannot be saved keeps
     the object (fail closed). An object whose data is known to be empty (k.known_empty:
     a segment nobody ever attached to) is saved without reading it (`known_zero`);
  4. the last instant (`_last_instant`): IPC_STAT (unused since the scan, or since our
     copy), IPC_SET its mode to 000 (k.lock, `lock_mode`) so that no unprivileged
     process can use it any more, IPC_STAT again (k.changed_while_locked: nobody used it
     in between; k.busy_now: nobody waits on it), IPC_RMID, and k.users_after_rmid: a
     segment still there was attached by a privileged process at the last instant,
     which is said ("removed while attached"). A check that fails puts the mode back
     (k.unlock) and keeps the object. A POSIX file's lock is a write lease instead of
     a mode (posixrm.py), and the kind says "in use" by raising EAGAIN with its reason;
  5. the quarantine journals each removal the moment IPC_RMID succeeds, then it is
     reported (`on_result`: the log line; a run killed in between has it said when the
     next run settles it). The object about to be locked is noted in the reaper's lock
     file first ("KIND ID KEY MODE"): if the run is killed, the next one puts its mode
     back, and knows it is the one object this run may have removed without a journal
     line. EINVAL/EIDRM mean someone else removed it first: "gone", not a failure.

A `Stop` set by SIGINT or SIGTERM ends the run after the current object: the rest
are kept ("interrupted"), and what was done is recorded as usual.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from shmjanitor import kernel, kinds, rules
from shmjanitor.classify import Verdict
from shmjanitor.durations import format_size
from shmjanitor.errors import SaveFailed
from shmjanitor.kinds import Kind, kind_of
from shmjanitor.liveness import users_back
from shmjanitor.model import Action, IpcObject, State

if TYPE_CHECKING:
    from shmjanitor.quarantine import Batch


class Result(NamedTuple):
    verdict: Verdict
    action: Action
    reason: str
    rule: str = ""  # the code of the rule that decided (rules.py)


# tuple.__new__ directly for the one result every removal makes: a NamedTuple's own
# __new__ is a Python frame (as kernel.shm_stat builds its Stat).
_new_result = tuple.__new__


class Candidate(NamedTuple):
    """An object a decision lets go, with the reason it may go."""

    verdict: Verdict
    reason: str
    rule: str = ""  # the code of the rule that lets it go (rules.py)


class Stop:
    """Set from a signal handler; the removal loop stops after the current object."""

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
    instead of killing us halfway through an object. The handlers are put back after."""
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


def _failed(e: OSError) -> str:
    """The rule code of a failed call: permission-denied (EPERM, EACCES) or error."""
    return rules.PERMISSION_DENIED if e.errno in _ERRNO_MEANING else rules.ERROR


def changed_since_scan(v: Verdict, now: Any, forced: bool, k: Optional[Kind] = None
                       ) -> Optional[str]:  # fmt: skip
    """Why the object is no longer what we judged (None when it is the same): its kind's
    rule (kinds.Kind.changed_since_scan), on `now`, its kind's stat(). Pure."""
    o = v.segment  # v.obj, without the property's call: this runs once per object
    return (k or kind_of(o)).changed_since_scan(o, now, forced)


def untouched_since_copy(v: Verdict, now: Any, zero: bool, forced: bool,
                         k: Optional[Kind] = None) -> Optional[str]:  # fmt: skip
    """Why an object we saved cannot go now (None when nobody touched it since): its
    kind's rule (kinds.Kind.changed_since_copy). `zero`: saved as known empty, without
    reading it. Pure."""
    o = v.obj
    return (k or kind_of(o)).changed_since_copy(o, now, zero, forced)


def _stat_failed(v: Verdict, e: OSError) -> Result:
    """The result when IPC_STAT (or the lock's IPC_SET) fails. Gone is not a failure.
    Any other error is: we meant to remove it and cannot even look at it (e.g. EACCES
    without CAP_IPC_OWNER), so it is kept and the run says so."""
    if e.errno in _GONE:
        return Result(v, Action.GONE, "already gone", rules.GONE)
    if e.errno == errno.EAGAIN:  # in use, said by its kind (a POSIX file's lease refused)
        return Result(v, Action.KEPT, e.strerror or str(e), rules.HELD)
    if e.errno == errno.EACCES:
        return Result(
            v, Action.FAILED, f"not removed: cannot re-check it: {_meaning(e)}", _failed(e)
        )
    return Result(v, Action.FAILED, f"not removed: {_meaning(e)}", _failed(e))


def _recheck(v: Verdict, forced: bool, seen_dead: Optional[set[int]], k: Kind,
             gone_users: Optional[dict[int, float]] = None) -> Optional[Result]:  # fmt: skip
    """None when the object may still go, else the result to report."""
    try:
        now = k.stat(v.obj.id)
    except OSError as e:
        if e.errno in _GONE:
            return Result(v, Action.GONE, "already gone", rules.GONE)
        return Result(v, Action.FAILED, f"not removed: {_meaning(e)}", _failed(e))
    why = changed_since_scan(v, now, forced, k)
    if why is None and not forced and v.state is State.ORPHAN:
        why = users_back(v, seen_dead, gone_users=gone_users)
    return Result(v, Action.KEPT, why, rules.CHANGED_SINCE_SCAN) if why else None


@lru_cache(maxsize=1)
def lock_mode() -> int:
    """The mode an object gets for its last instant: 000 when we can still look at it
    (CAP_IPC_OWNER: root), else 0400, since IPC_STAT needs read permission even for the
    owner (ipc/util.c, ipcperms), for every kind. With 0400 only the owner's own
    processes could still use it, read-only; without CAP_SYS_ADMIN we only remove
    objects we own anyway."""
    return 0 if kernel.has_cap(kernel.CAP_IPC_OWNER) else 0o400


def _put_mode_back(k: Kind, id: int, mode: int) -> None:
    """Undo k.lock: a System V object gets its mode back, a POSIX file's write lease is
    let go (kinds.Kind.unlock)."""
    with suppress(OSError):  # gone meanwhile: nothing to put back
        k.unlock(id, mode)


# Lock notes and quarantine entries written before there were kinds name none: they
# are about segments.
LEGACY_KIND = "shm"


def _note_format(kind: str) -> bytes:
    """The reaper lock's note for an object about to be locked (lock.Held), to be
    %-formatted with its id, key and mode: "KIND ID KEY MODE", MODE in octal."""
    return kind.encode() + b" %d %d %o"


def parse_lock_note(note: str) -> Optional[tuple[str, int, int, int]]:
    """(kind, id, key, mode) of a lock note; one of three fields ("ID KEY MODE"), as
    runs before kinds wrote them, is a segment's. None for no note (the run ended
    well), or one we did not write."""
    fields = note.split()
    if len(fields) == 3:
        fields.insert(0, LEGACY_KIND)
    if len(fields) != 4 or fields[0] not in kinds.names():
        return None
    try:
        return fields[0], int(fields[1]), int(fields[2]), int(fields[3], 8)
    except ValueError:
        return None


def undo_left_lock(note: str) -> Optional[str]:
    """Put back the mode of the object a killed run left locked (see lock.Held); what
    was done, in words, or None. The note is _note_format()'s.

    Only that object, only if it is still the same one (same key) and still has the
    lock's mode: a mode its owner set since is theirs.
    """
    said = parse_lock_note(note)
    if said is None:
        return None
    name, id, key, mode = said
    k = kinds.of(name)
    try:
        now = k.stat(id)
    except OSError:
        return None  # removed, as it was meant to be
    if now.key != key or now.mode & 0o777 != lock_mode() or mode == lock_mode():
        return None
    try:
        k.unlock(id, mode)
    except OSError as e:
        return f"{k.NOUN} {id} was left locked (mode 000) by a run that was killed; " \
               f"its mode {mode:03o} could not be put back: {_meaning(e)}"  # fmt: skip
    return (f"{k.NOUN} {id} (key 0x{key:08x}) was left locked by a run that was killed "
            f"before removing it; its mode {mode:03o} is put back")  # fmt: skip


def _last_instant(v: Verdict, reason: str, forced: bool, *, copied: bool = False,
                  zero: bool = False, seen_dead: Optional[set[int]] = None,
                  lock_note: Callable[[bytes], None] = lambda _t: None,
                  k: Optional[Kind] = None, note: Optional[bytes] = None,
                  gone_users: Optional[dict[int, float]] = None, rule: str = ""
                  ) -> Result:  # fmt: skip
    """Check, lock, check, remove, and check the kernel's answer (module docstring, 4).
    `k` is the object's kind and `note` its lock note's format (b"shm %d %d %o"), as
    execute found them once for the run; found here when not given."""
    o = v.segment  # v.obj, without the property's call: this runs once per object
    if k is None:
        k = kind_of(o)
    if note is None:
        note = _note_format(o.kind)
    id = o.id
    # Only an orphan's parties must still be dead: an idle POSIX object reaped under
    # posix_idle_after has a live owner by definition (policy._decide_idle).
    if not copied and not forced and v.state is State.ORPHAN:
        # Liveness first (kill(2), /proc reads: the slow part), so that nothing but a
        # pure comparison stands between the IPC_STAT below and the IPC_SET that locks.
        why = users_back(v, seen_dead, gone_users=gone_users)
        if why:
            return Result(v, Action.KEPT, why, rules.CHANGED_SINCE_SCAN)
    # Said before the lock: a run killed between IPC_SET and IPC_RMID leaves the object
    # locked, and the next holder of the reaper lock puts the mode back. Said under
    # rm --force too, which locks nothing: the note is also how the next run knows that
    # this object, gone, was removed by us (quarantine.settle) -- a run killed between
    # its removal and the journal line would have its copy dropped as "removed by another
    # process". (undo_left_lock leaves a mode that is not the lock's alone.)
    lock_note(note % (id, o.key, o.perms))
    try:
        before = k.stat(id)
    except OSError as e:
        return _stat_failed(v, e)
    if copied:
        why = untouched_since_copy(v, before, zero, forced, k)
    else:
        why = changed_since_scan(v, before, forced, k)
    if why:
        return Result(v, Action.KEPT, why, rules.CHANGED_SINCE_SCAN)
    if not forced:
        # From here on only a process with CAP_IPC_OWNER can use it (ipcperms): the
        # window between our last look and IPC_RMID is closed for everyone else (for a
        # reaper without it, for everyone but the owner's own read-only use).
        try:
            k.lock(id, lock_mode())
        except OSError as e:
            return _stat_failed(v, e)
        try:
            locked = k.stat(id)
        except OSError as e:
            _put_mode_back(k, id, before.mode)
            return _stat_failed(v, e)
        why = k.changed_while_locked(before, locked) or k.busy_now(id)
        if why:
            _put_mode_back(k, id, before.mode)
            return Result(v, Action.KEPT, f"{why}; its mode was put back", rules.CHANGED_SINCE_SCAN)
    try:
        k.rmid(id)
    except OSError as e:
        if not forced or e.errno == errno.EAGAIN:
            _put_mode_back(k, id, before.mode)
        if e.errno in _GONE:
            return Result(v, Action.GONE, "already gone", rules.GONE)
        if e.errno == errno.EAGAIN:  # a POSIX file opened at the last instant: kept
            return Result(v, Action.KEPT, e.strerror or str(e), rules.HELD)
        return Result(v, Action.FAILED, f"not removed: IPC_RMID: {_meaning(e)}", _failed(e))
    # Only a segment outlives IPC_RMID, while attached (kinds.Kind.users_after_rmid);
    # after our lock only a privileged process could have attached.
    users = k.users_after_rmid(id)
    if forced or not users:
        return _new_result(Result, (v, Action.REMOVED, reason, rule))
    return Result(v, Action.REMOVED, (
        f"{reason}; removed while {users} attached: a process got to it at the last "
        "instant (a privileged process's attach, or an open of a POSIX file already under "
        "way); it keeps it until it lets go"
        + ("; the quarantine copy may miss its last writes" if copied else "")
    ), rule)  # fmt: skip


def known_zero(v: Verdict, forced: bool) -> bool:
    """Is the object's saved data known to be empty without reading it (its kind's
    known_empty: a segment never attached and holding no page)? Not for rm --force,
    which skips the in-use checks that rule rests on."""
    o = v.obj
    return not forced and kind_of(o).known_empty(o)


class _Abandon(Exception):
    """Raised inside a copy to drop it; `result` says why."""

    def __init__(self, result: Result) -> None:
        self.result = result


def copy_out(v: Verdict, forced: bool, batch: Batch, reason: str,
             k: Optional[Kind] = None) -> Optional[Result]:  # fmt: skip
    """Save the object's data into `batch` (its kind's save: a segment is attached
    read-only, its bytes that exist copied, and detached), then look again (its kind's
    changed_since_copy: for a segment, nobody else attached while we copied). None when
    the copy is saved; else the result to report (kept: budget, changed; failed; gone).
    Raises OSError when the quarantine's disk fails (then nothing more is removed).
    """
    o = v.obj
    kind = k or kind_of(o)

    def copier(write: Callable[[bytes], None]) -> list[tuple[int, int]]:
        try:
            extents = kind.save(o, write)
        except OSError as e:
            if e.errno in _GONE:
                raise _Abandon(Result(v, Action.GONE, "already gone", rules.GONE)) from None
            if e.errno == errno.EAGAIN:  # used while it was copied (kinds.Kind.save)
                raise _Abandon(
                    Result(v, Action.KEPT, e.strerror or str(e), rules.CHANGED_SINCE_SCAN)
                ) from None
            raise _Abandon(Result(v, Action.FAILED, f"not removed: cannot copy it: "
                                  f"{_meaning(e)}", _failed(e))) from None  # fmt: skip
        try:
            now = kind.stat(o.id)
        except OSError as e:
            raise _Abandon(_stat_failed(v, e)) from None
        why = untouched_since_copy(v, now, False, forced, kind)
        if why:
            raise _Abandon(Result(v, Action.KEPT, why, rules.CHANGED_SINCE_SCAN))
        return extents

    try:
        refused = batch.save(v, reason, copier)
    except _Abandon as a:
        return a.result
    return Result(v, Action.KEPT, refused, rules.QUARANTINE_REFUSED) if refused else None


def _save_failed(candidates: Sequence[Candidate], results: list[Optional[Result]],
                 batch: Batch, e: OSError, on_result: Callable[[Result], None]) -> list[Result]:  # fmt: skip
    """The quarantine could not store a copy: nothing more is removed (fail closed)."""
    batch.abort()
    why = f"not removed: quarantine copy could not be saved ({e.strerror or e})"
    out = []
    for c, r in zip(candidates, results):
        if r is None:
            r = Result(c.verdict, Action.FAILED, why, rules.QUARANTINE_FAILED)
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
    """Remove what may go (see the module docstring); a result for every candidate, in
    the order of the candidates, whatever their kinds.

    `batch` is an open quarantine batch, or None when quarantine is off for this run or
    this is a dry run. `max_copy` is the largest object the quarantine copies (None:
    quarantine off); a dry run applies it too, so it shows what the real run would do.
    `forced` (rm --force) skips the in-use checks, never the identity checks.
    `on_result` hears each result the moment it is final (a removal: right after its
    IPC_RMID and the quarantine's journal line).
    """
    # Results by the candidate's place: ids of different kinds may be equal.
    results: list[Optional[Result]] = [None] * len(candidates)
    stop = stop if stop is not None else Stop()  # a Stop not yet set is falsy
    kind = _Kinds()

    def done(i: int, r: Result) -> None:
        results[i] = r
        on_result(r)

    def interrupted(v: Verdict) -> Result:
        return Result(v, Action.KEPT, f"not removed: interrupted by {stop.name}", rules.INTERRUPTED)

    copied: list[tuple[int, Kind, bytes, bool, int]] = []  # saved as zeros, entry number
    seen_dead: set[int] = set()  # pids found free in this pass (liveness.users_back)
    gone_users: dict[int, float] = {}  # uids found without a process, when (the same)
    straight = batch is None and not dry_run  # quarantine off: straight to the last instant
    for i, c in enumerate(candidates):
        v = c.verdict
        if stop.signum is not None:  # `if stop`, without a call to Stop.__bool__ each time
            done(i, interrupted(v))
            continue
        k, note = kind(v.segment)
        if straight:
            r = _last_instant(v, c.reason, forced, seen_dead=seen_dead, lock_note=lock_note,
                              k=k, note=note, gone_users=gone_users, rule=c.rule)  # fmt: skip
            results[i] = r  # done(i, r), inlined: this is the loop of a big reap
            on_result(r)
            continue
        stopped = _recheck(v, forced, seen_dead, k, gone_users)
        if stopped is not None:
            done(i, stopped)
            continue
        size = v.obj.size
        if max_copy is not None and size > max_copy:
            done(i, Result(v, Action.KEPT, (
                f"larger than quarantine_max_bytes ({format_size(size)} > "
                f"{format_size(max_copy)}); --no-quarantine removes without a copy"
            ), rules.LARGER_THAN_QUARANTINE_MAX))  # fmt: skip
            continue
        if dry_run or batch is None:
            done(i, Result(v, Action.WOULD_REMOVE, c.reason, c.rule))
            continue
        zero = known_zero(v, forced)
        n = batch.count
        try:
            if zero:
                refused = batch.save(v, c.reason, None)
                stopped = (
                    Result(v, Action.KEPT, refused, rules.QUARANTINE_REFUSED) if refused else None
                )
            else:
                stopped = copy_out(v, forced, batch, c.reason, k)
        except SaveFailed as e:  # this copy only: the data file was cut back
            stopped = Result(v, Action.FAILED, f"not removed: quarantine copy could not be "
                             f"saved ({e.strerror or e})", rules.QUARANTINE_FAILED)  # fmt: skip
        except OSError as e:
            return _save_failed(candidates, results, batch, e, on_result)
        if stopped is not None:
            done(i, stopped)
            continue
        copied.append((i, k, note, zero, n))

    if batch is not None and not copied:
        batch.abort()  # nothing was copied: leave no empty run behind
    if batch is None or not copied:
        return _every(results)
    try:
        batch.commit()
    except OSError as e:
        return _save_failed(candidates, results, batch, e, on_result)
    try:
        for i, k, note, zero, n in copied:
            c = candidates[i]
            if stop:
                done(i, interrupted(c.verdict))
                continue
            r = _last_instant(c.verdict, c.reason, forced, copied=True, zero=zero,
                              lock_note=lock_note, k=k, note=note, rule=c.rule)  # fmt: skip
            if r.action is Action.REMOVED:
                batch.removed(n)  # journalled at once, before the log line
            done(i, r)
    finally:
        try:
            batch.finish()
        except OSError as e:  # the copies are safe and the run is settled next time
            import sys

            print(f"shmjanitor: warning: quarantine index not updated: {e}", file=sys.stderr)
    return _every(results)


def _every(results: list[Optional[Result]]) -> list[Result]:
    out = [r for r in results if r is not None]
    assert len(out) == len(results), "every candidate has its result"
    return out


class _Kinds:
    """The kind module of each object and its lock note's format, found once per kind
    in a run, not per object (by the object's class: no property to call)."""

    def __init__(self) -> None:
        self._of: dict[type, tuple[Kind, bytes]] = {}

    def __call__(self, o: IpcObject) -> tuple[Kind, bytes]:
        found = self._of.get(type(o))
        if found is None:
            found = self._of[type(o)] = (kind_of(o), _note_format(o.kind))
        return found
