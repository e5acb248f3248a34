"""The join: the kernel's tables plus process facts, classified. One read of each."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import groupby, repeat
from operator import add, attrgetter, itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor import kinds, liveness, posixfs, procs, scan
from shmjanitor.classify import State, Verdict, classify_all
from shmjanitor.model import IpcObject, Party

_NONE: Mapping[str, Mapping[str, Optional[int]]] = MappingProxyType({})


class Survey(NamedTuple):
    verdicts: list[Verdict]  # every kind read, in the registry's order, each in table order
    limits: scan.Limits  # shm's (kernel.shmmni, shmall, shmmax), as before kinds
    taken_at: float
    kind_limits: Mapping[str, Mapping[str, Optional[int]]] = _NONE  # kind -> its limits
    kinds: tuple[str, ...] = ()  # the kinds read, in the registry's order
    notes: tuple[str, ...] = ()  # what a sweep of namespaces could not read, and why

    def portable(self) -> Survey:
        """This survey as pickle can carry it (from a sweep's child to its parent)."""
        return self._replace(kind_limits=dict(self.kind_limits))  # type: ignore[arg-type]

    def of(self, kind: str) -> list[Verdict]:
        """The verdicts of one kind, in table order."""
        if self.kinds == (kind,):
            return list(self.verdicts)
        return [v for v in self.verdicts if v.segment.kind == kind]

    def by_kind(self) -> dict[str, list[Verdict]]:
        """of(kind) of every kind read, in one pass: each kind has a class of its own
        (kinds/__init__.py), so `kind` (a property: a Python call) is asked once per
        class, not once per object and kind (6 ms -> 1.5 ms at 10,000 segments)."""
        out: dict[str, list[Verdict]] = {name: [] for name in self.kinds}
        lists: dict[type, list[Verdict]] = {}
        for v in self.verdicts:
            o = v.segment
            found = lists.get(type(o))
            if found is None:  # a kind not read: dropped, as of() never asks for it
                found = lists[type(o)] = out.get(o.kind, [])
            found.append(v)
        return out


def take(path: Path = scan.PROC_SHM, now: Optional[float] = None,
         state_dir: Optional[Path] = None, record: bool = False,
         kinds: Optional[Iterable[str]] = None, ns: Optional[Any] = None) -> Survey:  # fmt: skip
    """Read the tables first, then look at processes: a process that dies in between is
    seen dead, and one whose pid is reused in between is caught by its start time.

    `kinds` names the kinds to read (None: every registered kind). `path` is the shm
    table to read (a test's copy), as before there were kinds; the others read theirs.
    The clock evidence (liveness.observe) is read from `state_dir` (None: the default
    state directory), and written back there with `record` (reap and rm, not dry runs).
    `ns` (namespaces.Namespace): the namespace a sweep reads, for every verdict.
    """
    names = _kinds.names() if kinds is None else _ordered(kinds)
    tables = read(names, path)
    clock = liveness.observe(state_dir, record)
    # One pass of process facts for every kind: each distinct pid is looked up once.
    facts = procs.look_up(tables.pids(), clock.btime or None)  # 0: no btime, no start times
    # Users (a party without a pid) only when some object names one: a walk of /proc.
    uids = tables.uids() if tables.users is None else None
    users = tables.users if uids is None else procs.users(uids) if uids else {}
    taken_at = time.time() if now is None else now
    verdicts = classify_all(tables.objects, facts, taken_at, clock, users, tables.parties, ns)
    limits, kind_limits = _limits(names)
    return Survey(verdicts, limits, taken_at, MappingProxyType(kind_limits), names)


class Tables(NamedTuple):
    """A namespace's objects as read inside it, and each one's parties (kinds.Kind
    .parties), before any process is looked at: what a sweep's child sends back."""

    objects: list[IpcObject]
    parties: list[tuple[Party, ...]]
    # procs.users of the uids some party names, when looked up where the tables were
    # read (whether /proc shows every process of a user depends on the reader's IPC
    # namespace: procs.unseen_ipc_peers); None: not yet.
    users: Optional[Mapping[int, procs.User]] = None
    # The distinct tuples among `parties`, when known (unpacked): what pids() and uids()
    # go through, rather than every object's (one tuple for 100 segments of a leak).
    distinct: Optional[list[tuple[Party, ...]]] = None

    def pids(self) -> set[int]:
        every = self.parties if self.distinct is None else self.distinct
        return {p.pid for ps in every for p in ps}  # a user party's is 0: skipped

    def uids(self) -> set[int]:
        every = self.parties if self.distinct is None else self.distinct
        return {p.uid for ps in every for p in ps if p.uid is not None}

    def packed(self) -> Packed:
        """These tables as a child sends them: plain tuples, and what repeats sent once.

        A NamedTuple is pickled through a Python-level __getnewargs__ and unpickled
        through its class's Python-level __new__; plain tuples are C's work both ways.
        What repeats is sent by index, and so comes back as one object: pickle shares
        only the very same object, not an equal one. Parties repeat (a leak's segments:
        one creator, made in the same second): unpickled and made Parties once each
        (the parent's unpickling and unpacking, 18 -> 8 ms at 100 namespaces of 100
        segments), one object that classify_all recognizes without hashing. So do an
        object's fields but the first two (key and id, of every kind), for a kind that
        says its fields are PLAIN: they are then the very ints of the objects before it
        that have them too, a few cache lines for a whole leak rather than a dozen a
        segment, which every later pass over them reads (classify_all's evidence, the
        JSON's cached parts, the summary): at 100 namespaces of 100 segments, in one
        process, the JSON 22 -> 18 ms and its summary 11 -> 7 ms."""
        # runs of one class: each object's first two fields, and the other fields
        # (of a kind whose fields are PLAIN: the distinct tuples of them, and an index
        # into those for each object; a dict says which are equal, and 0 == False or
        # 1 == 1.0 would make one of another: a plain kind's fields are ints and None)
        objects: list[Any] = self.objects  # NamedTuples of their kinds
        runs: list[Run] = []
        for cls, run in groupby(objects, type):
            rows = list(run)
            if getattr(_kinds.of(rows[0].kind), "PLAIN", False):
                tails: dict[tuple[Any, ...], int] = {}
                which = [tails.setdefault(t, len(tails)) for t in map(_TAIL, rows)]
                runs.append((cls, list(map(_HEAD, rows)), list(tails), which))
            else:
                runs.append((cls, list(map(_HEAD, rows)), list(map(_TAIL, rows)), None))
        distinct: dict[tuple[Party, ...], int] = {}
        index: list[int] = []
        last: Optional[tuple[Party, ...]] = None
        at = -1
        for ps in self.parties:  # the very tuple of the object before (parties_of): no hash
            if ps is not last:
                at, last = distinct.setdefault(ps, len(distinct)), ps
            index.append(at)
        return runs, [tuple(map(tuple, ps)) for ps in distinct], index, self.users

    @staticmethod
    def unpacked(p: Packed) -> Tables:
        runs, distinct, index, users = p
        objects: list[IpcObject] = []
        for cls, heads, tails, which in runs:  # each object: head + its tail, made in C
            rest = tails if which is None else map(tails.__getitem__, which)
            objects += map(_new, repeat(cls), map(add, heads, rest))
        shared = [tuple([_new(Party, x) for x in ps]) for ps in distinct]
        return Tables(objects, list(map(shared.__getitem__, index)), users, shared)


# Tables.packed: runs of objects of one class, the distinct tuples of parties, each
# object's (an index into those), Tables.users. A run: its class, each object's first
# two fields, the tuples of their other fields, and each object's index into those
# (None: one each, in order).
Run = tuple[type, list[tuple[Any, ...]], list[tuple[Any, ...]], Optional[list[int]]]
Packed = tuple[list[Run], list[tuple[tuple[Any, ...], ...]], list[int],
               Optional[Mapping[int, procs.User]]]  # fmt: skip
_new: Callable[..., Any] = tuple.__new__  # a NamedTuple from a tuple, in C
_HEAD, _TAIL = itemgetter(slice(None, 2)), itemgetter(slice(2, None))


def read(names: tuple[str, ...], path: Path = scan.PROC_SHM, users: bool = False) -> Tables:
    """The tables of `names` (in the registry's order), read here. `users`: also which
    users some party names have a process (only when one does: a user party is rare)."""
    # The POSIX kinds share one read of /dev/shm and /dev/mqueue and one pass over /proc
    # (posixfs.snapshot): this survey's own, not one a survey before it left.
    posixfs.forget()
    objects: list[IpcObject] = []
    parties: list[tuple[Party, ...]] = []
    for name in names:
        k = _kinds.of(name)
        found = k.read(path if k.TABLE == scan.PROC_SHM else k.TABLE)
        objects.extend(found)
        parties.extend(parties_of(k, found))
    posixfs.forget()
    tables = Tables(objects, parties)
    if users:
        uids = tables.uids()
        tables = tables._replace(users=procs.users(uids) if uids else {})
    return tables


def parties_of(k: Any, objects: list[Any]) -> list[tuple[Party, ...]]:
    """k.parties of each object: the very tuple of the object before it when the two
    are equal in the kind's EVIDENCE, the fields its parties are read from (kinds/shm.py;
    a leak's segments: one call, not 100)."""
    evidence = getattr(k, "EVIDENCE", None)
    if evidence is None:
        return list(map(k.parties, objects))
    out: list[tuple[Party, ...]] = []
    last: Any = None
    ps: tuple[Party, ...] = ()
    for o, ev in zip(objects, map(evidence, objects)):
        if ev != last:
            last, ps = ev, k.parties(o)
        out.append(ps)
    return out


def _limits(names: tuple[str, ...]) -> tuple[scan.Limits, dict[str, Mapping[str, Optional[int]]]]:
    """shm's limits (Survey.limits) and each kind's, of the namespace we are in."""
    kind_limits: dict[str, Mapping[str, Optional[int]]] = {
        name: _kinds.of(name).limits() for name in names
    }
    shm = kind_limits.get(_SHM)
    return (scan.Limits(**shm) if shm is not None else scan.read_limits()), kind_limits


_kinds = kinds  # `kinds` is also take()'s parameter
_SHM = "shm"  # Survey.limits is shm's, as it was before there were kinds


def _ordered(names: Iterable[str]) -> tuple[str, ...]:
    """The kinds named, in the registry's order (KeyError for one not registered)."""
    wanted = set(names)
    for name in wanted:
        _kinds.of(name)
    return tuple(n for n in _kinds.names() if n in wanted)


class Tally(NamedTuple):
    segments: int  # objects of any kind (the name is from when shm was the only kind)
    bytes: int


def by_state(verdicts: list[Verdict], kind: Optional[str] = None,
             sizes: Optional[Counter[tuple[State, int]]] = None) -> dict[State, Tally]:  # fmt: skip
    """Count and bytes per state, every state present (zeros included) in enum order;
    of one kind, or of all. `sizes`: state_sizes(verdicts), when the caller has it."""
    if kind is not None:
        verdicts = [v for v in verdicts if v.segment.kind == kind]
    counts = {s: [0, 0] for s in State}
    for (state, size), n in (state_sizes(verdicts) if sizes is None else sizes).items():
        c = counts[state]
        c[0] += n
        c[1] += size * n
    return {s: Tally(n, b) for s, (n, b) in counts.items()}


def state_sizes(verdicts: list[Verdict]) -> Counter[tuple[State, int]]:
    """How many objects of each state and size: counted in C, each distinct pair then
    added up once (a leak is many objects of one size; 10,000 segments: 5 -> 1 ms)."""
    return Counter(zip(map(_STATE, verdicts), map(_SIZE, verdicts)))


_STATE, _SIZE = attrgetter("state"), attrgetter("segment.size")


_SYSV = ("shm", "sem", "msg")  # the kinds an IPC namespace holds itself (its tables)


def kinds_at(place: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """The kinds to read at a place of a sweep: its System V tables only where the
    sweep reads them (once per namespace), its POSIX directories only where it has
    some (ours always: they are /dev/shm and /dev/mqueue)."""
    posix = place.ns.own or place.shm is not None or place.mqueue is not None
    return tuple(n for n in names if (place.sysv if n in _SYSV else posix))


JUDGE_BATCH = 16  # namespaces judged together at least, but the last ones (take_all)


def take_all(sweep: Any, kinds: Optional[Iterable[str]] = None,
             state_dir: Optional[Path] = None, record: bool = False) -> Survey:  # fmt: skip
    """One survey of every place of a sweep (namespaces.sweep): each read inside its
    namespace (inside.run_all), its verdicts marked with it; ours gives the limits. A
    namespace that ended before we entered it is said in `notes`, not an error."""
    from shmjanitor import inside

    names = _kinds.names() if kinds is None else _ordered(kinds)
    for name in names:
        _kinds.of(name)  # imported here, once, not again in each child
    notes = list(sweep.notes)

    # A child reads a place's tables only, and the users their parties name (as seen
    # from inside: procs.users); process facts and verdicts are made here: our PID
    # namespace is the child's (setns(CLONE_NEWIPC) changes none), so a pid in any
    # table is one of our /proc, and the kernel printed it as our /proc numbers it.
    def job(place: Any) -> Packed:
        return read(kinds_at(place, names), users=True).packed()

    # The answers are judged as they come, while the children read on: a namespace's
    # processes are looked at after its tables were read (as take() does), in one
    # look_up with those of the others that came meanwhile, JUDGE_BATCH at least (each
    # look_up lists /proc: thousands of processes on a busy host).
    clock = liveness.observe(state_dir, record)
    judged: dict[int, list[Verdict]] = {}
    taken_at = time.time()
    waiting: list[tuple[int, Tables]] = []

    def judge(came: list[tuple[int, Any]], last: bool = False) -> None:
        nonlocal taken_at
        waiting.extend((i, Tables.unpacked(t)) for i, t in came if isinstance(t, tuple))
        if not waiting or (len(waiting) < JUDGE_BATCH and not last):
            return
        facts = procs.look_up(set().union(*(t.pids() for _, t in waiting)), clock.btime or None)
        taken_at = time.time()
        for i, t in waiting:
            judged[i] = classify_all(t.objects, facts, taken_at, clock, t.users, t.parties,
                                     sweep.places[i].ns)  # fmt: skip
        waiting.clear()

    verdicts: list[Verdict] = []
    answers = inside.run_all(sweep.places, job, each=judge)
    judge([], last=True)
    for i, (place, got) in enumerate(zip(sweep.places, answers)):
        if isinstance(got, inside.Vanished):
            notes.append(f"{place.ns.said()} ended before it was read: its objects went with it")
        elif isinstance(got, inside.Unreachable):
            notes.append(str(got))
        elif isinstance(got, Exception):
            raise got
        else:
            verdicts += judged[i]
    limits, kind_limits = _limits(names)  # ours, as merged() gives
    return Survey(verdicts, limits, taken_at, MappingProxyType(kind_limits), names, tuple(notes))


def merged(parts: list[Survey], notes: Iterable[str] = (),
           names: Optional[tuple[str, ...]] = None) -> Survey:  # fmt: skip
    """One survey of the parts a sweep read (verdicts in order); the first part (ours,
    when the sweep has it) gives the limits and the time."""
    base = parts[0] if parts else take(kinds=())
    if names is None:
        names = _ordered({n for p in parts for n in p.kinds})
    verdicts = [v for p in parts for v in p.verdicts]
    return Survey(verdicts, base.limits, base.taken_at, MappingProxyType(dict(base.kind_limits)),
                  names, tuple(notes))  # fmt: skip
