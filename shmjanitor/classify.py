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

from shmjanitor import kinds, procs, rules
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
    rule: str = ""  # the stable code of the rule that decided the state (rules.py)
    # The IPC namespace it is in (namespaces.Namespace), when a sweep read several
    # (list -A, --namespace); None: the one this shmjanitor runs in.
    ns: Optional[Any] = None

    @property
    def obj(self) -> Any:
        """The object judged (the field keeps its name from when shm was the only kind)."""
        return self.segment


def in_own_namespace(ns: Optional[Any]) -> bool:
    """Whether a verdict's `ns` is the IPC namespace this shmjanitor runs in: None (a
    plain survey's) or the one a sweep marks its own. The history keeps these objects
    alone: ids and keys repeat from namespace to namespace."""
    return ns is None or bool(ns.own)


NOBODY = Creator(0, None, None)  # the first party of an object whose table names none


# What an object's parties say, worked out once per distinct tuple of parties: (the
# first party as judged, the second, the reason up to the quiet clause when a party
# lives (else None), the parties' clauses (a repeated pid with the same answer said
# once), whether a party's liveness cannot be known, the rule code the parties decide:
# the live party's when one lives, else the first unknown one's, else the first dead
# one's). A plain tuple: unpacked per object.
Said = tuple[Creator, Optional[Creator], Optional[str], str, bool, str]


def _parties(judged: Sequence[tuple[Party, Creator, str]], verb: str,
             facts: Mapping[int, Proc], users: Mapping[int, User]) -> Said:  # fmt: skip
    creator = judged[0][1] if judged else NOBODY
    last_user = judged[1][1] if len(judged) > 1 else None
    said: list[str] = []
    seen: set[tuple[int, Optional[int], Optional[bool]]] = set()
    unknown: Optional[str] = None
    for p, c, clause in judged:
        if c.alive:
            # The first live party keeps it idle: a worker that attaches now and then
            # outlives the process that made the segment (ipcmk, a parent that exited).
            idle = "; ".join([f"{clause}, may {verb} again", *said])
            return creator, last_user, idle, "", False, party_rule(p, c, facts, users)
        if c.alive is None and unknown is None:
            unknown = party_rule(p, c, facts, users)
        answer = (p.pid, p.uid, c.alive)
        if answer not in seen:  # the creator's pid as last user, say: said once
            seen.add(answer)
            said.append(clause)
    if unknown is not None:
        return creator, last_user, None, "; ".join(said), True, unknown
    rule = party_rule(judged[0][0], judged[0][1], facts, users) if judged else rules.NEVER_USED
    return creator, last_user, None, "; ".join(said), False, rule


_CREATOR_FIELDS = frozenset({"cpid", "name"})  # a creator's pid: shm's cpid, a POSIX name's


def party_rule(p: Party, c: Creator, facts: Mapping[int, Proc], users: Mapping[int, User]
               ) -> str:  # fmt: skip
    """The rule code (rules.py) of a party as judged: why it is alive, dead, or cannot
    be known (liveness.judge_party's answer, named; the evidence it read decides)."""
    if c.alive is None:
        if p.uid is not None:
            u = users.get(p.uid)
            note = u.note if u is not None else None
            if u is not None and u.alive:
                return rules.USER_HAS_PROCESSES
        elif p.pid == 0:
            return rules.PID_UNSEEN
        else:
            f = facts.get(p.pid)
            if f is not None and f.alive:
                return rules.CLOCK_STEP  # alive, but started after its moment by a step
            note = f.note if f is not None else None
        return {procs.HIDDEN: rules.PROC_HIDDEN, procs.FOREIGN: rules.PROC_FOREIGN}.get(
            note or "", rules.CANNOT_KNOW
        )
    if p.uid is not None:
        return rules.OWNER_ALIVE if c.alive else rules.USER_GONE
    if p.field in _CREATOR_FIELDS:
        return rules.CREATOR_ALIVE if c.alive else rules.CREATOR_DEAD
    return rules.LAST_USER_ALIVE if c.alive else rules.LAST_USER_DEAD


def classify(o: IpcObject, facts: Mapping[int, Proc], now: float, clock: Clock = NO_EVIDENCE,
             users: Optional[Mapping[int, User]] = None) -> Verdict:  # fmt: skip
    """One verdict for `o` given process facts looked up at about `now`, with start
    times computed from `clock.btime` (`clock` carries the evidence of clock steps), and
    `users` (procs.users) for a kind whose parties include a user."""
    return classify_all([o], facts, now, clock, users)[0]


def classify_all(
    objects: Iterable[Any],  # IpcObjects: their kinds' NamedTuples
    facts: Mapping[int, Proc],
    now: float,
    clock: Clock = NO_EVIDENCE,
    users: Optional[Mapping[int, User]] = None,
    parties: Optional[Iterable[tuple[Party, ...]]] = None,
    ns: Optional[Any] = None,
) -> list[Verdict]:
    """Verdicts for whole tables, of any kinds. A party's part of a verdict depends only
    on the party (its pid and the moment judged), and a reason's on the tuple of them,
    so each is worked out once, not per object (32,000 segments of one creator).
    `parties`, when given, is each object's kinds.Kind.parties, in the same order."""
    users = users or {}
    name_of = _name_of(facts)
    judged: dict[Party, tuple[Party, Creator, str]] = {}
    by_type: dict[type, _Kind] = {}
    each = iter(parties) if parties is not None else None
    verdicts: list[Verdict] = []
    append = verdicts.append
    last_ps: Optional[tuple[Party, ...]] = None
    last_k: Optional[_Kind] = None
    last_part: Optional[Said] = None
    # The last verdict worked out from the evidence, and the evidence and parties it had
    last_ev: Any = None
    last_said: Optional[Said] = None
    last_ek: Optional[_Kind] = None
    last_verdict: tuple[Any, ...] = ()
    for o in objects:
        k = by_type.get(type(o))
        if k is None:
            k = by_type[type(o)] = _Kind(kinds.kind_of(o))
        ps = next(each) if each is not None else k.parties(o)
        # The very tuple the object before had, of the same kind (a kind that hands
        # one tuple to all objects of an owner): what it said, without hashing it.
        part: Optional[Said] = last_part if ps is last_ps and k is last_k else k.said.get(ps)
        if part is None:
            if len(ps) == 1:  # the common case (nobody ever attached): said directly
                c, clause = judge_party(ps[0], facts, users, clock)
                rule = party_rule(ps[0], c, facts, users)
                part = (c, None, f"{clause}, may {k.verb} again", "", False, rule) \
                    if c.alive else (c, None, None, clause, c.alive is None, rule)  # fmt: skip
            else:
                js = []
                for p in ps:
                    j = judged.get(p)
                    if j is None:
                        j = judged[p] = (p, *judge_party(p, facts, users, clock))
                    js.append(j)
                part = _parties(js, k.verb, facts, users)
            k.said[ps] = part
        last_ps, last_k, last_part = ps, k, part
        # The object before, of the same kind, equal in every field the kind's evidence
        # functions read and with the same parties said: its verdict but the object.
        if k.evidence is not None:
            ev = k.evidence(o)
            if ev == last_ev and part is last_said and k is last_ek:
                append(_new(Verdict, (o, *last_verdict)))
                continue
            last_ev, last_said, last_ek = ev, part, k
        else:
            last_ek = None
        creator, user, idle, clauses, unknown, rule = part
        # The rules, in the module docstring's order. (Verdicts are made with
        # tuple.__new__, as Verdict(...) would without a Python-level call: 32,000.)
        idle_for = max(0, int(now - o.last_used))
        why = k.removing(o)
        if why is not None:
            last_verdict = (REMOVING, why, creator, idle_for, user, rules.REMOVING, ns)
            append(_new(Verdict, (o, *last_verdict)))
            continue
        why = k.in_use(o, name_of)
        if why is not None:
            last_verdict = (ATTACHED, why, creator, idle_for, user, k.in_use_rule, ns)
            append(_new(Verdict, (o, *last_verdict)))
            continue
        quiet = k.quiet(o, now)
        # Interned: a leak is often thousands of objects with one and the same reason.
        if idle is not None:
            state, reason = IDLE, intern(f"{idle}; {quiet}")
        else:
            said = f"{clauses}; {quiet}" if clauses else quiet
            why = k.unknowable(o)
            if why is not None:
                state, reason, rule = UNKNOWN, intern(f"{why}; {said}"), rules.EVIDENCE_UNREADABLE
            else:
                state, reason = UNKNOWN if unknown else ORPHAN, intern(said)
        last_verdict = (state, reason, creator, idle_for, user, rule, ns)
        append(_new(Verdict, (o, *last_verdict)))
    return verdicts


_new = tuple.__new__
REMOVING, ATTACHED, IDLE = State.REMOVING, State.ATTACHED, State.IDLE
UNKNOWN, ORPHAN = State.UNKNOWN, State.ORPHAN


class _Kind:
    """A kind's evidence functions, looked up once per run rather than per object, and
    what its tuples of parties said."""

    def __init__(self, k: kinds.Kind) -> None:
        self.parties = k.parties
        self.removing = k.removing
        self.in_use = k.in_use
        self.quiet = k.quiet
        self.unknowable = k.unknowable
        self.verb = k.VERB
        self.in_use_rule: str = k.IN_USE_RULE
        self.said: dict[tuple[Party, ...], Said] = {}
        # The fields those functions read (kinds/shm.py's EVIDENCE), or None: every
        # object judged on its own.
        self.evidence: Optional[Callable[[Any], Any]] = getattr(k, "EVIDENCE", None)


def _name_of(facts: Mapping[int, Proc]) -> Callable[[int], Optional[str]]:
    def name_of(pid: int) -> Optional[str]:
        """A live process's command name (as /proc says now), for an in-use clause."""
        p = facts.get(pid)
        return p.name if p is not None and p.alive and p.name else None

    return name_of
