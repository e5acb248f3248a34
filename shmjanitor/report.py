"""Show what reap/rm did: a table for people, key=value lines for journald, JSON.

Owner names, reasons (which quote process names) and problems come from outside: the
table and the log lines print them through text.printable, JSON escapes them itself.
"""

from __future__ import annotations

import json
import signal
from functools import lru_cache
from typing import IO, Any

from shmjanitor.durations import format_age, format_size
from shmjanitor.reaping import Outcome
from shmjanitor.remove import Action, Result
from shmjanitor.render import owner_name
from shmjanitor.text import printable

ACTION_STYLE = {
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
            freed += r.verdict.segment.size
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


def result_json(r: Result) -> dict[str, Any]:
    s = r.verdict.segment
    return {
        "id": s.id, "key": s.key, "size": s.size, "uid": s.uid, "owner": owner_name(s.uid),
        "cpid": s.cpid, "idle_seconds": r.verdict.idle_for, "state": r.verdict.state.value,
        "action": r.action.value, "reason": r.reason,
    }  # fmt: skip


def to_json(o: Outcome) -> str:
    doc = {"dry_run": o.dry_run, "results": [result_json(r) for r in o.results],
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


def log_line(r: Result) -> str:
    """One key=value line, as journald and grep like them."""
    s = r.verdict.segment
    # Built from cached pieces in one f-string: a big reap logs 32,000 of these.
    return (
        f"action={r.action.value} id={s.id} key=0x{s.key:08x} size={s.size} "
        f"{_owner_uid(s.uid)} cpid={s.cpid} idle={r.verdict.idle_for}s reason={_quote(r.reason)}"
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


def log(o: Outcome, out: IO[str], err: IO[str], verbose: bool) -> None:
    """Non-terminal output: a line per removal (and per kept orphan with -v), failures and
    problems on stderr, then one summary line."""
    lines = []
    failed, kept = Action.FAILED, Action.KEPT
    for r in o.results:
        if r.action is failed:
            err.write(log_line(r) + "\n")
        elif verbose or r.action is not kept:
            lines.append(log_line(r))
    for p in o.problems:
        err.write(f"problem: {printable(p)}\n")
    err.flush()
    lines.append(summary_line(o))
    out.write("\n".join(lines) + "\n")
    out.flush()


def table(o: Outcome, out: IO[str], width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, width=width, highlight=False)
    t = Table(title="shmjanitor reap (dry run)" if o.dry_run else None)
    for name, justify in (("ID", "right"), ("KEY", "left"), ("OWNER", "left"),
                          ("SIZE", "right"), ("IDLE", "right"), ("ACTION", "left"),
                          ("REASON", "left")):  # fmt: skip
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in o.results:
        s = r.verdict.segment
        # Text, not markup strings: a "[" in a process name must print, not style.
        t.add_row(str(s.id), f"0x{s.key:08x}", Text(printable(owner_name(s.uid))),
                  format_size(s.size), format_age(r.verdict.idle_for),
                  Text(r.action.value, ACTION_STYLE[r.action]), Text(printable(r.reason)),
                  )  # fmt: skip
    if o.results:
        console.print(t)
    sm = summary(o)
    if o.dry_run:
        head = f"would remove {sm['would_remove']} ({format_size(sm['bytes_would_free'])})"
    else:
        head = f"removed {sm['removed']} ({format_size(sm['bytes_freed'])})"
    console.print(
        f"{head}, kept {sm['kept']}, failed {sm['failed']}, already gone {sm['gone']} "
        f"of {sm['considered']} considered"
    )
    for p in o.problems:
        console.print(Text.assemble(("problem:", "red"), " ", printable(p)))


class Logger:
    """Log output as it happens: a line per result the moment it is final (kept orphans
    only with -v; failures on stderr), then problems and the summary at the end. A run
    that is killed has said every removal it made up to that instant."""

    def __init__(self, out: IO[str], err: IO[str], verbose: bool) -> None:
        self.out, self.err, self.verbose = out, err, verbose

    def result(self, r: Result) -> None:
        if r.action is Action.FAILED:
            self.err.write(log_line(r) + "\n")
            self.err.flush()
        elif self.verbose or r.action is not Action.KEPT:
            self.out.write(log_line(r) + "\n")
            self.out.flush()

    def note(self, text: str) -> None:
        """A line about the quarantine: removals settled after an interrupted run are
        log lines like any removal (made by log_line, so already escaped); anything
        else is a note on stderr, which may quote a file name."""
        if text.startswith("action="):
            self.out.write(text + "\n")
            self.out.flush()
        else:
            self.err.write(f"shmjanitor: note: {printable(text)}\n")
            self.err.flush()

    def finish(self, o: Outcome) -> None:
        for p in o.problems:
            self.err.write(f"problem: {printable(p)}\n")
        self.err.flush()
        self.out.write(summary_line(o) + "\n")
        self.out.flush()
