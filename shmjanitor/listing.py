"""`shmjanitor list`: survey, filter, sort, render."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple, Optional

from shmjanitor import render, survey
from shmjanitor.classify import State, Verdict
from shmjanitor.errors import ConfigError
from shmjanitor.text import printable


class View(NamedTuple):
    """How `list` shows the segments (table and plain output; JSON is fixed)."""

    columns: Optional[Sequence[str]] = None  # -o; None: render.DEFAULT
    header: bool = True  # --noheadings: False
    notruncate: bool = False  # the table: every column at full width, nothing cut
    color: bool = False
    width: Optional[int] = None  # the table's; None: the terminal's


def select(verdicts: list[Verdict], states: set[State], uid: Optional[int]) -> list[Verdict]:
    return [
        v
        for v in verdicts
        if (not states or v.state in states) and (uid is None or v.segment.uid == uid)
    ]


def cmdline(pid: int, proc: Path = Path("/proc")) -> Optional[str]:
    """The command line of a live process, its arguments joined by spaces, escaped for
    printing (a process writes its own argv); None when it cannot be read or is empty
    (a kernel thread, a zombie)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    args = raw.rstrip(b"\0").split(b"\0")
    text = " ".join(a.decode("utf-8", "surrogateescape") for a in args)
    return printable(text) if text else None


def commands(verdicts: Sequence[Verdict]) -> dict[int, str]:
    """The command line of each live creator (the COMMAND column), read once per pid."""
    out: dict[int, str] = {}
    for v in verdicts:
        pid = v.creator.pid
        if v.creator.alive and pid not in out:
            line = cmdline(pid)
            if line is not None:
                out[pid] = line
    return out


def run(
    *,
    states: set[State],
    owner: Optional[str],
    sort: str,
    exact_bytes: bool,
    fmt: render.Format,
    metrics_file: Optional[Path],
    out: IO[str],
    view: View = View(),
    proc_shm: Path = survey.scan.PROC_SHM,
) -> None:
    try:
        uid = None if owner is None else render.uid_of(owner)
    except ValueError as e:
        raise ConfigError(f"--owner: {e}") from None
    sv = survey.take(proc_shm)
    shown = select(sv.verdicts, states, uid)
    columns = tuple(view.columns or render.DEFAULT)
    sort = render.ALIASES.get(sort.upper(), sort.upper())
    cmds = commands(shown) if "COMMAND" in columns or sort == "COMMAND" else {}
    # Always sorted, by id too: the kernel lists segments in the order of its slots,
    # where a reused slot puts a new id (slot + n * 32768) before older, smaller ones.
    render.sort(shown, sort, cmds)
    if fmt is render.Format.JSON:
        out.writelines(render.json_chunks(sv, shown))
    elif fmt is render.Format.TABLE:
        width = None if view.notruncate else view.width or shutil.get_terminal_size().columns
        render.table(sv, shown, exact_bytes, out, width, view.color, columns,
                     header=view.header, chosen=view.columns is not None, commands=cmds)  # fmt: skip
    else:
        render.plain(shown, exact_bytes, out, columns, header=view.header, commands=cmds)
    if metrics_file is not None:  # all segments, whatever the filters showed
        from shmjanitor import metrics

        metrics.write(metrics_file, sv.verdicts, run=None, now=sv.taken_at)
