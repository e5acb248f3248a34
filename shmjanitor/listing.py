"""`shmjanitor list`: survey, filter, sort, render; every kind, or those chosen."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple, Optional

from shmjanitor import kinds as registry
from shmjanitor import render, shapes, survey
from shmjanitor.accounts import uid_of
from shmjanitor.classify import State, Verdict, in_own_namespace
from shmjanitor.errors import ConfigError
from shmjanitor.text import printable

# How the command line chooses a kind, for the message that asks for one.
FLAGS = {"shm": "-m", "sem": "-s", "msg": "-q", "posix-shm": "-M", "posix-sem": "-S",
         "posix-mqueue": "-Q"}  # fmt: skip


class View(NamedTuple):
    """How `list` shows the objects (table and plain output; JSON is fixed)."""

    columns: Optional[shapes.Output] = None  # -o; None: each kind's default columns
    header: bool = True  # --noheadings: False
    notruncate: bool = False  # the table: every column at full width, nothing cut
    color: bool = False
    width: Optional[int] = None  # the table's; None: the terminal's


def select(verdicts: list[Verdict], states: set[State], uid: Optional[int]) -> list[Verdict]:
    if not states and uid is None:
        return list(verdicts)
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
    kinds: Optional[Iterable[str]] = None,
    history: Optional[History] = None,
    sweep: Optional[Any] = None,
    note: Callable[[str], None] = lambda _t: None,
) -> None:
    """`kinds`: those chosen (-m, -s, -q); None or empty: every registered kind.
    `history`: where to record what was seen (history.py); None: nowhere.
    `sweep` (namespaces.Sweep, -A or --namespace): the namespaces to read, each inside
    itself; None: ours alone. What a sweep could not read is said through `note`."""
    try:
        uid = None if owner is None else uid_of(owner)
    except ValueError as e:
        raise ConfigError(f"--owner: {e}") from None
    chosen = tuple(kinds or ())
    if not chosen and view.columns is not None and fmt is not render.Format.JSON:
        chosen = (kind_of_columns(view.columns),)
    if sweep is None:
        sv = survey.take(proc_shm, kinds=chosen or None)
    else:
        sv = survey.take_all(sweep, kinds=chosen or None)
        for text in sv.notes:
            note(text)
    made: dict[Any, Any] = {}
    if history is not None:
        from shmjanitor import history as _history

        # The history keeps our own namespace's objects (their ids are ours alone).
        ours = [v for v in sv.verdicts if in_own_namespace(v.ns)]
        made = _history.record(ours, sv.kinds, "list", history.state_dir,
                               history.note, history.max_age).made_by  # fmt: skip
        if made:
            sv = sv._replace(verdicts=attributed(sv.verdicts, made, _history.now()))
    by_kind = {name: select(vs, states, uid) for name, vs in sv.by_kind().items()}
    if fmt is not render.Format.JSON:
        by_kind = _shown(by_kind, bool(chosen), view.columns)
    # NS and CONTAINER are default columns when the listing spans namespaces.
    columns = _columns(by_kind, view.columns, spans=sweep is not None)
    sort = render.ALIASES.get(sort.upper(), sort.upper())
    cmds: dict[int, str] = {}
    for name, shown in by_kind.items():
        if "COMMAND" in columns.get(name, ()) or sort == "COMMAND":
            cmds.update(commands(shown))
        # Always sorted, by id too: the kernel lists objects in the order of its slots,
        # where a reused slot puts a new id (slot + n * 32768) before older, smaller ones.
        shapes.of(name).sort(shown, sort, cmds)
    if fmt is render.Format.JSON:
        out.writelines(shapes.json_chunks(sv, by_kind, made_by=made))
    elif fmt is render.Format.TABLE:
        width = None if view.notruncate else view.width or shutil.get_terminal_size().columns
        shapes.table(sv, by_kind, exact_bytes, out, width, view.color, columns,
                     header=view.header, chosen=view.columns is not None, commands=cmds)  # fmt: skip
    else:
        shapes.plain(by_kind, exact_bytes, out, columns, header=view.header, commands=cmds)
    if metrics_file is not None:  # all objects, whatever the filters showed
        from shmjanitor import metrics

        metrics.write(metrics_file, sv.verdicts, run=None, now=sv.taken_at)


class History(NamedTuple):
    """Where `list` records what it saw (history.record)."""

    state_dir: Path
    max_age: int
    note: Callable[[str], None]


def attributed(verdicts: list[Verdict], made: Mapping[Any, Any], at: float) -> list[Verdict]:
    """Each verdict nobody alive keeps (orphan, unknown) whose maker was recorded while
    it lived, its reason followed by "made by `cmd` (user, unit), first seen ...": the
    pid the kernel keeps names nobody now."""
    from shmjanitor.history import ident

    out = []
    for v in verdicts:
        if (v.state is State.ORPHAN or v.state is State.UNKNOWN) and in_own_namespace(v.ns):
            m = made.get(ident(v.segment))
            if m is not None:
                v = v._replace(reason=f"{v.reason}; {m.said(at)}")
        out.append(v)
    return out


def kind_of_columns(output: shapes.Output) -> str:
    """The kind -o shows without -m, -s or -q: the first (segments, sets, queues) that
    has every column it names. Never the kinds that happen to exist: a script's `list -o
    ID,STATE` must not fail the day somebody makes a semaphore set. Segments for the
    columns every kind has, as `list -o` listed them before there were other kinds."""
    for name in registry.names():
        try:
            shapes.of(name).chosen(output)
        except ValueError:
            continue
        return name
    raise ConfigError(f"--output: no kind of object has all of {', '.join(output.names)}: "
                      "`shmjanitor list --help` names each kind's columns")  # fmt: skip


def _shown(by_kind: dict[str, list[Verdict]], chosen: bool,
           output: Optional[shapes.Output]) -> dict[str, list[Verdict]]:  # fmt: skip
    """The kinds a table or plain listing shows: those chosen (empty or not); else those
    with something to show; else (nothing at all) the first kind that has the columns
    of -o, so that an empty listing still has its header."""
    if chosen or len(by_kind) <= 1:
        return by_kind
    some = {name: vs for name, vs in by_kind.items() if vs}
    if some:
        return some
    for name, vs in by_kind.items():
        try:
            shapes.of(name).chosen(output)
        except ValueError:
            continue
        return {name: vs}
    return dict(list(by_kind.items())[:1])


def _columns(by_kind: dict[str, list[Verdict]], output: Optional[shapes.Output],
             spans: bool = False) -> dict[str, tuple[str, ...]]:  # fmt: skip
    """Each kind's columns: its default, or those of -o, which chooses the columns of
    one kind (ConfigError when several are shown or the kind lacks one)."""
    if output is not None and len(by_kind) > 1:
        names = [shapes.of(n).plural for n in by_kind]
        flags = ", ".join(FLAGS.get(n, n) for n in by_kind)
        raise ConfigError(
            f"--output chooses the columns of one kind, and {' and '.join(names)} are "
            f"listed: choose one with {flags}"
        )
    try:
        return {name: shapes.of(name).chosen(output, spans) for name in by_kind}
    except ValueError as e:
        raise ConfigError(f"--output: {e}") from None
