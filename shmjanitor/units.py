"""The systemd units (shmjanitor.service, shmjanitor.timer): render and install them.

The canonical unit files ship inside the package, in ``shmjanitor/systemd_units/``
(``systemd/`` at the top of the repository holds symlinks to them, so there is one
copy). Installing rewrites ``ExecStart=`` to the shmjanitor that is actually
installed, so the unit runs the same program the admin just installed.

`render_units` is pure (tests use it); `install_units` writes the files;
`check_trusted` refuses a program that someone other than root could change. None of
them runs systemctl: the CLI does that after installing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Optional

from shmjanitor.errors import JanitorError

UNIT_NAMES = ("shmjanitor.service", "shmjanitor.timer")
TIMER = "shmjanitor.timer"
# `shmjanitor watch` as a service: off by default, written only when asked (--watch).
WATCH = "shmjanitor-watch.service"
# The drop-in that lets the service enter every IPC namespace (all_namespaces = true):
# written only when asked (--all-namespaces), into shmjanitor.service.d/.
ALL_NAMESPACES = "all-namespaces.conf"
DROP_IN_DIR = "shmjanitor.service.d"
DEFAULT_DEST = Path("/etc/systemd/system")

# The service runs with ProtectHome=yes: a program below these is invisible to it.
_HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user")
# And with PrivateTmp=yes: below these it sees an empty directory of its own.
_PRIVATE_TO_SERVICE = ("/tmp", "/var/tmp")
_SYSTEM_WIDE = (
    "install shmjanitor system-wide as root, e.g. python3 -m venv /opt/shmjanitor && "
    "/opt/shmjanitor/bin/pip install shmjanitor"
)
# Characters that unit files would interpret (specifiers, quoting, variables, escapes)
# or that would split the command line.
_UNSAFE = re.compile(r"[\s%$\"'\\;]")
_EXEC_START = re.compile(r"^ExecStart=(\S+)", re.MULTILINE)


class UnitsError(JanitorError):
    """The units cannot be rendered or installed; the message says what to do."""


def unit_texts(names: tuple[str, ...] = UNIT_NAMES) -> dict[str, str]:
    """The canonical unit files as shipped, keyed by file name."""
    from importlib import resources

    # files() is 3.9+; the directory is a package so that it installs like one.
    base = resources.files("shmjanitor.systemd_units")
    return {name: base.joinpath(name).read_text(encoding="utf-8") for name in names}


def check_exec_path(exec_path: str) -> None:
    """Refuse a path the service could not run; raise UnitsError saying why."""
    if not os.path.isabs(exec_path):
        raise UnitsError(
            f"the shmjanitor executable must be given as an absolute path, not {exec_path!r}"
        )
    if _UNSAFE.search(exec_path):
        raise UnitsError(
            f"{exec_path!r} contains a space, quote, '%', '$', ';' or backslash, which a "
            "systemd unit would misread; install shmjanitor under a plain path such as "
            "/opt/shmjanitor (python3 -m venv /opt/shmjanitor)"
        )
    norm = os.path.normpath(exec_path)
    for hidden in _HIDDEN_FROM_SERVICE:
        if norm == hidden or norm.startswith(hidden + "/"):
            raise UnitsError(
                f"{exec_path} is below {hidden}, which the service cannot see "
                "(ProtectHome=yes); install shmjanitor system-wide, e.g. "
                "python3 -m venv /opt/shmjanitor && /opt/shmjanitor/bin/pip install shmjanitor"
            )


def _below(path: str, tops: tuple[str, ...]) -> Optional[str]:
    return next((t for t in tops if path == t or path.startswith(t + "/")), None)


def _resolve(path: str, seen: dict[str, None], depth: int = 0) -> str:
    """Resolve `path` as the kernel does, noting in `seen` every directory, symlink and
    file it looks at on the way; return where `path` leads. Whoever can change any of
    them can change what `path` runs: a symlink on the way is swapped by whoever can
    write its directory, even when its target is safe."""
    if depth > 40:  # the kernel's own limit (ELOOP)
        raise UnitsError(f"{path}: too many levels of symbolic links")
    seen["/"] = None
    here = "/"
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            here = os.path.dirname(here)
            continue
        step = os.path.join(here, name)
        seen[step] = None
        try:
            st = os.lstat(step)
            target = os.readlink(step) if stat.S_ISLNK(st.st_mode) else None
        except OSError as e:
            raise UnitsError(f"cannot check {step}: {e.strerror}") from None
        here = step if target is None else _resolve(os.path.join(here, target), seen, depth + 1)
    return here


def _interpreters(exec_path: str) -> list[str]:
    """What the kernel runs for a script: its #! program, and for pip's long-path form
    (#!/bin/sh, then a line '''exec' "/path/to/python" "$0" "$@") that python too."""
    try:
        with open(exec_path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise UnitsError(f"cannot read {exec_path}: {e.strerror}") from None
    if not head.startswith(b"#!"):
        return []  # a binary: the kernel runs it itself
    lines = os.fsdecode(head[2:]).splitlines() + ["", ""]
    words = lines[0].split()
    if not words or os.path.basename(words[0]) == "env":
        raise UnitsError(
            f"{exec_path} starts with #!{lines[0].strip()}: which interpreter runs depends on "
            f"PATH; {_SYSTEM_WIDE} (pip's scripts name their interpreter by full path)"
        )
    if not os.path.isabs(words[0]):  # the kernel would look for it in the cwd of the day
        raise UnitsError(f"{exec_path} starts with #!{words[0]}, not an absolute path")
    found = [words[0]]
    if lines[1].startswith("'''exec' "):
        try:
            found.append(shlex.split(lines[1])[1])
        except (ValueError, IndexError):
            raise UnitsError(f"{exec_path}: cannot tell its interpreter from line 2") from None
    return found


def _check_root_only(what: str, path: str, obj: str) -> None:
    try:
        st = os.lstat(obj)
    except OSError as e:
        raise UnitsError(f"cannot check {obj}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        return  # a symlink cannot be changed, only replaced: its directory is checked
    of = f"{what} {path}" if obj == path else f"{what} {path}: {obj}"
    if st.st_uid != 0:
        raise UnitsError(
            f"{of} is owned by uid {st.st_uid}, not root, who could then change what root's "
            f"service runs; chown root {obj}, or {_SYSTEM_WIDE}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnitsError(
            f"{of} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
            f"who could then change what root's service runs; chmod go-w {obj}"
        )


def check_trusted(exec_path: str, package_dir: Optional[str] = None) -> None:
    """Refuse to point root's service at code that anyone but root can change.

    Checked: the program, its interpreter(s) (#!), and the shmjanitor package it
    imports (`package_dir`, default: this one) with everything in it; for each, every
    directory and symlink on the way to it. Each must be root's and not writable by
    group or others, and none may lie below /tmp, /var/tmp (PrivateTmp=yes gives the
    service an empty one of its own), /home, /root or /run/user (ProtectHome=yes hides
    them).
    """
    package = package_dir or os.path.dirname(os.path.abspath(__file__))
    roots = [("the shmjanitor program", exec_path)]
    roots += [("its interpreter", p) for p in _interpreters(exec_path)]
    roots.append(("the shmjanitor package", package))
    for what, path in roots:
        seen: dict[str, None] = {}
        end = _resolve(path, seen)
        for obj in seen:
            for tops, option in ((_PRIVATE_TO_SERVICE, "PrivateTmp=yes"),
                                 (_HIDDEN_FROM_SERVICE, "ProtectHome=yes")):  # fmt: skip
                top = _below(obj, tops)
                if top is not None:
                    leads = "" if end == path else f" (which leads to {end})"
                    raise UnitsError(
                        f"{what} {path}{leads} is below {top}, which the service cannot see "
                        f"({option}); {_SYSTEM_WIDE}"
                    )
        for obj in seen:
            _check_root_only(what, path, obj)
    for top, dirs, files in os.walk(_resolve(package, {})):
        for name in dirs + files:
            _check_root_only("the shmjanitor package", package, os.path.join(top, name))


def render_units(exec_path: str, watch: bool = False) -> dict[str, str]:
    """The unit texts with ExecStart= running `exec_path`; keyed by file name. Pure.
    `watch`: shmjanitor-watch.service too (off by default)."""
    check_exec_path(exec_path)
    texts = unit_texts(UNIT_NAMES + ((WATCH,) if watch else ()))
    for name in ("shmjanitor.service", WATCH):
        if name not in texts:
            continue
        service, n = _EXEC_START.subn(lambda _m: f"ExecStart={exec_path}", texts[name])
        if n != 1:  # pragma: no cover - guards the shipped file, tested in tests/systemd
            raise UnitsError(f"the shipped {name} has {n} ExecStart= lines, not 1")
        texts[name] = service
    return texts


def find_exec_path(argv0: Optional[str] = None) -> str:
    """The absolute path of the running `shmjanitor` script, for ExecStart=.

    In order: argv[0] when it is the shmjanitor script (the normal case: a
    console script is started with its full path), then `shmjanitor` next to the
    interpreter (a venv's bin/), then `shmjanitor` on PATH.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    candidates = []
    if os.path.basename(argv0) == "shmjanitor":
        candidates.append(os.path.abspath(argv0))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "shmjanitor"))
    on_path = shutil.which("shmjanitor")
    if on_path:
        candidates.append(os.path.abspath(on_path))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise UnitsError(
        "cannot tell where the shmjanitor command is installed; run install-units "
        "with the installed command's full path, e.g. /opt/shmjanitor/bin/shmjanitor install-units"
    )


def install_units(dest: Path, exec_path: str, watch: bool = False,
                  all_namespaces: bool = False) -> list[Path]:  # fmt: skip
    """Write shmjanitor.service and shmjanitor.timer (and with `watch`,
    shmjanitor-watch.service; with `all_namespaces`, the drop-in
    shmjanitor.service.d/all-namespaces.conf) into `dest`; return their paths.

    ExecStart= is rewritten to `exec_path` (absolute). Each file is replaced
    atomically, mode 0644, so re-running is safe. Does not run systemctl.
    """
    texts = render_units(exec_path, watch)
    if all_namespaces:
        texts[f"{DROP_IN_DIR}/{ALL_NAMESPACES}"] = unit_texts((ALL_NAMESPACES,))[ALL_NAMESPACES]
    if not (os.path.isfile(exec_path) and os.access(exec_path, os.X_OK)):
        raise UnitsError(f"{exec_path} is not an executable file; the service would fail to start")
    dest = Path(dest)
    if not dest.is_dir():
        raise UnitsError(
            f"{dest} is not a directory; is systemd installed? "
            "Pass --dest DIR to write the units elsewhere"
        )
    written = []
    for name, text in texts.items():
        target = dest / name
        if target.parent != dest:  # the drop-in's directory, 0755 as systemctl edit makes it
            try:
                target.parent.mkdir(mode=0o755, exist_ok=True)
            except OSError as e:
                raise UnitsError(f"cannot make {target.parent}: {e.strerror}") from None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except PermissionError:
            raise UnitsError(
                f"cannot write to {dest}: permission denied; run as root (sudo) or pass --dest DIR"
            ) from None
        except OSError as e:
            raise UnitsError(f"cannot write to {dest}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise UnitsError(f"cannot write {target}: {e.strerror}") from None
        written.append(target)
    return written
