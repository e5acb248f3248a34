"""Shell completion for bash, zsh and fish, by click's own completion machinery
(click.shell_completion; https://click.palletsprojects.com/en/stable/shell-completion/).

`shmjanitor completion SHELL` prints the script. Installed, the script runs shmjanitor
with _SHMJANITOR_COMPLETE=<shell>_complete and the words typed so far in COMP_WORDS and
COMP_CWORD; main() hands that to `answer()` before typer parses anything. Commands,
options and the choices of an option (states, sort keys, formats) come from the same
command tree as --help, so completion cannot drift from the CLI.

Typer's own --install-completion/--show-completion stay off (add_completion=False):
they would add two options to every --help and edit the user's shell rc files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from click.shell_completion import ShellComplete

PROG = "shmjanitor"
COMPLETE_VAR = "_SHMJANITOR_COMPLETE"
SHELLS = ("bash", "zsh", "fish")

# One command per shell that installs the script where the shell looks for it.
INSTALL = {
    "bash": f"{PROG} completion bash > /etc/bash_completion.d/{PROG}",
    "zsh": f"{PROG} completion zsh > /usr/local/share/zsh/site-functions/_{PROG}",
    "fish": f"{PROG} completion fish > ~/.config/fish/completions/{PROG}.fish",
}


def _completer(shell: str) -> ShellComplete:
    import typer.main
    from click import shell_completion as sc

    from shmjanitor.cli import app

    # click's own classes, named here rather than looked up: typer registers classes
    # of its own under the same names when completion_init() runs, with another protocol.
    cls = {"bash": sc.BashComplete, "zsh": sc.ZshComplete, "fish": sc.FishComplete}[shell]
    return cls(typer.main.get_command(app), {}, PROG, COMPLETE_VAR)


def script(shell: str) -> str:
    """The completion script for `shell` (one of SHELLS), to be sourced by it."""
    return _completer(shell).source()


def answer(instruction: str) -> tuple[int, str]:
    """The exit code and text for a shell's request "<shell>_complete"."""
    shell, _, verb = instruction.partition("_")
    if shell not in SHELLS or verb != "complete":
        return 2, f"{PROG}: {COMPLETE_VAR}={instruction!r}: expected one of " + ", ".join(
            f"{s}_complete" for s in SHELLS
        )
    return 0, _completer(shell).complete()
