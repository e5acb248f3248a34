"""How `list` shows each kind of object: its columns, its JSON, its summary and footer.

Every kind is shown from the registry: the columns every object has (KEY, ID, OWNER,
PERMS, ..., STATE, REASON) around the kind's own FACTS, in the table, in plain output
and as JSON fields. Nothing here changes when a kind is added.

Segments are the exception that proves it: their table and their JSON (`"segments"`,
the `"summary"` members) are documented in the README as a contract for scripts, and
came before kinds; they keep that shape (render.py: COLUMNS, Cells, SegmentJson).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from json.encoder import encode_basestring_ascii as _ascii
from typing import IO, Any, Callable, NamedTuple, Optional, Union

from shmjanitor import kinds, render
from shmjanitor import survey as _survey
from shmjanitor.accounts import group_name, owner_name
from shmjanitor.classify import in_own_namespace
from shmjanitor.durations import format_age, format_size
from shmjanitor.layout import Col
from shmjanitor.model import Fact, State
from shmjanitor.render import (
    _LITERAL,
    Column,
    _encode,
    _Shared,
    json_string,
    when,
    word,
)
from shmjanitor.text import printable

Verdict = render.Verdict
Row = Callable[[Verdict], tuple[str, ...]]


class Output(NamedTuple):
    """`-o LIST` as given: the column names, and whether they add to the default ones."""

    names: tuple[str, ...]
    extra: bool = False


def parse_output(text: str) -> Output:
    """`-o` as lsipc takes it: "ID,KEY,REASON", or "+RSS,SWAP" to add to the default
    columns. Case does not matter; lsipc's ATTACH and DETACH are ATIME and DTIME.
    ValueError naming a column no kind has."""
    extra = text.startswith("+")
    known = all_columns()
    names = []
    for part in text[extra:].split(","):
        name = part.strip().upper()
        name = render.ALIASES.get(name, name)
        if name not in known:
            raise ValueError(f"unknown column {part.strip()!r} (known: {', '.join(known)})")
        names.append(name)
    return Output(tuple(names), extra)


class Shape:
    """How one kind is shown. `columns` in the order `list --help` shows them."""

    kind: kinds.Kind
    columns: Mapping[str, Column]
    default: tuple[str, ...]

    @property
    def plural(self) -> str:
        return self.kind.PLURAL

    @property
    def array(self) -> str:
        """Its JSON array's name (kinds that share one are listed in it one after the
        other: the POSIX kinds' "posix")."""
        return self.plural

    def chosen(self, output: Optional[Output], spans: bool = False) -> tuple[str, ...]:
        """The columns `-o` names for this kind; ValueError for one it does not have.
        `spans`: the listing spans namespaces (NS and CONTAINER are default columns)."""
        default = render.defaults(self.default, spans)
        if output is None:
            return default
        lacking = [n for n in output.names if n not in self.columns]
        if lacking:
            raise ValueError(f"{', '.join(lacking)}: not a column of {self.plural}")
        if not output.extra:
            return output.names
        return default + tuple(n for n in output.names if n not in render.SPANNING or not spans)

    def sort(self, verdicts: list[Verdict], name: str, commands: Mapping[int, str]) -> None:
        """In place by column `name` (ties, and a column it lacks, in id order)."""
        verdicts.sort(key=_by_id)
        if name != "ID" and name in self.columns:
            verdicts.sort(key=self.columns[name].sort)

    def rows(self, verdicts: Sequence[Verdict], exact_bytes: bool, columns: Sequence[str], *,
             one_word: bool, commands: Mapping[int, str]) -> list[tuple[str, ...]]:  # fmt: skip
        raise NotImplementedError

    def encoder(self, tail: str = "") -> Callable[[Verdict], str]:
        """One object as the JSON text of its array's element; `tail`: members to end it
        with, after "namespace" (',"made_by":null')."""
        raise NotImplementedError

    def summary(self, sv: _survey.Survey, verdicts: list[Verdict]) -> dict[str, Any]:
        """What it adds to the JSON "summary" object."""
        raise NotImplementedError

    def footer(self, sv: _survey.Survey, verdicts: list[Verdict]) -> list[str]:
        raise NotImplementedError


_by_id = render._by_id


class Segments(Shape):
    """The shape the README documents for segments (render.py)."""

    def __init__(self, kind: kinds.Kind) -> None:
        self.kind = kind
        self.columns = render.COLUMNS
        self.default = render.DEFAULT

    def sort(self, verdicts: list[Verdict], name: str, commands: Mapping[int, str]) -> None:
        if name in self.columns:
            render.sort(verdicts, name, commands)
        else:
            verdicts.sort(key=_by_id)

    def rows(self, verdicts: Sequence[Verdict], exact_bytes: bool, columns: Sequence[str], *,
             one_word: bool, commands: Mapping[int, str]) -> list[tuple[str, ...]]:  # fmt: skip
        make = render.Cells(exact_bytes, columns, one_word=one_word, commands=commands)
        return list(map(make.row, verdicts))

    def encoder(self, tail: str = "") -> Callable[[Verdict], str]:
        return render.SegmentJson(tail=tail)

    def summary(self, sv: _survey.Survey, verdicts: list[Verdict]) -> dict[str, Any]:
        return render.summary_json(sv, verdicts)  # its members are the summary's own

    def footer(self, sv: _survey.Survey, verdicts: list[Verdict]) -> list[str]:
        return render.footer_lines(sv, verdicts)


# --- every other kind: the shared columns around its FACTS -------------------------

Cell = Callable[[Verdict, bool], str]  # (verdict, exact bytes) -> text, printable


class _Col(NamedTuple):
    column: Column
    cell: Cell


def _o(f: Callable[[Any], Any]) -> Callable[[Verdict], Any]:
    return lambda v: f(v.segment)


def _none_last(value: Union[int, str, None], descending: bool = False) -> tuple[Any, ...]:
    if value is None:
        return (1, 0)
    if descending and isinstance(value, int):
        return (0, -value)
    return (0, value)


_STATE_ORDER = {s: i for i, s in enumerate(State)}


def _ns_cell(name: str) -> Cell:
    """NS or CONTAINER, ours looked up per row: rows() binds it once instead."""
    return lambda v, _: render.ns_cells(render.ns_of(v))[name](v)


# NS and CONTAINER, as segments have them (render.NS_COLUMNS)
_NS_COLS = {name: _Col(c, _ns_cell(name)) for name, c in render.NS_COLUMNS.items()}

# Before the kind's facts, then after them, then the ones -o may add (as lsipc names
# them; `drop`: which give way first on a narrow terminal, the highest first).
_HEAD = {
    "KEY": _Col(Column(Col("KEY", drop=4), "the key, hex (0x00000000 is IPC_PRIVATE)",
                       _o(lambda o: o.key)), lambda v, _: f"0x{v.segment.key:08x}"),
    "ID": _Col(Column(Col("ID", right=True), "the id", _o(lambda o: o.id)),
               lambda v, _: str(v.segment.id)),
    "OWNER": _Col(Column(Col("OWNER", drop=3, squeeze=True), "the owner's user name (its "
                         "uid when it has none)", lambda v: owner_name(v.segment.uid)),
                  lambda v, _: printable(owner_name(v.segment.uid))),
    "PERMS": _Col(Column(Col("PERMS", drop=30), "permission bits, octal",
                         _o(lambda o: o.perms)), lambda v, _: f"{v.segment.perms:03o}"),
}  # fmt: skip
_TAIL = {
    "IDLE": _Col(Column(Col("IDLE", right=True, drop=2), "time since it was last used or "
                        "changed", lambda v: -v.idle_for), lambda v, _: format_age(v.idle_for)),
    "STATE": _Col(Column(Col("STATE"), "attached, idle, orphan, unknown or removing",
                         lambda v: _STATE_ORDER[v.state]), lambda v, _: v.state.value),
    "REASON": _Col(Column(Col("REASON", wrap=True), "the evidence behind the state",
                          lambda v: v.reason), lambda v, _: printable(v.reason)),
}  # fmt: skip
_MORE = {
    "UID": _Col(Column(Col("UID", right=True), "the owner's uid", _o(lambda o: o.uid)),
                lambda v, _: str(v.segment.uid)),
    "USER": _Col(Column(Col("USER", squeeze=True), "the owner's user name (as OWNER)",
                        lambda v: owner_name(v.segment.uid)),
                 lambda v, _: printable(owner_name(v.segment.uid))),
    "GID": _Col(Column(Col("GID", right=True), "the owner's gid", _o(lambda o: o.gid)),
                lambda v, _: str(v.segment.gid)),
    "GROUP": _Col(Column(Col("GROUP", squeeze=True), "the owner's group name",
                         lambda v: group_name(v.segment.gid)),
                  lambda v, _: printable(group_name(v.segment.gid))),
    "CUID": _Col(Column(Col("CUID", right=True), "the creator's uid", _o(lambda o: o.cuid)),
                 lambda v, _: str(v.segment.cuid)),
    "CUSER": _Col(Column(Col("CUSER", squeeze=True), "the creator's user name",
                         lambda v: owner_name(v.segment.cuid)),
                  lambda v, _: printable(owner_name(v.segment.cuid))),
    "CGID": _Col(Column(Col("CGID", right=True), "the creator's gid", _o(lambda o: o.cgid)),
                 lambda v, _: str(v.segment.cgid)),
    "CGROUP": _Col(Column(Col("CGROUP", squeeze=True), "the creator's group name",
                          lambda v: group_name(v.segment.cgid)),
                   lambda v, _: printable(group_name(v.segment.cgid))),
    "SIZE": _Col(Column(Col("SIZE", right=True), "bytes it holds in the kernel (in bytes "
                        "with --bytes)", _o(lambda o: -o.size)),
                 lambda v, exact: render._bytes(v.segment.size, exact)),
    "CTIME": _Col(Column(Col("CTIME"), "creation or last IPC_SET", _o(lambda o: o.ctime)),
                  lambda v, _: when(v.segment.ctime)),
    **_NS_COLS,
}  # fmt: skip


def _fact(f: Fact, drop: int) -> _Col:
    """A fact's column: times as ISO 8601, bytes as 4K (exact with --bytes), other
    values as they are; "-" for None. Bytes sort largest first, the rest ascending."""
    get = f.get

    def cell(v: Verdict, exact: bool) -> str:
        value = get(v.segment)
        if value is None:
            return "-"
        if f.unit == "time" and isinstance(value, int):
            return when(value)
        if f.unit == "bytes" and isinstance(value, int):
            return render._bytes(value, exact)
        return printable(str(value))

    descending = f.unit == "bytes"
    sort = lambda v: _none_last(get(v.segment), descending)  # noqa: E731
    layout = Col(f.column, right=f.unit != "time", drop=drop)
    return _Col(Column(layout, f.what, sort), cell)


class Facts(Shape):
    """A kind shown from the registry: KEY ID OWNER PERMS, its FACTS, IDLE STATE
    REASON by default; the owner's and creator's ids and names, SIZE and CTIME on
    request (-o)."""

    def __init__(self, kind: kinds.Kind) -> None:
        self.kind = kind
        n = len(kind.FACTS)
        facts = {f.column: _fact(f, 5 + n - i) for i, f in enumerate(kind.FACTS)}
        every = {**_HEAD, **facts, **_TAIL, **_MORE}
        self._cells = {name: c.cell for name, c in every.items()}
        self.columns = {name: c.column for name, c in every.items()}
        self.default = (*_HEAD, *facts, *_TAIL)

    def rows(self, verdicts: Sequence[Verdict], exact_bytes: bool, columns: Sequence[str], *,
             one_word: bool, commands: Mapping[int, str]) -> list[tuple[str, ...]]:  # fmt: skip
        cells = [self._cells[n] for n in columns]
        if any(n in render.SPANNING for n in columns):
            bound = render.ns_cells(render.ours())
            cells = [(lambda v, _, f=bound[n]: f(v)) if n in bound else c  # type: ignore[misc]
                     for n, c in zip(columns, cells)]  # fmt: skip
        last = len(cells) - 1
        w = word if one_word else render._same
        return [
            tuple([w(c(v, exact_bytes)) if i < last else c(v, exact_bytes)
                   for i, c in enumerate(cells)])
            for v in verdicts
        ]  # fmt: skip

    def encoder(self, tail: str = "") -> Callable[[Verdict], str]:
        return FactsJson(self.kind, tail=tail)

    def summary(self, sv: _survey.Survey, verdicts: list[Verdict]) -> dict[str, Any]:
        """{PLURAL: {PLURAL: n, "bytes": b, <its limits>, "states": {...}}}: a kind's
        summary as the segments' is, nested under its name."""
        p = self.plural
        tallies = _survey.by_state(verdicts)
        return {p: {
            p: len(verdicts),
            "bytes": sum(v.segment.size for v in verdicts),
            **sv.kind_limits.get(self.kind.NAME, {}),
            "states": {s.value: {p: t.segments, "bytes": t.bytes} for s, t in tallies.items()},
        }}  # fmt: skip

    def footer(self, sv: _survey.Survey, verdicts: list[Verdict]) -> list[str]:
        """Its count and kernel limits, then the count (and bytes) per state."""
        from shmjanitor.limits import unlimited

        limits = sv.kind_limits.get(self.kind.NAME, {})
        said = [f"kernel.{name} {'unlimited' if unlimited(n) else n}"
                for name, n in limits.items() if n is not None]  # fmt: skip
        total = sum(v.segment.size for v in verdicts)
        first = f"{len(verdicts)} {self.plural}" + (f" ({', '.join(said)})" if said else "")
        if total:
            first += f", {format_size(total)} in all"
        tallies = _survey.by_state(verdicts)
        second = ", ".join(
            f"{s.value} {t.segments}" + (f" ({format_size(t.bytes)})" if total else "")
            for s, t in tallies.items()
        )
        return [first, second]


def _json_value(value: Union[int, str, bool, None]) -> str:
    if value is None or isinstance(value, bool):
        return _LITERAL[value]
    if isinstance(value, int):
        return str(value)
    return json_string(value)


def facts_json(kind: kinds.Kind, v: Verdict) -> dict[str, Any]:
    """One object of a kind shown from its FACTS, as its JSON array holds it: kind, id,
    key (unsigned), owner, uid, gid, cuid, cgid, perms, ctime, its facts, state, reason."""
    o = v.segment
    return {
        "kind": kind.NAME, "id": o.id, "key": o.key, "owner": owner_name(o.uid),
        "uid": o.uid, "gid": o.gid, "cuid": o.cuid, "cgid": o.cgid, "perms": o.perms,
        "ctime": o.ctime, **{f.json: f.get(o) for f in kind.FACTS},
        "state": v.state.value, "reason": v.reason, "rule": v.rule,
        "namespace": render.ns_of(v).as_json(),
    }  # fmt: skip


class FactsJson(_Shared):
    """Encodes a verdict as `json.dumps(facts_json(kind, v), separators=(",", ":"))`
    would: the owner's part once per (uid, gid, cuid, cgid, mode), the state and
    reason once per pair (see render._Shared)."""

    def __init__(self, kind: kinds.Kind, keep: int = 4096, tail: str = "") -> None:
        super().__init__(keep, tail)
        self._head = f'{{"kind":{json_string(kind.NAME)},'
        self._facts = [(json_string(f.json), f.get) for f in kind.FACTS]
        # A kind may write its facts itself, in one call (kinds/sem.py, kinds/msg.py:
        # json_facts), as this loop would: a call per fact is 100 ms at 32,000 queues.
        self._own: Optional[Callable[[Any], str]] = getattr(kind, "json_facts", None)
        self._who: dict[tuple[int, int, int, int, int], str] = {}
        self._verdict: dict[tuple[State, str, str, Any], str] = {}

    def __call__(self, v: Verdict) -> str:
        o = v.segment
        k = (o.uid, o.gid, o.cuid, o.cgid, o.mode)
        who = self._who.get(k) or self._learn(self._who, k, (
            f'"owner":{json_string(owner_name(o.uid))},"uid":{o.uid},"gid":{o.gid},'
            f'"cuid":{o.cuid},"cgid":{o.cgid},"perms":{o.perms},'
        ))  # fmt: skip
        own = self._own
        if own is not None:
            facts = own(o)
        else:
            facts = "".join([f"{name}:{_json_value(get(o))}," for name, get in self._facts])
        kv = (v.state, v.reason, v.rule, v.ns)  # the namespace ends it (render.ns_json)
        verdict = self._verdict.get(kv) or self._learn(self._verdict, kv, (
            f'"state":"{v.state.value}","reason":{json_string(v.reason)},"rule":"{v.rule}"'
            + self._namespace(v)
        ))  # fmt: skip
        return f'{self._head}"id":{o.id},"key":{o.key},{who}"ctime":{o.ctime},{facts}{verdict}'


# --- the POSIX kinds: files, shown by name -------------------------------------------


def _holder_pids(v: Verdict) -> int:
    return len({h.pid for h in v.obj.holders})


def _mode(v: Verdict, _: bool) -> str:
    return f"{v.obj.mode:03o}"


_POSIX_HEAD = {
    "NAME": _Col(Column(Col("NAME", squeeze=True), "its name in its directory (escaped)",
                        _o(lambda o: o.name)), lambda v, _: printable(v.obj.name)),
    "SIZE": _Col(Column(Col("SIZE", right=True, drop=6), "the file's length (st_size; in "
                        "bytes with --bytes)", _o(lambda o: -o.st_size)),
                 lambda v, exact: render._bytes(v.obj.st_size, exact)),
    "USED": _Col(Column(Col("USED", right=True, drop=10), "memory its pages take (st_blocks: a "
                        "sparse file takes less)", _o(lambda o: -o.used_bytes)),
                 lambda v, exact: render._bytes(v.obj.used_bytes, exact)),
}  # fmt: skip
_POSIX_MID = {
    "OWNER": _HEAD["OWNER"],
    "PERMS": _Col(Column(Col("PERMS", drop=30), "mode bits, octal (with setuid, setgid, sticky)",
                         _o(lambda o: o.mode)), _mode),
    "MTIME": _Col(Column(Col("MTIME", drop=20), "time of the last change of its data",
                         _o(lambda o: o.mtime_ns)), lambda v, _: when(v.obj.mtime)),
    "HOLDERS": _Col(Column(Col("HOLDERS", right=True, drop=5), "processes that have it open "
                           "or mapped now (REASON names them)", lambda v: -_holder_pids(v)),
                    lambda v, _: str(_holder_pids(v))),
}  # fmt: skip
_POSIX_MORE = {
    "ID": _Col(Column(Col("ID", right=True), "its inode number (its id in JSON)",
                      _o(lambda o: o.id)), lambda v, _: str(v.obj.id)),
    "PATH": _Col(Column(Col("PATH", squeeze=True), "its path (escaped)", _o(lambda o: o.path)),
                 lambda v, _: printable(v.obj.path)),
    **{n: _MORE[n] for n in ("UID", "USER", "GID", "GROUP")},
    "CTIME": _Col(Column(Col("CTIME"), "time of the last change of its inode",
                         _o(lambda o: o.ctime_ns)), lambda v, _: when(v.obj.ctime)),
    "ATIME": _Col(Column(Col("ATIME"), "time of the last read", _o(lambda o: o.atime_ns)),
                  lambda v, _: when(v.obj.atime)),
    "PROGRAM": _Col(Column(Col("PROGRAM", squeeze=True), "the program its name comes from "
                           "(psm_: Python, torch_: PyTorch)",
                           _o(lambda o: _none_last(o.program))),
                    lambda v, _: printable(v.obj.program or "-")),
    "NAMEPID": _Col(Column(Col("NAMEPID", right=True), "the creator pid its name carries "
                           "(torch_<pid>_...)", _o(lambda o: _none_last(o.name_pid))),
                    lambda v, _: "-" if v.obj.name_pid is None else str(v.obj.name_pid)),
    **_NS_COLS,
}  # fmt: skip


class Posix(Facts):
    """A POSIX kind (posix-shm, posix-sem, posix-mqueue): a file, shown by its name.
    NAME SIZE USED (a queue: its FACTS instead) OWNER PERMS MTIME HOLDERS IDLE STATE
    REASON by default; ID, PATH, ids and names, CTIME, ATIME, PROGRAM, NAMEPID on
    request. Its JSON objects share the array "posix" (posix_json)."""

    def __init__(self, kind: kinds.Kind) -> None:
        self.kind = kind
        n = len(kind.FACTS)
        facts = {f.column: _fact(f, 6 + n - i) for i, f in enumerate(kind.FACTS)}
        head = {"NAME": _POSIX_HEAD["NAME"]} if facts else _POSIX_HEAD
        every = {**head, **facts, **_POSIX_MID, **_TAIL, **_POSIX_HEAD, **_POSIX_MORE}
        self._cells = {name: c.cell for name, c in every.items()}
        self.columns = {name: c.column for name, c in every.items()}
        self.default = (*head, *facts, *_POSIX_MID, *_TAIL)

    @property
    def array(self) -> str:
        return "posix"

    def footer(self, sv: _survey.Survey, verdicts: list[Verdict]) -> list[str]:
        """As every kind's, and how full its file system is (/dev/shm is RAM: a full one
        stops every program that needs it)."""
        lines = super().footer(sv, verdicts)
        try:
            fs = os.statvfs(self.kind.TABLE)
        except OSError:
            return lines
        total = fs.f_blocks * fs.f_frsize
        if total:
            used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
            lines[0] += (f"; {printable(str(self.kind.TABLE))}: {format_size(used)} of "
                         f"{format_size(total)} used")  # fmt: skip
        return lines

    def encoder(self, tail: str = "") -> Callable[[Verdict], str]:
        return PosixJson(self.kind, tail=tail)

    def summary(self, sv: _survey.Survey, verdicts: list[Verdict]) -> dict[str, Any]:
        """{NAME: {"objects": n, "bytes": b, "states": {...}}}: bytes are what they hold
        of memory (pages used; a queue's messages)."""
        tallies = _survey.by_state(verdicts)
        return {self.kind.NAME: {
            "objects": len(verdicts),
            "bytes": sum(t.bytes for t in tallies.values()),  # every object in one state
            **sv.kind_limits.get(self.kind.NAME, {}),
            "states": {s.value: {"objects": t.segments, "bytes": t.bytes}
                       for s, t in tallies.items()},
        }}  # fmt: skip


def _holder_json(h: Any) -> str:
    return (f'{{"pid":{h.pid},"how":{json_string(h.how)},"command":{json_string(h.comm)},'
            f'"user":{json_string(None if h.uid is None else owner_name(h.uid))}}}')  # fmt: skip


def posix_json(kind: kinds.Kind, v: Verdict) -> dict[str, Any]:
    """One POSIX object as the "posix" array holds it (what PosixJson writes)."""
    o = v.obj
    return {
        "kind": kind.NAME, "id": o.id, "path": o.path, "name": o.name, "size": o.st_size,
        "used_bytes": o.used_bytes, "uid": o.uid, "gid": o.gid, "owner": owner_name(o.uid),
        "mode": o.mode, "mtime": o.mtime, "ctime": o.ctime, "atime": o.atime,
        "idle_seconds": v.idle_for, "program": o.program, "name_pid": o.name_pid,
        "holders": [{"pid": h.pid, "how": h.how, "command": h.comm,
                     "user": None if h.uid is None else owner_name(h.uid)} for h in o.holders],
        **{f.json: f.get(o) for f in kind.FACTS},
        "state": v.state.value, "reason": v.reason, "rule": v.rule,
        "namespace": render.ns_of(v).as_json(),
    }  # fmt: skip


class PosixJson(_Shared):
    """Encodes a verdict as `json.dumps(posix_json(kind, v), separators=(",", ":"))`
    would, the owner's part once per (uid, gid, mode), the verdict's once per pair."""

    def __init__(self, kind: kinds.Kind, keep: int = 4096, tail: str = "") -> None:
        super().__init__(keep, tail)
        self._head = f'{{"kind":{json_string(kind.NAME)},'
        self._facts = [(json_string(f.json), f.get) for f in kind.FACTS]
        self._who: dict[tuple[int, int, int], str] = {}
        self._verdict: dict[tuple[State, str, str, Any], str] = {}
        self._dirs: dict[str, str] = {}  # '"/dev/shm/': a path's JSON up to its name

    def __call__(self, v: Verdict) -> str:
        o: Any = v.segment  # the field (v.obj is a property: a Python call per object)
        k = (o.uid, o.gid, o.mode)
        who = self._who.get(k) or self._learn(self._who, k, (
            f'"uid":{o.uid},"gid":{o.gid},"owner":{json_string(owner_name(o.uid))},'
            f'"mode":{o.mode},'
        ))  # fmt: skip
        # Not json_string's cache: a name is nearly always unique.
        name = _ascii(o.name)
        d = self._dirs.get(o.dir) or self._dirs.setdefault(o.dir, json_string(o.dir + "/")[:-1])
        held = ",".join([_holder_json(h) for h in o.holders]) if o.holders else ""
        facts = "".join([f"{key}:{_json_value(get(o))}," for key, get in self._facts]) \
            if self._facts else ""  # fmt: skip
        kv = (v.state, v.reason, v.rule, v.ns)  # the namespace ends it (render.ns_json)
        # A held object's reason names its holders: one part per held object, its
        # namespace's made once (_Shared._namespace).
        verdict = self._verdict.get(kv) or self._learn(self._verdict, kv, (
            f'"state":"{v.state.value}","reason":{json_string(v.reason)},"rule":"{v.rule}"'
            + self._namespace(v)
        ))  # fmt: skip
        pid = "null" if o.name_pid is None else o.name_pid
        program = "null" if o.program is None else json_string(o.program)
        # mtime, ctime, atime as the properties compute them, without their calls
        return (f'{self._head}"id":{o.id},"path":{d}{name[1:]},"name":{name},'
                f'"size":{o.st_size},"used_bytes":{o.used_bytes},{who}'
                f'"mtime":{o.mtime_ns // _NS},"ctime":{o.ctime_ns // _NS},'
                f'"atime":{o.atime_ns // _NS},"idle_seconds":{v.idle_for},'
                f'"program":{program},"name_pid":{pid},"holders":[{held}],{facts}{verdict}')  # fmt: skip


_NS = 1_000_000_000


# --- the registry's shapes ------------------------------------------------------------

# Documented before kinds existed, by the name of their JSON array (the README's schema).
_DOCUMENTED: dict[str, Callable[[kinds.Kind], Shape]] = {"segments": Segments}
POSIX = "posix-"  # the registry's POSIX kinds: posix-shm, posix-sem, posix-mqueue


@cache
def of(name: str) -> Shape:
    """The shape of the kind registered as `name`."""
    kind = kinds.of(name)
    if name.startswith(POSIX):
        return Posix(kind)
    return _DOCUMENTED.get(kind.PLURAL, Facts)(kind)


def all_columns() -> dict[str, Column]:
    """Every column of every registered kind (the first kind's, then new names)."""
    every: dict[str, Column] = {}
    for name in kinds.names():
        for column, c in of(name).columns.items():
            every.setdefault(column, c)
    return every


# --- a listing of one or more kinds ---------------------------------------------------


def json_chunks(sv: _survey.Survey, shown: Mapping[str, list[Verdict]],
                rows: int = 128, made_by: Optional[Mapping[Any, Any]] = None,
                ) -> Iterator[str]:  # fmt: skip
    """{"segments": [...], "semaphores": [...], ..., "posix": [...], "summary": {...}} in
    pieces of `rows` objects, an array for each kind in `shown` (empty ones too; the
    POSIX kinds share one), so the whole text of 32,000 objects never exists at once.
    Small pieces (some 64 KB) are memory the allocator takes back and hands out again
    for the next one; pieces of 4096 objects (2 MB, and as much again encoded for the
    file) were fresh pages each time: 3,400 page faults at 10,000 segments, 230 now.

    `made_by` (history.record's: ident -> MadeBy): each object ends with "made_by",
    its maker as recorded or null; None: no "made_by" at all (no history asked)."""
    summary: dict[str, Any] = {}
    known: Optional[set[tuple[str, int]]] = None  # _known(made_by), once, if a POSIX kind
    sep = "{"
    array = None
    some = False  # the open array has an element
    for name, verdicts in shown.items():
        shape = of(name)
        if made_by is not None and not made_by:
            # "made_by":null on every object: spliced into the text each encoder makes
            # once per namespace and verdict, not added to each object's (a copy of
            # every row: 3 ms of 35 at 10,000 segments)
            encode = shape.encoder(tail=',"made_by":null')
        elif made_by is not None:
            posix = name.startswith(POSIX)
            if posix and known is None:
                known = _known(made_by)
            encode = _with_made_by(shape.encoder(), made_by, known if posix else None)
        else:
            encode = shape.encoder()
        if shape.array != array:
            if array is not None:
                yield "]"
            array, some = shape.array, False
            yield f'{sep}"{array}":['
            sep = ","
        for start in range(0, len(verdicts), rows):
            piece = ",".join([encode(v) for v in verdicts[start : start + rows]])
            yield "," + piece if some else piece
            some = True
        summary.update(shape.summary(sv, verdicts))
    if array is not None:
        yield "]"
    yield f'{sep}"summary":' + _encode(summary) + "}\n"


def _known(made: Mapping[Any, Any]) -> set[tuple[str, int]]:
    """(kind, id) of every ident in `made`. A POSIX object's ident holds its path
    encoded with os.fsencode (15 ms at 10,000 files): it is worked out only for a (kind,
    inode) the history knows, most objects being then one set lookup. (A System V
    ident is cheap: looked up directly.)"""
    return {(k[0], k[1]) for k in made}


def _with_made_by(encode: Callable[[Verdict], str], made: Mapping[Any, Any],
                  known: Optional[set[tuple[str, int]]] = None,
                  ) -> Callable[[Verdict], str]:  # fmt: skip
    """`encode` with a last member "made_by" (an added key: the documented members are
    unchanged), looked up only when something is known (json_chunks splices a null
    into every object when nothing is). `known`: _known(made), for objects whose ident
    holds a path (the POSIX kinds)."""
    from shmjanitor.history import ident

    # Each distinct maker encoded once: the objects one program made, seen in one run,
    # have equal records (a command line is often a kilobyte of text to escape: 7 us
    # an object, 1,000 held objects of one farm).
    tails: dict[Any, str] = {}

    def with_it(v: Verdict) -> str:
        o = v.segment
        # the history keeps our own namespace's objects: another's same id is not one
        m = made.get(ident(o)) if in_own_namespace(v.ns) and \
            (known is None or (o.kind, o.id) in known) else None  # fmt: skip
        tail = "null" if m is None else tails.get(m) or tails.setdefault(m, _encode(m.as_json()))
        return f'{encode(v)[:-1]},"made_by":{tail}}}'

    return with_it


def title(name: str) -> str:
    """The line that starts a kind's section when a listing shows several kinds."""
    return f"{of(name).plural}:"


def plain(shown: Mapping[str, list[Verdict]], exact_bytes: bool, out: IO[str],
          columns: Mapping[str, Sequence[str]], *, header: bool = True,
          commands: Optional[Mapping[int, str]] = None) -> None:  # fmt: skip
    """Each kind's aligned columns (render.plain's), after a line naming it when there
    are several, a blank line between them."""
    several = len(shown) > 1
    for i, (name, verdicts) in enumerate(shown.items()):
        shape = of(name)
        if several:
            out.write(("\n" if i else "") + title(name) + "\n")
        names = columns[name]
        rows = shape.rows(verdicts, exact_bytes, names, one_word=True, commands=commands or {})
        render.write_plain([shape.columns[n].layout for n in names], rows, out, header)


def table(sv: _survey.Survey, shown: Mapping[str, list[Verdict]], exact_bytes: bool,
          out: IO[str], width: Optional[int], color: bool,
          columns: Mapping[str, Sequence[str]], *, header: bool = True, chosen: bool = False,
          commands: Optional[Mapping[int, str]] = None) -> None:  # fmt: skip
    """Each kind's table with its footer (render.table's), after a bold line naming it
    when there are several, a blank line between them."""
    several = len(shown) > 1
    lines: list[str] = []
    for name, verdicts in shown.items():
        shape = of(name)
        if several:
            if lines:
                lines.append("")
            lines.append(render.paint(title(name), "bold" if color else None))
        names = columns[name]
        rows = shape.rows(verdicts, exact_bytes, names, one_word=False, commands=commands or {})
        lines += render.table_lines(
            [shape.columns[n].layout for n in names], rows, verdicts, width, color,
            header=header, chosen=chosen, footer=shape.footer(sv, verdicts),
        )  # fmt: skip
    out.write("\n".join(lines) + "\n")


__all__ = ["Facts", "FactsJson", "Output", "Posix", "PosixJson", "Segments", "Shape",
           "all_columns", "facts_json", "json_chunks", "of", "parse_output", "plain",
           "posix_json", "table", "title"]  # fmt: skip
