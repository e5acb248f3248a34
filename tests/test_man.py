"""The manual pages: in step with the command line and the config, lint-clean, rendered
by man(1), and installed with the package.

Convention the pages keep (and this test reads): in shmjanitor(8) every command is an
`.SS` under COMMANDS and each of its options the tag line of a `.TP` in that `.SS`;
options that work before any command are `.TP` tags under OPTIONS. In
shmjanitor.toml(5) every key is a `.TP` tag under KEYS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
import typer.main

import shmjanitor
from shmjanitor import config
from shmjanitor.cli import app

MAN = Path(shmjanitor.__file__).parent / "man"
PAGE8 = MAN / "shmjanitor.8"
PAGE5 = MAN / "shmjanitor.toml.5"
OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


def clean(roff: str) -> str:
    """Roff source to the words it shows: font escapes dropped, \\- made a hyphen."""
    return re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace('"', " ")


def sections(path: Path, heading: str, sub: str) -> dict[str, list[str]]:
    """The lines of each `sub` block (".SS" or ".SH") inside section `heading`; the
    lines of `heading` before its first block are under ""."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith(".SH "):
            current = "" if clean(line[4:]).strip() == heading else None
            if current == "":
                blocks[""] = []
            if sub == ".SH":
                continue
        elif line.startswith(sub + " ") and current is not None:
            current = " ".join(clean(line[4:]).split())
            blocks[current] = []
            continue
        if current is not None:
            blocks[current].append(line)
    return blocks


def tags(lines: list[str]) -> list[str]:
    """The tag line of each .TP item."""
    return [clean(lines[i + 1]) for i, line in enumerate(lines[:-1]) if line == ".TP"]


def documented_options(lines: list[str]) -> set[str]:
    return {o for tag in tags(lines) for o in OPTION.findall(tag)}


class Command:
    def __init__(self, cmd: click.Command, path: str, ctx: click.Context) -> None:
        self.path = path
        help_option = cmd.get_help_option(ctx)
        self.help = set(help_option.opts) if help_option else set()
        self.options = {
            o for p in cmd.params if isinstance(p, click.Option)
            for o in (*p.opts, *p.secondary_opts)
        }  # fmt: skip
        # An argument's word in the page: ID for [ID]..., ENTRY, SHELL, PAGE.
        self.arguments = {
            re.sub(r"[^A-Z]", "", p.make_metavar(ctx) if hasattr(p, "make_metavar") else "")
            or p.name.upper()
            for p in cmd.params if isinstance(p, click.Argument)
        }  # fmt: skip


def commands() -> dict[str, Command]:
    found: dict[str, Command] = {}

    def walk(cmd: click.Command, path: str, parent: click.Context | None) -> None:
        # As click makes them: the command's context_settings, and what a subcommand
        # inherits from its parent (help_option_names: -h is set once, on the root).
        ctx = click.Context(cmd, parent=parent, info_name=path.split(" ")[-1] or "shmjanitor",
                            **cmd.context_settings)  # fmt: skip
        found[path] = Command(cmd, path, ctx)
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip(), ctx)

    walk(typer.main.get_command(app), "", None)
    return found


def test_every_command_has_a_section_and_every_section_a_command():
    page = sections(PAGE8, "COMMANDS", ".SS")
    page.pop("")
    assert set(page) == set(commands()) - {""}


def test_every_option_of_every_command_is_in_the_page_and_vice_versa():
    page = sections(PAGE8, "COMMANDS", ".SS")
    global_opts = documented_options(sections(PAGE8, "OPTIONS", ".SH")[""])
    for path, cmd in commands().items():
        if path == "":
            assert global_opts == cmd.options | cmd.help, "OPTIONS section vs the root"
            continue
        documented = documented_options(page[path])
        assert documented == cmd.options, f"shmjanitor {path}: page vs CLI"
        assert cmd.help <= global_opts, f"shmjanitor {path}: its help option"


def test_every_argument_is_named_in_its_section():
    page = sections(PAGE8, "COMMANDS", ".SS")
    synopsis = clean("\n".join(sections(PAGE8, "SYNOPSIS", ".SH")[""]))
    for path, cmd in commands().items():
        text = clean("\n".join(page.get(path, [])))
        for word in cmd.arguments:
            assert re.search(rf"\b{word}\b", text), f"shmjanitor {path}: argument {word}"
            assert re.search(rf"\b{word}\b", synopsis), f"SYNOPSIS lacks {word}"


def test_every_config_key_is_in_the_config_page_and_vice_versa():
    keys = {tag.split()[-1] for tag in tags(sections(PAGE5, "KEYS", ".SH")[""])}
    assert keys == set(config._KEYS)


def test_pages_carry_the_version():
    for page in (PAGE8, PAGE5):
        th = next(line for line in page.read_text().splitlines() if line.startswith(".TH "))
        assert f'"shmjanitor {shmjanitor.__version__}"' in th, th


@pytest.mark.parametrize("page", [PAGE8, PAGE5], ids=lambda p: p.name)
def test_mandoc_lint_is_clean(page):
    if shutil.which("mandoc") is None:
        pytest.skip("needs mandoc (scripts/ci-deps installs it)")
    p = subprocess.run(["mandoc", "-T", "lint", "-W", "all", page], capture_output=True, text=True)
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


@pytest.mark.parametrize("page", [PAGE8, PAGE5], ids=lambda p: p.name)
def test_groff_warns_about_nothing(page):
    if shutil.which("groff") is None:
        pytest.skip("needs groff")
    p = subprocess.run(["groff", "-ww", "-z", "-man", page], capture_output=True, text=True)
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


def man(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("man") is None:
        pytest.skip("needs man")
    env = {"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"}
    return subprocess.run(["man", *args], capture_output=True, text=True, env=env)


def test_man_renders_both_pages():
    p = man("-l", str(PAGE8))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in p.stdout
    assert "shmjanitor - find and safely remove" in " ".join(p.stdout.split())  # justified
    p = man("-l", str(PAGE5))
    assert p.returncode == 0 and "protect_keys" in p.stdout, p.stderr


def test_man_command_shows_the_installed_pages():
    janitor = Path(sys.executable).parent / "shmjanitor"
    for page, file in (("shmjanitor", PAGE8), ("shmjanitor.toml", PAGE5)):
        p = subprocess.run([janitor, "man", page, "--path"], capture_output=True, text=True)
        assert p.returncode == 0 and Path(p.stdout.strip()).samefile(file), p.stderr
    if shutil.which("man"):
        p = subprocess.run([janitor, "man", "shmjanitor.toml"], capture_output=True, text=True)
        assert p.returncode == 0 and "SHMJANITOR.TOML(5)" in p.stdout, p.stderr


def test_the_wheel_ships_the_pages(tmp_path):
    # Built from a copy: pip builds in the source tree, which is not ours to litter.
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "shmjanitor", src / "shmjanitor",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(root / name, src / name)
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (wheel,) = tmp_path.glob("shmjanitor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = f"shmjanitor-{shmjanitor.__version__}.data/data/share/man"
    for name in (
        "shmjanitor/man/shmjanitor.8",  # for `shmjanitor man`
        "shmjanitor/man/shmjanitor.toml.5",
        f"{data}/man8/shmjanitor.8",  # for man(1), next to the venv's bin
        f"{data}/man5/shmjanitor.toml.5",
    ):
        assert name in names
