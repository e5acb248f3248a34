"""Show verdicts: a coloured table for people, plain columns for pipes, JSON for scripts.

Nothing here reads the kernel or removes anything: verdicts in, text out. Names and
reasons come from outside (a process names itself), so every text cell goes through
text.printable; JSON escapes them itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from functools import lru_cache
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from operator import attrgetter
from typing import IO, Any, Callable, NamedTuple, Optional, TypeVar

from shmjanitor import survey as _survey
from shmjanitor.accounts import group_name, owner_name
from shmjanitor.classify import Creator, State, Verdict
from shmjanitor.durations import format_age, format_size
from shmjanitor.layout import Col, draw, natural, paint, wrap_lines
from shmjanitor.scan import Segment
from shmjanitor.text import printable

PAGE_SIZE = 4096
_T = TypeVar("_T")


class Format(str, Enum):
    AUTO = "auto"  # table on a terminal, plain otherwise
    TABLE = "table"
    PLAIN = "plain"
    JSON = "json"


STATE_STYLE = {
    State.ATTACHED: "green",
    State.IDLE: "cyan",
    State.ORPHAN: "bold red",
    State.UNKNOWN: "yellow",
    State.REMOVING: "magenta",
}


def word(text: str) -> str:
    """`text` as one field of plain output: a space becomes \\x20, as lsipc --raw writes
    it (text.printable has already doubled every backslash, so this stays reversible)."""
    return text.replace(" ", "\\x20")


def creator_cell(v: Verdict) -> str:
    """The creator's command name while it lives; "-" once it is gone or unknown (the
    reason says which)."""
    c = v.creator
    return printable(c.name) if c.alive and c.name else "-"


def last_user_cell(v: Verdict) -> str:
    u = v.last_user
    return printable(u.name) if u is not None and u.alive and u.name else "-"


@lru_cache(maxsize=65536)
def when(t: Optional[int]) -> str:
    """A time as one word, ISO 8601 in local time (lsipc --time-format=iso); "-" never."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _bytes(n: Optional[int], exact: bool) -> str:
    return "-" if n is None else str(n) if exact else format_size(n)


class Column(NamedTuple):
    layout: Col  # header, alignment, and how it gives way on a narrow terminal
    doc: str  # one line for --help and the README
    sort: Callable[[Verdict], Any]  # --sort's key (ties stay in id order)


def _sv(f: Callable[[Segment], Any]) -> Callable[[Verdict], Any]:
    return lambda v: f(v.segment)


def ns_of(v: Verdict, here: Any = None) -> Any:
    """The IPC namespace (namespaces.Namespace) a verdict's object is in: the one a
    sweep read it in, else ours (a verdict of a plain survey has none): `here`, when
    the caller looked ours() up once for many verdicts (a stat(2) a call)."""
    ns = v.ns
    return ns if ns is not None else here or ours()


def ours() -> Any:
    """The namespace this shmjanitor runs in (namespaces.here)."""
    from shmjanitor.namespaces import here

    return here()


def ns_cells(ours: Any) -> dict[str, Callable[[Verdict], str]]:
    """The NS and CONTAINER cells, `ours` (namespaces.here()) for a verdict without a
    namespace: looked up once per listing, not once per row."""
    return {
        "NS": lambda v: str((v.ns or ours).ipc),
        "CONTAINER": lambda v: printable((v.ns or ours).container or "-"),
    }


def _container_order(v: Verdict) -> tuple[bool, str]:
    c = ns_of(v).container
    return (c is None, c or "")  # "-" (no container) after the named ones


_STATE_ORDER = {s: i for i, s in enumerate(State)}
_NONE_LAST = 1 << 80  # sorts after every real size: rss/swap of kernels without them

# Every kind's, for every object: the IPC namespace it is in (issue 14). Default columns,
# first (as kubectl get -A puts NAMESPACE first), when a listing spans namespaces.
NS_COLUMNS: dict[str, Column] = {
    "NS": Column(Col("NS", right=True, drop=7), "its IPC namespace: N of ipc:[N] (default "
                 "with -A)", lambda v: ns_of(v).ipc),
    "CONTAINER": Column(Col("CONTAINER", squeeze=True, drop=6), "its namespace's container "
                        "or unit, else - (default with -A)", _container_order),
}  # fmt: skip
SPANNING = tuple(NS_COLUMNS)

# Every column of list's table and plain output, in the order `list --help` shows them.
# `drop` orders which columns give way on a narrow terminal (the highest first): the
# permission bits and pids matter least, the state and its reason most.
COLUMNS: dict[str, Column] = {
    "KEY": Column(Col("KEY", drop=4), "the key, hex (0x00000000 is IPC_PRIVATE)",
                  _sv(lambda s: s.key)),
    "ID": Column(Col("ID", right=True), "the segment id (shmid)", _sv(lambda s: s.id)),
    "OWNER": Column(Col("OWNER", drop=3, squeeze=True), "the owner's user name (its uid "
                    "when it has none)", lambda v: owner_name(v.segment.uid)),
    "PERMS": Column(Col("PERMS", drop=12), "permission bits, octal", _sv(lambda s: s.perms)),
    "SIZE": Column(Col("SIZE", right=True, drop=5), "size (in bytes with --bytes)",
                   _sv(lambda s: -s.size)),
    "NATTCH": Column(Col("NATTCH", right=True, drop=10), "processes attached",
                     _sv(lambda s: -s.nattch)),
    "CPID": Column(Col("CPID", right=True, drop=9), "the creator's pid (0: not visible "
                   "from here)", _sv(lambda s: s.cpid)),
    "CREATOR": Column(Col("CREATOR", drop=8, squeeze=True), "the creator's command name "
                      "while it lives, else -", creator_cell),
    "LPID": Column(Col("LPID", right=True, drop=11), "pid of the last attach or detach",
                   _sv(lambda s: s.lpid)),
    "IDLE": Column(Col("IDLE", right=True, drop=2), "time since the last attach, detach "
                   "or change", lambda v: -v.idle_for),
    "STATE": Column(Col("STATE"), "attached, idle, orphan, unknown or removing",
                    lambda v: _STATE_ORDER[v.state]),
    "REASON": Column(Col("REASON", wrap=True), "the evidence behind the state",
                     lambda v: v.reason),
    "UID": Column(Col("UID", right=True), "the owner's uid", _sv(lambda s: s.uid)),
    "USER": Column(Col("USER", squeeze=True), "the owner's user name (as OWNER)",
                   lambda v: owner_name(v.segment.uid)),
    "GID": Column(Col("GID", right=True), "the owner's gid", _sv(lambda s: s.gid)),
    "GROUP": Column(Col("GROUP", squeeze=True), "the owner's group name",
                    lambda v: group_name(v.segment.gid)),
    "CUID": Column(Col("CUID", right=True), "the creator's uid", _sv(lambda s: s.cuid)),
    "CUSER": Column(Col("CUSER", squeeze=True), "the creator's user name",
                    lambda v: owner_name(v.segment.cuid)),
    "CGID": Column(Col("CGID", right=True), "the creator's gid", _sv(lambda s: s.cgid)),
    "CGROUP": Column(Col("CGROUP", squeeze=True), "the creator's group name",
                     lambda v: group_name(v.segment.cgid)),
    "RSS": Column(Col("RSS", right=True), "resident memory (- if the kernel does not say)",
                  _sv(lambda s: -s.rss if s.rss is not None else _NONE_LAST)),
    "SWAP": Column(Col("SWAP", right=True), "swapped-out memory",
                   _sv(lambda s: -s.swap if s.swap is not None else _NONE_LAST)),
    "CTIME": Column(Col("CTIME"), "creation or last IPC_SET", _sv(lambda s: s.ctime)),
    "ATIME": Column(Col("ATIME"), "last attach (- never)", _sv(lambda s: s.atime or 0)),
    "DTIME": Column(Col("DTIME"), "last detach (- never)", _sv(lambda s: s.dtime or 0)),
    "STATUS": Column(Col("STATUS"), "dest (IPC_RMID called), locked (SHM_LOCK), or -",
                     _sv(lambda s: (s.dest, s.locked))),
    "COMMAND": Column(Col("COMMAND", wrap=True), "the live creator's command line, else -",
                      lambda v: (v.creator.alive is not True, v.creator.name or "")),
    "LAST_USER": Column(Col("LAST_USER", squeeze=True), "the last user's (lpid's) command "
                        "name while it lives, else -", last_user_cell),
    **NS_COLUMNS,
}  # fmt: skip
ALIASES = {"ATTACH": "ATIME", "DETACH": "DTIME"}  # lsipc's names for them
DEFAULT = ("KEY", "ID", "OWNER", "PERMS", "SIZE", "NATTCH", "CPID", "CREATOR", "LPID",
           "IDLE", "STATE", "REASON")  # fmt: skip


def defaults(default: tuple[str, ...], spans: bool) -> tuple[str, ...]:
    """A kind's default columns; NS and CONTAINER first when the listing spans
    namespaces (list -A, --namespace)."""
    return SPANNING + default if spans else default


def parse_columns(text: str) -> tuple[str, ...]:
    """`-o` as lsipc takes it: "ID,KEY,REASON", or "+RSS,SWAP" to add to the default
    columns. Case does not matter. ValueError naming the column it does not know."""
    extra = text.startswith("+")
    names = []
    for part in text[extra:].split(","):
        name = part.strip().upper()
        name = ALIASES.get(name, name)
        if name not in COLUMNS:
            raise ValueError(f"unknown column {part.strip()!r} (known: {', '.join(COLUMNS)})")
        names.append(name)
    return (DEFAULT + tuple(names)) if extra else tuple(names)


def _sort_key(name: str, commands: Mapping[int, str]) -> Callable[[Verdict], Any]:
    if name == "COMMAND":  # a live creator's command line; the others ("-") after them
        return lambda v: (not v.creator.alive, commands.get(v.creator.pid, ""))
    return COLUMNS[name].sort


def sort(verdicts: list[Verdict], name: str, commands: Mapping[int, str]) -> None:
    """In place, by column `name`: numbers ascending except the sizes, NATTCH and IDLE
    (largest first); the state in the order of the States table; ties in id order."""
    verdicts.sort(key=_by_id)
    if name != "ID":
        verdicts.sort(key=_sort_key(name, commands))


_by_id = attrgetter("segment.id")


def cells(v: Verdict, exact_bytes: bool) -> tuple[str, ...]:
    """A row of the default columns (`Cells` makes the same, faster), one word each but
    the reason."""
    s = v.segment
    return (
        f"0x{s.key:08x}",
        str(s.id),
        word(printable(owner_name(s.uid))),
        f"{s.perms:03o}",
        str(s.size) if exact_bytes else format_size(s.size),
        str(s.nattch),
        str(s.cpid),
        word(creator_cell(v)),
        str(s.lpid),
        format_age(v.idle_for),
        v.state.value,
        printable(v.reason),
    )


class _Shared:
    """Parts of a row that many segments share, made once per distinct value.

    A leak is thousands of segments of one owner and mode left by one creator: the
    parts of a row that depend only on those are the same for all of them. At most
    `keep` distinct parts are remembered, so 32,000 different creators do not hold
    32,000 extra strings.
    """

    def __init__(self, keep: int = 4096, tail: str = "") -> None:
        self._keep = keep
        self._tail = tail  # members after "namespace" (ns_json)
        self._ns: dict[Any, str] = {}  # verdict.ns -> its namespace's part

    def _namespace(self, v: Verdict) -> str:
        """The end of `v`'s object: its namespace's member and the tail (ns_json), made
        once per namespace. ns_of of a verdict read in ours is namespaces.here(), a
        stat(2) a call: 32,000 segments of as many dead creators (a reason each) paid
        0.4 s of 2.3 under cProfile when each made it."""
        ns = v.ns
        part = self._ns.get(ns)
        if part is None:
            part = self._ns[ns] = ns_json(ns_of(v), self._tail)
        return part

    def _learn(self, known: dict[Any, _T], key: Any, part: _T) -> _T:
        if len(known) >= self._keep:
            known.clear()
        known[key] = part
        return part


class Cells(_Shared):
    """The cells of a row, for plain output (`one_word`: every cell but the last one
    word) or the table. The default columns are made as `cells(v, exact_bytes)` makes
    them, owner and perms once per uid and mode, creator, state and reason once per
    verdict (tests/test_render.py checks it); other `columns` from their getters.
    `commands` maps a live creator's pid to its command line (the COMMAND column).
    """

    def __init__(self, exact_bytes: bool, columns: Sequence[str] = DEFAULT, *,
                 one_word: bool = True, commands: Optional[Mapping[int, str]] = None,
                 keep: int = 4096) -> None:  # fmt: skip
        super().__init__(keep)
        self._exact = exact_bytes
        self._w = word if one_word else _same
        self._who: dict[tuple[int, int], tuple[str, str]] = {}
        self._verdict: dict[tuple[State, str, Creator], tuple[str, str, str]] = {}
        self.columns = tuple(columns)
        self._commands = commands or {}
        self.row: Callable[[Verdict], tuple[str, ...]] = self._default  # the hot path
        if self.columns != DEFAULT:
            last = len(self.columns) - 1
            self._getters = [self._getter(n, one_word and i < last)
                             for i, n in enumerate(self.columns)]  # fmt: skip
            self.row = self._custom

    def __call__(self, v: Verdict) -> tuple[str, ...]:
        return self.row(v)

    def _default(self, v: Verdict) -> tuple[str, ...]:
        s, vstate, vreason, vcreator, idle_for, _, _, _ = v  # unpacked at once, as SegmentJson
        key, id_, mode, size, cpid, lpid, nattch, uid = s[:8]
        k = (uid, mode)
        owner, perms = self._who.get(k) or self._learn(self._who, k, (
            self._w(printable(owner_name(uid))), f"{s.perms:03o}"
        ))  # fmt: skip
        kv = (vstate, vreason, vcreator)
        creator, state, reason = self._verdict.get(kv) or self._learn(self._verdict, kv, (
            self._w(creator_cell(v)), vstate.value, printable(vreason)
        ))  # fmt: skip
        return (f"0x{key:08x}", str(id_), owner, perms,
                str(size) if self._exact else format_size(size), str(nattch), str(cpid),
                creator, str(lpid), format_age(idle_for), state, reason)  # fmt: skip

    def _custom(self, v: Verdict) -> tuple[str, ...]:
        base = self._default(v)
        return tuple([get(v, base) for get in self._getters])

    def _getter(self, name: str, one_word: bool) -> Callable[[Verdict, tuple[str, ...]], str]:
        w = word if one_word else _same
        if name in DEFAULT:
            i = DEFAULT.index(name)
            if name == "REASON" and one_word:  # not last: one word too
                return lambda v, b: word(b[i])
            return lambda v, b: b[i]
        if name in NS_COLUMNS:
            cell = ns_cells(ours())[name]
            return lambda v, b: w(cell(v))
        exact, commands = self._exact, self._commands
        get: dict[str, Callable[[Verdict], str]] = {
            "UID": lambda v: str(v.segment.uid),
            "GID": lambda v: str(v.segment.gid),
            "CUID": lambda v: str(v.segment.cuid),
            "CGID": lambda v: str(v.segment.cgid),
            "USER": lambda v: w(printable(owner_name(v.segment.uid))),
            "GROUP": lambda v: w(printable(group_name(v.segment.gid))),
            "CUSER": lambda v: w(printable(owner_name(v.segment.cuid))),
            "CGROUP": lambda v: w(printable(group_name(v.segment.cgid))),
            "RSS": lambda v: _bytes(v.segment.rss, exact),
            "SWAP": lambda v: _bytes(v.segment.swap, exact),
            "CTIME": lambda v: when(v.segment.ctime),
            "ATIME": lambda v: when(v.segment.atime),
            "DTIME": lambda v: when(v.segment.dtime),
            "STATUS": lambda v: _status(v.segment),
            "COMMAND": lambda v: w(commands.get(v.creator.pid, "-") if v.creator.alive else "-"),
            "LAST_USER": lambda v: w(last_user_cell(v)),
        }  # fmt: skip
        one = get[name]
        return lambda v, b: one(v)


def _same(text: str) -> str:
    return text


def _status(s: Segment) -> str:
    flags = [name for name, on in (("dest", s.dest), ("locked", s.locked)) if on]
    return ",".join(flags) or "-"


def plain(verdicts: list[Verdict], exact_bytes: bool, out: IO[str],
          columns: Sequence[str] = DEFAULT, *, header: bool = True,
          commands: Optional[Mapping[int, str]] = None) -> None:  # fmt: skip
    """Aligned columns, a header line, no colour and no footer: made for grep and awk.

    Every column but the last is one word (REASON, last by default, is the sentence),
    so header and rows have the same number of fields for awk. One format pattern
    aligns a whole row, and rows go out a few thousand at a time.
    """
    make = Cells(exact_bytes, columns, commands=commands)
    write_plain([COLUMNS[n].layout for n in make.columns], list(map(make.row, verdicts)), out,
                header)  # fmt: skip


def write_plain(heads: Sequence[Col], rows: Sequence[Sequence[str]], out: IO[str],
                header: bool = True) -> None:  # fmt: skip
    """Rows of cells (every one a word but the last) as aligned columns to `out`."""
    widths = natural(heads, rows, header)
    last = len(heads) - 1
    row = (
        " ".join(f"{{:{'>' if c.right else '<'}{w}}}" for c, w in zip(heads, widths[:last]))
        + (" {}\n" if last else "{}\n")
    ).format
    if header:
        out.write(row(*(c.header for c in heads)))
    for start in range(0, len(rows), 4096):
        out.write("".join([row(*r) for r in rows[start : start + 4096]]))


def segment_json(v: Verdict) -> dict[str, Any]:
    """One segment as the README's JSON schema documents it (a contract for scripts)."""
    s = v.segment
    c, u = v.creator, v.last_user
    return {
        "id": s.id,
        "key": s.key,
        "owner": owner_name(s.uid),
        "uid": s.uid,
        "gid": s.gid,
        "cuid": s.cuid,
        "cgid": s.cgid,
        "perms": s.perms,
        "dest": s.dest,
        "locked": s.locked,
        "size": s.size,
        "nattch": s.nattch,
        "cpid": s.cpid,
        "lpid": s.lpid,
        "atime": s.atime,
        "dtime": s.dtime,
        "ctime": s.ctime,
        "rss": s.rss,
        "swap": s.swap,
        "idle_seconds": v.idle_for,
        "state": v.state.value,
        "reason": v.reason,
        "rule": v.rule,
        "creator": {"pid": c.pid, "alive": c.alive, "name": c.name},
        "last_user": None if u is None else {"pid": u.pid, "alive": u.alive, "name": u.name},
        "namespace": ns_of(v).as_json(),
    }


def summary_json(sv: _survey.Survey, verdicts: list[Verdict]) -> dict[str, Any]:
    sizes = _survey.state_sizes(verdicts)  # one pass for the states and the pages
    tallies = _survey.by_state(verdicts, sizes=sizes)
    return {
        "segments": len(verdicts),
        "bytes": sum(t.bytes for t in tallies.values()),  # every segment in one state
        "pages": pages(sizes),
        "shmmni": sv.limits.shmmni,
        "shmall": sv.limits.shmall,
        "states": {s.value: {"segments": t.segments, "bytes": t.bytes} for s, t in tallies.items()},
    }


def pages(sizes: Mapping[tuple[Any, int], int]) -> int:
    """The pages of the objects `sizes` counts (survey.state_sizes: per state and size):
    once per distinct size (a leak is many segments of a few sizes)."""
    return sum((size + PAGE_SIZE - 1) // PAGE_SIZE * n for (_, size), n in sizes.items())


_encode = json.JSONEncoder(separators=(",", ":")).encode
_LITERAL = {True: "true", False: "false", None: "null"}


@lru_cache(maxsize=65536)
def json_string(text: Optional[str]) -> str:
    """A JSON string (or null); cached, since owners and reasons repeat down a table.

    ASCII only: every control character, non-ASCII character and lone surrogate is a
    \\uXXXX escape, so a hostile process name reaches a terminal only as text.
    """
    return "null" if text is None else encode_basestring_ascii(text)


@lru_cache(maxsize=1024)
def ns_json(ns: Any, tail: str = "") -> str:
    """',"namespace":{...}}': the last member of an object in namespace `ns`, any
    members `tail` adds after it (',"made_by":null'), and the object's closing brace.
    Made once per namespace: the encoders splice it in."""
    return ',"namespace":' + _encode(ns.as_json()) + tail + "}"


def json_int(n: Optional[int]) -> str:
    return "null" if n is None else str(n)


def _process(c: Optional[Creator]) -> str:
    if c is None:
        return "null"
    return f'{{"pid":{c.pid},"alive":{_LITERAL[c.alive]},"name":{json_string(c.name)}}}'


class SegmentJson(_Shared):
    """Encodes a verdict as `json.dumps(segment_json(v), separators=(",", ":"))` would.

    The hot loop of `list --json`: "owner" to "locked" and "state" to "creator" are
    encoded once per distinct value (see _Shared), and only the numbers that differ
    from segment to segment are formatted per row (a third less time at 32,000
    segments). tests/test_render.py checks the text against the dict's encoding:
    `segment_json` stays the one definition of the schema.
    """

    def __init__(self, keep: int = 4096, tail: str = "") -> None:
        super().__init__(keep, tail)
        self._who: dict[tuple[int, int, int, int, int], str] = {}
        # A segment's fields but key and id (segment[2:]) -> "owner" to "swap", while
        # fewer than `keep` are distinct; None: stopped (every segment its own).
        self._facts: Optional[dict[tuple[Any, ...], str]] = {}
        # (state, reason, creator, last user, rule, namespace (None: ours)) -> its text
        self._verdict: dict[tuple[State, str, Creator, Optional[Creator], str, Any], str] = {}

    def __call__(self, v: Verdict) -> str:
        # Unpacked at once: a field of a NamedTuple read by name is a call each.
        s, state, reason, c, idle_for, u, rule, ns = v
        # A leak's segments differ in key and id alone, nearly always (one owner, size
        # and creator, made in the same second): the text of the rest ("owner" to
        # "swap") is made once for them. Each number formatted costs some 800
        # instructions, and a row has a dozen: 16,600 instructions a row become 10,500
        # at 100 namespaces of 100 segments (callgrind). Segments that all differ pay
        # for it: 16,700 -> 18,300 (a look-up for each of the first `keep`, then a
        # second string built a row).
        known = self._facts
        facts = known.get(s[2:]) if known is not None else None
        if facts is None:
            key, id_, mode, size, cpid, lpid, nattch, uid, gid, cuid, cgid, atime, dtime, \
                ctime, rss, swap = s  # fmt: skip
            k = (uid, gid, cuid, cgid, mode)
            who = self._who.get(k) or self._learn(self._who, k, (
                f'"owner":{json_string(owner_name(uid))},"uid":{uid},"gid":{gid},'
                f'"cuid":{cuid},"cgid":{cgid},"perms":{s.perms},'
                f'"dest":{_LITERAL[s.dest]},"locked":{_LITERAL[s.locked]}'
            ))  # fmt: skip
            facts = (
                f'{who},"size":{size},"nattch":{nattch},'
                f'"cpid":{cpid},"lpid":{lpid},"atime":{"null" if atime is None else atime},'
                f'"dtime":{"null" if dtime is None else dtime},"ctime":{ctime},'
                f'"rss":{"null" if rss is None else rss},"swap":{"null" if swap is None else swap},'
            )
            if known is not None:
                if len(known) < self._keep:
                    known[s[2:]] = facts
                else:  # `keep` distinct: segments that each differ, no look-up a row more
                    self._facts = None
        kv = (state, reason, c, u, rule, ns)
        # The reason's text is encoded here, not through json_string's cache: this
        # cache is the one for it (a leak of as many creators misses both every time).
        # The namespace ends it (ns_json, made once per namespace): no lookup of its own.
        verdict = self._verdict.get(kv) or self._learn(self._verdict, kv, (
            f'"state":"{state.value}","reason":{encode_basestring_ascii(reason)},'
            f'"rule":"{rule}","creator":{_process(c)},"last_user":{_process(u)}'
            + self._namespace(v)
        ))  # fmt: skip
        return f'{{"id":{s[1]},"key":{s[0]},{facts}"idle_seconds":{idle_for},{verdict}'


def json_chunks(sv: _survey.Survey, verdicts: list[Verdict], rows: int = 4096) -> Iterator[str]:
    """The JSON document {"segments": [...], "summary": {...}} in pieces of `rows`
    segments, so the whole 12 MB text of 32,000 segments never exists at once."""
    encode = SegmentJson()
    yield '{"segments":['
    for start in range(0, len(verdicts), rows):
        piece = ",".join([encode(v) for v in verdicts[start : start + rows]])
        yield piece if start == 0 else "," + piece
    yield '],"summary":' + _encode(summary_json(sv, verdicts)) + "}\n"


def to_json(sv: _survey.Survey, verdicts: list[Verdict]) -> str:
    return "".join(json_chunks(sv, verdicts))


def footer_lines(sv: _survey.Survey, verdicts: list[Verdict]) -> list[str]:
    """Like `ipcs -u` and `ipcs -l`: usage against the kernel's limits, then per state."""
    from shmjanitor.limits import unlimited

    lim = sv.limits
    of = lambda n: "" if n is None else " of unlimited" if unlimited(n) else f" of {n}"  # noqa: E731
    sizes = _survey.state_sizes(verdicts)  # one pass for the states and the pages
    tallies = _survey.by_state(verdicts, sizes=sizes)
    total = sum(t.bytes for t in tallies.values())  # every segment in one state
    first = (
        f"{len(verdicts)} segments{of(lim.shmmni)} (kernel.shmmni), "
        f"{pages(sizes)} pages{of(lim.shmall)} (kernel.shmall), {format_size(total)} in all"
    )
    second = ", ".join(
        f"{s.value} {t.segments} ({format_size(t.bytes)})" for s, t in tallies.items()
    )
    return [first, second]


def table(
    sv: _survey.Survey,
    verdicts: list[Verdict],
    exact_bytes: bool,
    out: IO[str],
    width: Optional[int] = None,
    color: bool = True,
    columns: Sequence[str] = DEFAULT,
    *,
    header: bool = True,
    chosen: bool = False,
    commands: Optional[Mapping[int, str]] = None,
) -> None:
    """Columns for a person at a terminal `width` wide (None: nothing cut, as
    --notruncate), the state in colour, and a footer like `ipcs -u`/`ipcs -l`.

    Columns the user did not choose (`chosen`: -o) give way on a narrow terminal, the
    least useful first; the reason wraps (layout.fit says how).
    """
    make = Cells(exact_bytes, columns, one_word=False, commands=commands)
    cols = [COLUMNS[n].layout for n in make.columns]
    out.write("\n".join(table_lines(cols, list(map(make.row, verdicts)), verdicts, width,
                                     color, header=header, chosen=chosen,
                                     footer=footer_lines(sv, verdicts))) + "\n")  # fmt: skip


def table_lines(cols: Sequence[Col], rows: Sequence[Sequence[str]], verdicts: Sequence[Verdict],
                width: Optional[int], color: bool, *, header: bool, chosen: bool,
                footer: Sequence[str]) -> list[str]:  # fmt: skip
    """A table's lines: `rows` (of `verdicts`) under `cols`, fitted to `width`, the
    STATE column painted, and the `footer` sentences, wrapped and dim."""
    if chosen:
        cols = [c._replace(drop=0) for c in cols]
    heads = [c.header for c in cols]
    styles = None
    if "STATE" in heads:
        styles = (heads.index("STATE"), [STATE_STYLE[v.state] for v in verdicts])
    lines = draw(cols, rows, width, header=header, color=color, styles=styles)
    lines.extend(paint(line, "dim" if color else None) for line in wrap_lines(footer, width))
    return lines
