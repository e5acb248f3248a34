"""The timer's switch to every IPC namespace (issue 14 part 5): the config key
`all_namespaces`, which list and reap take as -A when neither -A nor --namespace is
given, and the drop-in that lets the service setns(2) (systemd/all-namespaces.conf).

Every run that may sweep is inside a sealed world (tests/worlds.py): its /proc shows
no process of the machine's IPC namespace. Fast: no container.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shmjanitor import config
from shmjanitor.errors import ConfigError

from .test_units import MAX_EXPOSURE, directives, exposure, needs_analyze

REPO = Path(__file__).resolve().parents[2]
DROP_IN = REPO / "systemd" / "all-namespaces.conf"
KEY = 0x5EED0014  # the segment in the other namespace whose creator lives: idle
ORPHAN = 0x5EED0015  # and one whose creator exited
# In a new IPC namespace (unshare --ipc): a child makes ORPHAN and exits, then this
# process makes KEY, says so, and stays: the namespace lives as long as it does.
HOLDER = f"""
import os, sys, sysv_ipc
if os.fork() == 0:
    sysv_ipc.SharedMemory({ORPHAN}, sysv_ipc.IPC_CREX, 0o600, 4096)
    os._exit(0)
os.wait()
sysv_ipc.SharedMemory({KEY}, sysv_ipc.IPC_CREX, 0o600, 4096)
print("ready", flush=True)
sys.stdin.read()
"""
# The CLI with the default config path (/etc/shmjanitor.toml, the only one `list`
# reads) moved to argv[1]: the machine's /etc is not the test's to write.
CLI = """
import sys
from pathlib import Path
from shmjanitor import config
config.DEFAULT_PATH = Path(sys.argv.pop(1))
from shmjanitor.cli import main
sys.argv[0] = "shmjanitor"
main()
"""


def test_the_key_is_off_by_default_and_strictly_boolean() -> None:
    assert config.Config().all_namespaces is False
    assert config.parse({"all_namespaces": True}, "t").all_namespaces is True
    # A string would be a typo's silent "true" (or "false") for root's whole machine.
    with pytest.raises(
        ConfigError, match="all_namespaces = 'yes' is wrong: expected true or false"
    ):
        config.parse({"all_namespaces": "yes"}, "t")


@pytest.fixture
def other_ns(world: Any) -> int:
    """A second IPC namespace in the world, holding a segment of KEY; its holder's pid
    (as the world's /proc numbers it: the CLI runs there)."""
    p = world.spawn(["unshare", "--ipc", sys.executable, "-c", HOLDER], stdin=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    r = world.run(["pgrep", "-f", "-o", "SharedMemory"], check=True)
    return int(r.stdout.split()[0])


def keys_listed(world: Any, cfg: Path, *args: str) -> set[int]:
    r = world.run([sys.executable, "-c", CLI, str(cfg), "list", "--json", *args])
    assert r.returncode == 0, r.stderr
    return {s["key"] for s in json.loads(r.stdout)["segments"]}


def test_list_sweeps_every_namespace_when_the_config_says_so(
    world: Any, other_ns: int, tmp_path: Path
) -> None:
    on, off = tmp_path / "on.toml", tmp_path / "off.toml"
    on.write_text("all_namespaces = true\n")
    off.write_text("")
    assert KEY in keys_listed(world, on)  # as -A
    assert KEY not in keys_listed(world, off)  # today's scope: the world's own namespace
    # A flag wins over the file: --namespace names one namespace, whichever the key says.
    assert KEY not in keys_listed(world, on, "--namespace", "1")  # the world's pid 1: ours
    assert KEY in keys_listed(world, off, "--namespace", str(other_ns))


def test_a_run_without_cap_sys_admin_keeps_to_its_namespace(
    world: Any, other_ns: int, tmp_path: Path
) -> None:
    # The key is for root's runs: one that may not setns(2) (an ordinary user's, here
    # root's without CAP_SYS_ADMIN) neither fails, as -A would, nor says anything about
    # it; it lists its own namespace, as without the key.
    cfg = tmp_path / "on.toml"
    cfg.write_text("all_namespaces = true\n")
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"]
    r = world.run([*drop, sys.executable, "-c", CLI, str(cfg), "list", "--json"])
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert KEY not in {s["key"] for s in json.loads(r.stdout)["segments"]}
    # The same run given -A says why it cannot: the flag is a demand, the key a default.
    r = world.run([*drop, sys.executable, "-c", CLI, str(cfg), "list", "--json", "-A"])
    assert r.returncode != 0 and "CAP_SYS_ADMIN" in r.stderr, r.stderr


def test_reap_sweeps_every_namespace_when_the_config_says_so(
    world: Any, other_ns: int, tmp_path: Path
) -> None:
    on, off = tmp_path / "on.toml", tmp_path / "off.toml"
    # root's segments are a system account's: include_system lets them go
    on.write_text("all_namespaces = true\ninclude_system = true\n")
    off.write_text("include_system = true\n")
    reap = ["reap", "--min-age", "0", "--json", "--state-dir", str(tmp_path / "state")]
    r = world.run([sys.executable, "-m", "shmjanitor", *reap, "--config", str(off)])
    assert r.returncode == 0, r.stderr
    assert {KEY, ORPHAN} <= keys_listed(world, off, "-A")  # today's scope: not swept
    r = world.run([sys.executable, "-m", "shmjanitor", *reap, "--config", str(on)])
    assert r.returncode == 0, r.stderr
    left = keys_listed(world, off, "-A")
    assert ORPHAN not in left and KEY in left, r.stdout  # the orphan only, as -A


# -- the drop-in ------------------------------------------------------------------------


def test_the_default_unit_keeps_todays_scope() -> None:
    # Without the drop-in, systemd's seccomp filter refuses every setns(2): the
    # config key alone cannot widen what the service reaches (the e2e test sees it).
    from shmjanitor import units

    svc = directives(units.unit_texts()["shmjanitor.service"], "Service")
    assert svc["RestrictNamespaces"] == ["yes"]


def test_the_drop_in_allows_ipc_namespaces_and_nothing_else() -> None:
    svc = directives(DROP_IN.read_text(), "Service")
    # RestrictNamespaces= merges its lines (OR): "ipc" after the unit's "yes" allows
    # setns(fd, CLONE_NEWIPC) and unshare/clone of an IPC namespace, nothing more.
    assert svc == {"RestrictNamespaces": ["ipc"]}


@needs_analyze
def test_exposure_with_the_drop_in_at_most_2(tmp_path: Path) -> None:
    from shmjanitor import units

    exe = tmp_path / "bin" / "shmjanitor"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    dest = tmp_path / "system"
    dest.mkdir()
    units.install_units(dest, str(exe))
    without = exposure(dest / "shmjanitor.service")
    (dest / "shmjanitor.service.d").mkdir()
    (dest / "shmjanitor.service.d" / "all-namespaces.conf").write_text(DROP_IN.read_text())
    # systemd-analyze --offline reads the drop-ins beside the unit; the drop-in must
    # have been read (the score moved), and by no more than the one line's weight.
    score = exposure(dest / "shmjanitor.service")
    assert without < score <= MAX_EXPOSURE, (without, score)
    assert round(score - without, 1) == 0.1
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager",
         str(dest / "shmjanitor.service")], capture_output=True, text=True,
    )  # fmt: skip
    allowed = [ln.split()[1] for ln in r.stdout.splitlines()
               if ln.startswith("✗ RestrictNamespaces")]  # fmt: skip
    assert allowed == ["RestrictNamespaces=~ipc"], r.stdout


def test_install_units_all_namespaces_writes_the_drop_in(tmp_path: Path) -> None:
    from shmjanitor import units

    exe = tmp_path / "bin" / "shmjanitor"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    plain, full = tmp_path / "plain", tmp_path / "full"
    plain.mkdir()
    full.mkdir()
    assert not any("service.d" in str(p) for p in units.install_units(plain, str(exe)))
    assert not (plain / "shmjanitor.service.d").exists()  # the default keeps today's scope
    written = units.install_units(full, str(exe), all_namespaces=True)
    drop_in = full / "shmjanitor.service.d" / "all-namespaces.conf"
    assert drop_in in written
    assert drop_in.read_text() == DROP_IN.read_text()
    assert oct(drop_in.stat().st_mode & 0o777) == "0o644"
    assert oct(drop_in.parent.stat().st_mode & 0o777) == "0o755"
    assert units.install_units(full, str(exe), all_namespaces=True) == written  # again: same
