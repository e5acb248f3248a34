"""End to end under a real systemd: install the way the README says, leak a segment as an
ordinary user, start the service, and see the leak gone, logged and quarantined.

Runs in a Debian container booted with systemd-nspawn (nspawn.py), which has its own
IPC namespace: the machine's own segments are never seen or touched.

    python -m pytest -m e2e tests/systemd      # or tests/systemd/run-e2e
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nspawn import Container, NspawnUnavailable, unavailable_reason

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VENV = "/opt/shmjanitor"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_INSIDE = "/etc/ssl/certs/host-ca.crt"


def stage_project(dest: Path) -> Path:
    """A clean copy of the project, as a fresh clone would have it (no venv, no build).

    pip builds in the source tree (egg-info), so the tree must be writable: a read-only
    bind of the checkout fails, and a writable one would let the container dirty it.
    """
    files = None
    if (REPO / ".git").exists() and shutil.which("git"):
        r = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, check=True,
        )  # fmt: skip
        files = [f for f in r.stdout.decode().split("\0") if f]
    if files is None:
        ignore = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__")
        shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
        return dest
    for rel in files:
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / rel)
        else:
            shutil.copy2(src, dest / rel)
    return dest


def pip_env() -> dict[str, str]:
    """What pip in the container needs to reach the same index as the host's pip."""
    env = {}
    if HOST_CA.exists():  # a TLS-inspecting proxy's CA is in the host's bundle only
        env["PIP_CERT"] = CA_INSIDE
    index = os.environ.get("PIP_INDEX_URL", "")
    if index.startswith(("http://", "https://")):
        env["PIP_INDEX_URL"] = index
    return env


def host_ipc_ns() -> str:
    """/proc/<pid>/ns/ipc of the machine's own IPC namespace.

    This pytest process moved to a private one (tests/conftest.py), so take the nearest
    ancestor that is elsewhere: the shell or CI script that started pytest.
    """
    ours = os.readlink("/proc/self/ns/ipc")
    pid = os.getppid()
    # pid 1 too: under scripts/test it is the PID namespace's init, in the machine's IPC.
    while pid > 0:
        try:
            if os.readlink(f"/proc/{pid}/ns/ipc") != ours:
                return f"/proc/{pid}/ns/ipc"
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    pytest.fail("found no ancestor in the machine's IPC namespace")


def host_table(ns: str) -> str:
    """The machine's own /proc/sysvipc/shm, read (only) from inside its namespace."""
    r = subprocess.run(
        ["nsenter", f"--ipc={ns}", "cat", "/proc/sysvipc/shm"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return r.stdout


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    src = stage_project(tmp_path_factory.mktemp("project") / "shmjanitor")
    binds = {CA_INSIDE: str(HOST_CA)} if HOST_CA.exists() else {}
    try:
        c = Container.boot(binds_ro=binds)
    except NspawnUnavailable as e:
        pytest.skip(f"cannot boot a container here: {e}")
    try:
        # Copied in rather than bound: pip writes into the tree it builds from.
        shutil.copytree(src, c.root / "root/shmjanitor", symlinks=True)
        yield c
    finally:
        c.teardown()


def timed(label: str, timings: dict[str, float], fn, *a, **k):  # type: ignore[no-untyped-def]
    t = time.monotonic()
    try:
        return fn(*a, **k)
    finally:
        timings[label] = round(time.monotonic() - t, 1)


def test_reap_under_systemd(booted: Container) -> None:
    c = booted
    timings: dict[str, float] = {"boot": round(c.boot_seconds, 1)}
    host_ns = host_ipc_ns()
    host_before = host_table(host_ns)
    ns_inside = os.readlink(f"/proc/{c.leader}/ns/ipc")
    assert ns_inside != os.readlink(host_ns)
    assert ns_inside != os.readlink("/proc/self/ns/ipc")

    # -- install as the README says ---------------------------------------------------
    timed("install", timings, c.run,
          f"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet /root/shmjanitor",
          env=pip_env(), timeout=600)  # fmt: skip
    r = c.run(f"{VENV}/bin/shmjanitor install-units")
    unit = c.run("cat /etc/systemd/system/shmjanitor.service").stdout
    assert f"\nExecStart={VENV}/bin/shmjanitor reap" in unit, r.stdout + r.stderr
    assert c.run("systemctl is-enabled shmjanitor.timer").stdout.strip() == "enabled"
    assert c.run("systemctl is-active shmjanitor.timer").stdout.strip() == "active"

    # -- a leak: ipcmk exits at once, so its segment is an orphan at birth -------------
    c.run("useradd --create-home --uid 1000 alice")
    out = c.run(["ipcmk", "-M", "4096", "-p", "0600"], user="alice").stdout
    shmid = int(re.search(r"Shared memory id: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert segment_ids(c) == {shmid}
    # And a POSIX one, as Python's multiprocessing.shared_memory leaves it: a 0600 file
    # of alice's in /dev/shm, which the service reaches through PrivateDevices='s /dev
    # (systemd binds the host's /dev/shm into it).
    c.run(["python3", "-c", "import os; fd = os.open('/dev/shm/psm_e2e', os.O_CREAT | "
           "os.O_EXCL | os.O_RDWR, 0o600); os.write(fd, b'x' * 100)"], user="alice")  # fmt: skip
    assert c.run("stat -c '%U %a' /dev/shm/psm_e2e").stdout.split() == ["alice", "600"]
    # Reap's default --min-age (1h) would spare a fresh leak.
    c.write("/etc/shmjanitor.toml", 'min_age = "0"\n', mode=0o644)

    # -- one pass of the service, as the timer would start it --------------------------
    timed("service", timings, c.run, "systemctl start shmjanitor.service", timeout=300)
    journal = c.journal("shmjanitor.service")
    assert (
        c.run("systemctl show -p Result shmjanitor.service").stdout.strip() == "Result=success"
    ), journal
    assert shmid not in segment_ids(c), journal
    removal = [ln for ln in journal.splitlines() if "action=removed" in ln]
    assert any(re.search(rf"\bid={shmid}\b", ln) for ln in removal), journal
    # Inside a container, processes outside its PID namespace may share /dev/shm (a
    # pod's containers do), so whether alice has a process left cannot be known here:
    # the file is kept as "unknown" (on a host it is an orphan: tests/test_posix_*).
    assert c.run("test -e /dev/shm/psm_e2e", check=False).returncode == 0, journal
    quarantined = c.run("find /var/lib/shmjanitor -type f").stdout.split()
    assert quarantined, "nothing under /var/lib/shmjanitor"
    assert c.run("stat -c %a /var/lib/shmjanitor").stdout.strip() == "700"
    # The lock of the host's IPC namespace, in RuntimeDirectory= (kept: Preserve=yes).
    assert c.run("ls /run/shmjanitor/ipc-*.lock", check=False).returncode == 0

    # -- the metrics drop-in from docs/fleet.md ----------------------------------------
    prom_dir = "/var/lib/prometheus/node-exporter"
    c.run(f"mkdir -p {prom_dir} /etc/systemd/system/shmjanitor.service.d")
    c.write(
        "/etc/systemd/system/shmjanitor.service.d/metrics.conf",
        (REPO / "systemd/metrics.conf").read_text(),
    )
    c.run("systemctl daemon-reload && systemctl start shmjanitor.service")
    prom = c.run(f"cat {prom_dir}/shmjanitor.prom").stdout
    assert re.search(r"^shmjanitor_last_run_success 1(\.0)?$", prom, re.MULTILINE), prom
    # The service saw the POSIX file (PrivateDevices= binds the host's /dev/shm into its
    # /dev), and judged it as `list` does in a container.
    assert re.search(r'^shmjanitor_objects\{container="[^"]*",kind="posix-shm",namespace="\d+",'
                     r'state="unknown"\} 1(\.0)?$', prom, re.MULTILINE), prom  # fmt: skip
    assert 'path="/dev/shm/psm_e2e"' in prom, prom
    mode = int(c.run(f"stat -c %a {prom_dir}/shmjanitor.prom").stdout.strip(), 8)
    assert mode & 0o004, f"node_exporter could not read it (mode {mode:o})"

    # The machine's own table was never touched.
    assert host_table(host_ns) == host_before
    print(f"\ne2e timings (s): {timings}")


def segment_ids(c: Container) -> set[int]:
    lines = c.run("cat /proc/sysvipc/shm").stdout.splitlines()[1:]
    return {int(ln.split()[1]) for ln in lines if ln.strip()}
