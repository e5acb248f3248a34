"""The Ansible role (deploy/ansible) applied for real: deploy into a booted container,
see the timer enabled and its service reap a planted leak, then deploy again and see
nothing change.

ansible-playbook runs here, on the host, as a lab's control node would, with
deploy/ansible/site.yml and the role unchanged; only the transport differs: instead of
ssh it enters the container's namespaces with nsenter(1)
(deploy/ansible/tests/connection_plugins/nsenter.py). So the container needs nothing
but the python3 every managed host needs, and every task (pip, the files, systemctl)
runs inside it against its own systemd. Running ansible inside the container instead
would first install ansible there, which a managed host never has.

The package reaches the container as a lab without a package index of its own would
ship it: a wheel built here from the checkout, copied by the role
(shmjanitor_wheel). Its dependencies come from the index the host's pip reaches, as in
test_e2e.py. One boot for both runs and the reap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nspawn import Container, NspawnUnavailable, unavailable_reason
from .test_e2e import CA_INSIDE, HOST_CA, host_ipc_ns, host_table, pip_env, stage_project, timed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
VENV = "/opt/shmjanitor"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


@pytest.fixture(scope="module")
def booted() -> Iterator[Container]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("ansible-playbook") is None:
        pytest.skip(
            "ansible-playbook is not installed (Debian package ansible-core; scripts/ci-deps)"
        )
    binds = {CA_INSIDE: str(HOST_CA)} if HOST_CA.exists() else {}
    try:
        c = Container.boot(binds_ro=binds)
    except NspawnUnavailable as e:
        pytest.skip(f"cannot boot a container here: {e}")
    try:
        yield c
    finally:
        c.teardown()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the checkout, built from a clean copy (pip builds in the tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = stage_project(tmp / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp / "dist"), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (found,) = (tmp / "dist").glob("shmjanitor-*.whl")
    return found


def playbook(c: Container, tmp: Path, settings: dict[str, object]) -> tuple[dict[str, int], str]:
    """Run site.yml against the container; the PLAY RECAP counts of its host, and the log."""
    inventory = {
        "lab": {
            "hosts": {
                "box": {
                    "ansible_host": str(c.leader),
                    "ansible_connection": "nsenter",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    # The tasks already run as root in the container: nothing to become.
                    "ansible_become": False,
                    **settings,
                }
            }
        }
    }
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(tmp),  # ansible keeps files under ~/.ansible: not root's
        "ANSIBLE_HOME": str(tmp / "ansible"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_CONNECTION_PLUGINS": str(ANSIBLE / "tests" / "connection_plugins"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # Modules go to the container on stdin: one nsenter per task, not four.
        "ANSIBLE_PIPELINING": "1",
    }
    r = subprocess.run(
        ["ansible-playbook", "-i", str(tmp / "inventory.json"), str(ANSIBLE / "site.yml")],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=900,
    )  # fmt: skip
    log = r.stdout + r.stderr
    runs = len(list(tmp.glob("ansible-*.log")))
    (tmp / f"ansible-{runs + 1}.log").write_text(log)  # kept with pytest's tmp_path
    assert r.returncode == 0, log
    recap = re.search(r"^box\s*:\s*(.*)$", log, re.MULTILINE)
    assert recap, log
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap.group(1))}, log


def test_role_deploys_reaps_and_is_idempotent(
    booted: Container, wheel: Path, tmp_path: Path
) -> None:
    c = booted
    timings: dict[str, float] = {"boot": round(c.boot_seconds, 1)}
    host_ns = host_ipc_ns()
    host_before = host_table(host_ns)
    settings = {
        "shmjanitor_wheel": str(wheel),
        # The leak below is seconds old; the default min_age (1h) would rightly keep it.
        "shmjanitor_config": {"min_age": "0"},
        "shmjanitor_pip_environment": pip_env(),
    }

    # -- first run: everything is new ------------------------------------------------
    counts, log = timed("deploy", timings, playbook, c, tmp_path, settings)
    assert counts["failed"] == 0 and counts["unreachable"] == 0, log
    assert counts["changed"] > 0, log
    assert c.run("systemctl is-enabled shmjanitor.timer").stdout.strip() == "enabled"
    assert c.run("systemctl is-active shmjanitor.timer").stdout.strip() == "active"
    show = c.run("systemctl show -p Triggers -p UnitFileState shmjanitor.timer").stdout
    assert "Triggers=shmjanitor.service" in show, show
    unit = c.run("systemctl cat shmjanitor.service").stdout
    assert f"\nExecStart={VENV}/bin/shmjanitor reap $SHMJANITOR_REAP_ARGS" in unit, unit
    assert f"--metrics-file={TEXTFILE_DIR}/shmjanitor.prom" in unit, unit
    assert c.run("cat /etc/shmjanitor.toml").stdout.splitlines()[-1] == 'min_age = "0"'

    # -- a leak: ipcmk exits at once, so its segment is an orphan at birth -------------
    c.run("useradd --create-home --uid 1000 alice")
    out = c.run(["ipcmk", "-M", "4096", "-p", "0600"], user="alice").stdout
    shmid = int(re.search(r"Shared memory id: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert shmid in segment_ids(c)

    # -- the pass the timer starts -----------------------------------------------------
    timed("reap", timings, c.run, "systemctl start shmjanitor.service")
    journal = c.journal("shmjanitor.service")
    result = c.run("systemctl show -p Result shmjanitor.service").stdout.strip()
    assert result == "Result=success", journal
    assert shmid not in segment_ids(c), journal
    removal = [ln for ln in journal.splitlines() if "action=removed" in ln]
    assert any(re.search(rf"\bid={shmid}\b", ln) for ln in removal), journal
    prom = c.run(f"cat {TEXTFILE_DIR}/shmjanitor.prom").stdout
    assert re.search(r"^shmjanitor_last_run_success 1(\.0)?$", prom, re.MULTILINE), prom
    assert re.search(r"^shmjanitor_last_run_removed_segments 1(\.0)?$", prom, re.MULTILINE), prom

    # -- second run, same settings: nothing to change ------------------------------------
    counts, log = timed("redeploy", timings, playbook, c, tmp_path, settings)
    assert counts["failed"] == 0, log
    assert counts["changed"] == 0, log
    assert c.run("systemctl is-enabled shmjanitor.timer").stdout.strip() == "enabled"

    # The machine's own table was never touched.
    assert host_table(host_ns) == host_before
    print(f"\nansible timings (s): {timings}")


def segment_ids(c: Container) -> set[int]:
    lines = c.run("cat /proc/sysvipc/shm").stdout.splitlines()[1:]
    return {int(ln.split()[1]) for ln in lines if ln.strip()}
