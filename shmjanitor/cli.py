"""The command line: each command parses its options and calls into the core.

Exit codes: 0 as planned, 1 the job was not done in full, 2 usage/config/input error
(see shmjanitor.errors and the README).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from shmjanitor.classify import State
from shmjanitor.errors import JanitorError
from shmjanitor.render import Format

app = typer.Typer(
    name="shmjanitor",
    help="Find and safely remove leaked System V shared memory segments.\n\n"
    "Every segment gets a state (attached, idle, orphan, unknown, removing) and the "
    "evidence behind it. Only orphans (nobody attached, creator dead) are ever reaped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from shmjanitor import __version__

        typer.echo(f"shmjanitor {__version__}")
        raise typer.Exit(0)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"shmjanitor: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Foreseeable failures become one line on stderr and their exit code, never a traceback."""
    try:
        yield
    except JanitorError as e:
        raise fail(str(e), e.exit_code) from None


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
    metrics_file: Optional[Path] = typer.Option(
        None,
        "--metrics-file",
        metavar="PATH",
        help="Also write Prometheus textfile-collector metrics to PATH (atomically).",
    ),
) -> None:
    """List every segment with its state and the evidence behind it.

    States: attached (nattch > 0), idle (nobody attached, creator alive), orphan (nobody
    attached, creator dead or its pid recycled), unknown (creator's liveness cannot be
    known, e.g. cpid 0 from inside a container), removing (IPC_RMID already called).
    """
    from shmjanitor import listing

    with errors_as_exit():
        listing.run(
            states=set(state or ()),
            owner=owner,
            sort=sort.value,
            exact_bytes=exact_bytes,
            fmt=_pick_format(fmt, as_json),
            metrics_file=metrics_file,
            out=sys.stdout,
        )


def main() -> None:
    app()
