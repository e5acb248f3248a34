"""Show verdicts: a coloured table for people, plain columns for pipes, JSON for scripts.

Nothing here reads the kernel or removes anything: verdicts in, text out. Names and
reasons come from outside (a process names itself), so every text cell goes through
text.printable; JSON escapes them itself.
"""

from __future__ import annotations

import json
import pwd
from collections.abc import Iterator
from enum import Enum
from functools import cache, lru_cache
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import IO, Any, Optional, TypeVar

from shmjanitor import survey as _survey
from shmjanitor.classify import Creator, State, Verdict
from shmjanitor.durations import format_age, format_size
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


@cache
def owner_name(uid: int) -> str:
    """The user name of `uid`, or the number itself when it has no passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def uid_of(user: str) -> int:
    """A user name or numeric uid to a uid; ValueError naming the user if unknown."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ValueError(f"no such user: {user!r}") from None


def creator_cell(v: Verdict) -> str:
    c = v.creator
    if c.pid == 0:
        return "?"
    if c.alive:
        return f"{c.pid} {printable(c.name or '')}"
    return f"{c.pid} exited" if c.alive is False else f"{c.pid} ?"


HEADERS = ("KEY", "ID", "OWNER", "PERMS", "SIZE", "NATTCH", "CREATOR", "LPID", "IDLE",
           "STATE", "REASON")  # fmt: skip
RIGHT = {"ID", "SIZE", "NATTCH", "LPID", "IDLE"}


def cells(v: Verdict, exact_bytes: bool) -> tuple[str, ...]:
    """A row of the table and of plain output (`Cells` makes the same, faster)."""
    s = v.segment
    return (
        f"0x{s.key:08x}",
        str(s.id),
        printable(owner_name(s.uid)),
        f"{s.perms:03o}",
        str(s.size) if exact_bytes else format_size(s.size),
        str(s.nattch),
        creator_cell(v),
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

    def __init__(self, keep: int = 4096) -> None:
        self._keep = keep

    def _learn(self, known: dict[Any, _T], key: Any, part: _T) -> _T:
        if len(known) >= self._keep:
            known.clear()
        known[key] = part
        return part


class Cells(_Shared):
    """`cells(v, exact_bytes)` for a whole table: owner and perms are made once per uid
    and mode, creator, state and reason once per verdict (tests/test_render.py checks
    it against `cells`)."""

    def __init__(self, exact_bytes: bool, keep: int = 4096) -> None:
        super().__init__(keep)
        self._exact = exact_bytes
        self._who: dict[tuple[int, int], tuple[str, str]] = {}
        self._verdict: dict[tuple[State, str, Creator], tuple[str, str, str]] = {}

    def __call__(self, v: Verdict) -> tuple[str, ...]:
        s = v.segment
        k = (s.uid, s.mode)
        owner, perms = self._who.get(k) or self._learn(self._who, k, (
            printable(owner_name(s.uid)), f"{s.perms:03o}"
        ))  # fmt: skip
        kv = (v.state, v.reason, v.creator)
        creator, state, reason = self._verdict.get(kv) or self._learn(self._verdict, kv, (
            creator_cell(v), v.state.value, printable(v.reason)
        ))  # fmt: skip
        size = str(s.size) if self._exact else format_size(s.size)
        return (f"0x{s.key:08x}", str(s.id), owner, perms, size, str(s.nattch), creator,
                str(s.lpid), format_age(v.idle_for), state, reason)  # fmt: skip


def _widths(rows: list[tuple[str, ...]]) -> list[int]:
    """The width of each column: its longest cell or header."""
    if not rows:
        return [len(h) for h in HEADERS]
    return [max(len(h), max(map(len, col))) for h, col in zip(HEADERS, zip(*rows))]


def _align(text: str, width: int, header: str) -> str:
    return text.rjust(width) if header in RIGHT else text.ljust(width)


def plain(verdicts: list[Verdict], exact_bytes: bool, out: IO[str]) -> None:
    """Aligned columns, a header line, no colour and no footer: made for grep and awk.

    The reason is the last column so that every other column is one word. One format
    pattern aligns a whole row, and rows go out a few thousand at a time.
    """
    rows = list(map(Cells(exact_bytes), verdicts))
    widths = _widths(rows)
    last = len(HEADERS) - 1
    row = (
        " ".join(f"{{:{'>' if h in RIGHT else '<'}{w}}}" for h, w in zip(HEADERS, widths[:last]))
        + " {}\n"
    ).format
    out.write(row(*HEADERS))
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
        "creator": {"pid": c.pid, "alive": c.alive, "name": c.name},
        "last_user": None if u is None else {"pid": u.pid, "alive": u.alive, "name": u.name},
    }


def summary_json(sv: _survey.Survey, verdicts: list[Verdict]) -> dict[str, Any]:
    tallies = _survey.by_state(verdicts)
    return {
        "segments": len(verdicts),
        "bytes": sum(v.segment.size for v in verdicts),
        "pages": pages(verdicts),
        "shmmni": sv.limits.shmmni,
        "shmall": sv.limits.shmall,
        "states": {s.value: {"segments": t.segments, "bytes": t.bytes} for s, t in tallies.items()},
    }


def pages(verdicts: list[Verdict]) -> int:
    return sum((v.segment.size + PAGE_SIZE - 1) // PAGE_SIZE for v in verdicts)


_encode = json.JSONEncoder(separators=(",", ":")).encode
_LITERAL = {True: "true", False: "false", None: "null"}


@lru_cache(maxsize=65536)
def json_string(text: Optional[str]) -> str:
    """A JSON string (or null); cached, since owners and reasons repeat down a table.

    ASCII only: every control character, non-ASCII character and lone surrogate is a
    \\uXXXX escape, so a hostile process name reaches a terminal only as text.
    """
    return "null" if text is None else encode_basestring_ascii(text)


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

    def __init__(self, keep: int = 4096) -> None:
        super().__init__(keep)
        self._who: dict[tuple[int, int, int, int, int], str] = {}
        self._verdict: dict[tuple[State, str, Creator, Optional[Creator]], str] = {}

    def __call__(self, v: Verdict) -> str:
        s = v.segment
        k = (s.uid, s.gid, s.cuid, s.cgid, s.mode)
        who = self._who.get(k) or self._learn(self._who, k, (
            f'"owner":{json_string(owner_name(s.uid))},"uid":{s.uid},"gid":{s.gid},'
            f'"cuid":{s.cuid},"cgid":{s.cgid},"perms":{s.perms},'
            f'"dest":{_LITERAL[s.dest]},"locked":{_LITERAL[s.locked]}'
        ))  # fmt: skip
        c, u = v.creator, v.last_user
        kv = (v.state, v.reason, c, u)
        verdict = self._verdict.get(kv) or self._learn(self._verdict, kv, (
            f'"state":"{v.state.value}","reason":{json_string(v.reason)},'
            f'"creator":{_process(c)},"last_user":{_process(u)}'
        ))  # fmt: skip
        return (
            f'{{"id":{s.id},"key":{s.key},{who},"size":{s.size},"nattch":{s.nattch},'
            f'"cpid":{s.cpid},"lpid":{s.lpid},"atime":{json_int(s.atime)},'
            f'"dtime":{json_int(s.dtime)},"ctime":{s.ctime},"rss":{json_int(s.rss)},'
            f'"swap":{json_int(s.swap)},"idle_seconds":{v.idle_for},{verdict}}}'
        )


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
    total = sum(v.segment.size for v in verdicts)
    first = (
        f"{len(verdicts)} segments{of(lim.shmmni)} (kernel.shmmni), "
        f"{pages(verdicts)} pages{of(lim.shmall)} (kernel.shmall), {format_size(total)} in all"
    )
    tallies = _survey.by_state(verdicts)
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
) -> None:
    """A box-drawn, coloured table in the spirit of rich's Table, drawn line by line.

    rich's Table measures every cell through its layout engine: 4.8 s for 4,096 rows.
    Our cells are plain one-line strings, so widths are simple `len`s and rich is used
    only for what it is good at here: the colour codes of the terminal in use.
    """
    from rich.console import Console
    from rich.style import Style

    console = Console(
        file=out, width=width, force_terminal=color, no_color=not color, highlight=False
    )
    system = console.color_system if color else None
    paint: dict[str, Any] = {}

    def styled(text: str, style: str) -> str:
        if system is None:
            return text
        if style not in paint:
            paint[style] = Style.parse(style)
        rendered: str = paint[style].render(text, color_system=system)
        return rendered

    rows = list(map(Cells(exact_bytes), verdicts))
    widths = _widths(rows)
    last = len(HEADERS) - 1
    # Fit the reason into what the terminal has left; cut with an ellipsis like rich.
    room = console.width - (sum(widths[:last]) + 3 * last + 4)
    widths[last] = max(10, min(widths[last], room))

    def fit(text: str, i: int) -> str:
        w = widths[i]
        if len(text) > w:
            text = text[: w - 1] + "…"
        return _align(text, w, HEADERS[i])

    bar = "│"
    lines = [
        "┏" + "┳".join("━" * (w + 2) for w in widths) + "┓",
        "┃" + "┃".join(" " + styled(fit(h, i), "bold") + " " for i, h in enumerate(HEADERS)) + "┃",
        "┡" + "╇".join("━" * (w + 2) for w in widths) + "┩",
    ]
    state_col = HEADERS.index("STATE")
    for v, r in zip(verdicts, rows):
        parts = []
        for i, c in enumerate(r):
            text = fit(c, i)
            if i == state_col:
                text = styled(text, STATE_STYLE[v.state])
            parts.append(" " + text + " ")
        lines.append(bar + bar.join(parts) + bar)
    lines.append("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
    lines.extend(styled(line, "dim") for line in footer_lines(sv, verdicts))
    out.write("\n".join(lines) + "\n")
