"""`reap` and `rm`: survey under the lock, decide, hand over to remove.execute. For every
kind of object alike (kinds/): reap's kind flags narrow the kinds it considers, rm's say
which kind each id or key it is given names."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import config as _config
from shmjanitor import kernel, kinds, lock, policy, procs, remove, rules, survey
from shmjanitor.accounts import owner_name
from shmjanitor.classify import State, Verdict, in_own_namespace
from shmjanitor.errors import ConfigError, JanitorError
from shmjanitor.model import IpcObject
from shmjanitor.remove import Action, Candidate, Result, Stop
from shmjanitor.text import printable


class Outcome(NamedTuple):
    survey: survey.Survey
    results: list[Result]
    dry_run: bool
    problems: list[str]  # things that make the exit code 1 without a result of their own
    interrupted: Optional[int] = None  # the signal (SIGINT, SIGTERM) that stopped the run
    # --if-owner-gone: the owner as found when they were not gone (a process of theirs
    # lives, or whether one does cannot be known), so nothing was considered.
    owner_present: Optional[procs.User] = None

    @property
    def ok(self) -> bool:
        return (not self.problems and self.owner_present is None
                and all(r.action is not Action.FAILED for r in self.results))  # fmt: skip


class Hooks(NamedTuple):
    """What a run tells its caller as it goes: each result the moment it is final, and
    notes about the quarantine (runs pruned, settled, set aside). `stop` is set by a
    signal handler."""

    on_result: Callable[[Result], None] = lambda _r: None
    on_note: Callable[[str], None] = lambda _n: None
    stop: Optional[Stop] = None


def caller() -> policy.Caller:
    return policy.Caller(os.geteuid(), kernel.has_cap_sys_admin(), _config.uid_min(),
                         _config.uid_max())  # fmt: skip


def _execute(sv: survey.Survey, candidates: Sequence[Candidate], cfg: _config.Config, *,
             dry_run: bool, quarantine: bool, state_dir: Optional[Path], hooks: Hooks,
             held: Optional[lock.Held], forced: bool = False) -> list[Result]:  # fmt: skip
    note = held.note if held is not None else (lambda _t: None)  # type: Callable[[bytes], None]
    if not candidates or dry_run or not quarantine:
        limit = cfg.quarantine_max_bytes if quarantine else None
        return remove.execute(candidates, dry_run=dry_run, batch=None, max_copy=limit,
                              forced=forced, on_result=hooks.on_result, stop=hooks.stop,
                              lock_note=note)  # fmt: skip
    from shmjanitor.quarantine import store_for

    try:
        batch = store_for(cfg, state_dir, note=hooks.on_note).open_batch(sv.taken_at)
    except (JanitorError, OSError) as e:
        why = f"not removed: quarantine unusable ({e}); fix it or use --no-quarantine"
        failed = [
            Result(c.verdict, Action.FAILED, why, rules.QUARANTINE_FAILED) for c in candidates
        ]
        for r in failed:
            hooks.on_result(r)
        return failed
    return remove.execute(candidates, dry_run=False, batch=batch,
                          max_copy=cfg.quarantine_max_bytes, forced=forced,
                          on_result=hooks.on_result, stop=hooks.stop,
                          lock_note=note)  # fmt: skip


def repair_left_lock(cfg: _config.Config, on_note: Callable[[str], None]) -> None:
    """For commands that do not reap (quarantine list, purge, restore): if no reaper
    holds this namespace's lock, put back the mode a killed run left on the object it
    had locked (remove.undo_left_lock). A reaper at work is never waited for."""
    try:
        with lock.held(lock.default_path(), 0) as held:
            undone = remove.undo_left_lock(held.previous)
            if undone:
                on_note(undone)
    except JanitorError:
        pass  # held by a live reaper, or no lock directory to use: nothing to repair here


@contextmanager
def _locked(dry_run: bool, cfg: _config.Config, state_dir: Optional[Path],
            hooks: Hooks) -> Iterator[Optional[lock.Held]]:  # fmt: skip
    """The reaper lock for a real run (a dry run removes nothing and need not wait).

    Holding it, first undo what a killed run of this namespace may have left: the mode
    of the object it had locked for its last instant, and its quarantine run's pending
    entries (settled here, where the log is the record, whether or not this run keeps
    copies itself)."""
    if dry_run:
        yield None
        return
    with lock.held(lock.default_path(), cfg.lock_timeout) as held:
        undone = remove.undo_left_lock(held.previous)
        if undone:
            hooks.on_note(undone)
        from shmjanitor.quarantine import store_for

        try:
            store_for(cfg, state_dir, note=hooks.on_note).tidy(True, held.previous)
        except JanitorError as e:
            hooks.on_note(f"quarantine not settled: {e}")
        yield held


def reap(cfg: _config.Config, *, dry_run: bool, quarantine: bool, state_dir: Optional[Path],
         proc_shm: Path = survey.scan.PROC_SHM, hooks: Hooks = Hooks(),
         only: Collection[str] = (), owner: Optional[int] = None,
         if_owner_gone: bool = False, ns: Any = None) -> Outcome:  # fmt: skip
    """Remove the orphans the policy lets go; a result for every orphan considered.
    `only`: the kinds to consider (registry names, kinds.names()); empty: every kind.
    `owner`: only objects this uid owns. `if_owner_gone` (a job epilog's mode, with
    `owner`): only if the owner has no process left but this run's own ancestry
    (procs.ancestry); else nothing is considered and Outcome.owner_present says why.
    `ns` (namespaces.Namespace): the namespace a sweep's child reaps (reap_all), which
    reads only the kinds `only` names there and marks its verdicts with it."""
    if if_owner_gone and owner is None:
        raise ValueError("if_owner_gone needs an owner")
    # The epilog that runs us, and whatever started it, wait for us: they are no job of
    # the owner's, even when they run as the owner (a TaskEpilog, a job script's last
    # line, `runuser`). They count nowhere a user's processes are counted: not here,
    # not in the survey (a POSIX object whose owner lives is idle), not in the re-check
    # before each removal. A process of theirs that is a party (a creator whose pid an
    # object names, a holder) still keeps that object: only the user is judged so.
    skip = procs.ancestry() if if_owner_gone else ()
    with _locked(dry_run, cfg, state_dir, hooks) as held, procs.not_counting(skip):
        # The survey is taken under the lock: a reaper that waited sees what the first
        # one left, so two reapers never both try the same object.
        sv = survey.take(proc_shm, state_dir=state_dir or cfg.state_dir, record=not dry_run,
                         kinds=only if ns is not None else None, ns=ns)  # fmt: skip
        seen = _history(sv, cfg, state_dir, hooks, dry_run or not in_own_namespace(ns))
        if if_owner_gone:
            # Asked after the survey, so that any process of the owner that lived while
            # it was taken is seen (one started since is seen by each object's re-check
            # when it is a party, and by nothing when it is not: it is not ours to wait
            # for). One found: another job of theirs may use any of their objects,
            # even one whose every recorded user has exited.
            assert owner is not None
            found = procs.users([owner])[owner]
            if found.alive is not False:
                return Outcome(sv, [], dry_run, [], _signal(hooks), found)
        verdicts = sv.verdicts
        if only and set(kinds.names()) - set(only):
            verdicts = [v for v in verdicts if v.obj.kind in only]
        if owner is not None:
            verdicts = [v for v in verdicts if v.obj.uid == owner]
        decisions = policy.plan(verdicts, cfg, caller())
        candidates = [Candidate(d.verdict, d.reason, d.rule) for d in decisions if d.remove]
        done = _execute(sv, candidates, cfg, dry_run=dry_run, quarantine=quarantine,
                        state_dir=state_dir, hooks=hooks, held=held)  # fmt: skip
    # execute gives a result per candidate, in order; candidates are the decisions to
    # remove, in order: walk both (no dict of 32,000 ids to build and look up).
    if not dry_run and in_own_namespace(ns):
        _removed(done, quarantine, seen, cfg, state_dir, hooks)
    done_in_order = iter(done)
    results = []
    for d in decisions:
        if d.remove:
            r = next(done_in_order)
            assert r.verdict is d.verdict, "execute must answer every candidate, in order"
            results.append(r)
        else:
            r = Result(d.verdict, Action.KEPT, d.reason, d.rule)
            hooks.on_result(r)
            results.append(r)
    return Outcome(sv, results, dry_run, [], _signal(hooks))


def _history_dir(cfg: _config.Config, state_dir: Optional[Path]) -> Path:
    from shmjanitor.paths import default_state_dir

    return state_dir or cfg.state_dir or default_state_dir()


def _history(sv: survey.Survey, cfg: _config.Config, state_dir: Optional[Path],
             hooks: Hooks, dry_run: bool) -> Any:  # fmt: skip
    """Record the survey in the history store (history.py), which then knows each
    object's maker for the reasons, log lines and JSON of this run. Not a dry run's:
    it writes nothing, not even a state directory."""
    from shmjanitor import history

    if dry_run:
        return history.nothing()

    return history.record(sv.verdicts, sv.kinds, "reap", _history_dir(cfg, state_dir),
                          hooks.on_note, cfg.history_max_age)  # fmt: skip


def _removed(done: Sequence[Result], quarantine: bool, seen: Any, cfg: _config.Config,
             state_dir: Optional[Path], hooks: Hooks) -> None:  # fmt: skip
    from shmjanitor import history

    gone = [(r.verdict.obj, quarantine) for r in done if r.action is Action.REMOVED]
    history.removed(gone, seen.run, _history_dir(cfg, state_dir), hooks.on_note, seen.rows)


def owner_present(u: procs.User) -> str:
    """Why --if-owner-gone removed nothing, in a sentence."""
    who = f"{owner_name(u.uid)} (uid {u.uid})"
    if u.alive:
        try:
            with open(f"/proc/{u.pid}/comm", "rb") as f:
                comm = f.read().rstrip(b"\n").decode(errors="surrogateescape")
            name = f" ({printable(comm)})"
        except OSError:
            name = ""  # exited since: it was there when asked
        return f"{who} still has a process (pid {u.pid}{name}): nothing removed"
    return f"whether {who} has a process left cannot be known ({u.note}): nothing removed"


def _signal(hooks: Hooks) -> Optional[int]:
    return hooks.stop.signum if hooks.stop is not None else None


# States `rm` refuses without --force, and why in a word (the verdict's reason follows).
_IN_USE = {
    State.ATTACHED: "in use",
    State.REMOVING: "in use (removal already pending)",
    State.IDLE: "in use (its creator is alive, or a process that used it last)",
    State.UNKNOWN: "maybe in use (whether its users live cannot be known)",
}


def not_yours(s: IpcObject, who: policy.Caller) -> Optional[str]:
    """Why `who` may not remove `s`, in plain words; None when it may. IPC_RMID needs
    the owner's or the creator's uid, or CAP_SYS_ADMIN, for every kind of object
    (ipc/util.c, ipcctl_obtain_check). The caller says which object ("segment 7: ")."""
    if who.cap_sys_admin or who.euid in (s.uid, s.cuid):
        return None
    owner = owner_name(s.uid)
    may = [owner] if s.cuid in (s.uid, 0) else [owner, f"its creator {owner_name(s.cuid)}"]
    if s.uid != 0:
        may.append("root")
    return f"belongs to {owner}; only {' or '.join(may)} can remove it"


def parse_key(text: str) -> int:
    """A --key value (shmjanitor.keys.parse_key); a bad one is a usage error naming it."""
    from shmjanitor.keys import segment_key

    try:
        return segment_key(text)
    except ValueError as e:
        raise ConfigError(f"--key: {e}") from None


class Named(NamedTuple):
    """An object `rm` is asked for: by its id, or by its key (`by_key`), of one kind; or
    a POSIX object by its path (`path`: its kind is whichever object is there)."""

    kind: str  # a registry name: "shm", "sem", "msg"; "posix" for a path
    value: int
    by_key: bool = False
    path: Optional[str] = None


def rm(named: Sequence[Named], cfg: _config.Config, *, force: bool, dry_run: bool,
       quarantine: bool, state_dir: Optional[Path], proc_shm: Path = survey.scan.PROC_SHM,
       hooks: Hooks = Hooks(), ns: Any = None) -> Outcome:  # fmt: skip
    """Remove the named objects, refusing any that is in use unless `force`. `ns`: the
    namespace a sweep's child acts in (rm_all)."""
    with _locked(dry_run, cfg, state_dir, hooks) as held:
        sv = survey.take(proc_shm, state_dir=state_dir or cfg.state_dir, record=not dry_run,
                         ns=ns)  # fmt: skip
        seen = _history(sv, cfg, state_dir, hooks, dry_run or not in_own_namespace(ns))
        # Ids and keys are per kind: a segment and a semaphore set may share both.
        by_id = {(v.obj.kind, v.obj.id): v for v in sv.verdicts}
        problems: list[str] = []
        wanted: list[tuple[str, int]] = []
        for n in named:
            if n.path is not None:
                found = [(v.obj.kind, v.obj.id) for v in sv.verdicts
                         if getattr(v.obj, "path", None) == n.path]  # fmt: skip
                if not found:
                    problems.append(f"no POSIX object at {n.path}")  # escaped when said
                wanted.extend(found)
                continue
            noun = kinds.of(n.kind).NOUN
            if n.by_key:
                found = [(n.kind, v.obj.id) for v in sv.verdicts
                         if v.obj.key == n.value and v.obj.kind == n.kind]  # fmt: skip
                if not found:
                    problems.append(f"no {noun} with key 0x{n.value:08x}")
                wanted.extend(found)
            elif (n.kind, n.value) in by_id:
                wanted.append((n.kind, n.value))
            else:
                problems.append(f"no {noun} with id {n.value}")
        refused: list[Result] = []
        candidates: list[Candidate] = []
        who = caller()
        for one in dict.fromkeys(wanted):  # once each, in the order named
            v = by_id[one]
            why = not_yours(v.obj, who)
            if why is not None:  # the kernel would say EPERM, or EACCES to the re-check
                refused.append(Result(v, Action.KEPT, why, rules.NOT_PERMITTED))
                continue
            if v.state in _IN_USE and not force:
                refused.append(Result(v, Action.KEPT, (
                    f"refused: {_IN_USE[v.state]}: {v.reason}; --force to remove anyway"
                ), v.rule))  # fmt: skip
                continue
            forced = v.state in _IN_USE
            candidates.append(Candidate(v, "named on the command line"
                                        + (" (--force)" if forced else ""),
                                        rules.FORCED if forced else rules.NAMED))  # fmt: skip
        done = _execute(sv, candidates, cfg, dry_run=dry_run, quarantine=quarantine,
                        state_dir=state_dir, hooks=hooks, held=held, forced=force)  # fmt: skip
    # Every object named was asked for: one kept for any reason (refused as in use,
    # larger than quarantine_max_bytes, changed since the scan) leaves the job undone,
    # exit 1. One "gone" is done: someone else removed it first.
    results = refused + done
    if not dry_run and in_own_namespace(ns):
        _removed(done, quarantine, seen, cfg, state_dir, hooks)
    problems.extend(f"{said(r.verdict, escape=False)}: {r.reason}" for r in results
                    if r.action is Action.KEPT)  # fmt: skip
    return Outcome(sv, results, dry_run, problems, _signal(hooks))


def said(v: Verdict, escape: bool = True) -> str:
    """The object of a verdict in a message: "segment 7", "semaphore set 3", a POSIX
    object by its path (escaped, unless the message is escaped as a whole when said:
    Outcome.problems, which JSON carries as they are)."""
    o = v.obj
    path = getattr(o, "path", None)
    # in a sweep (-A), an object of another namespace says which: ids are per namespace
    ns: Any = v.ns  # a Namespace when not ours
    there = "" if in_own_namespace(ns) else f" in {ns.said()}"
    if path is not None:
        return f"{kinds.kind_of(o).NOUN} {printable(path) if escape else path}{there}"
    return f"{kinds.kind_of(o).NOUN} {o.id}{there}"


# --- every namespace (issue 14): the same run inside each, one child per namespace ------


def _inside(job: Callable[[Any], Outcome], place: Any) -> Outcome:
    o = job(place)
    return o._replace(survey=o.survey.portable())


def _merged(parts: Sequence[Outcome], dry_run: bool, notes: Sequence[str],
            hooks: Hooks) -> Outcome:  # fmt: skip
    sv = survey.merged([o.survey for o in parts], notes)
    return Outcome(
        sv, [r for o in parts for r in o.results], dry_run,
        [p for o in parts for p in o.problems],
        next((o.interrupted for o in parts if o.interrupted), None) or _signal(hooks),
        next((o.owner_present for o in parts if o.owner_present is not None), None),
    )  # fmt: skip


def _each(sweep: Any, hooks: Hooks,
          job: Callable[[Any], Outcome]) -> tuple[list[Outcome], list[str]]:  # fmt: skip
    """job(place) inside each place of the sweep, in order, until a signal stops us;
    a namespace that ended or cannot be entered is a note, not a failure. A failure in
    one namespace (its lock held too long, its run killed) is a problem of the run
    (exit 1) and the others go on: an Outcome of its own says it."""
    from shmjanitor import inside

    parts: list[Outcome] = []
    notes = list(sweep.notes)
    for text in sweep.notes:
        hooks.on_note(text)
    for place in sweep.places:
        if hooks.stop:
            break
        try:
            parts.append(inside.run(place, partial(_inside, job, place), stop=hooks.stop))
        except inside.Vanished:
            text = f"{place.ns.said()} ended before it was entered: its objects went with it"
        except inside.Unreachable as e:
            text = str(e)
        except JanitorError as e:  # inside.Died, LockTimeout, StateDirError, ...
            failed = survey.Survey([], survey.scan.read_limits(), time.time())
            parts.append(Outcome(failed, [], False, [f"in {place.ns.said()}: {e}"]))
            continue
        else:
            continue
        notes.append(text)
        hooks.on_note(text)
    return parts, notes


def reap_all(sweep: Any, cfg: _config.Config, *, dry_run: bool, hooks: Hooks = Hooks(),
             only: Collection[str] = (), **kw: Any) -> Outcome:  # fmt: skip
    """reap() inside every place of a sweep (namespaces.sweep: -A, --namespace), each
    in its namespace with its own lock; one Outcome for all."""
    names = tuple(only) or kinds.names()

    def job(place: Any) -> Outcome:
        return reap(cfg, dry_run=dry_run, hooks=hooks, only=survey.kinds_at(place, names),
                    ns=place.ns, **kw)  # fmt: skip

    parts, notes = _each(sweep, hooks, job)
    return _merged(parts, dry_run, notes, hooks)


def _matches(n: Named, o: Any) -> bool:
    if n.path is not None:
        return getattr(o, "path", None) == n.path
    return bool(o.kind == n.kind and (o.key if n.by_key else o.id) == n.value)


def _what(n: Named) -> str:
    if n.path is not None:
        return f"POSIX object at {n.path}"
    noun = kinds.of(n.kind).NOUN
    return f"{noun} with key 0x{n.value:08x}" if n.by_key else f"{noun} with id {n.value}"


def rm_all(named: Sequence[Named], sweep: Any, cfg: _config.Config, *, dry_run: bool,
           hooks: Hooks = Hooks(), **kw: Any) -> Outcome:  # fmt: skip
    """rm() of each named object in the one namespace of the sweep that has it. Ids and
    keys are per namespace: one found in several is refused before anything is done
    (ConfigError, exit 2: name the namespace with --namespace); one found in none is a
    problem, as rm's."""
    looked = survey.take_all(sweep)
    where: dict[Named, list[Any]] = {}
    for n in named:
        for v in looked.verdicts:
            if _matches(n, v.obj) and v.ns not in where.setdefault(n, []):
                where[n].append(v.ns)
    for n, nss in where.items():
        if len(nss) > 1:
            raise ConfigError(f"the {printable(_what(n))} is in {len(nss)} namespaces "
                              f"({', '.join(ns.said() for ns in nss)}): name one with "
                              "--namespace PID; nothing removed")  # fmt: skip
    problems = [f"no {_what(n)} in any namespace" for n in named if not where.get(n)]
    home = {n: nss[0] for n, nss in where.items() if nss}

    def job(place: Any) -> Outcome:
        mine = [n for n in named if home.get(n) == place.ns and (place.sysv or n.path)]
        if not mine:
            return Outcome(survey.take(kinds=(), ns=place.ns), [], dry_run, [])
        return rm(mine, cfg, dry_run=dry_run, hooks=hooks, ns=place.ns, **kw)

    places = [p for p in sweep.places if p.ns in home.values()]
    parts, notes = _each(sweep._replace(places=places, notes=[]), hooks, job)
    out = _merged(parts, dry_run, [*looked.notes, *notes], hooks)
    return out._replace(problems=problems + out.problems)
