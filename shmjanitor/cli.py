"""The command line: each command parses its options and calls into the core.

Exit codes: 0 as planned, 1 the job was not done in full, 2 usage/config/input error,
70 a bug, 141 a closed pipe (see shmjanitor.errors and the README). Every message goes
through text.printable: it may quote a process name, a user name or a path.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import Optional, Union

import typer
from click.utils import PacifyFlushWrapper

from shmjanitor.classify import State
from shmjanitor.errors import EXIT_BROKEN_PIPE, EXIT_BUG, JanitorError, MetricsError, OutputClosed
from shmjanitor.keys import parse_id, segment_key
from shmjanitor.render import Format
from shmjanitor.text import printable

app = typer.Typer(
    name="shmjanitor",
    help="Find and safely remove leaked System V shared memory segments.\n\n"
    "Every segment gets a state (attached, idle, orphan, unknown, removing) and the "
    "evidence behind it. Only orphans (nobody attached, creator dead) are ever reaped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from shmjanitor import __version__

        typer.echo(f"shmjanitor {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    # Eager, with a callback: otherwise click wants a command first ("Missing command").
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


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


class SortKey(str, Enum):
    ID = "id"
    KEY = "key"
    OWNER = "owner"
    SIZE = "size"
    NATTCH = "nattch"
    CPID = "cpid"
    IDLE = "idle"
    STATE = "state"


def _pick_format(fmt: Format, as_json: bool) -> Format:
    if as_json:
        return Format.JSON
    if fmt is Format.AUTO:
        return Format.TABLE if sys.stdout.isatty() else Format.PLAIN
    return fmt


@app.command("list")
def list_(
    state: Optional[list[State]] = typer.Option(
        None, "--state", "-s", help="Show only segments in this state (repeatable)."
    ),
    owner: Optional[str] = typer.Option(
        None, "--owner", "-u", help="Show only this user's segments (name or uid)."
    ),
    sort: SortKey = typer.Option(SortKey.ID, "--sort", help="Sort rows by this field."),
    exact_bytes: bool = typer.Option(False, "--bytes", "-b", help="Sizes in bytes, not 4K/1.5M."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    fmt: Format = typer.Option(
        Format.AUTO,
        "--format",
        "-f",
        help="table (colours, footer), plain (aligned columns for grep/awk), json, or auto: "
        "table on a terminal, plain otherwise.",
    ),
    metrics_file: Optional[Path] = METRICS_OPT,
) -> None:
    """List every segment with its state and the evidence behind it.

    States: attached (nattch > 0), idle (nobody attached, creator alive), orphan (nobody
    attached, creator dead or its pid recycled), unknown (creator's liveness cannot be
    known, e.g. cpid 0 from inside a container), removing (IPC_RMID already called).
    """
    from shmjanitor import listing

    with errors_as_exit(metrics_file):
        listing.run(
            states=set(state or ()),
            owner=owner,
            sort=sort.value,
            exact_bytes=exact_bytes,
            fmt=_pick_format(fmt, as_json),
            metrics_file=metrics_file,
            out=sys.stdout,
        )


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
JSON_OPT = typer.Option(False, "--json", help="Print JSON: {dry_run, results, summary}.")
VERBOSE_OPT = typer.Option(
    False, "--verbose", "-v", help="In log output, also a line for every orphan kept."
)


def _duration(flag: str, text: Optional[str]) -> Optional[int]:
    """A duration flag's seconds (None when not given); bad text is a usage error."""
    from shmjanitor.durations import parse_duration

    try:
        return None if text is None else parse_duration(text)
    except ValueError as e:
        raise fail(f"{flag}: {e}") from None


def _load_config(path: Optional[Path], **flags: object):  # type: ignore[no-untyped-def]
    from shmjanitor import config

    return config.load(path).with_overrides(**flags)


def _show_outcome(outcome, as_json: bool, verbose: bool) -> None:  # type: ignore[no-untyped-def]
    from shmjanitor import report

    if as_json:
        sys.stdout.write(report.to_json(outcome))
        for p in outcome.problems:
            typer.echo(f"shmjanitor: {printable(p)}", err=True)
    elif sys.stdout.isatty():
        report.table(outcome, sys.stdout)
    else:
        report.log(outcome, sys.stdout, sys.stderr, verbose)


@app.command()
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
        help="Also reap orphans of system accounts (uid below UID_MIN of /etc/login.defs).",
    ),
    no_quarantine: bool = NO_QUARANTINE_OPT,
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = JSON_OPT,
    verbose: bool = VERBOSE_OPT,
    metrics_file: Optional[Path] = METRICS_OPT,
) -> None:
    """Remove orphaned segments (nobody attached, creator dead) that pass the policy.

    Kept, with the reason said: orphans younger than --min-age, of system accounts,
    with protected keys or owners (config), others' orphans when not root, and any
    segment that changed since the scan. A copy of each removed segment goes to the
    quarantine first (see `shmjanitor restore`).

    Exit status: 0 all went as planned (including nothing to do), 1 some removal
    failed, 2 usage, configuration or input error (nothing removed). With
    --metrics-file, shmjanitor_last_run_success is 1 exactly when the status is 0.
    """
    from shmjanitor import reaping, remove, report

    with errors_as_exit(metrics_file):
        cfg = _load_config(
            config_path, min_age=_duration("--min-age", min_age), include_system=include_system
        )
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
            outcome = reaping.reap(cfg, dry_run=dry_run, quarantine=not no_quarantine,
                                   state_dir=state_dir, hooks=hooks)  # fmt: skip
        if logger is not None:
            logger.finish(outcome)
        else:
            _show_outcome(outcome, as_json, verbose)
        if metrics_file is not None:
            _write_reap_metrics(metrics_file, outcome)
    if outcome.interrupted:
        raise typer.Exit(128 + outcome.interrupted)  # 130 SIGINT, 143 SIGTERM, as shells say
    if not outcome.ok:
        raise typer.Exit(1)


def _note(text: str) -> None:
    typer.echo(f"shmjanitor: note: {printable(text)}", err=True)


def _write_reap_metrics(path: Path, outcome) -> None:  # type: ignore[no-untyped-def]
    from shmjanitor import metrics
    from shmjanitor.remove import Action

    gone = {r.verdict.segment.id for r in outcome.results
            if r.action in (Action.REMOVED, Action.GONE)}  # fmt: skip
    removed = [r for r in outcome.results if r.action is Action.REMOVED]
    run = metrics.RunStats(
        removed=len(removed),
        removed_bytes=sum(r.verdict.segment.size for r in removed),
        kept=sum(r.action is Action.KEPT for r in outcome.results),
        success=outcome.ok and not outcome.interrupted,  # 130/143 is not a success
    )
    left = [v for v in outcome.survey.verdicts if v.segment.id not in gone]
    metrics.write(path, left, run=run, now=outcome.survey.taken_at)


@app.command()
def rm(
    ids: Optional[list[int]] = typer.Argument(
        None, metavar="[ID]...", parser=parse_id, help="Segment ids (shmid), in decimal."
    ),
    key: Optional[list[int]] = typer.Option(
        None,
        "--key",
        "-k",
        metavar="KEY",
        parser=segment_key,
        help="Segment key: 0x1234abcd, decimal, or signed as the kernel prints it "
        "(-1 = 0xffffffff). Repeatable.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Remove even a segment in use (attached, or creator alive)."
    ),
    dry_run: bool = DRY_RUN_OPT,
    no_quarantine: bool = NO_QUARANTINE_OPT,
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Remove the named segments, like ipcrm, but refuse one that is in use.

    In use means attached, marked for removal but still attached, or its creator is
    alive (or cannot be known). --force removes it anyway: the kernel then frees it at
    the last detach. Exit status: 0 done, 1 a segment was missing, refused or failed,
    2 usage or configuration error.
    """
    from shmjanitor import reaping, remove

    with errors_as_exit():
        keys = list(key or ())
        if not ids and not keys:
            raise fail("name at least one segment: shmjanitor rm ID... or --key KEY")
        cfg = _load_config(config_path)
        with remove.stop_on_signals() as stop:
            hooks = reaping.Hooks(on_note=_note, stop=stop)
            outcome = reaping.rm(ids or [], keys, cfg, force=force, dry_run=dry_run,
                                 quarantine=not no_quarantine, state_dir=state_dir,
                                 hooks=hooks)  # fmt: skip
        _show_outcome(outcome, as_json, verbose=True)
    if outcome.interrupted:
        raise typer.Exit(128 + outcome.interrupted)
    if not outcome.ok:
        raise typer.Exit(1)


quarantine_app = typer.Typer(
    help="Copies of removed segments: list them, purge old ones (see also restore).",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")


def _store(config_path: Optional[Path], state_dir: Optional[Path]):  # type: ignore[no-untyped-def]
    from shmjanitor import reaping
    from shmjanitor.quarantine import store_for

    cfg = _load_config(config_path)
    reaping.repair_left_lock(cfg, _note)
    return store_for(cfg, state_dir, note=_note)


@quarantine_app.command("list")
def quarantine_list(
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", help='Print {"entries": [...]}.'),
) -> None:
    """List quarantine entries: the handle to restore by, old id, key, size, owner, when
    and why it was removed, and whether it was restored."""
    with errors_as_exit():
        store = _store(config_path, state_dir)
        store.tidy()
        _print_entries(store.entries(), as_json)


def _print_entries(entries, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    import json

    from shmjanitor.durations import format_size
    from shmjanitor.render import owner_name

    rows = [{
        "entry": e.name, "id": e.doc["id"], "key": e.doc["key"], "size": e.doc["size"],
        "uid": e.doc["uid"], "owner": owner_name(e.doc["uid"]), "mode": e.doc["mode"],
        "removed_at": e.doc["removed_at"], "reason": e.doc["reason"],
        "restored_as": e.doc.get("restored_as"), "status": e.doc["status"],
    } for e in entries]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"entries": rows}))
        return
    import time

    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["removed_at"]))
        restored = f" restored as id {r['restored_as']}" if r["restored_as"] is not None else ""
        if r["status"] != "removed":
            restored += f" {printable(r['status'])} (not restorable yet)"
        typer.echo(f"{printable(r['entry'])}  id={r['id']} key=0x{r['key']:08x} "
                   f"size={format_size(r['size'])} owner={printable(r['owner'])} "
                   f"removed={when}{restored}  {printable(r['reason'])}")  # fmt: skip
    if not rows:
        typer.echo("quarantine is empty", err=True)


@quarantine_app.command("purge")
def quarantine_purge(
    older_than: Optional[str] = typer.Option(
        None, "--older-than", metavar="DURATION", help="Purge entries older than this (7d, 12h)."
    ),
    purge_all: bool = typer.Option(False, "--all", help="Purge every entry."),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
) -> None:
    """Delete quarantine entries for good: --older-than DURATION, or --all."""
    import time

    if purge_all == (older_than is not None):
        raise fail("say what to purge: --older-than DURATION or --all (one of them)")
    age = _duration("--older-than", older_than)
    with errors_as_exit():
        store = _store(config_path, state_dir)
        store.tidy()
        dropped = store.purge(age, time.time())
        typer.echo(f"purged {len(dropped)} run(s)")


@app.command()
def restore(
    entry: str = typer.Argument(..., help="Entry name, as `shmjanitor quarantine list` shows."),
    config_path: Optional[Path] = CONFIG_OPT,
    state_dir: Optional[Path] = STATE_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", help='Print {"id": new_id, "key": key}.'),
) -> None:
    """Recreate a removed segment from the quarantine: same key, size, mode, owner, bytes.

    Refused when its key is in use again. An IPC_PRIVATE segment comes back under a new
    id. The entry stays, marked restored, until purged. Exit status: 0 restored, 1 not
    restored (message says why), 2 usage or configuration error.
    """
    import json
    import time

    from shmjanitor import quarantine

    with errors_as_exit():
        try:
            with _signals_raise():
                new_id, key = quarantine.restore(_store(config_path, state_dir), entry,
                                                 time.time())  # fmt: skip
        except _Interrupted as stop:
            typer.echo(f"shmjanitor: interrupted by {stop.name}: nothing restored", err=True)
            raise typer.Exit(128 + stop.signum) from None
        if as_json:
            typer.echo(json.dumps({"id": new_id, "key": key}))
        else:
            typer.echo(f"restored {printable(entry)} as id {new_id} (key 0x{key:08x})")


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


@app.command("install-units")
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
        for path in units.install_units(dest, exec_path):
            typer.echo(f"wrote {printable(str(path))}")
    if not enable:
        return
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise fail("systemctl not found: enable shmjanitor.timer yourself, or use --no-enable", 1)
    for args in (["daemon-reload"], ["enable", "--now", units.TIMER]):
        done = subprocess.run([systemctl, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise fail(f"systemctl {' '.join(args)} failed: {done.stderr.strip()}", 1)
    typer.echo(f"enabled and started {units.TIMER}")


@app.command()
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


class Shell(str, Enum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


@app.command()
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


@app.command("man")
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
        app()  # typer ends with SystemExit, whatever happened
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
    sys.exit(code)
