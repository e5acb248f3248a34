"""The command line as util-linux's: plain help, one-line usage errors, -h/-V, colour.

Each command runs as a process of its own with stdout and stderr on pipes, as a
script or a pager sees it (help and usage errors are said before any segment is read).
"""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
import typer

from shmjanitor.cli import app

JANITOR = [sys.executable, "-m", "shmjanitor"]
PROG = "python -m shmjanitor"  # what click calls a program run with -m
BOXES = re.compile("[\u2500-\u257f]")  # box drawing: ─ │ ╭ ┃ ...
SGR = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JANITOR, *args], capture_output=True, text=True, timeout=60, env=env)


def commands() -> list[tuple[list[str], click.Command]]:
    """Every command and group, as the words that name it: [], ["list"], ["quarantine",
    "purge"], ..."""
    found: list[tuple[list[str], click.Command]] = []

    def walk(path: list[str], cmd: click.Command) -> None:
        found.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk([*path, name], sub)

    walk([], typer.main.get_command(app))
    return found


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    "path,cmd", commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else ""
)
def test_help_on_a_pipe_is_plain_and_cuts_nothing(path, cmd):
    p = run(*path, "--help")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    text = p.stdout
    assert not BOXES.search(text) and "\x1b" not in text, text
    assert text.startswith(f"Usage: {PROG}"), text  # no blank line before it
    for line in text.splitlines():
        assert len(line) <= 80, line
        assert line == line.rstrip(), repr(line)
    assert "\\[" not in text  # typer's escape for rich, were it let in
    shown = flat(text)
    # No cut word or choice: every option's help and every choice reads whole (a word
    # broken across lines, even at a hyphen, would not).
    for param in cmd.params:
        if isinstance(param, click.Option) and param.help:
            assert flat(param.help) in shown, (param.name, param.help)
        if isinstance(param.type, click.Choice) and param.metavar is None:
            assert "|".join(map(str, param.type.choices)) in shown, param.name
    if isinstance(cmd, click.Group):  # each command's line in full, not cut to "..."
        for sub in cmd.commands.values():
            assert flat(sub.get_short_help_str(limit=1000)) in shown, sub.name
    # -h is --help, everywhere.
    assert run(*path, "-h").stdout == text


def test_help_lists_every_column_whole():
    from shmjanitor.render import COLUMNS

    shown = run("list", "--help").stdout
    for name, c in COLUMNS.items():
        assert re.search(rf"^  +{name} +{re.escape(c.doc)}$", shown, re.M), name


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_alone(flag):
    from shmjanitor import __version__

    p = run(flag)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"shmjanitor {__version__}\n", "")


USAGE_ERRORS = [
    ([], "", "missing command"),
    (["--bogus"], "", "no such option"),
    (["frobnicate"], "", "no such command 'frobnicate'"),
    (["quarantine"], " quarantine", "missing command"),
    (["list", "--bogus"], " list", "no such option"),
    (["list", "--sort"], " list", "option '--sort' requires an argument"),
    (["list", "--sort", "nattc"], " list", "invalid value for '--sort': 'nattc' is not one of"),
    (["list", "--state", "dead"], " list", "invalid value for '--state'"),
    (["list", "extra"], " list", "unexpected extra argument"),
    (["list", "-o", "ID,NOPE"], " list", "--output: unknown column 'NOPE'"),
    (["list", "-o", "ID", "--json"], " list", "--output chooses columns"),
    (["--color", "sometimes", "list"], "", "invalid value for '--color'"),
    (["rm"], " rm", "name at least one segment"),
    (["rm", "abc"], " rm", "'abc' is not a segment id"),
    (["reap", "--min-age", "5x"], " reap", "--min-age: '5x' is not a duration"),
    (["reap", "--include-system=maybe"], " reap", "does not take a value"),
    (["restore"], " restore", "say which entry to restore"),
    (["restore", "--id", "x"], " restore", "'x' is not a valid integer"),
    (["quarantine", "purge"], " quarantine purge", "say what to purge"),
    (["quarantine", "purge", "--older-than", "soon"], " quarantine purge", "is not a duration"),
]


@pytest.mark.parametrize(
    "args,where,says", USAGE_ERRORS, ids=lambda x: " ".join(x) if isinstance(x, list) else None
)
def test_a_usage_error_is_one_line_and_a_hint(args, where, says):
    p = run(*args)
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    first, hint = p.stderr.splitlines()  # exactly two lines
    assert first.startswith("shmjanitor: error: ") and says in first, first
    assert hint == f"Try '{PROG}{where} --help'."


def test_usage_errors_in_process_too():
    # typer.testing.CliRunner goes through the same root command: the same two lines.
    from segments import cli

    r = cli("list", "--sort", "bogus")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.output.splitlines()[-1].endswith(" list --help'.")


def test_no_color_and_color_flag(tmp_path):
    from segments import Spec, make

    make(Spec(key=0x1234))
    plain_env = {"PATH": "/usr/bin:/bin", "COLUMNS": "100"}
    painted = run("--color", "always", "list", "--format", "table", env=plain_env)
    assert "\x1b[1;31morphan\x1b[0m" in painted.stdout
    # NO_COLOR (set, not empty) turns auto off; --color always still wins, as no-color.org
    # lets a flag do.
    for args, env, colour in (
        (["list", "--format", "table"], {}, False),  # auto: not a terminal
        (["list", "--format", "table"], {"NO_COLOR": "1"}, False),
        (["--color", "never", "list", "--format", "table"], {}, False),
        (["--color", "always", "list", "--format", "table"], {"NO_COLOR": "1"}, True),
        (["--color", "always", "list"], {}, False),  # plain output never has colour
    ):
        p = run(*args, env={**plain_env, **env})
        assert p.returncode == 0, p.stderr
        assert ("\x1b[" in p.stdout) is colour, (args, env, p.stdout)
        assert SGR.sub("", p.stdout).splitlines()[0].split()[:2] == ["KEY", "ID"]


def test_no_color_on_a_terminal():
    """On a real terminal auto colours, unless NO_COLOR is set."""
    from segments import Spec, make, run_on_pty

    make(Spec(key=0x1234))
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm"}
    code, shown = run_on_pty([*JANITOR, "list"], env)
    assert code == 0 and "\x1b[1;31morphan" in shown, shown
    code, bare = run_on_pty([*JANITOR, "list"], {**env, "NO_COLOR": "1"})
    assert code == 0 and "\x1b[" not in bare and "orphan" in bare, bare


ARGVS = [
    [], ["-h"], ["-V"], ["-h", "list"], ["-V", "list"], ["--color", "never", "list", "-h"],
    ["--color=never", "reap", "-h"], ["--color"], ["list", "-h"], ["list", "--bogus"],
    ["list", "list"], ["lis"], ["LIST"], ["--", "list"], ["quarantine"], ["quarantine", "-h"],
    ["quarantine", "lis"], ["quarantine", "purge", "-h"], ["rm"], ["rm", "-h"],
    ["explain", "-h"], ["restore"], ["completion", "-h"], ["doctor", "--format", "x"],
]  # fmt: skip


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "(none)" for a in ARGVS])
def test_a_run_built_with_its_command_alone_says_what_the_whole_app_says(argv):
    """main() builds the click command of the one command a run names (cli.only), not
    all of them: whatever the words, help, usage errors and exit codes are the whole
    app's, word for word (the root's -h and -V, an unknown or misspelt word and an
    option before the command get the whole app)."""
    from click.testing import CliRunner

    from shmjanitor.cli import _named_command, only

    def said(typer_app: typer.Typer) -> tuple[int, str, str]:
        r = CliRunner().invoke(typer.main.get_command(typer_app), argv, prog_name="shmjanitor")
        return r.exit_code, r.stdout, r.stderr

    assert said(only(_named_command(argv))) == said(app)
