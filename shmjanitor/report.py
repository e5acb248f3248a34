"""Show what reap/rm did: a table for people, key=value lines for journald, JSON. Every
result says its object's kind ("kind": "shm" in JSON, kind=shm in a log line, a KIND
column in the table unless every result is a segment's).

Owner names, reasons (which quote process names) and problems come from outside: the
table and the log lines print them through text.printable, JSON escapes them itself.
"""

from __future__ import annotations

import json
import os
import signal
from functools import lru_cache
from typing import IO, Any, Optional

from shmjanitor import history
from shmjanitor.accounts import owner_name
from shmjanitor.classify import Verdict, in_own_namespace
from shmjanitor.durations import format_age, format_size
from shmjanitor.layout import Col, draw, wrap_lines
from shmjanitor.reaping import Outcome
from shmjanitor.remove import LEGACY_KIND, Action, Result
from shmjanitor.render import ns_of, ours
from shmjanitor.text import printable

ACTION_STYLE = {  # layout.paint styles
    Action.REMOVED: "bold green",
    Action.WOULD_REMOVE: "bold cyan",
    Action.KEPT: "yellow",
    Action.FAILED: "bold red",
    Action.GONE: "dim",
}


def summary(o: Outcome) -> dict[str, Any]:
    count = {a: 0 for a in Action}
    freed = 0
    frees = (Action.REMOVED, Action.WOULD_REMOVE)  # looked up once, not per result
    for r in o.results:
        action = r.action
        count[action] += 1
        if action in frees:
            freed += r.verdict.obj.size
    return {
        "considered": len(o.results),
        "removed": count[Action.REMOVED],
        "would_remove": count[Action.WOULD_REMOVE],
        "kept": count[Action.KEPT],
        "failed": count[Action.FAILED],
        "gone": count[Action.GONE],
        "bytes_freed": freed if not o.dry_run else 0,
        "bytes_would_free": freed if o.dry_run else 0,
        "problems": o.problems,
        "interrupted": signal.Signals(o.interrupted).name if o.interrupted else None,
    }


def _cpid(v: Verdict) -> Optional[int]:
    """The creator's pid, for the kinds whose table keeps one (shm's cpid); None else
    (a semaphore set or a queue has no creator pid: their reasons name who used them)."""
    return getattr(v.obj, "cpid", None)


def result_json(r: Result, here: Any = None) -> dict[str, Any]:
    """`here`: render.ours(), when the caller looked it up once for many results."""
    s = r.verdict.obj
    ns = r.verdict.ns
    return {
        "kind": s.kind, "id": s.id, "key": s.key, "size": s.size, "uid": s.uid,
        "owner": owner_name(s.uid), "cpid": _cpid(r.verdict), "idle_seconds": r.verdict.idle_for,
        "state": r.verdict.state.value, "action": r.action.value, "reason": r.reason,
        "rule": r.rule,
        **({} if _path(s) is None else {"path": _path(s)}),
        "namespace": ns_of(r.verdict, here).as_json(),  # the IPC namespace it is (was) in
        # the history keeps our own namespace's objects: another's same id is not one
        "made_by": history.made_by(s) if in_own_namespace(ns) else None,
    }  # fmt: skip


def to_json(o: Outcome) -> str:
    here = ours()  # a stat(2) a call: once for the 32,000 results of a big reap
    doc = {"dry_run": o.dry_run, "results": [result_json(r, here) for r in o.results],
           "summary": summary(o)}  # fmt: skip
    return json.dumps(doc, separators=(",", ":")) + "\n"


@lru_cache(maxsize=4096)
def _quote(text: str) -> str:
    # Cached: a leak is thousands of lines with one and the same reason. printable
    # doubles backslashes and escapes controls, so a name cannot end the line early.
    return '"' + printable(text).replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)
def _owner_uid(uid: int) -> str:
    return f"owner={printable(owner_name(uid))} uid={uid}"


def _path(o: object) -> Optional[str]:
    """A POSIX object's path (posixfs.PosixObject.path); None for System V objects."""
    return getattr(o, "path", None)


def _ns_fields(ns: Any) -> str:
    """' ns=4026532312 container="docker:3f2a9c1b7d4e"' for a sweep's result (-A):
    which namespace its id is one of; '' for a run in ours alone."""
    if ns is None:
        return ""
    return f" ns={ns.ipc}" + ("" if ns.container is None else f" container={_quote(ns.container)}")


def where(ns: Any) -> str:
    """A table's NAMESPACE cell: the container, else the namespace's inode."""
    return "-" if ns is None else printable(ns.container or f"ipc:[{ns.ipc}]")


def log_line(r: Result) -> str:
    """One key=value line, as journald and grep like them (action and id first). A
    POSIX object's path follows its kind, quoted and escaped (a file name is any bytes:
    printable() escapes control characters and undecodable bytes)."""
    v = r.verdict
    s = v.obj
    cpid = _cpid(v)
    path = _path(s)
    made = history.said(s) if in_own_namespace(v.ns) else None  # the history is ours
    # Built from cached pieces in one f-string: a big reap logs 32,000 of these.
    return (
        f"action={r.action.value} id={s.id} kind={s.kind}{_ns_fields(v.ns)}"
        f"{'' if path is None else f' path={_quote(path)}'} key=0x{s.key:08x} size={s.size} "
        f"{_owner_uid(s.uid)}{'' if cpid is None else f' cpid={cpid}'} "
        f"idle={format_age(v.idle_for)} reason={_quote(r.reason)}"
        f"{'' if made is None else f' made_by={_quote(made)}'}"
    )


def summary_line(o: Outcome) -> str:
    sm = summary(o)
    freed = sm["bytes_would_free"] if o.dry_run else sm["bytes_freed"]
    return (
        f"summary dry_run={str(o.dry_run).lower()} considered={sm['considered']} "
        f"removed={sm['removed']} would_remove={sm['would_remove']} kept={sm['kept']} "
        f"failed={sm['failed']} gone={sm['gone']} bytes={freed}"
        + (f" interrupted={sm['interrupted']}" if sm["interrupted"] else "")
    )


def summary_text(o: Outcome) -> str:
    """summary_line in words, for a person at a terminal: the same numbers."""
    sm = summary(o)
    if o.dry_run:
        head = f"dry run: would remove {sm['would_remove']} ({format_size(sm['bytes_would_free'])})"
    else:
        head = f"removed {sm['removed']} ({format_size(sm['bytes_freed'])})"
    stopped = f"; stopped by {sm['interrupted']}" if sm["interrupted"] else ""
    return (f"{head}, kept {sm['kept']}, failed {sm['failed']}, already gone {sm['gone']} "
            f"of {sm['considered']} considered{stopped}")  # fmt: skip


def shown(r: Result, verbose: bool) -> bool:
    """Whether a result gets a line of its own: a kept orphan only with -v (a lab's
    reap keeps thousands, each for the same reason the summary counts)."""
    return verbose or r.action is not Action.KEPT


def log(o: Outcome, out: IO[str], err: IO[str], verbose: bool) -> None:
    """Non-terminal output at once (Logger streams the same): a line per removal (and
    per kept orphan with -v), failures and problems on stderr, then one summary line."""
    logger = Logger(out, err, verbose)
    for r in o.results:
        logger.result(r)
    logger.finish(o)


_COLS = (Col("ACTION"), Col("ID", right=True), Col("KEY", drop=3), Col("SIZE", right=True, drop=4),
         Col("OWNER", drop=2, squeeze=True), Col("UID", right=True, drop=6),
         Col("CPID", right=True, drop=5), Col("IDLE", right=True, drop=1),
         Col("REASON", wrap=True))  # fmt: skip
_KIND_COL = Col("KIND", drop=7)  # after ID, unless every result is a segment's
_WHERE_COL = Col("NAMESPACE", drop=8, squeeze=True)  # after KIND, in a sweep (-A)


def table(o: Outcome, out: IO[str], err: IO[str], *, verbose: bool, width: Optional[int] = None,
          color: bool = False, summary: bool = True) -> None:  # fmt: skip
    """Terminal output: what the log lines say, as a table (the fields of log_line, the
    least useful giving way on a narrow terminal) and the summary in words; problems
    on stderr. Kept orphans only with -v, as in the log."""
    results = [r for r in o.results if shown(r, verbose)]
    rows: list[tuple[str, ...]] = []
    for r in results:
        s = r.verdict.obj
        cpid = _cpid(r.verdict)
        rows.append((r.action.value, str(s.id), s.kind, f"0x{s.key:08x}", format_size(s.size),
                     printable(owner_name(s.uid)), str(s.uid), "-" if cpid is None else str(cpid),
                     format_age(r.verdict.idle_for), printable(r.reason)))  # fmt: skip
    cols: tuple[Col, ...] = (*_COLS[:2], _KIND_COL, *_COLS[2:])
    if any(r.verdict.ns is not None for r in results):  # a sweep (-A): which namespace
        cols = (*cols[:3], _WHERE_COL, *cols[3:])
        rows = [(*row[:3], where(r.verdict.ns), *row[3:]) for row, r in zip(rows, results)]
    elif {row[2] for row in rows} <= {LEGACY_KIND}:
        # Segments alone: the table they had before there were kinds. Any other kind
        # is named even alone: "removed 0 0x..." would read as a segment's row.
        cols = _COLS
        rows = [row[:2] + row[3:] for row in rows]
    lines = draw(cols, rows, width, color=color,
                 styles=(0, [ACTION_STYLE[r.action] for r in results])) if rows else []  # fmt: skip
    if summary:
        lines.extend(wrap_lines([summary_text(o)], width))
    if lines:
        out.write("\n".join(lines) + "\n")
        out.flush()
    for p in o.problems:
        err.write(f"problem: {printable(p)}\n")
    err.flush()


class Logger:
    """Log output as it happens: a line per result the moment it is final (kept orphans
    only with -v; failures on stderr), then problems and the summary at the end. A run
    that is killed has said every removal it made up to that instant."""

    def __init__(self, out: IO[str], err: IO[str], verbose: bool) -> None:
        self.out, self.err, self.verbose = out, err, verbose
        # A line per removal, each written at once: straight to the file descriptor, one
        # write(2) a line, when there is one (a text stream's write and flush cost three
        # times that; a reap logs 32,000 lines). Else (a test's StringIO) through `out`.
        self._fd = -1
        try:
            out.flush()
            self._fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            pass

    def _line(self, line: str) -> None:
        if self._fd < 0:
            self.out.write(line + "\n")
            self.out.flush()
            return
        data = (line + "\n").encode()
        while data:
            data = data[os.write(self._fd, data) :]

    def result(self, r: Result) -> None:
        if r.action is Action.FAILED:
            self.err.write(log_line(r) + "\n")
            self.err.flush()
        elif self.verbose or r.action is not Action.KEPT:  # shown(r, verbose), inlined
            self._line(log_line(r))

    def note(self, text: str) -> None:
        """A line about the quarantine: removals settled after an interrupted run are
        log lines like any removal (made by log_line, so already escaped); anything
        else is a note on stderr, which may quote a file name."""
        if text.startswith("action="):
            self._line(text)
        else:
            self.err.write(f"shmjanitor: note: {printable(text)}\n")
            self.err.flush()

    def finish(self, o: Outcome) -> None:
        for p in o.problems:
            self.err.write(f"problem: {printable(p)}\n")
        self.err.flush()
        self.out.write(summary_line(o) + "\n")
        self.out.flush()
