"""install-units refuses to make root's service run code that others can change, or that
the service cannot see (units.check_trusted).

Real files and directories of the wrong owner and mode. The layouts live on tmpfs
mounts (mode 0755, root's) over /mnt, /home and /var/tmp in a private mount namespace
of a forked child: their parents are then root's alone, as under /opt, and the
machine's own directories are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import pytest
from conftest import _unshare, needs_real_root

from shmjanitor import units

CLONE_NEWNS = 0x00020000
PYTHON = os.path.realpath("/usr/bin/python3")  # root's, under /usr: trusted


def in_private_mounts(body: Callable[[], object]) -> object:
    """Run `body` in a forked child with tmpfs on /mnt, /home and /var/tmp; its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(r)
            _unshare(CLONE_NEWNS)
            subprocess.run(["mount", "--make-rprivate", "/"], check=True)
            for d in ("/mnt", "/home", "/var/tmp"):
                subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "none", d], check=True)
            os.umask(0o022)
            os.write(w, json.dumps({"ok": body()}).encode())
        except BaseException as e:
            os.write(w, json.dumps({"error": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read() or '{"error": "child died"}')
    os.waitpid(pid, 0)
    assert "error" not in got, got["error"]
    return got["ok"]


def layout(shebang: str = PYTHON) -> tuple[str, str]:
    """A program and a package as pip would install them as root under /opt."""
    bin_ = Path("/mnt/opt/sj/bin")
    pkg = Path("/mnt/opt/sj/lib/shmjanitor")
    bin_.mkdir(parents=True)
    (pkg / "systemd_units").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "systemd_units" / "shmjanitor.service").write_text("")
    exe = bin_ / "shmjanitor"
    exe.write_text(f"#!{shebang}\nfrom shmjanitor.cli import main\nmain()\n")
    exe.chmod(0o755)
    return str(exe), str(pkg)


def refusal(exe: str, pkg: str) -> Optional[str]:
    try:
        units.check_trusted(exe, pkg)
    except units.UnitsError as e:
        return str(e)
    return None


@pytest.fixture(autouse=True)
def _mounts_possible() -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root (to mount tmpfs in a private mount namespace)")


def test_a_root_only_layout_is_accepted():
    def body() -> object:
        exe, pkg = layout()
        plain = refusal(exe, pkg)
        # pip's form for a long interpreter path: #!/bin/sh, then exec of the python
        Path(exe).write_text(f"#!/bin/sh\n'''exec' \"{PYTHON}\" \"$0\" \"$@\"\n' '''\n")
        return [plain, refusal(exe, pkg), units._interpreters(exe)]

    assert in_private_mounts(body) == [None, None, ["/bin/sh", PYTHON]]


def test_paths_the_service_cannot_see_are_refused(tmp_path):
    exe = tmp_path / "shmjanitor"
    exe.write_text(f"#!{PYTHON}\n")
    exe.chmod(0o755)
    msg = refusal(str(exe), "/usr/lib/nothing")
    assert msg is not None and "below /tmp" in msg and "PrivateTmp=yes" in msg

    def body() -> object:
        exe, pkg = layout()
        out = []
        for top in ("/var/tmp", "/home"):
            moved = shutil.copytree("/mnt/opt/sj", f"{top}/sj", symlinks=True)
            out.append(refusal(f"{moved}/bin/shmjanitor", pkg))
            out.append(refusal(exe, f"{moved}/lib/shmjanitor"))
        # Through a symlink that looks safe: /mnt/opt/sj/bin/shmjanitor -> /var/tmp/...
        os.replace(exe, exe + ".old")
        os.symlink("/var/tmp/sj/bin/shmjanitor", exe)
        out.append(refusal(exe, pkg))
        return out

    got = in_private_mounts(body)
    assert "/var/tmp/sj/bin/shmjanitor is below /var/tmp" in got[0]
    assert "the shmjanitor package /var/tmp/sj/lib/shmjanitor is below /var/tmp" in got[1]
    assert all("PrivateTmp=yes" in m for m in got[:2])
    assert all("below /home" in m and "ProtectHome=yes" in m for m in got[2:4])
    assert "(which leads to /var/tmp/sj/bin/shmjanitor) is below /var/tmp" in got[4]


def test_code_others_can_change_is_refused():
    needs_real_root()  # chown to another uid

    def body() -> object:
        exe, pkg = layout()
        out = {}

        def case(name: str, undo: Callable[[], None]) -> None:
            out[name] = refusal(exe, pkg)
            undo()
            assert refusal(exe, pkg) is None, name  # the layout is clean again

        os.chown(exe, 1000, 1000)
        case("program owner", lambda: os.chown(exe, 0, 0))
        os.chmod("/mnt/opt/sj/bin", 0o775)
        case("program's directory", lambda: os.chmod("/mnt/opt/sj/bin", 0o755))
        os.chmod("/mnt/opt", 0o757)
        case("a directory above", lambda: os.chmod("/mnt/opt", 0o755))
        os.chmod(f"{pkg}/systemd_units/shmjanitor.service", 0o646)
        case("a file in the package",
             lambda: os.chmod(f"{pkg}/systemd_units/shmjanitor.service", 0o644))  # fmt: skip
        os.chown(pkg, 1000, 1000)
        case("the package", lambda: os.chown(pkg, 0, 0))
        # The interpreter: a venv's bin/python, a symlink in a directory a user owns.
        os.makedirs("/mnt/opt/venv/bin")
        os.symlink(PYTHON, "/mnt/opt/venv/bin/python")
        Path(exe).write_text("#!/mnt/opt/venv/bin/python\n")
        os.chown("/mnt/opt/venv/bin", 1000, 1000)
        case("interpreter's directory", lambda: os.chown("/mnt/opt/venv/bin", 0, 0))
        # A symlink on the way, swapped by whoever owns its directory.
        os.makedirs("/mnt/user")
        shutil.copy2(exe, "/mnt/user/shmjanitor")
        os.chown("/mnt/user", 1000, 1000)
        os.replace(exe, exe + ".old")
        os.symlink("/mnt/user/shmjanitor", exe)
        case("symlink's target directory", lambda: os.chown("/mnt/user", 0, 0))
        return out

    got = in_private_mounts(body)
    exe, pkg = "/mnt/opt/sj/bin/shmjanitor", "/mnt/opt/sj/lib/shmjanitor"
    assert got["program owner"].startswith(f"the shmjanitor program {exe} is owned by uid 1000")
    assert f"chown root {exe}" in got["program owner"]
    assert got["program's directory"] == (
        f"the shmjanitor program {exe}: /mnt/opt/sj/bin is writable by group or others "
        "(mode 0775), who could then change what root's service runs; chmod go-w /mnt/opt/sj/bin"
    )
    assert "/mnt/opt is writable by group or others (mode 0757)" in got["a directory above"]
    assert f"the shmjanitor package {pkg}: {pkg}/systemd_units/shmjanitor.service is " \
           "writable" in got["a file in the package"]  # fmt: skip
    assert f"the shmjanitor package {pkg} is owned by uid 1000" in got["the package"]
    assert got["interpreter's directory"].startswith(
        "its interpreter /mnt/opt/venv/bin/python: /mnt/opt/venv/bin is owned by uid 1000"
    )
    assert f"{exe}: /mnt/user is owned by uid 1000" in got["symlink's target directory"]


def test_env_shebang_is_refused():
    def body() -> object:
        exe, pkg = layout(shebang="/usr/bin/env python3")
        return refusal(exe, pkg)

    msg = in_private_mounts(body)
    assert msg is not None and "depends on PATH" in msg


def test_install_units_command_refuses_and_writes_nothing():
    needs_real_root()

    def body() -> object:
        exe, _ = layout(shebang=sys.executable)  # runs this checkout's shmjanitor
        os.chown(exe, 1000, 1000)
        dest = Path("/mnt/units")
        dest.mkdir()
        env = {**os.environ, "PYTHONPATH": str(Path(units.__file__).parents[1])}
        p = subprocess.run([exe, "install-units", "--dest", str(dest), "--no-enable"],
                           capture_output=True, text=True, env=env)  # fmt: skip
        return [p.returncode, p.stdout, p.stderr, os.listdir(dest)]

    code, out, err, written = in_private_mounts(body)  # type: ignore[misc]
    assert (code, out, written) == (2, "", []), err
    assert err.startswith("shmjanitor: the shmjanitor program /mnt/opt/sj/bin/shmjanitor is "
                          "owned by uid 1000")  # fmt: skip
    assert len(err.splitlines()) == 1
