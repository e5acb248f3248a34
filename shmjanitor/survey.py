"""The join: the kernel's tables plus process facts, classified. One read of each."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, Optional

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
    # The POSIX kinds share one read of /dev/shm and /dev/mqueue and one pass over /proc
    # (posixfs.snapshot): this survey's own, not one a survey before it left.
    posixfs.forget()
    objects: list[IpcObject] = []
    parties: list[tuple[Party, ...]] = []
    for name in names:
        k = _kinds.of(name)
        read = k.read(path if k.TABLE == scan.PROC_SHM else k.TABLE)
        objects.extend(read)
        parties.extend(map(k.parties, read))
    clock = liveness.observe(state_dir, record)
    # One pass of process facts for every kind: each distinct pid is looked up once,
    # and users (a party without a pid) only when some object names one.
    every = list(chain.from_iterable(parties))
    pids = {p.pid for p in every}  # a user party's pid is 0, which look_up skips
    uids = {p.uid for p in every if p.uid is not None}
    facts = procs.look_up(pids, clock.btime or None)  # 0: no btime, no start times
    users = procs.users(uids) if uids else {}
    taken_at = time.time() if now is None else now
    verdicts = classify_all(objects, facts, taken_at, clock, users, parties, ns)
    posixfs.forget()
    kind_limits = {name: _kinds.of(name).limits() for name in names}
    shm = kind_limits.get(_SHM)
    limits = scan.Limits(**shm) if shm is not None else scan.read_limits()
    return Survey(verdicts, limits, taken_at, MappingProxyType(kind_limits), names)


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


def by_state(verdicts: list[Verdict], kind: Optional[str] = None) -> dict[State, Tally]:
    """Count and bytes per state, every state present (zeros included) in enum order;
    of one kind, or of all."""
    counts = {s: [0, 0] for s in State}
    for v in verdicts:
        o = v.segment
        if kind is None or o.kind == kind:
            c = counts[v.state]
            c[0] += 1
            c[1] += o.size
    return {s: Tally(n, b) for s, (n, b) in counts.items()}


_SYSV = ("shm", "sem", "msg")  # the kinds an IPC namespace holds itself (its tables)


def kinds_at(place: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """The kinds to read at a place of a sweep: its System V tables only where the
    sweep reads them (once per namespace), its POSIX directories only where it has
    some (ours always: they are /dev/shm and /dev/mqueue)."""
    posix = place.ns.own or place.shm is not None or place.mqueue is not None
    return tuple(n for n in names if (place.sysv if n in _SYSV else posix))


def take_all(sweep: Any, kinds: Optional[Iterable[str]] = None,
             state_dir: Optional[Path] = None, record: bool = False) -> Survey:  # fmt: skip
    """One survey of every place of a sweep (namespaces.sweep): each read inside its
    namespace (inside.run), its verdicts marked with it; ours gives the limits. A
    namespace that ended before we entered it is said in `notes`, not an error."""
    from shmjanitor import inside

    names = _kinds.names() if kinds is None else _ordered(kinds)
    notes = list(sweep.notes)
    parts: list[Survey] = []
    for place in sweep.places:
        wanted = kinds_at(place, names)

        def job(place: Any = place, wanted: tuple[str, ...] = wanted) -> Survey:
            return take(kinds=wanted, state_dir=state_dir, record=record,
                        ns=place.ns).portable()  # fmt: skip

        try:
            parts.append(inside.run(place, job))
        except inside.Vanished:
            notes.append(f"{place.ns.said()} ended before it was read: its objects went with it")
        except inside.Unreachable as e:
            notes.append(str(e))
    return merged(parts, notes, names)


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
