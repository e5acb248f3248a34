"""The command line: each command parses its options and calls into the core.

Exit codes: 0 as planned, 1 the job was not done in full, 2 usage/config/input error,
70 a bug, 141 a closed pipe (see shmjanitor.errors and the README). Every message goes
through text.printable: it may quote a process name, a user name or a path.
"""

from __future__ import annotations

import copy
import gc
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Union

import click
import typer
import typer.core
import typer.main
from click.utils import PacifyFlushWrapper

from shmjanitor.classify import State
from shmjanitor.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_BUG,
    EXIT_OWNER_PRESENT,
    JanitorError,
    MetricsError,
    OutputClosed,
)
from shmjanitor.keys import parse_id, parse_key
from shmjanitor.render import ALIASES, Format
from shmjanitor.text import printable

# Help is click's plain text everywhere (as util-linux's): wrapped at word boundaries to
# the terminal or 78 columns, no boxes. typer 0.19 would still escape "[" in it for
# rich's HTML export whenever rich is installed ("\[default: id]"), even with
# rich_markup_mode=None; this is the switch it reads at that moment (typer is pinned
# below 0.20 in pyproject.toml, and tests/test_cli.py pins the text).
typer.core.HAS_RICH = False


def _command_path(cmd: click.Command, prog: Optional[str], args: Sequence[str]) -> str:
    """The command `args` name, for an error click raised without a context (an option
    missing its value): the command words among them, after the program's name."""
    path = [prog or "shmjanitor"]
    for arg in args:
        if isinstance(cmd, click.Group) and arg in cmd.commands:
            path.append(arg)
            cmd = cmd.commands[arg]
    return " ".join(path)


def _usage_exit(e: click.UsageError, where: Callable[[], str]) -> NoReturn:
    """A usage error as util-linux says it: one line, then where to look, exit 2:
    "shmjanitor: error: no such option: --bogus", "Try 'shmjanitor list --help'."."""
    text = " ".join(e.format_message().split())  # one line, whatever click wrapped
    if text[:2].istitle():  # click's "No such option" -> "no such option", not "IPC" -> "iPC"
        text = text[0].lower() + text[1:]
    path = e.ctx.command_path if e.ctx is not None else where()
    click.echo(f"shmjanitor: error: {printable(text)}", err=True)
    click.echo(f"Try '{printable(path)} --help'.", err=True)
    sys.exit(e.exit_code)


class _Root(typer.core.TyperGroup):
    """The root command, which turns click's usage errors into _usage_exit's lines
    (click's own are a usage line, a hint and an "Error:" line; typer's a box)."""

    def make_context(self, info_name: Optional[str], args: list[str],
                     parent: Optional[click.Context] = None, **extra: Any) -> click.Context:  # fmt: skip
        self._called = (info_name, list(args))  # for the hint of an error without a context
        return super().make_context(info_name, args, parent, **extra)

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:  # fmt: skip
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)  # fmt: skip
        except click.UsageError as e:
            _usage_exit(e, lambda: _command_path(self, *self._called))
        except click.ClickException as e:  # click.FileError and the like: not a usage error
            click.echo(f"shmjanitor: {printable(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("shmjanitor: aborted", err=True)
            sys.exit(1)
        # Without standalone_mode click returns what it would have exited with: an exit
        # code (typer.Exit, --help, --version), or the command's own return value (None).
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="shmjanitor",
    cls=_Root,
    help="Find and safely remove leaked System V IPC objects: shared memory segments, "
    "semaphore sets and message queues.\n\n"
    "Every object gets a state (attached, idle, orphan, unknown, removing) and the "
    "evidence behind it. Only orphans (nobody uses it, nobody who did lives) are ever "
    "reaped.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # subcommands inherit it
)


class Color(str, Enum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


def _version(value: bool) -> None:
    if value:
        from shmjanitor import __version__

        typer.echo(f"shmjanitor {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    # Eager, with a callback: otherwise click wants a command first ("Missing command").
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True,
        help="Print the version and exit.",
    ),
    color: Color = typer.Option(
        Color.AUTO, "--color", metavar="WHEN", show_default=False, case_sensitive=False,
        help="Colour the table: auto (the default: on a terminal, unless NO_COLOR is set "
        "or TERM is dumb), always or never. Help and plain output never have colour.",
    ),
) -> None:  # fmt: skip
    ctx.obj = color


def use_color(out: Any) -> bool:
    """Whether to colour what goes to `out`: --color, else NO_COLOR (no-color.org: set
    and not empty), else whether `out` is a terminal that is not dumb."""
    ctx = click.get_current_context(silent=True)
    choice = ctx.find_root().obj if ctx is not None else None
    if choice is Color.ALWAYS:
        return True
    if choice is Color.NEVER or os.environ.get("NO_COLOR"):
        return False
    return bool(out.isatty()) and os.environ.get("TERM") != "dumb"


def usage_error(message: str) -> click.UsageError:
    """A usage error found by a command itself, said as click's are (_usage_exit)."""
    return click.UsageError(message, click.get_current_context(silent=True))


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"shmjanitor: {printable(message)}", err=True)
    return typer.Exit(code)


def _record_failure(metrics_file: Optional[Path]) -> None:
    """With --metrics-file, a run that does not exit 0 says so: last_run_success 0."""
    if metrics_file is None:
        return
    from shmjanitor import metrics

    try:
        metrics.write(metrics_file, None, run=None, now=time.time(), success=False)
    except Exception as e:  # the first failure is the one to report; this one is a note
        typer.echo(f"shmjanitor: also: {printable(str(e))}", err=True)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of what is still
    buffered cannot fail again and print "Exception ignored ..." on the way out."""
    with suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _bug(e: BaseException) -> typer.Exit:
    """An exception nobody foresaw: one line (the traceback only when asked for)."""
    if os.environ.get("SHMJANITOR_DEBUG"):
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__)
    return fail(
        f"internal error (a bug, please report it): {type(e).__name__}: {e}; "
        "SHMJANITOR_DEBUG=1 shows the traceback",
        EXIT_BUG,
    )


@contextmanager
def errors_as_exit(metrics_file: Optional[Path] = None) -> Iterator[None]:
    """Every failure becomes one line on stderr and its exit code, never a traceback.

    With `metrics_file`, any exit but 0 also writes shmjanitor_last_run_success 0 and
    the time (a run that exits 0 writes its own metrics).
    """
    try:
        if sys.stdout is None:  # started with fd 1 closed: Python leaves sys.stdout None
            raise OutputClosed(
                "standard output is closed, so nothing was done: a run must be able to say "
                "what it did (redirect it to /dev/null to discard it)"
            )
        yield
        # Output still buffered goes out now, while a failure to write it (a closed
        # pipe, a full disk) is still this run's failure and reaches the metrics.
        sys.stdout.flush()
    except typer.Exit as e:  # a usage error said by `fail`, or an exit code on purpose
        if e.exit_code != 0:
            _record_failure(metrics_file)
        raise
    except click.ClickException:  # usage_error(): _Root says it
        _record_failure(metrics_file)
        raise
    except BrokenPipeError:
        # The reader went away (`list | head -1`). Like ipcs and lsipc, which die of
        # SIGPIPE, say nothing; exit as such a death would (128 + 13) so a pipeline
        # under `set -o pipefail` still learns that not all of the output was read.
        _silence_stdout()
        _record_failure(metrics_file)
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except JanitorError as e:
        if not isinstance(e, MetricsError):  # which could not be written again either
            _record_failure(metrics_file)
        raise fail(str(e), e.exit_code) from None
    except OSError as e:  # the machine said no (disk full, read-only, ...): say so plainly
        _record_failure(metrics_file)
        raise fail(f"error: {e}", 1) from None
    except Exception as e:
        _record_failure(metrics_file)
        raise _bug(e) from None
    except SystemExit as e:
        if e.code not in (0, None):
            _record_failure(metrics_file)
        raise
    except BaseException:  # KeyboardInterrupt: the run stopped short
        _record_failure(metrics_file)
        raise


METRICS_OPT = typer.Option(
    None,
    "--metrics-file",
    metavar="PATH",
    help="Also write Prometheus textfile-collector metrics to PATH (atomically): "
    "segments and bytes per state, and the run's outcome.",
)


def _pick_format(fmt: Format, as_json: bool) -> Format:
    if as_json:
        return Format.JSON
    if fmt is Format.AUTO:
        return Format.TABLE if sys.stdout.isatty() else Format.PLAIN
    return fmt


def _columns_help() -> str:
    """list's epilog: every kind's columns, one a line (\b: click keeps these lines as
    they are)."""
    from shmjanitor import kinds, shapes

    lines = []
    for name in kinds.names():
        shape = shapes.of(name)
        flag = f" ({_KIND_FLAGS[name][0]})" if name in _KIND_FLAGS else ""
        lines += ["\b", f"Columns of {shape.plural}{flag}, for -o and --sort:"]
        lines += [f"  {column:<10} {c.doc}" for column, c in shape.columns.items()]
        if "DTIME" in shape.columns:
            lines += ["  (lsipc's ATTACH and DETACH are ATIME and DTIME)"]
        lines += ["", "\b", f"The default columns of {shape.plural}:"]
        # "A,B,C" wrapped after a comma: each line stays whole column names.
        text = textwrap.fill(", ".join(shape.default), 76, break_on_hyphens=False)
        lines += ["  " + line.replace(", ", ",") for line in text.splitlines()] + [""]
    return "\n".join(lines[:-1])


def _sort_keys() -> list[str]:
    from shmjanitor import shapes

    return [n.lower() for n in (*shapes.all_columns(), *ALIASES)]


# -m, -s, -q choose kinds, as ipcs and lsipc spell them; -M, -S, -Q the POSIX kinds, as
# lsipc 2.40 spells them.
_KIND_FLAGS = {"shm": ("-m", "--shm"), "sem": ("-s", "--sem"), "msg": ("-q", "--msg"),
               "posix-shm": ("-M", "--posix-shm"), "posix-sem": ("-S", "--posix-sem"),
               "posix-mqueue": ("-Q", "--posix-mqueue")}  # fmt: skip


# The kinds `list` and `reap` choose, with ipcs's and lsipc's letters (combinable: their
# union; none: every kind): one definition for both commands.
SHM_OPT = typer.Option(False, "--shm", "-m", help="Shared memory segments (as ipcs -m).")
SEM_OPT = typer.Option(False, "--sem", "-s", help="Semaphore sets (as ipcs -s).")
MSG_OPT = typer.Option(False, "--msg", "-q", help="Message queues (as ipcs -q).")
POSIX_SHM_OPT = typer.Option(
    False, "--posix-shm", "-M", help="POSIX shared memory: files in /dev/shm (as lsipc -M)."
)
POSIX_SEM_OPT = typer.Option(
    False, "--posix-sem", "-S", help="POSIX named semaphores: /dev/shm/sem.* (as lsipc -S)."
)
POSIX_MQUEUE_OPT = typer.Option(
    False, "--posix-mqueue", "-Q", help="POSIX message queues: /dev/mqueue (as lsipc -Q)."
)

ALL_NAMESPACES_OPT = typer.Option(
    False, "--all-namespaces", "-A",
    help="Every IPC namespace of the machine (containers too), each object with its "
    "namespace and container; ours first. Needs CAP_SYS_ADMIN (root).",
)  # fmt: skip
NAMESPACE_OPT = typer.Option(
    None, "--namespace", metavar="PID|PATH",
    help="Only the IPC namespace of this process, or of this namespace file "
    "(/proc/PID/ns/ipc, or one bind-mounted under /run). Needs CAP_SYS_ADMIN (root).",
)  # fmt: skip


def _sweep(all_namespaces: bool, namespace: Optional[str]):  # type: ignore[no-untyped-def]
    """The namespaces -A or --namespace name (namespaces.Sweep), None for neither (ours
    alone, read here as always)."""
    if not all_namespaces and namespace is None:
        return None
    from shmjanitor import kernel, namespaces

    if all_namespaces and namespace is not None:
        raise usage_error("--all-namespaces and --namespace: choose one")
    flag = "--all-namespaces" if all_namespaces else "--namespace"
    if not kernel.has_cap_sys_admin():
        raise fail(f"{flag}: entering another IPC namespace (setns) needs CAP_SYS_ADMIN: "
                   "run as root")  # fmt: skip
    if namespace is None:
        return namespaces.sweep()
    try:
        ipc = namespaces.named(namespace)
    except ValueError as e:
        raise usage_error(f"--namespace {e}") from None
    found = namespaces.sweep(only=ipc)
    if found.places:
        return found
    # A namespace file nobody is in (bind-mounted under /run): its System V tables only
    ns = namespaces.Namespace(ipc, None, None, ipc == namespaces.own_ipc())
    return found._replace(places=[namespaces.Place(ns, True, nsfile=namespace)])


def _kinds_chosen(shm: bool, sem: bool, msg: bool, posix_shm: bool = False,
                  posix_sem: bool = False, posix_mqueue: bool = False) -> tuple[str, ...]:  # fmt: skip
    """The kinds -m, -s, -q (-M, -S, -Q) chose, a union (none chosen: every kind, ());
    a usage error for one this build has no module for."""
    names = tuple(name for name, on in (
        ("shm", shm), ("sem", sem), ("msg", msg), ("posix-shm", posix_shm),
        ("posix-sem", posix_sem), ("posix-mqueue", posix_mqueue)) if on)  # fmt: skip
    for name in names:
        _known_kind(name, "/".join(_KIND_FLAGS[name]))
    return names


def _known_kind(kind: str, flag: str) -> None:
    """A usage error for a kind this shmjanitor has no module for."""
    from shmjanitor import kinds

    if kind not in kinds.names():
        raise usage_error(f"{flag}: this shmjanitor knows no kind {kind!r} "
                          f"(it knows {', '.join(kinds.names())})")  # fmt: skip


@app.command(
    "list", epilog=_columns_help(),
    short_help="Every IPC object, its state and the evidence for it.",
)  # fmt: skip
def list_(
    shm: bool = SHM_OPT,
    sem: bool = SEM_OPT,
    msg: bool = MSG_OPT,
    posix_shm: bool = POSIX_SHM_OPT,
    posix_sem: bool = POSIX_SEM_OPT,
    posix_mqueue: bool = POSIX_MQUEUE_OPT,
    state: Optional[list[State]] = typer.Option(
        None, "--state", help="Show only objects in this state (repeatable)."
    ),
    owner: Optional[str] = typer.Option(
        None, "--owner", "-u", metavar="USER", help="Show only this user's objects (name or uid)."
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", metavar="LIST",
        help="The columns to show, in order, separated by commas: ID,KEY,STATE,REASON; "
        "+LIST adds to the default ones (see Columns below). One kind at a time: the one "
        "-m, -s or -q chooses, else the first that has them all.",
    ),
    sort: str = typer.Option(
        "id", "--sort", metavar="COLUMN", show_default=False,
        click_type=click.Choice(_sort_keys(), case_sensitive=False),
        help="Sort rows by this column (any of Columns below; default: id). Sizes, NATTCH "
        "and IDLE go largest first; ties stay in id order.",
    ),
    noheadings: bool = typer.Option(False, "--noheadings", "-n", help="Print no header line."),
    notruncate: bool = typer.Option(
        False, "--notruncate",
        help="In the table, cut and drop nothing, even if lines get wider than the terminal.",
    ),
    exact_bytes: bool = typer.Option(False, "--bytes", "-b", help="Sizes in bytes, not 4K/1.5M."),
    as_json: bool = typer.Option(False, "--json", "-J", help="Same as --format json."),
    fmt: Format = typer.Option(
        Format.AUTO, "--format", "-f", show_default=False,
        help="table (for a terminal: fitted to its width, colours, footer), plain (aligned "
        "columns for grep and awk), json, or auto (the default): table on a terminal, "
        "plain otherwise.",
    ),
    metrics_file: Optional[Path] = METRICS_OPT,
    all_namespaces: bool = ALL_NAMESPACES_OPT,
    namespace: Optional[str] = NAMESPACE_OPT,
) -> None:  # fmt: skip
    """List every IPC object with its state and the evidence behind it: every kind by
    default, System V and POSIX; -m, -s, -q (System V, as ipcs) and -M, -S, -Q (POSIX,
    as lsipc) choose kinds, and combine.

    States: attached (in use now: nattch > 0), idle (nobody uses it, but a process that
    did is alive, the creator say), orphan (nobody could be using it: creator dead or
    its pid recycled), unknown (whether someone could cannot be known, e.g. cpid 0 from
    inside a container), removing (IPC_RMID already called).

    Plain output has one word per column but the last (a space inside one is written
    \\x20, as lsipc --raw does), so the header and every row have as many fields; each
    kind is a section of its own, after a line naming it, when several are listed.
    """
    from shmjanitor import listing
    from shmjanitor.shapes import parse_output

    chosen = _kinds_chosen(shm, sem, msg, posix_shm, posix_sem, posix_mqueue)
    try:
        columns = None if output is None else parse_output(output)
    except ValueError as e:
        raise usage_error(f"--output: {e}") from None
    if columns is not None and (as_json or fmt is Format.JSON):
        raise usage_error("--output chooses columns of the table and plain output, not JSON")
    if columns is not None and len(chosen) > 1:
        raise usage_error("--output chooses the columns of one kind: name one of "
                          + ", ".join("/".join(_KIND_FLAGS[n]) for n in chosen))  # fmt: skip
    with errors_as_exit(metrics_file):  # which checks that there is a stdout first
        picked = _pick_format(fmt, as_json)
        view = listing.View(columns, not noheadings, notruncate, use_color(sys.stdout))
        listing.run(states=set(state or ()), owner=owner, sort=sort, exact_bytes=exact_bytes,
                    fmt=picked, metrics_file=metrics_file, out=sys.stdout, view=view,
                    kinds=chosen, history=_history_of(None, None),
                    sweep=_sweep(_all_by_config(all_namespaces, namespace, None), namespace),
                    note=_note)  # fmt: skip


def _all_by_config(all_namespaces: bool, namespace: Optional[str], cfg: Any) -> bool:
    """-A as given; without -A and --namespace, the config's all_namespaces (`cfg`, or
    the default file's for list, which has no --config) for a run that may setns(2)
    (CAP_SYS_ADMIN): an ordinary user's run keeps to its own namespace, as without it."""
    if all_namespaces or namespace is not None:
        return all_namespaces
    from shmjanitor import config, kernel
    from shmjanitor.errors import ConfigError

    if cfg is None:
        try:
            cfg = config.load(None)
        except ConfigError:
            return False  # said by the history's note: list reads the file for it too
    return bool(cfg.all_namespaces) and kernel.has_cap_sys_admin()


def _history_of(config_path: Optional[Path], state_dir: Optional[Path]):  # type: ignore[no-untyped-def]
    """Where list records history: --state-dir, config state_dir, else the default
    (paths.py). A config file list cannot read costs the history, not the listing."""
    from shmjanitor import config, listing
    from shmjanitor.errors import ConfigError
    from shmjanitor.paths import default_state_dir

    try:
        cfg = config.load(config_path)
    except ConfigError as e:
        _note(f"history not recorded: {e}")
        return None
    return listing.History(state_dir or cfg.state_dir or default_state_dir(),
                           cfg.history_max_age, _note)  # fmt: skip


CONFIG_OPT = typer.Option(
    None,
    "--config",
    "-c",
    metavar="PATH",
    help="Configuration file (TOML). Default: /etc/shmjanitor.toml when it exists.",
)
STATE_DIR_OPT = typer.Option(
    None,
    "--state-dir",
    metavar="DIR",
    help="Where the quarantine lives. Default: config state_dir, else /var/lib/shmjanitor "
    "for root, $XDG_STATE_HOME/shmjanitor otherwise.",
)
DRY_RUN_OPT = typer.Option(
    False, "--dry-run", "-n", help="Show what would be removed; touch nothing (no attach)."
)
NO_QUARANTINE_OPT = typer.Option(
    False,
    "--no-quarantine",
    help="Remove without keeping a copy first (an explicit choice; the default keeps one).",
)
JSON_OPT = typer.Option(False, "--json", "-J", help="Print JSON: {dry_run, results, summary}.")
VERBOSE_OPT = typer.Option(
    False,
    "--verbose",
    "-v",
    help="Also a line for every orphan kept (in the table on a "
    "terminal, in the log lines otherwise).",
)


def _duration(flag: str, text: Optional[str]) -> Optional[int]:
    """A duration flag's seconds (None when not given); bad text is a usage error."""
    from shmjanitor.durations import parse_duration

    try:
        return None if text is None else parse_duration(text)
    except ValueError as e:
        raise usage_error(f"{flag}: {e}") from None


def _load_config(path: Optional[Path], **flags: object):  # type: ignore[no-untyped-def]
    from shmjanitor import config

    return config.load(path).with_overrides(**flags)


def _width() -> int:
    import shutil

    return shutil.get_terminal_size().columns


def _show_outcome(outcome, as_json: bool, verbose: bool) -> None:  # type: ignore[no-untyped-def]
    """reap's output when it is not streamed: JSON, or the table on a terminal."""
    from shmjanitor import report

    if as_json:
        sys.stdout.write(report.to_json(outcome))
        for p in outcome.problems:
            typer.echo(f"shmjanitor: {printable(p)}", err=True)
    elif sys.stdout.isatty():
        report.table(outcome, sys.stdout, sys.stderr, verbose=verbose, width=_width(),
                     color=use_color(sys.stdout))  # fmt: skip
    else:
        report.log(outcome, sys.stdout, sys.stderr, verbose)


def _show_rm(outcome, as_json: bool, verbose: bool) -> None:  # type: ignore[no-untyped-def]
    """rm's output, as ipcrm's: nothing when all went well, unless -v (or a dry run,
    which is asked to tell); each refusal or failure one line on stderr."""
    from shmjanitor import reaping, report
    from shmjanitor.remove import Action

    if as_json:
        _show_outcome(outcome, True, verbose)
        return
    told = verbose or outcome.dry_run
    if told:
        # Refused segments are said once, below, with the other problems.
        done = [r for r in outcome.results if r.action is not Action.KEPT]
        if sys.stdout.isatty():
            report.table(outcome._replace(results=done, problems=[]), sys.stdout, sys.stderr,
                         verbose=True, width=_width(), color=use_color(sys.stdout),
                         summary=False)  # fmt: skip
        else:
            logger = report.Logger(sys.stdout, sys.stderr, verbose=True)
            for r in done:
                logger.result(r)  # a failure goes to stderr, as reap's
    for p in outcome.problems:
        typer.echo(f"shmjanitor: {printable(p)}", err=True)
    if not told:
        for r in outcome.results:
            if r.action is Action.FAILED:
                typer.echo(f"shmjanitor: {reaping.said(r.verdict)}: {printable(r.reason)}",
                           err=True)  # fmt: skip


@app.command(short_help="Remove the orphans the policy lets go, after a copy.")
def reap(
    dry_run: bool = DRY_RUN_OPT,
    min_age: Optional[str] = typer.Option(
        None,
        "--min-age",
        metavar="DURATION",
        help="Keep orphans idle for less than this (0, 90s, 10m, 1h, 2d). Default: 1h.",
    ),
    include_system: Optional[bool] = typer.Option(
        None,
        "--include-system/--no-include-system",
        help="Also reap orphans of system accounts (uid below UID_MIN or above UID_MAX "
        "of /etc/login.defs; nobody is one).",
    ),
    no_quarantine: bool = NO_QUARANTINE_OPT,
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = JSON_OPT,
    verbose: bool = VERBOSE_OPT,
    metrics_file: Optional[Path] = METRICS_OPT,
    shm: bool = SHM_OPT,
    sem: bool = SEM_OPT,
    msg: bool = MSG_OPT,
    posix_shm: bool = POSIX_SHM_OPT,
    posix_sem: bool = POSIX_SEM_OPT,
    posix_mqueue: bool = POSIX_MQUEUE_OPT,
    owner: Optional[str] = typer.Option(
        None, "--owner", "-u", metavar="USER", help="Only this user's objects (name or uid)."
    ),
    if_owner_gone: bool = typer.Option(
        False, "--if-owner-gone",
        help="For job epilogs, with --owner: only if the user has no process left but this "
        "run's own ancestry, else remove nothing and exit 75; --min-age defaults to 0.",
    ),
    all_namespaces: bool = ALL_NAMESPACES_OPT,
    namespace: Optional[str] = NAMESPACE_OPT,
) -> None:  # fmt: skip
    """Remove orphaned IPC objects (nobody uses them, nobody who did lives) that pass
    the policy: every kind, or the kinds -m, -s, -q, -M, -S and -Q choose (combinable:
    their union).

    Kept, with the reason said: orphans younger than --min-age, of system accounts,
    with protected keys or owners (config), others' orphans when not root, and any
    object that changed since the scan. A copy of each removed object goes to the
    quarantine first (see `shmjanitor restore`).

    A job epilog runs `reap --owner USER --if-owner-gone`: the user's orphans of
    every kind, whatever their age, once the user's last job on the node has ended.

    Exit status: 0 all went as planned (including nothing to do), 1 some removal
    failed (or, with --if-owner-gone, whether the user has a process left cannot be
    known: nothing removed), 2 usage, configuration or input error (nothing removed),
    75 --if-owner-gone and the user still has a process (nothing removed). With
    --metrics-file, shmjanitor_last_run_success is 1 exactly when the status is 0.
    """
    from shmjanitor import reaping, remove, report
    from shmjanitor.accounts import uid_of

    only = _kinds_chosen(shm=shm, sem=sem, msg=msg) + _posix_chosen(
        posix_shm, posix_sem, posix_mqueue
    )
    with errors_as_exit(metrics_file):
        if if_owner_gone and owner is None:
            raise usage_error("--if-owner-gone needs --owner USER")
        try:
            owner_uid = None if owner is None else uid_of(owner)
        except ValueError as e:
            raise usage_error(f"--owner: {e}") from None
        age = _duration("--min-age", min_age)
        if if_owner_gone and age is None:
            age = 0  # the owner is gone: nobody is late to come back for anything
        cfg = _load_config(config_path, min_age=age, include_system=include_system)
        # Off a terminal and without --json, each removal is logged the moment it is
        # done (journald sees it even if the run is killed); else shown at the end.
        logger = None if as_json or sys.stdout.isatty() else report.Logger(
            sys.stdout, sys.stderr, verbose)  # fmt: skip
        with remove.stop_on_signals() as stop:
            hooks = reaping.Hooks(
                on_result=logger.result if logger else reaping.Hooks().on_result,
                on_note=logger.note if logger else _note,
                stop=stop,
            )
            sweep = _sweep(_all_by_config(all_namespaces, namespace, cfg), namespace)
            if sweep is None:
                outcome = reaping.reap(cfg, dry_run=dry_run, quarantine=not no_quarantine,
                                       state_dir=state_dir, hooks=hooks, only=only,
                                       owner=owner_uid, if_owner_gone=if_owner_gone)  # fmt: skip
            else:
                outcome = reaping.reap_all(sweep, cfg, dry_run=dry_run, hooks=hooks, only=only,
                                           quarantine=not no_quarantine, state_dir=state_dir,
                                           owner=owner_uid, if_owner_gone=if_owner_gone)  # fmt: skip
        if outcome.owner_present is not None:
            typer.echo(f"shmjanitor: {reaping.owner_present(outcome.owner_present)}", err=True)
        if logger is not None:
            logger.finish(outcome)
        else:
            _show_outcome(outcome, as_json, verbose)
        if metrics_file is not None:
            _write_reap_metrics(metrics_file, outcome)
    if outcome.interrupted:
        raise typer.Exit(128 + outcome.interrupted)  # 130 SIGINT, 143 SIGTERM, as shells say
    if outcome.owner_present is not None and outcome.owner_present.alive:
        raise typer.Exit(EXIT_OWNER_PRESENT)
    if not outcome.ok:
        raise typer.Exit(1)


_POSIX_FLAGS = {"posix-shm": "-M/--posix-shm", "posix-sem": "-S/--posix-sem",
                "posix-mqueue": "-Q/--posix-mqueue"}  # fmt: skip


def _posix_chosen(shm: bool, sem: bool, mqueue: bool) -> tuple[str, ...]:
    """The POSIX kinds reap's -M, -S, -Q chose (lsipc 2.40's letters)."""
    names = tuple(n for n, on in zip(_POSIX_FLAGS, (shm, sem, mqueue)) if on)
    for name in names:
        _known_kind(name, _POSIX_FLAGS[name])
    return names


def _note(text: str) -> None:
    typer.echo(f"shmjanitor: note: {printable(text)}", err=True)


def _write_reap_metrics(path: Path, outcome) -> None:  # type: ignore[no-untyped-def]
    from shmjanitor import metrics
    from shmjanitor.remove import Action

    gone = {id(r.verdict) for r in outcome.results if r.action in (Action.REMOVED, Action.GONE)}
    removed = [r for r in outcome.results if r.action is Action.REMOVED]
    run = metrics.RunStats(
        removed=len(removed),
        removed_bytes=sum(r.verdict.obj.size for r in removed),
        kept=sum(r.action is Action.KEPT for r in outcome.results),
        success=outcome.ok and not outcome.interrupted,  # 130/143 is not a success
    )
    left = [v for v in outcome.survey.verdicts if id(v) not in gone]  # the survey's own
    metrics.write(path, left, run=run, now=outcome.survey.taken_at)


def _ids(kind: str) -> Callable[[str], int]:
    """The parser of a kind's ids (-s ID says "not a semaphore set id")."""

    def parse(text: str) -> int:
        return parse_id(text, _noun(kind))

    return parse


def _keys(kind: str) -> Callable[[str], int]:
    """The parser of a kind's keys: IPC_PRIVATE (0) names no one object, refused."""

    def parse(text: str) -> int:
        return parse_key(text, noun=_noun(kind))

    return parse


def _noun(kind: str) -> str:
    from shmjanitor import kinds

    return kinds.of(kind).NOUN if kind in kinds.names() else f"{kind} object"


def _posix_path(text: str) -> str:
    """An absolute path naming a file directly in /dev/shm or /dev/mqueue, with "//" and
    "/./" collapsed. ".." is refused rather than collapsed: the kernel resolves it after
    a symlink, normpath before, so "/dev/shm/x/../y" need not mean /dev/shm/y (and
    "/dev/shm/../etc/passwd" is no POSIX object)."""
    from shmjanitor import posixfs

    parts = [p for p in text.split("/") if p not in ("", ".")]
    where = f"{posixfs.SHM_DIR}/NAME or {posixfs.MQUEUE_DIR}/NAME"
    if ".." in parts:
        raise ValueError(f"{printable(text)}: a path with '..' is refused; name the POSIX object "
                         f"as {where}")  # fmt: skip
    path = "/" + "/".join(parts)
    if os.path.dirname(path) not in (posixfs.SHM_DIR, posixfs.MQUEUE_DIR):
        raise ValueError(f"{printable(text)} is not the path of a POSIX object ({where})")
    return path


def _id_or_path(text: str) -> str:
    """rm's operand: a segment id (decimal, as before there were POSIX objects) or the
    path of a POSIX object (/dev/shm/NAME, /dev/mqueue/NAME)."""
    if text.startswith("/"):
        return _posix_path(text)
    try:
        return str(parse_id(text))
    except ValueError as e:
        raise ValueError(f"{e}; or the path of a POSIX object (/dev/shm/NAME)") from None


@app.command(short_help="Remove objects by id, key or path, as ipcrm; refuse those in use.")
def rm(
    ids: Optional[list[str]] = typer.Argument(
        None, metavar="[OBJECT]...", parser=_id_or_path,
        help="Segment ids (shmid), in decimal; or paths of POSIX objects (/dev/shm/NAME, "
        "/dev/mqueue/NAME).",
    ),
    shmem_id: Optional[list[int]] = typer.Option(
        None, "--shm", "-m", "--shmem-id", metavar="ID", parser=_ids("shm"),
        help="A segment id, as ipcrm -m (repeatable).",
    ),
    sem_id: Optional[list[int]] = typer.Option(
        None, "--sem", "-s", "--semaphore-id", metavar="ID", parser=_ids("sem"),
        help="A semaphore set id, as ipcrm -s (repeatable).",
    ),
    msg_id: Optional[list[int]] = typer.Option(
        None, "--msg", "-q", "--queue-id", metavar="ID", parser=_ids("msg"),
        help="A message queue id, as ipcrm -q (repeatable).",
    ),
    key: Optional[list[int]] = typer.Option(
        None, "--key", "-k", "--shm-key", "-M", "--shmem-key", metavar="KEY",
        parser=_keys("shm"),
        help="Segment key: 0x1234abcd, decimal, or signed as the kernel prints it "
        "(-1 = 0xffffffff). Repeatable; ipcrm's -M.",
    ),
    sem_key: Optional[list[int]] = typer.Option(
        None, "--sem-key", "-S", "--semaphore-key", metavar="KEY", parser=_keys("sem"),
        help="Semaphore set key, written as --key's. Repeatable; ipcrm's -S.",
    ),
    msg_key: Optional[list[int]] = typer.Option(
        None, "--msg-key", "-Q", "--queue-key", metavar="KEY", parser=_keys("msg"),
        help="Message queue key, written as --key's. Repeatable; ipcrm's -Q.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Remove even an object in use (attached, waited on, or a "
        "process that used it alive)."
    ),
    dry_run: bool = DRY_RUN_OPT,
    no_quarantine: bool = NO_QUARANTINE_OPT,
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = JSON_OPT,
    verbose: bool = typer.Option(
        False, "--verbose", "-v",
        help="Say what was removed, a line per object (a dry run always does).",
    ),
    all_namespaces: bool = typer.Option(
        False, "--all-namespaces", "-A",
        help="Look for each object in every IPC namespace of the machine: it must be in "
        "exactly one (ids and keys are per namespace), else nothing is removed (exit 2). "
        "Needs CAP_SYS_ADMIN (root).",
    ),
    namespace: Optional[str] = NAMESPACE_OPT,
) -> None:  # fmt: skip
    """Remove the named objects, like ipcrm, but refuse one that is in use.

    IDs alone, -m and --key/-M name segments; -s and -S semaphore sets; -q and -Q
    message queues; a PATH (/dev/shm/NAME, /dev/mqueue/NAME) a POSIX shared memory
    object, semaphore or queue. In use means attached (a segment), waited on or blocked
    on (a set, a queue), open or mapped (a POSIX object: the kernel's write lease
    decides at the last instant, even with --force refused only by the identity
    checks), marked for removal but still attached, or a process that may use it again
    alive (or whether one is cannot be known). --force removes it anyway: the kernel
    then frees a segment at the last detach. As ipcrm, it prints nothing when all went
    well (-v says what it did); each object kept or not found is one line on stderr.
    Exit status: 0 done, 1 an object was missing, refused or failed, 2 usage or
    configuration error.
    """
    from shmjanitor import reaping, remove

    paths = [p for p in ids or () if p.startswith("/")]
    numbers = [int(i) for i in ids or () if not i.startswith("/")]
    named = [
        *(reaping.Named("shm", i) for i in (*numbers, *(shmem_id or ()))),
        *(reaping.Named("posix", 0, path=p) for p in paths),
        *(reaping.Named("sem", i) for i in sem_id or ()),
        *(reaping.Named("msg", i) for i in msg_id or ()),
        *(reaping.Named("shm", k, by_key=True) for k in key or ()),
        *(reaping.Named("sem", k, by_key=True) for k in sem_key or ()),
        *(reaping.Named("msg", k, by_key=True) for k in msg_key or ()),
    ]
    if not named:
        raise usage_error("name at least one segment, semaphore set or message queue, or a "
                          "POSIX object's path: shmjanitor rm ID|PATH..., -m/-s/-q ID or "
                          "--key/-S/-Q KEY")  # fmt: skip
    for kind, given in (("sem", sem_id or sem_key), ("msg", msg_id or msg_key)):
        if given:
            _known_kind(kind, _KIND_FLAGS[kind][1])
    with errors_as_exit():
        cfg = _load_config(config_path)
        with remove.stop_on_signals() as stop:
            hooks = reaping.Hooks(on_note=_note, stop=stop)
            sweep = _sweep(all_namespaces, namespace)
            if sweep is None:
                outcome = reaping.rm(named, cfg, force=force, dry_run=dry_run,
                                     quarantine=not no_quarantine, state_dir=state_dir,
                                     hooks=hooks)  # fmt: skip
            else:
                outcome = reaping.rm_all(named, sweep, cfg, force=force, dry_run=dry_run,
                                         quarantine=not no_quarantine, state_dir=state_dir,
                                         hooks=hooks)  # fmt: skip
        _show_rm(outcome, as_json, verbose)
    if outcome.interrupted:
        raise typer.Exit(128 + outcome.interrupted)
    if not outcome.ok:
        raise typer.Exit(1)


def _explain_in(sweep, named, one):  # type: ignore[no-untyped-def]
    """explain's job inside the namespace --namespace names: at its place that reads
    the object's kind (a POSIX path: the place with that directory)."""
    from shmjanitor import inside

    place = sweep.places[0]  # the namespace's System V tables are read here
    if named.path is not None:  # its POSIX directories where the sweep reads them
        place = next((p for p in sweep.places if p.ns.own or p.shm is not None
                      or p.mqueue is not None), place)  # fmt: skip
    try:
        return inside.run(place, lambda: one(place.ns))
    except (inside.Vanished, inside.Unreachable) as e:
        raise fail(f"{e}", 1) from None


@app.command(short_help="Everything known of one object: users, parties, rules, reap.")
def explain(
    object_: Optional[str] = typer.Argument(
        None, metavar="[OBJECT]", parser=_id_or_path,
        help="A segment id (shmid), in decimal; or the path of a POSIX object.",
    ),
    shmem_id: Optional[int] = typer.Option(
        None, "--shm", "-m", metavar="ID", parser=_ids("shm"), help="A segment id."
    ),
    sem_id: Optional[int] = typer.Option(
        None, "--sem", "-s", metavar="ID", parser=_ids("sem"), help="A semaphore set id."
    ),
    msg_id: Optional[int] = typer.Option(
        None, "--msg", "-q", metavar="ID", parser=_ids("msg"), help="A message queue id."
    ),
    key: Optional[int] = typer.Option(
        None, "--key", "-k", metavar="KEY", parser=_keys("shm"),
        help="A segment's key, written as rm's --key.",
    ),
    sem_key: Optional[int] = typer.Option(
        None, "--sem-key", metavar="KEY", parser=_keys("sem"), help="A semaphore set's key."
    ),
    msg_key: Optional[int] = typer.Option(
        None, "--msg-key", metavar="KEY", parser=_keys("msg"), help="A message queue's key."
    ),
    min_age: Optional[str] = typer.Option(
        None, "--min-age", metavar="DURATION", help="As reap's: the policy reap would apply."
    ),
    include_system: Optional[bool] = typer.Option(
        None, "--include-system/--no-include-system", help="As reap's."
    ),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", "-J", help="Same as --format json."),
    fmt: Format = typer.Option(
        Format.AUTO, "--format", "-f",
        help="table (bold headings), plain, json, or auto: table on a terminal, plain "
        "otherwise.",
    ),
    namespace: Optional[str] = NAMESPACE_OPT,
) -> None:  # fmt: skip
    """Explain one object: its kernel facts, the processes using it now (a segment's
    attached processes, from their maps; a POSIX object's holders; a queue's blocked
    tasks; a set's counted waiters), the parties whose life decides its state, each
    rule in order with its answer, what reap would do and why, and the rm command that
    removes it anyway. Reads only. Exit status: 0, 1 no such object, 2 usage error.
    """
    import json

    from shmjanitor import explain as explain_
    from shmjanitor import reaping

    named = [
        *(reaping.Named("posix", 0, path=object_) for _ in [0] if object_ and object_[0] == "/"),
        *(reaping.Named("shm", int(object_)) for _ in [0] if object_ and object_[0] != "/"),
        *(reaping.Named(kind, i) for kind, i in (("shm", shmem_id), ("sem", sem_id),
                                                  ("msg", msg_id)) if i is not None),
        *(reaping.Named(kind, k, by_key=True) for kind, k in (("shm", key), ("sem", sem_key),
                                                             ("msg", msg_key)) if k is not None),
    ]  # fmt: skip
    if len(named) != 1:
        raise usage_error("name exactly one object: an id (OBJECT, -m, -s or -q ID), a key "
                          "(--key, --sem-key or --msg-key KEY) or a POSIX object's path")  # fmt: skip
    for kind in ("sem", "msg"):
        if named[0].kind == kind:
            _known_kind(kind, _KIND_FLAGS[kind][1])
    with errors_as_exit():
        cfg = _load_config(config_path, min_age=_duration("--min-age", min_age),
                           include_system=include_system)  # fmt: skip
        where = _sweep(False, namespace)
        sd = state_dir or cfg.state_dir

        def one(ns: Any = None) -> Any:
            v = explain_.find(named[0], sd, ns)
            return explain_.explain(v, cfg, reaping.caller(), sd)

        e = one() if where is None else _explain_in(where, named[0], one)
        chosen = _pick_format(fmt, as_json)
        if chosen is Format.JSON:
            sys.stdout.write(json.dumps(explain_.to_json(e), separators=(",", ":")) + "\n")
        else:
            explain_.write(e, sys.stdout, bold=chosen is Format.TABLE and use_color(sys.stdout))


quarantine_app = typer.Typer(
    help="Copies of removed objects: list them, purge them (see also restore).",
    short_help="The copies of removed objects: list, purge.",
    rich_markup_mode=None,
)
app.add_typer(quarantine_app, name="quarantine")


def _store(config_path: Optional[Path], state_dir: Optional[Path]):  # type: ignore[no-untyped-def]
    """The quarantine to read. A state directory named by --state-dir or the config
    must exist: a typo would otherwise read as "quarantine is empty". A segment a
    killed reaper left locked is given its mode back first, if no reaper is at work."""
    from shmjanitor import reaping
    from shmjanitor.errors import StateDirError
    from shmjanitor.quarantine import store_for

    cfg = _load_config(config_path)
    named = state_dir or cfg.state_dir
    if named is not None and not named.is_dir():
        what = "not a directory" if named.exists() else "does not exist"
        raise StateDirError(f"state directory {named}: {what}")
    reaping.repair_left_lock(cfg, _note)
    store = store_for(cfg, state_dir, note=_note)
    store.tidy()
    return store


@quarantine_app.command("list", short_help="The entries, and the handles to restore by.")
def quarantine_list(
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    noheadings: bool = typer.Option(False, "--noheadings", "-n", help="Print no header line."),
    as_json: bool = typer.Option(False, "--json", "-J", help='Print {"entries": [...]}.'),
) -> None:
    """List quarantine entries: the handle to restore by (ENTRY), the object's old id,
    key, size and owner, when and why it was removed, and whether it can be restored
    (STATUS: removed, restored:NEW_ID, or pending while its run is not settled)."""
    with errors_as_exit():
        store = _store(config_path, state_dir)
        entries = store.entries()
        _print_entries(entries, as_json, not noheadings, _namespaces_of(store, entries))


def _namespaces_of(store, entries):  # type: ignore[no-untyped-def]
    """run -> its IPC namespace and container (recorded by each run: ipc_ns, and for a
    sweep's run its container), when some entry was removed in another namespace."""
    from shmjanitor.lock import ipc_namespace
    from shmjanitor.quarantine import Damaged

    runs = {}
    for run in dict.fromkeys(e.run for e in entries):
        try:
            doc = store.load(run)
        except (Damaged, OSError):  # its entries were not listed either
            continue
        runs[run] = {"ipc": doc.get("ipc_ns"), "container": doc.get("container")}
    ours = ipc_namespace()
    return runs if any(r["ipc"] not in (None, ours) for r in runs.values()) else {}


def _print_entries(entries, as_json: bool, header: bool,  # type: ignore[no-untyped-def]
                   where=None) -> None:  # fmt: skip
    import json

    from shmjanitor.accounts import owner_name
    from shmjanitor.durations import format_size
    from shmjanitor.layout import Col, draw
    from shmjanitor.quarantine import entry_path, short_names
    from shmjanitor.remove import LEGACY_KIND
    from shmjanitor.render import when, word

    short = short_names(entries)
    rows = [{
        "entry": e.name, "short": short[e.name], "kind": e.doc.get("kind", LEGACY_KIND),
        "id": e.doc["id"], "key": e.doc["key"],
        "size": e.doc["size"], "uid": e.doc["uid"], "owner": owner_name(e.doc["uid"]),
        "mode": e.doc["mode"], "removed_at": e.doc["removed_at"], "reason": e.doc["reason"],
        "restored_as": e.doc.get("restored_as"), "status": e.doc["status"],
        **({"path": entry_path(e.doc)} if entry_path(e.doc) else {}),
        **({"namespace": where[e.run]} if where and e.run in where else {}),
    } for e in entries]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"entries": rows}))
        return
    if not rows:
        typer.echo("quarantine is empty", err=True)
        return
    tty = sys.stdout.isatty()
    cols: tuple[Col, ...] = (
        Col("ENTRY"), Col("ID", right=True), Col("KEY", drop=3),
        Col("SIZE", right=True, drop=2), Col("OWNER", drop=1, squeeze=True),
        Col("REMOVED", drop=4), Col("STATUS"), Col("REASON", wrap=True))  # fmt: skip
    one = _same if tty else word
    cells: list[tuple[str, ...]] = [
        (r["short"], str(r["id"]),
         printable(r["path"]) if "path" in r else f"0x{r['key']:08x}", format_size(r["size"]),
         one(printable(r["owner"])), when(r["removed_at"]),
         f"restored:{r['restored_as']}" if r["restored_as"] is not None
         else printable(r["status"]), printable(r["reason"])) for r in rows]  # fmt: skip
    if any("path" in r for r in rows):  # a POSIX object's path where a key would be
        cols = (*cols[:2], Col("KEY|PATH", drop=3), *cols[3:])
    if {r["kind"] for r in rows} != {LEGACY_KIND}:  # KIND after ID, as report.table has it
        cols = (*cols[:2], Col("KIND", drop=5), *cols[2:])
        cells = [c[:2] + (r["kind"],) + c[2:] for c, r in zip(cells, rows)]
    if where:  # entries of other namespaces (reap -A): which one each was in
        cols = (*cols[:-1], Col("NAMESPACE", drop=6, squeeze=True), cols[-1])
        cells = [(*c[:-1], _ns_cell(r.get("namespace")), c[-1]) for c, r in zip(cells, rows)]
    lines = draw(cols, cells, _width() if tty else None, header=header,
                 color=use_color(sys.stdout))  # fmt: skip
    typer.echo("\n".join(lines))


def _same(text: str) -> str:
    return text


def _ns_cell(ns) -> str:  # type: ignore[no-untyped-def]
    """A quarantine run's namespace ({"ipc", "container"}) as reap's table says it."""
    from shmjanitor.namespaces import Namespace
    from shmjanitor.report import where

    if not ns or ns.get("ipc") is None:
        return "-"
    return where(Namespace(ns["ipc"], None, ns.get("container")))


@quarantine_app.command("purge", short_help="Delete entries for good.")
def quarantine_purge(
    entries: Optional[list[str]] = typer.Argument(
        None, metavar="[ENTRY]...",
        help="Entries to drop, as `shmjanitor quarantine list` names them.",
    ),
    older_than: Optional[str] = typer.Option(
        None, "--older-than", metavar="DURATION", help="Purge entries older than this (7d, 12h)."
    ),
    purge_all: bool = typer.Option(False, "--all", help="Purge every entry."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what would be purged; delete nothing."
    ),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
) -> None:  # fmt: skip
    """Delete quarantine entries for good: the ENTRYs named, those --older-than
    DURATION, or --all (one of the three).

    An entry dropped alone leaves its bytes in its run's data file until the run's
    last entry goes; --older-than and --all drop whole runs, and files set aside as
    damaged."""
    if sum((bool(entries), older_than is not None, purge_all)) != 1:
        raise usage_error("say what to purge: ENTRY..., --older-than DURATION or --all "
                          "(one of them)")  # fmt: skip
    age = _duration("--older-than", older_than)
    with errors_as_exit():
        store = _store(config_path, state_dir)
        if entries:
            found = list({e.name: e for e in map(store.find, entries)}.values())
            verb = "would purge" if dry_run else "purged"
            for e in found:
                if not dry_run:
                    store.drop_entry(e)
            _say_purged(verb, found, [])
            return
        runs, files = store.purgeable(None if purge_all else age, time.time())
        gone = [e for e in store.entries() if e.run in runs]
        if not dry_run:
            store.purge(None if purge_all else age, time.time())
        _say_purged("would purge" if dry_run else "purged", gone, files)


def _say_purged(verb: str, entries, files) -> None:  # type: ignore[no-untyped-def]
    from shmjanitor.quarantine import short_names

    short = short_names(entries)
    if verb == "would purge":
        for e in entries:
            removed = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.doc["removed_at"]))
            typer.echo(f"would purge {short[e.name]} (id {e.doc['id']}, key "
                       f"0x{e.doc['key']:08x}, removed {removed})")  # fmt: skip
        for p in files:
            typer.echo(f"would purge {printable(p.name)}")
    extra = f" and {len(files)} set-aside file(s)" if files else ""
    typer.echo(f"{verb} {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}{extra}")


@app.command(short_help="Recreate a removed object from its copy.")
def restore(
    entry: Optional[str] = typer.Argument(
        None,
        metavar="[ENTRY]",
        help="Entry name, as `shmjanitor quarantine list` "
        "shows; or the path a POSIX object had (/dev/shm/NAME, /dev/mqueue/NAME).",
    ),
    old_id: Optional[int] = typer.Option(
        None,
        "--id",
        metavar="ID",
        help="The entry of the segment (or, with -s or -q, the set or queue) that had this id.",
    ),
    key: Optional[str] = typer.Option(
        None,
        "--key",
        "-k",
        metavar="KEY",
        help="The entry of the segment (or, with -s or -q, the set or queue) that had this key.",
    ),
    shm: bool = typer.Option(
        False, "--shm", "-m", help="--id or --key names a segment (the default)."
    ),
    sem: bool = typer.Option(False, "--sem", "-s", help="--id or --key names a semaphore set."),
    msg: bool = typer.Option(False, "--msg", "-q", help="--id or --key names a message queue."),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", "-J", help='Print {"id": new_id, "key": key}.'),
) -> None:
    """Recreate a removed object from the quarantine: same key, mode, owner and data (a
    segment's bytes, a set's values, a queue's messages); a POSIX object at the same
    path, with its mode, owner and bytes (holes stay holes), refused while that path
    exists.

    Name the entry, or the object's old --id or --key (a segment's; with -s a
    semaphore set's, with -q a message queue's: ids and keys are per kind): when
    several entries match, the one not yet restored is taken if there is only one,
    else they are listed and nothing is done. Refused when its key is in use again.
    An IPC_PRIVATE object comes back under a new id. The entry stays, marked restored,
    until purged. Exit status: 0 restored, 1 not restored (message says why), 2 usage
    or configuration error.
    """
    import json

    from shmjanitor import kinds, quarantine, reaping

    if sum((entry is not None, old_id is not None, key is not None)) != 1:
        raise usage_error("say which entry to restore: ENTRY, --id ID or --key KEY (one of them)")
    chosen = _kinds_chosen(shm, sem, msg)
    if len(chosen) > 1 or (chosen and entry is not None):
        raise usage_error("-m, -s or -q says which kind --id or --key names: one of them, "
                          "and not with ENTRY (an entry knows its kind)")  # fmt: skip
    kind = chosen[0] if chosen else "shm"  # ipcrm -m/-M's, as rm's IDs and --key
    with errors_as_exit():
        store = _store(config_path, state_dir)
        which: Union[str, quarantine.Entry]
        noun = f"{kinds.of(kind).NOUN} " if chosen else ""
        if entry is not None and entry.startswith("/"):
            which = store.find_by_path(os.path.normpath(entry))
        elif entry is not None:
            which = entry
        elif old_id is not None:
            which = store.find_by("id", old_id, f"{noun}id {old_id}", kind)
        else:
            k = reaping.parse_key(key or "")
            which = store.find_by("key", k, f"{noun}key 0x{k:08x}", kind)
        try:
            with _signals_raise():
                new_id, k = _restore_where(store, which)
        except _Interrupted as stop:
            typer.echo(f"shmjanitor: interrupted by {stop.name}: nothing restored", err=True)
            raise typer.Exit(128 + stop.signum) from None
        found = store.find(which if isinstance(which, str) else which.name)
        doc = found.doc
        path = quarantine.entry_path(doc)
        from shmjanitor import history
        from shmjanitor.lock import ipc_namespace

        if store.load(found.run).get("ipc_ns") in (None, ipc_namespace()):
            # the history keeps our own namespace's objects: a container's same id
            # is not one of them
            history.restored(doc.get("kind", "shm"), doc["id"], doc.get("key", 0), path,
                             store.state_dir, _note)  # fmt: skip
        if as_json:
            typer.echo(json.dumps({"id": new_id, "key": k, **({"path": path} if path else {})}))
        else:
            if not isinstance(which, str):  # found by id, key or path: say its handle
                which = quarantine.short_names(store.entries()).get(which.name, which.name)
            if path is not None:
                typer.echo(f"restored {printable(which)} as {printable(path)} (inode {new_id})")
            else:
                typer.echo(f"restored {printable(which)} as id {new_id} (key 0x{k:08x})")


def _restore_where(store, which):  # type: ignore[no-untyped-def]
    """quarantine.restore, inside the IPC namespace where the entry's run removed it (a
    sweep's, -A): found again by its recorded process or container, else refused."""
    from functools import partial

    from shmjanitor import inside, namespaces, quarantine
    from shmjanitor.lock import ipc_namespace

    entry = store.find(which) if isinstance(which, str) else which
    run = store.load(entry.run)
    ipc = run.get("ipc_ns")
    restore = partial(quarantine.restore, store, which, time.time())
    if (not isinstance(ipc, int) or ipc == ipc_namespace()
            or entry.doc.get("status") != quarantine.REMOVED
            or entry.doc.get("restored_as") is not None):  # fmt: skip
        return restore()  # here, or refused as it says (pending, already restored)
    try:
        place = namespaces.home(ipc, run.get("container"), run.get("ns_pid"),
                                run.get("ns_pid_start"), entry.doc.get("dir"))  # fmt: skip
    except ValueError as e:
        raise quarantine.RestoreError(f"entry {entry.name} not restored: {e}") from None
    try:
        return inside.run(place, restore)
    except (inside.Vanished, inside.Unreachable) as e:
        raise quarantine.RestoreError(f"entry {entry.name} not restored: {e}") from None


class _Interrupted(BaseException):
    """SIGINT or SIGTERM during a restore: unwinds it, so that a half-filled segment is
    removed again on the way out (quarantine.restore), instead of staying for ever."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name


@contextmanager
def _signals_raise() -> Iterator[None]:
    import signal

    def handler(signum: int, _frame: object) -> None:
        raise _Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@app.command("install-units", short_help="Install the systemd service and timer.")
def install_units(
    dest: Path = typer.Option(
        Path("/etc/systemd/system"),
        "--dest",
        metavar="DIR",
        help="Where to write shmjanitor.service and shmjanitor.timer.",
    ),
    enable: bool = typer.Option(
        True,
        "--enable/--no-enable",
        help="Run systemctl daemon-reload and enable --now shmjanitor.timer afterwards.",
    ),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Also install shmjanitor-watch.service (shmjanitor watch, off by default) "
        "and, with --enable, enable --now it.",
    ),
    all_namespaces: bool = typer.Option(
        False,
        "--all-namespaces",
        help="Also install the drop-in all-namespaces.conf (in shmjanitor.service.d), "
        "which lets the service enter every IPC namespace (RestrictNamespaces=ipc), "
        "for all_namespaces = true in /etc/shmjanitor.toml.",
    ),
) -> None:
    """Install the hardened systemd service and timer for this shmjanitor.

    ExecStart= points at the shmjanitor being run, so install it system-wide first
    (e.g. python3 -m venv /opt/shmjanitor && /opt/shmjanitor/bin/pip install .) and run
    /opt/shmjanitor/bin/shmjanitor install-units as root. The timer reaps 15 minutes after
    boot and hourly after that, with the policy of /etc/shmjanitor.toml.

    Refused when the program, its interpreter or the shmjanitor package (or a directory
    on the way to them) is not root's or is writable by group or others, or lies below
    /tmp, /var/tmp, /home, /root or /run/user, which the service cannot see.
    """
    import shutil
    import subprocess

    from shmjanitor import units

    with errors_as_exit():
        exec_path = units.find_exec_path()
        units.check_trusted(exec_path)  # root's service must not run what others can change
        for path in units.install_units(dest, exec_path, watch, all_namespaces):
            typer.echo(f"wrote {printable(str(path))}")
    if not enable:
        return
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise fail("systemctl not found: enable shmjanitor.timer yourself, or use --no-enable", 1)
    todo = [["daemon-reload"], ["enable", "--now", units.TIMER]]
    if watch:
        todo.append(["enable", "--now", units.WATCH])
    for args in todo:
        done = subprocess.run([systemctl, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise fail(f"systemctl {' '.join(args)} failed: {done.stderr.strip()}", 1)
    typer.echo(f"enabled and started {units.TIMER}")
    if watch:
        typer.echo(f"enabled and started {units.WATCH}")


@app.command(short_help="The kernel's limits and their use, as lsipc -g, ipcs -l/-u.")
def limits(
    exact_bytes: bool = typer.Option(
        False, "--bytes", "-b", help="SHMMAX and SHMMIN in bytes, not 4K/16E."
    ),
    as_json: bool = typer.Option(False, "--json", "-J", help="Same as --format json."),
    fmt: Format = typer.Option(
        Format.AUTO,
        "--format",
        "-f",
        help="table (bold header), plain (aligned columns for grep/awk), json, or auto: "
        "table on a terminal, plain otherwise.",
    ),
) -> None:
    """Show the kernel's shared memory limits and their use, like lsipc -g and ipcs -l/-u.

    SHMMNI (segments), SHMALL (pages, each segment rounded up to whole pages as the
    kernel counts them), SHMMAX and SHMMIN (bytes of one segment), and the pages
    resident and swapped. A limit at or above the kernel's default (ULONG_MAX - 2^24)
    is "unlimited". The limits belong to the IPC namespace: a container has its own.
    """
    import os

    from shmjanitor import limits as limits_

    with errors_as_exit():
        usage = limits_.read()
    chosen = _pick_format(fmt, as_json)
    if chosen is Format.JSON:
        sys.stdout.write(limits_.to_json(usage))
    else:
        bold = chosen is Format.TABLE and "NO_COLOR" not in os.environ
        limits_.plain(usage, exact_bytes, sys.stdout, bold=bold)


class By(str, Enum):
    COMMAND = "command"
    USER = "user"
    UNIT = "unit"


@app.command(short_help="The programs, users or units that leak most (from the history).")
def leaks(
    since: str = typer.Option("7d", "--since", metavar="DURATION",
                              help="The period: leaks of the last DURATION (1h, 7d)."),
    by: By = typer.Option(By.COMMAND, "--by", help="Group by command line, user or "
                          "systemd unit (or container)."),
    exact_bytes: bool = typer.Option(False, "--bytes", "-b", help="Sizes in bytes."),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", "-J", help="Same as --format json."),
    fmt: Format = typer.Option(
        Format.AUTO, "--format", "-f",
        help="table (bold header), plain (aligned columns for grep/awk), json, or auto: "
        "table on a terminal, plain otherwise.",
    ),
) -> None:  # fmt: skip
    """Rank the makers of leaked objects over a period, from the history that list and
    reap record: per command line (or user, or unit), the objects found orphaned and
    their bytes, those removed and the bytes freed, those restored. A maker is known
    when list or reap saw it alive with its object; the rest are one row, "-".

    Exit status: 0, 2 usage or configuration error, 1 no history to read.
    """
    from shmjanitor import history
    from shmjanitor import leaks as leaks_
    from shmjanitor.paths import default_state_dir

    seconds = _duration("--since", since)
    assert seconds is not None
    with errors_as_exit():
        cfg = _load_config(config_path)
        where = state_dir or cfg.state_dir or default_state_dir()
        until = history.now()  # $SHMJANITOR_NOW in tests (history.py)
        try:
            rows = history.leaks(where, until - seconds, by.value, until)
        except history.Unusable as e:
            raise fail(str(e), 1) from None
        chosen = _pick_format(fmt, as_json)
        if chosen is Format.JSON:
            sys.stdout.write(leaks_.to_json(rows, by.value, until - seconds, until))
        else:
            bold = chosen is Format.TABLE and "NO_COLOR" not in os.environ
            leaks_.plain(rows, by.value, exact_bytes, sys.stdout, bold=bold)


@app.command(short_help="Record the makers of new objects while they live (a service).")
def watch(
    interval: str = typer.Option("5s", "--interval", metavar="INTERVAL",
                                 help="Time between polls (5s, 0.5s, 500ms, 1m)."),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
) -> None:  # fmt: skip
    """Poll the kernel's tables (/proc/sysvipc, /dev/shm, /dev/mqueue) every INTERVAL and
    record in the history the creator and last user of each object new since the last
    poll, while they are alive: short-lived programs that leak between two timer runs are
    then named by list, reap and leaks. Meant to run as shmjanitor-watch.service (off by
    default). Removes nothing.

    Exit status: 0 when stopped by SIGTERM or SIGINT, 2 usage or configuration error.
    """
    from shmjanitor import watch as watch_
    from shmjanitor.paths import default_state_dir

    try:
        seconds = watch_.parse_interval(interval)
    except ValueError as e:
        raise usage_error(f"--interval: {e}") from None
    with errors_as_exit():
        cfg = _load_config(config_path)
        where = state_dir or cfg.state_dir or default_state_dir()
        raise typer.Exit(watch_.run(where, seconds, _note))


@app.command(short_help="Check this machine's IPC settings and the janitor's health.")
def doctor(
    root: Path = typer.Option(
        Path("/"), "--root", metavar="DIR",
        help="Read logind.conf, the units, the config and the state directory below DIR "
        "(systemctl is then not asked). Kernel facts are always this namespace's.",
    ),
    config_path: Optional[Path] = typer.Option(
        None, "--config", "-c", metavar="PATH",
        help="The configuration file to check. Default: /etc/shmjanitor.toml below --root.",
    ),
    reap_metrics: Optional[str] = typer.Option(
        None, "--reap-metrics-file", metavar="PATH",
        help="The metrics file reap writes, checked for freshness. Default: the one a "
        "drop-in of shmjanitor.service names.",
    ),
    as_json: bool = typer.Option(False, "--json", "-J", help="Same as --format json."),
    fmt: Format = typer.Option(
        Format.AUTO, "--format", "-f", show_default=False,
        help="table (wrapped, coloured), plain (CHECK SEVERITY FINDING, for grep/awk), "
        "json, or auto (the default): table on a terminal, plain otherwise.",
    ),
    metrics_file: Optional[Path] = typer.Option(
        None, "--metrics-file", metavar="PATH",
        help="Also write shmjanitor_doctor_check{check} (0 ok, 1 warning, 2 error) to PATH.",
    ),
) -> None:  # fmt: skip
    """Check what puts IPC objects at risk here and whether the janitor works: logind's
    RemoveIPC=, kernel.shm_rmid_forced, every IPC limit and its use (above 80% a warning,
    above 95% an error), /dev/shm against RAM, the timer and its last run, the metrics
    file's age, the config, the quarantine's budget, /proc's hidepid.

    Each finding has a severity (ok, warning, error), its evidence and what to do. Exit
    0 when all is ok, 1 with a warning, 2 with an error.
    """
    from shmjanitor import doctor as doctor_
    from shmjanitor import doctor_facts

    with errors_as_exit():
        findings = doctor_.diagnose(doctor_facts.gather(root, config_path, reap_metrics))
        picked = _pick_format(fmt, as_json)
        if picked is Format.JSON:
            sys.stdout.write(doctor_.to_json(findings))
        elif picked is Format.TABLE:
            doctor_.table(findings, sys.stdout, _width(), use_color(sys.stdout))
        else:
            doctor_.plain(findings, sys.stdout)
        if metrics_file is not None:
            from shmjanitor import metrics

            metrics.write_doctor(metrics_file, [(x.check, int(x.severity)) for x in findings],
                                 time.time())  # fmt: skip
    raise typer.Exit(doctor_.exit_code(findings))


class Shell(str, Enum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


@app.command(short_help="Print the shell completion script for bash, zsh or fish.")
def completion(shell: Shell = typer.Argument(..., help="bash, zsh or fish.")) -> None:
    """Print the completion script for SHELL (commands, options, states, sort keys).

    Install it with one command, as root for bash and zsh:

      shmjanitor completion bash > /etc/bash_completion.d/shmjanitor

      shmjanitor completion zsh > /usr/local/share/zsh/site-functions/_shmjanitor

      shmjanitor completion fish > ~/.config/fish/completions/shmjanitor.fish

    and start a new shell.
    """
    from shmjanitor import completion as completion_

    typer.echo(completion_.script(shell.value))


class Page(str, Enum):
    SHMJANITOR = "shmjanitor"
    CONFIG = "shmjanitor.toml"


MAN_FILES = {Page.SHMJANITOR: "shmjanitor.8", Page.CONFIG: "shmjanitor.toml.5"}


@app.command("man", short_help="Show a page of the manual (man -l).")
def man_(
    page: Page = typer.Argument(
        Page.SHMJANITOR, help="shmjanitor (section 8) or shmjanitor.toml (section 5)."
    ),
    path: bool = typer.Option(False, "--path", help="Print the page's file instead."),
) -> None:
    """Show a page of the manual with man -l; the pages ship inside the package.

    pip also installs them under the environment's share/man, where man(1) finds them
    once the environment's bin is in PATH: then `man shmjanitor` works too.
    """
    import shutil
    import subprocess
    from importlib import resources

    # A regular file in an installed package (zip imports are not supported by man -l).
    file = str(resources.files("shmjanitor") / "man" / MAN_FILES[page])
    if path:
        typer.echo(file)
        return
    man = shutil.which("man")
    if man is None:
        raise fail(f"man is not installed; the page is {file} (mandoc -a {file})", 1)
    raise typer.Exit(subprocess.run([man, "-l", file]).returncode)


def _named_command(args: Sequence[str]) -> Optional[str]:
    """The command `args` name, after nothing but the root's --color ("list" in "--color
    never list -s"), or None: no command, a word that names none (click then says so),
    or another root option first (-h and -V answer for the root, with every command)."""
    i = 0
    while i < len(args) and args[i].startswith("--color"):
        i += 2 if args[i] == "--color" else 1  # "--color WHEN" or "--color=WHEN"
    if i < len(args) and args[i] in _COMMAND_NAMES:
        return args[i]
    return None


def _name(info: Any) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)


def only(name: Optional[str]) -> typer.Typer:
    """The app with only the command `name` (None: every command). typer builds a click
    command of every registered one, its options from each function's signature and
    type hints, at every start: 30 ms of a 200 ms `list` (benchmarks/bench.py counts
    start-up in every ratio). A run needs one. The root's help, an unknown command and
    completion (completion.py) get them all; `shmjanitor CMD --help` and CMD's usage
    errors read as before, since they name CMD alone."""
    if name is None:
        return app
    one = copy.copy(app)
    one.registered_commands = [c for c in app.registered_commands if _name(c) == name]
    one.registered_groups = [g for g in app.registered_groups if g.name == name]
    return one


def main() -> None:
    # A run lives for a second and allocates a few objects per segment (tuples, strings,
    # dicts), none in a reference cycle: reference counting frees them all. The cyclic
    # collector would only re-scan the growing heap over and over, which is 40% of `list`
    # at 32,000 segments (benchmarks/bench.py). So it stays off.
    gc.disable()
    if "_SHMJANITOR_COMPLETE" in os.environ:  # a shell asks for completions (completion.py)
        from shmjanitor import completion as completion_

        ccode, text = completion_.answer(os.environ["_SHMJANITOR_COMPLETE"])
        typer.echo(text, err=ccode != 0)
        sys.exit(ccode)
    code: Union[str, int, None] = 0
    try:
        only(_named_command(sys.argv[1:]))()  # typer ends with SystemExit, whatever happened
    except SystemExit as e:
        code = e.code
        if isinstance(sys.stdout, PacifyFlushWrapper):
            code = EXIT_BROKEN_PIPE  # click's sign that --help met a closed pipe (exit 1)
    except OSError as e:  # --help into a full disk: outside any command, still one line
        code = fail(f"error: cannot write the output: {e}", 1).exit_code
    except Exception as e:  # escaped typer itself, outside any command: still one line
        code = _bug(e).exit_code
    # What is still buffered (--help, --version) goes out here, not in the interpreter's
    # shutdown, which would print "Exception ignored ..." for a closed pipe.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or EXIT_BROKEN_PIPE
    except OSError as e:
        _silence_stdout()
        code = code or fail(f"error: cannot write the output: {e}", 1).exit_code
    _leave(code)


def _leave(code: Union[str, int, None]) -> NoReturn:
    """Exit with `code` as sys.exit would, without the interpreter's teardown: it frees
    every object the run made one by one (32,000 verdicts, their strings and tuples),
    about 30-50 ms of a `list` at that size that nobody waits for. What teardown would
    still do is done here: the exit handlers (history.forget closes the store) and the
    last flush. Every file the janitor writes is closed where it is written (`with`),
    so nothing is left in a buffer for teardown to flush."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit's way with a message: printed, exit 1
        with suppress(Exception):
            sys.stderr.write(f"{code}\n")
        status = 1
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(status & 0xFF)


# Every command's and group's name, as a user types it (for `only`).
_COMMAND_NAMES = frozenset(
    [_name(c) for c in app.registered_commands] + [g.name for g in app.registered_groups]
)
