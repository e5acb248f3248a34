"""The systemd units (shmjanitor.service, shmjanitor.timer): render and install them.

The canonical unit files ship inside the package, in ``shmjanitor/systemd_units/``
(``systemd/`` at the top of the repository holds symlinks to them, so there is one
copy). Installing rewrites ``ExecStart=`` to the shmjanitor that is actually
installed, so the unit runs the same program the admin just installed.

`render_units` is pure (tests use it); `install_units` writes the files. Neither
runs systemctl: the CLI does that after installing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from shmjanitor.errors import JanitorError

UNIT_NAMES = ("shmjanitor.service", "shmjanitor.timer")
TIMER = "shmjanitor.timer"
DEFAULT_DEST = Path("/etc/systemd/system")

# The service runs with ProtectHome=yes: a program below these is invisible to it.
_HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user")
# Characters that unit files would interpret (specifiers, quoting, variables, escapes)
# or that would split the command line.
_UNSAFE = re.compile(r"[\s%$\"'\\;]")
_EXEC_START = re.compile(r"^ExecStart=(\S+)", re.MULTILINE)


class UnitsError(JanitorError):
    """The units cannot be rendered or installed; the message says what to do."""


def unit_texts() -> dict[str, str]:
    """The canonical unit files as shipped, keyed by file name."""
    from importlib import resources

    # files() is 3.9+; the directory is a package so that it installs like one.
    base = resources.files("shmjanitor.systemd_units")
    return {name: base.joinpath(name).read_text(encoding="utf-8") for name in UNIT_NAMES}


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


def render_units(exec_path: str) -> dict[str, str]:
    """The unit texts with ExecStart= running `exec_path`; keyed by file name. Pure."""
    check_exec_path(exec_path)
    texts = unit_texts()
    service = texts["shmjanitor.service"]
    service, n = _EXEC_START.subn(lambda _m: f"ExecStart={exec_path}", service)
    if n != 1:  # pragma: no cover - guards the shipped file, tested in tests/systemd
        raise UnitsError(f"the shipped shmjanitor.service has {n} ExecStart= lines, not 1")
    texts["shmjanitor.service"] = service
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


def install_units(dest: Path, exec_path: str) -> list[Path]:
    """Write shmjanitor.service and shmjanitor.timer into `dest`; return their paths.

    ExecStart= is rewritten to `exec_path` (absolute). Each file is replaced
    atomically, mode 0644, so re-running is safe. Does not run systemctl.
    """
    texts = render_units(exec_path)
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
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=dest)
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
