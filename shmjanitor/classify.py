"""Give every object one state and a reason built from the evidence. Pure.

The same rules for every kind; what counts as evidence is the kind's (kinds.Kind). In
order, each one an early return (as systemd's clean-ipc.c filters):

  removing  the kind says IPC_RMID was called and the kernel frees it later
            (a segment's SHM_DEST)
  attached  the kind says a process uses it now (a segment's nattch > 0)
  idle      a party (a process the table names: a segment's creator, its last user)
            is alive: it may use it again
  unknown   none is alive, and whether one lives cannot be known, or the kind could
            not read all of its evidence of use
  orphan    nobody could be using it: every party is dead (exited, zombie, or its pid
            recycled), or the table names none

Liveness (alive, dead, cannot know) is liveness.judge's; "cannot know" is never dead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from sys import intern
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import kinds
from shmjanitor.liveness import NO_EVIDENCE, Clock, judge_party
from shmjanitor.model import Creator, IpcObject, Party, State
from shmjanitor.procs import Proc, User
from shmjanitor.scan import Segment

__all__ = ["Creator", "State", "Verdict", "classify", "classify_all"]


class Verdict(NamedTuple):
    segment: Segment  # the object judged, of any kind: new code reads it as `obj`
    state: State
    reason: str
    creator: Creator  # the first party as judged (a segment's creator)
    idle_for: int  # seconds since the object was last used (its last_used)
    last_user: Optional[Creator] = None  # the second party (a segment's lpid); None: none

    @property
    def obj(self) -> Any:
        """The object judged (the field keeps its name from when shm was the only kind)."""
        return self.segment


NOBODY = Creator(0, None, None)  # the first party of an object whose table names none


class _Parties(NamedTuple):
    """What an object's parties say, worked out once per distinct tuple of parties."""

    creator: Creator
    last_user: Optional[Creator]
    idle: Optional[str]  # the reason up to the quiet clause when a party lives, else None
    clauses: str  # the parties' clauses, a repeated pid with the same answer said once
    unknown: bool  # a party whose liveness cannot be known


def _parties(judged: Sequence[tuple[Party, Creator, str]], verb: str) -> _Parties:
    if len(judged) == 1:  # the common case (a segment nobody attached): said directly
        _, c, clause = judged[0]
        if c.alive:
            return _Parties(c, None, f"{clause}, may {verb} again", "", False)
        return _Parties(c, None, None, clause, c.alive is None)
    creator = judged[0][1] if judged else NOBODY
    last_user = judged[1][1] if len(judged) > 1 else None
    said: list[str] = []
    seen: set[tuple[int, Optional[int], Optional[bool]]] = set()
    unknown = False
    for p, c, clause in judged:
        if c.alive:
            # The first live party keeps it idle: a worker that attaches now and then
            # outlives the process that made the segment (ipcmk, a parent that exited).
            idle = "; ".join([f"{clause}, may {verb} again", *said])
            return _Parties(creator, last_user, idle, "", False)
        unknown = unknown or c.alive is None
        answer = (p.pid, p.uid, c.alive)
        if answer not in seen:  # the creator's pid as last user, say: said once
            seen.add(answer)
            said.append(clause)
    return _Parties(creator, last_user, None, "; ".join(said), unknown)


def classify(o: IpcObject, facts: Mapping[int, Proc], now: float, clock: Clock = NO_EVIDENCE,
             users: Optional[Mapping[int, User]] = None) -> Verdict:  # fmt: skip
    """One verdict for `o` given process facts looked up at about `now`, with start
    times computed from `clock.btime` (`clock` carries the evidence of clock steps), and
    `users` (procs.users) for a kind whose parties include a user."""
    return classify_all([o], facts, now, clock, users)[0]


def classify_all(
    objects: Iterable[IpcObject],
    facts: Mapping[int, Proc],
    now: float,
    clock: Clock = NO_EVIDENCE,
    users: Optional[Mapping[int, User]] = None,
    parties: Optional[Iterable[tuple[Party, ...]]] = None,
) -> list[Verdict]:
    """Verdicts for whole tables, of any kinds. A party's part of a verdict depends only
    on the party (its pid and the moment judged), and a reason's on the tuple of them,
    so each is worked out once, not per object (32,000 segments of one creator).
    `parties`, when given, is each object's kinds.Kind.parties, in the same order."""
    users = users or {}
    name_of = _name_of(facts)
    judged: dict[Party, tuple[Party, Creator, str]] = {}
    by_type: dict[type, tuple[kinds.Kind, dict[tuple[Party, ...], _Parties]]] = {}
    each = iter(parties) if parties is not None else None
    verdicts = []
    for o in objects:
        kind = by_type.get(type(o))
        if kind is None:
            kind = by_type[type(o)] = (kinds.kind_of(o), {})
        k, said = kind
        ps = next(each) if each is not None else k.parties(o)
        part = said.get(ps)
        if part is None:
            if len(ps) == 1:  # the tuple's cache is the party's
                js = [(ps[0], *judge_party(ps[0], facts, users, clock))]
            else:
                js = []
                for p in ps:
                    j = judged.get(p)
                    if j is None:
                        j = judged[p] = (p, *judge_party(p, facts, users, clock))
                    js.append(j)
            part = said[ps] = _parties(js, k.VERB)
        verdicts.append(_verdict(o, k, part, name_of, now))
    return verdicts


def _name_of(facts: Mapping[int, Proc]) -> Callable[[int], Optional[str]]:
    def name_of(pid: int) -> Optional[str]:
        """A live process's command name (as /proc says now), for an in-use clause."""
        p = facts.get(pid)
        return p.name if p is not None and p.alive and p.name else None

    return name_of


def _verdict(o: Any, k: kinds.Kind, part: _Parties, name_of: Callable[[int], Optional[str]],
             now: float) -> Verdict:  # fmt: skip
    idle_for = max(0, int(now - o.last_used))
    creator, user = part.creator, part.last_user
    why = k.removing(o)
    if why is not None:
        return Verdict(o, State.REMOVING, why, creator, idle_for, user)
    why = k.in_use(o, name_of)
    if why is not None:
        return Verdict(o, State.ATTACHED, why, creator, idle_for, user)
    quiet = k.quiet(o, now)
    # Interned: a leak is often thousands of objects with one and the same reason.
    if part.idle is not None:
        return Verdict(o, State.IDLE, intern(f"{part.idle}; {quiet}"), creator, idle_for, user)
    said = f"{part.clauses}; {quiet}" if part.clauses else quiet
    why = k.unknowable(o)
    if why is not None:
        return Verdict(o, State.UNKNOWN, intern(f"{why}; {said}"), creator, idle_for, user)
    if part.unknown:
        return Verdict(o, State.UNKNOWN, intern(said), creator, idle_for, user)
    return Verdict(o, State.ORPHAN, intern(said), creator, idle_for, user)
