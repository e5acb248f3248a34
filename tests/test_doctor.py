"""`shmjanitor doctor`: each check reproduced for real, its finding, severity and exit code.

The system's files (logind.conf and its drop-ins, the units, the config, the state
directory, the metrics file) live in a test root given with --root; the kernel's facts
are the test's own IPC namespace (conftest.py): its sysctls are lowered there and
filled with real segments, sets and queues, and its /dev/shm is the test's tmpfs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import sysv_ipc
from conftest import HOST_IPC_NS, _libc, _mount
from segments import Spec, cli, make

from shmjanitor import doctor, doctor_facts, metrics, units
from shmjanitor.doctor import Severity

SYSCTL = Path("/proc/sys")
CHECKS = {
    "logind_remove_ipc", "shm_rmid_forced", "limit_shmmni", "limit_semmni", "limit_semmns",
    "limit_msgmni", "limit_dev_shm_bytes", "limit_dev_shm_inodes", "dev_shm_size", "timer",
    "last_run", "metrics_fresh", "config", "state_dir", "history", "proc_hidepid",
    "all_namespaces",
}  # fmt: skip
MQUEUE_CHECK = "limit_mqueue_queues"  # only where an mqueue file system is mounted
MS_REMOUNT = 32
ALICE = 1000


def write(root: Path, path: str, text: str) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A healthy machine's files: the shipped units installed and the timer enabled."""
    r = tmp_path / "root"
    for name, text in units.unit_texts().items():
        write(r, f"/etc/systemd/system/{name}", text)
    wants = r / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / "shmjanitor.timer").symlink_to("/etc/systemd/system/shmjanitor.timer")
    return r


def run(root: Path, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    r = cli("doctor", "--root", str(root), "--json", *args)
    assert r.exit_code in (0, 1, 2), r.output
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == r.exit_code
    return r.exit_code, {f["check"]: f for f in doc["findings"]}


def set_sysctl(name: str, value: str) -> None:
    # Only in the test's private IPC namespace: these sysctls belong to it.
    assert os.readlink("/proc/self/ns/ipc") != HOST_IPC_NS
    path = SYSCTL / name
    try:
        path.write_text(value)
    except PermissionError:
        pytest.skip(f"cannot write {name} in this IPC namespace")
    assert path.read_text().split() == value.split()


def remount_dev_shm(options: str) -> None:
    """The test's own /dev/shm tmpfs (conftest.py), given another size."""
    flags = MS_REMOUNT | 2 | 4  # keep nosuid, nodev
    if _libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        pytest.skip(f"cannot remount /dev/shm: {os.strerror(err)}")


# --- the whole run -----------------------------------------------------------------


def test_healthy_machine_is_all_ok_and_exits_0(root: Path) -> None:
    code, found = run(root)
    assert set(found) - {MQUEUE_CHECK} == CHECKS
    assert {f["severity"] for f in found.values()} == {"ok"}, found
    assert code == 0
    assert "--root" in found["last_run"]["found"]  # systemd not asked about a test root


def test_json_shape(root: Path) -> None:
    r = cli("doctor", "--root", str(root), "--format", "json")
    doc = json.loads(r.stdout)
    assert set(doc) == {"findings", "summary", "exit_code"}
    for f in doc["findings"]:
        assert set(f) == {"check", "severity", "found", "todo"}
        assert f["severity"] in ("ok", "warning", "error")
        assert isinstance(f["found"], str) and f["found"]
        assert f["todo"] is None or (isinstance(f["todo"], str) and f["severity"] != "ok")
    assert set(doc["summary"]) == {"ok", "warning", "error"}
    assert sum(doc["summary"].values()) == len(doc["findings"])


def test_plain_and_table(root: Path) -> None:
    (root / "etc/systemd/system/timers.target.wants/shmjanitor.timer").unlink()
    r = cli("doctor", "--root", str(root), "--format", "plain")
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "SEVERITY", "FINDING"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert set(rows) - {MQUEUE_CHECK} == CHECKS and rows["timer"] == "warning"
    assert "; do: systemctl enable --now shmjanitor.timer" in r.stdout
    t = cli("--color", "never", "doctor", "--root", str(root), "--format", "table")
    assert t.exit_code == 1
    assert "→ systemctl enable --now shmjanitor.timer" in t.stdout
    n = len(rows)
    assert t.stdout.rstrip().endswith(f"{n} checks: {n - 1} ok, 1 warning, 0 error (exit 1)")


def test_metrics_file_has_one_gauge_per_check(root: Path, tmp_path: Path) -> None:
    (root / "etc/systemd/system/timers.target.wants/shmjanitor.timer").unlink()
    prom = tmp_path / "doctor.prom"
    code, found = run(root, "--metrics-file", str(prom))
    assert code == 1
    gauges = dict(re.findall(r'^shmjanitor_doctor_check\{check="(\w+)"\} (\S+)$',
                             prom.read_text(), re.MULTILINE))  # fmt: skip
    assert set(gauges) == set(found)
    assert {k: float(v) for k, v in gauges.items()} == {
        k: float(Severity[f["severity"].upper()]) for k, f in found.items()
    }
    assert gauges["timer"] == "1.0"
    assert re.search(r"^shmjanitor_doctor_timestamp_seconds \d", prom.read_text(), re.M)


# --- logind RemoveIPC= ---------------------------------------------------------------


def daemon(uid: int, loginuid: Optional[int] = None) -> tuple[int, int]:
    """A process of `uid` that made a segment and a semaphore set and keeps running, as a
    daemon does; with `loginuid`, inside a login session of that user (as pam_loginuid
    sets it at login). Returns (shmid, semid)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if loginuid is not None:
                Path("/proc/self/loginuid").write_text(str(loginuid))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=4096)
            sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX)
            os.write(w, f"{shm.id} {sem.id}\n".encode())
            time.sleep(3600)
        except BaseException as e:
            os.write(w, f"error {e}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    from segments import _children

    _children.append(pid)
    with os.fdopen(r) as f:
        line = f.readline().split()
    if line[0] == "error":
        pytest.skip(f"cannot make the daemon: {' '.join(line[1:])}")
    return int(line[0]), int(line[1])


def test_remove_ipc_yes_names_a_daemons_objects(root: Path) -> None:
    write(root, "/etc/systemd/logind.conf", "[Login]\nRemoveIPC=no\n")
    # Drop-ins apply after the main file, sorted by name whatever their directory.
    write(root, "/usr/lib/systemd/logind.conf.d/50-vendor.conf", "[Login]\nRemoveIPC=yes\n")
    shmid, semid = daemon(ALICE)
    code, found = run(root)
    f = found["logind_remove_ipc"]
    assert f["severity"] == "warning" and code == 1
    assert "RemoveIPC=yes (/usr/lib/systemd/logind.conf.d/50-vendor.conf:2)" in f["found"]
    assert f"uid {ALICE}: shm {shmid}, sem {semid}" in f["found"]
    assert "loginuid unset" in f["found"]
    assert "RemoveIPC=no" in f["todo"]


def test_remove_ipc_no_is_ok(root: Path) -> None:
    write(root, "/etc/systemd/logind.conf", "[Login]\nRemoveIPC=no\n")
    daemon(ALICE)
    code, found = run(root)
    assert found["logind_remove_ipc"]["severity"] == "ok", found["logind_remove_ipc"]
    assert "RemoveIPC=no (/etc/systemd/logind.conf:2)" in found["logind_remove_ipc"]["found"]
    assert code == 0


def test_remove_ipc_dropins_in_systemds_order(root: Path) -> None:
    """/etc hides a drop-in of the same name in /usr/lib; the latest name wins."""
    write(root, "/usr/lib/systemd/logind.conf.d/10-vendor.conf", "[Login]\nRemoveIPC=no\n")
    write(root, "/usr/lib/systemd/logind.conf.d/90-vendor.conf", "[Login]\nRemoveIPC=no\n")
    write(root, "/etc/systemd/logind.conf.d/90-vendor.conf", "[Login]\n# mine\nRemoveIPC=yes\n")
    write(root, "/run/systemd/logind.conf.d/20-x.conf", "[Other]\nRemoveIPC=no\n")
    daemon(ALICE)
    _, found = run(root)
    assert "/etc/systemd/logind.conf.d/90-vendor.conf:3" in found["logind_remove_ipc"]["found"]
    assert found["logind_remove_ipc"]["severity"] == "warning"


def test_remove_ipc_default_is_yes(root: Path) -> None:
    write(root, "/etc/systemd/logind.conf", "[Login]\n#RemoveIPC=no\n")
    daemon(ALICE)
    _, found = run(root)
    assert "RemoveIPC=yes (the default: no file sets it)" in found["logind_remove_ipc"]["found"]
    assert found["logind_remove_ipc"]["severity"] == "warning"


def test_a_users_objects_in_their_own_session_are_not_at_risk(root: Path) -> None:
    """logind removing a logged-out user's own leaks is what it is for: not a finding."""
    write(root, "/etc/systemd/logind.conf", "[Login]\nRemoveIPC=yes\n")
    daemon(ALICE, loginuid=ALICE)
    code, found = run(root)
    assert found["logind_remove_ipc"]["severity"] == "ok", found["logind_remove_ipc"]
    assert code == 0


def test_system_accounts_are_spared_by_logind(root: Path) -> None:
    write(root, "/etc/systemd/logind.conf", "[Login]\nRemoveIPC=yes\n")
    daemon(500)  # below SYS_UID_MAX: logind never touches it
    _, found = run(root)
    assert found["logind_remove_ipc"]["severity"] == "ok"


def test_an_account_system_for_login_defs_but_not_for_logind(root: Path) -> None:
    """uid 60001: above UID_MAX (a system account for login.defs and shmjanitor's
    policy) but above SYS_UID_MAX too, so logind removes its objects at logout."""
    write(root, "/etc/systemd/logind.conf", "[Login]\nRemoveIPC=yes\n")
    shmid, _ = daemon(60001, loginuid=60001)
    _, found = run(root)
    f = found["logind_remove_ipc"]
    assert f["severity"] == "warning", f
    assert f"uid 60001: shm {shmid}" in f["found"] and "but a user for logind" in f["found"]


# --- kernel.shm_rmid_forced ------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1"])
def test_shm_rmid_forced_says_what_it_means_here(root: Path, value: str) -> None:
    set_sysctl("kernel/shm_rmid_forced", value)
    make(Spec(), Spec(), stay=True)  # two segments nobody is attached to, creator alive
    _, found = run(root)
    f = found["shm_rmid_forced"]
    assert f["severity"] == "ok"
    assert f"kernel.shm_rmid_forced={value}" in f["found"]
    assert "2 segment(s) here have nobody attached" in f["found"]
    assert ("go when their creator exits" in f["found"]) == (value == "1")


# --- limits, filled in the namespace ------------------------------------------------


def semget(nsems: int) -> int:
    semid = _libc.semget(0, nsems, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    assert semid >= 0, os.strerror(ctypes.get_errno())
    return int(semid)


@pytest.mark.parametrize(("count", "severity", "code"), [(8, "ok", 0), (17, "warning", 1),
                                                         (20, "error", 2)])  # fmt: skip
def test_sysv_limits_filled(root: Path, count: int, severity: str, code: int) -> None:
    set_sysctl("kernel/shmmni", "20")
    set_sysctl("kernel/sem", "250 40 32 20")  # SEMMSL SEMMNS SEMOPM SEMMNI
    set_sysctl("kernel/msgmni", "20")
    make(*[Spec() for _ in range(count)])
    for _ in range(count):
        semget(2)  # 2 semaphores each: SEMMNS 40 fills with SEMMNI
        sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX)
    got, found = run(root)
    for check, what in (("limit_shmmni", "kernel.shmmni"), ("limit_semmni", "SEMMNI"),
                        ("limit_semmns", "SEMMNS"), ("limit_msgmni", "kernel.msgmni")):  # fmt: skip
        assert found[check]["severity"] == severity, found[check]
        assert what in found[check]["found"]
    assert f"{count} used of 20" in found["limit_shmmni"]["found"]
    assert f"{2 * count} used of 40" in found["limit_semmns"]["found"]
    assert got == code


def test_shmall_filled(root: Path) -> None:
    set_sysctl("kernel/shmall", "10")  # pages
    make(Spec(size=9 * 4096))
    code, found = run(root)
    assert found["limit_shmall"]["severity"] == "warning", found["limit_shmall"]
    assert "9 used of 10 (90.0%)" in found["limit_shmall"]["found"]
    assert code == 1


@pytest.mark.parametrize(("kib", "severity"), [(500, "ok"), (900, "warning"), (1000, "error")])
def test_dev_shm_filled(root: Path, kib: int, severity: str) -> None:
    remount_dev_shm("size=1000k,mode=1777")
    Path("/dev/shm/psm_filler").write_bytes(b"x" * kib * 1024)
    _, found = run(root)
    f = found["limit_dev_shm_bytes"]
    assert f["severity"] == severity, f
    assert "/dev/shm bytes" in f["found"]


def test_dev_shm_inodes_filled(root: Path) -> None:
    remount_dev_shm("nr_inodes=10,mode=1777")
    for n in range(9):  # and its root directory: 10 of 10
        Path(f"/dev/shm/sem.{n}").touch()
    _, found = run(root)
    assert found["limit_dev_shm_inodes"]["severity"] == "error", found["limit_dev_shm_inodes"]


def test_dev_shm_larger_than_ram(root: Path) -> None:
    remount_dev_shm("size=200%,mode=1777")
    code, found = run(root)
    f = found["dev_shm_size"]
    assert f["severity"] == "warning" and code == 1, f
    assert "200% of RAM" in f["found"]


def test_posix_queues_filled(root: Path, mqueue_dir: Path) -> None:
    set_sysctl("fs/mqueue/queues_max", "5")
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.restype = ctypes.c_int
    for n in range(5):
        assert rt.mq_open(f"/doctor{n}".encode(), os.O_CREAT | os.O_RDWR, 0o600, None) >= 0
    code, found = run(root)
    f = found["limit_mqueue_queues"]
    assert f["severity"] == "error", f
    assert "5 used of 5 (100.0%)" in f["found"] and str(mqueue_dir) in f["found"]
    assert code == 2


# --- the janitor: timer, last run, metrics, config, state ---------------------------


def test_timer_missing_or_disabled(root: Path) -> None:
    (root / "etc/systemd/system/timers.target.wants/shmjanitor.timer").unlink()
    code, found = run(root)
    assert found["timer"]["severity"] == "warning" and code == 1
    assert "not enabled" in found["timer"]["found"]
    (root / "etc/systemd/system/shmjanitor.timer").unlink()
    _, found = run(root)
    assert "not installed" in found["timer"]["found"]


def last_run(**service: str) -> doctor.Finding:
    facts = doctor.Facts(now=0, systemd={"shmjanitor.service": {"LoadState": "loaded",
                         "ExecMainExitTimestamp": "Sun 2026-11-29 12:00:00 UTC", **service}})  # fmt: skip
    [f] = doctor.check_last_run(facts)
    return f


def test_last_run_from_systemctl_properties() -> None:
    """As `systemctl show` says them (systemd does not run here: the e2e suite's does)."""
    assert last_run(Result="success", ExecMainStatus="0").severity is Severity.OK
    assert last_run(Result="exit-code", ExecMainStatus="1").severity is Severity.WARNING
    assert last_run(Result="exit-code", ExecMainStatus="2").severity is Severity.ERROR
    assert last_run(Result="timeout", ExecMainStatus="0").severity is Severity.ERROR
    [never] = doctor.check_last_run(doctor.Facts(now=0, systemd={}))
    assert never.severity is Severity.OK and "not run" in never.found


def metrics_dropin(root: Path) -> Path:
    write(root, "/etc/systemd/system/shmjanitor.service.d/metrics.conf",
          "[Service]\nEnvironment=SHMJANITOR_REAP_ARGS=--metrics-file=/var/lib/prom/sj.prom\n")  # fmt: skip
    path = root / "var/lib/prom/sj.prom"
    path.parent.mkdir(parents=True)
    return path


def test_metrics_file_fresh_stale_failed_missing(root: Path) -> None:
    path = metrics_dropin(root)
    _, found = run(root)
    assert found["metrics_fresh"]["severity"] == "warning"
    assert "/var/lib/prom/sj.prom does not exist" in found["metrics_fresh"]["found"]

    metrics.write(path, [], metrics.RunStats(0, 0, 0, True), now=time.time())
    code, found = run(root)
    assert found["metrics_fresh"]["severity"] == "ok", found["metrics_fresh"]
    assert code == 0

    old = time.time() - 3 * 3600  # the shipped timer runs within 1h15m: 3h is 2 runs missed
    os.utime(path, (old, old))
    code, found = run(root)
    f = found["metrics_fresh"]
    assert f["severity"] == "warning" and code == 1, f
    assert "written 3h ago" in f["found"] and "every 1h15m" in f["found"]

    metrics.write(path, None, None, now=time.time(), success=False)
    _, found = run(root)
    assert "last run failed" in found["metrics_fresh"]["found"]


def test_metrics_period_follows_the_installed_timer(root: Path) -> None:
    write(root, "/etc/systemd/system/shmjanitor.timer",
          "[Timer]\nOnUnitInactiveSec=10min\nRandomizedDelaySec=5min\n")  # fmt: skip
    path = metrics_dropin(root)
    metrics.write(path, [], None, now=time.time())
    old = time.time() - 40 * 60  # more than two runs of 15 minutes
    os.utime(path, (old, old))
    _, found = run(root)
    assert found["metrics_fresh"]["severity"] == "warning", found["metrics_fresh"]


@pytest.mark.parametrize("text", ["min_age = [\n", "no_such_key = 1\n", 'min_age = "soon"\n'])
def test_corrupt_config_is_an_error(root: Path, text: str) -> None:
    write(root, "/etc/shmjanitor.toml", text)
    code, found = run(root)
    f = found["config"]
    assert f["severity"] == "error" and code == 2, f
    assert "shmjanitor.toml" in f["found"]
    assert "not checked" in found["state_dir"]["found"]


def test_valid_config_and_state_dir_within_budget(root: Path) -> None:
    write(root, "/etc/shmjanitor.toml",
          'state_dir = "/srv/sj"\nquarantine_budget_bytes = 1000\n')  # fmt: skip
    q = root / "srv/sj/quarantine"
    q.mkdir(parents=True, mode=0o700)
    (q / "run.data").write_bytes(b"x" * 500)
    code, found = run(root)
    assert found["config"]["severity"] == "ok" and code == 0, found["config"]
    assert found["state_dir"]["severity"] == "ok"
    (q / "run.data").write_bytes(b"x" * 850)
    _, found = run(root)
    assert found["state_dir"]["severity"] == "warning", found["state_dir"]
    (q / "run.data").write_bytes(b"x" * 990)
    code, found = run(root)
    assert found["state_dir"]["severity"] == "error" and code == 2
    assert "990B of its budget of 1000B (99.0%)" in found["state_dir"]["found"]
    assert "purge" in found["state_dir"]["todo"]


def test_the_history_store_healthy_damaged_and_set_aside(root: Path) -> None:
    """A store a real reap wrote is healthy; one whose pages are overwritten fails
    SQLite's quick_check (a warning: the next run sets it aside); a store set aside by
    an earlier run is a warning until removed."""
    write(root, "/etc/shmjanitor.toml", 'state_dir = "/srv/sj"\n')
    state = root / "srv/sj"
    _, found = run(root)
    assert found["history"]["severity"] == "ok" and "no history yet" in found["history"]["found"]
    make(Spec(size=100))
    r = cli("reap", "--min-age", "1d", "--state-dir", str(state))  # records, removes nothing
    assert r.exit_code == 0, r.output
    db = state / "history.sqlite3"
    assert db.is_file()
    code, found = run(root)
    assert found["history"]["severity"] == "ok" and code == 0, found["history"]
    assert "quick_check ok" in found["history"]["found"]
    from shmjanitor import history

    history.forget()  # let go of this process's connection before damaging the file
    for leftover in state.glob("history.sqlite3-*"):
        leftover.unlink()  # the WAL and its index: the damage must be in the file read
    data = bytearray(db.read_bytes())
    page = db.stat().st_size - 4096  # the last page: a table's or an index's
    data[page : page + 12] = b"\xa5" * 12  # its b-tree header: the file still opens
    db.write_bytes(bytes(data))
    code, found = run(root)
    assert found["history"]["severity"] == "warning" and code == 1, found["history"]
    assert "quick_check" in found["history"]["found"]
    assert "*** in database main ***" in found["history"]["found"], found["history"]  # its rows
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page after the first overwritten
    db.write_bytes(bytes(data))
    code, found = run(root)
    assert found["history"]["severity"] == "warning" and code == 1, found["history"]
    assert "quick_check" in found["history"]["found"]
    db.rename(state / "history.sqlite3.corrupt-20261129T120000")
    _, found = run(root)
    f = found["history"]
    assert f["severity"] == "warning" and "history.sqlite3.corrupt-20261129T120000" in f["found"]


def test_config_given_with_option(root: Path, tmp_path: Path) -> None:
    bad = write(tmp_path, "/elsewhere.toml", "lock_timeout = -1\n")
    code, found = run(root, "--config", str(bad))
    assert found["config"]["severity"] == "error" and code == 2
    assert "lock_timeout" in found["config"]["found"]


# --- /proc hidepid -------------------------------------------------------------------


def test_hidepid_without_what_the_unit_needs(root: Path, tmp_path: Path) -> None:
    """A real proc mounted with hidepid (its own options: Linux 5.8+), judged against
    the installed unit and a drop-in that takes CAP_SYS_PTRACE away."""
    mnt = tmp_path / "proc"
    mnt.mkdir()
    try:
        _mount("proc", str(mnt), "proc", 2 | 4 | 8, "hidepid=invisible")
    except OSError as e:
        pytest.skip(f"cannot mount proc with hidepid: {e}")
    try:
        options = doctor_facts.proc_options(mount_point=str(mnt))
    finally:
        _libc.umount2(str(mnt).encode(), 2)
    assert "hidepid=invisible" in options
    facts = dataclasses.replace(doctor_facts.gather(root), proc_options=options)
    [ok] = doctor.check_hidepid(facts)
    assert ok.severity is Severity.OK, ok
    write(root, "/etc/systemd/system/shmjanitor.service.d/x.conf",
          "[Service]\nCapabilityBoundingSet=~CAP_SYS_PTRACE\n")  # fmt: skip
    [warn] = doctor.check_hidepid(
        dataclasses.replace(doctor_facts.gather(root), proc_options=options)
    )
    assert warn.severity is Severity.WARNING
    assert "lacks CAP_SYS_PTRACE" in warn.found and "x.conf" in warn.found
    write(root, "/etc/systemd/system/shmjanitor.service.d/x.conf",
          "[Service]\nProtectProc=invisible\n")  # fmt: skip
    [warn] = doctor.check_hidepid(
        dataclasses.replace(doctor_facts.gather(root), proc_options=options)
    )
    assert warn.severity is Severity.WARNING and "ProtectProc=invisible" in warn.found


def test_all_namespaces_without_the_drop_in_that_lets_the_unit_enter_them(root: Path) -> None:
    """all_namespaces (or -A in SHMJANITOR_REAP_ARGS) with the unit's
    RestrictNamespaces=yes alone: every setns(2) is refused and the runs exit 0 having
    read no container; the shipped drop-in (install-units --all-namespaces) mends it."""
    code, found = run(root)
    assert code == 0 and "all_namespaces is off" in found["all_namespaces"]["found"]
    write(root, "/etc/shmjanitor.toml", "all_namespaces = true\n")
    code, found = run(root)
    f = found["all_namespaces"]
    assert (code, f["severity"]) == (1, "warning"), f
    assert "all_namespaces = true in " in f["found"] and "without ipc" in f["found"]
    assert "install-units --all-namespaces" in f["todo"]
    drop_in = "/etc/systemd/system/shmjanitor.service.d/all-namespaces.conf"
    write(root, drop_in, units.unit_texts((units.ALL_NAMESPACES,))[units.ALL_NAMESPACES])
    code, found = run(root)
    assert (code, found["all_namespaces"]["severity"]) == (0, "ok"), found["all_namespaces"]
    assert "all-namespaces.conf" in found["all_namespaces"]["found"]
    # Asked for by the reap's arguments rather than the config: the same judgement.
    (root / "etc/shmjanitor.toml").unlink()
    (root / drop_in.lstrip("/")).unlink()
    write(root, "/etc/systemd/system/shmjanitor.service.d/args.conf",
          '[Service]\nEnvironment="SHMJANITOR_REAP_ARGS=--min-age 2h -A"\n')  # fmt: skip
    code, found = run(root)
    assert (code, found["all_namespaces"]["severity"]) == (1, "warning")
    assert "the service's reap is given -A" in found["all_namespaces"]["found"]


@pytest.mark.parametrize(("drop_ins", "env_file", "asked"), [
    # Environment=: the last assignment; an empty line clears them all; UnsetEnvironment=
    (["Environment=SHMJANITOR_REAP_ARGS=-A"], None, True),
    (["Environment=SHMJANITOR_REAP_ARGS=-A", "Environment="], None, False),
    (["Environment=SHMJANITOR_REAP_ARGS=-A", "UnsetEnvironment=SHMJANITOR_REAP_ARGS"], None,
     False),
    (['Environment="SHMJANITOR_REAP_ARGS=-v --namespace=/run/ns/x" OTHER=1'], None, True),
    # short flags clustered as click reads them: A after -c is the config file's name
    (["Environment=SHMJANITOR_REAP_ARGS=-qA"], None, True),
    (["Environment=SHMJANITOR_REAP_ARGS=-cA"], None, False),
    (["Environment=SHMJANITOR_REAP_ARGS=--min-age 1h"], None, False),
    # a drop-in's ExecStart= override (the empty line clears the unit's)
    (["ExecStart=", "ExecStart=/usr/local/bin/shmjanitor reap --all-namespaces"], None, True),
    (["ExecStart=", "ExecStart=/usr/local/bin/shmjanitor reap -- -A"], None, False),
    # EnvironmentFile= wins over Environment=
    (["Environment=SHMJANITOR_REAP_ARGS=-A", "EnvironmentFile=/etc/default/shmjanitor"],
     "SHMJANITOR_REAP_ARGS=\"--min-age 2h\"\n", False),
    (["EnvironmentFile=-/etc/default/shmjanitor"], "# hourly\nSHMJANITOR_REAP_ARGS=-A\n", True),
    (["EnvironmentFile=-/etc/default/missing"], None, False),
])  # fmt: skip
def test_the_reaps_own_command_line_asks_for_every_namespace(
    root: Path, drop_ins: list[str], env_file: Optional[str], asked: bool
) -> None:
    """-A reaches the timer's reap however the unit's files say it (systemd.exec(5)'s
    Environment=, EnvironmentFile=, UnsetEnvironment=, an ExecStart= override): with
    the unit's RestrictNamespaces=yes alone, each way is the warning, or none."""
    write(root, "/etc/systemd/system/shmjanitor.service.d/args.conf",
          "[Service]\n" + "".join(f"{line}\n" for line in drop_ins))  # fmt: skip
    if env_file is not None:
        write(root, "/etc/default/shmjanitor", env_file)
    code, found = run(root)
    f = found["all_namespaces"]
    assert (f["severity"], code) == (("warning", 1) if asked else ("ok", 0)), f


@pytest.mark.parametrize(("lines", "ipc"), [
    ([], True), (["yes"], False), (["yes", "ipc"], True), (["yes", "net mnt"], False),
    (["ipc"], True), (["~ipc"], False), (["~net"], True), (["yes", "ipc", "~ipc"], False),
    (["yes", ""], True), (["yes", "no"], True), (["ipc", "yes"], False), (["net"], False),
    (["net", "ipc"], True), (["~net", "~ipc"], False), (["", "~ipc", "ipc"], True),
    # systemd ignores a line with a type it does not know (names are lower case)
    (["yes", "IPC"], False), (["yes", "ipc bogus"], False), (["yes", "ipc net"], True),
])  # fmt: skip
def test_restrict_namespaces_merges_as_systemd(lines: list[str], ipc: bool) -> None:
    text = "[Service]\n" + "".join(f"RestrictNamespaces={v}\n" for v in lines)
    assert ("ipc" in doctor.namespaces_allowed([("unit", text)])) is ipc


@pytest.mark.parametrize(("lines", "has"), [
    ([], True), (["CAP_SYS_ADMIN CAP_SYS_PTRACE"], True), (["CAP_SYS_ADMIN"], False),
    (["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], True), (["~CAP_SYS_PTRACE"], False),
    (["CAP_SYS_PTRACE", ""], False), (["~CAP_NET_RAW"], True),
])  # fmt: skip
def test_capability_bounding_set_merges_as_systemd(lines: list[str], has: bool) -> None:
    text = "[Service]\n" + "".join(f"CapabilityBoundingSet={v}\n" for v in lines)
    assert doctor.has_ptrace([("unit", text)]) is has


def test_timespan() -> None:
    assert doctor.timespan("1h") == 3600
    assert doctor.timespan("1h 30min") == 5400
    assert doctor.timespan("90") == 90
    assert doctor.timespan("15 min") == 900
    assert doctor.timespan("soon") is None
    assert doctor.timespan("") is None


@pytest.mark.parametrize(("lines", "path"), [
    (["Environment=SHMJANITOR_REAP_ARGS=--metrics-file=/a.prom"], "/a.prom"),
    (['Environment="SHMJANITOR_REAP_ARGS=--metrics-file /a.prom -v"'], "/a.prom"),
    (["Environment=SHMJANITOR_REAP_ARGS=--metrics-file=/a.prom", "Environment="], None),
    (["ExecStart=", "ExecStart=/usr/bin/shmjanitor reap --metrics-file /b.prom"], "/b.prom"),
    # an override that no longer passes $SHMJANITOR_REAP_ARGS: its file is not the reap's
    (["Environment=SHMJANITOR_REAP_ARGS=--metrics-file=/a.prom", "ExecStart=",
      "ExecStart=/usr/bin/shmjanitor reap"], None),
    (["ExecStart=", "ExecStart=/usr/bin/shmjanitor reap -- --metrics-file=/c.prom"], None),
])  # fmt: skip
def test_the_reaps_metrics_file_is_read_from_its_command_line(
    lines: list[str], path: Optional[str]
) -> None:
    """doctor reads --metrics-file where it reads -A: the reap's command line as systemd
    builds it from the unit (doctor.reap_command), not any text that looks like it."""
    unit = units.unit_texts()["shmjanitor.service"]
    drop_in = "[Service]\n" + "".join(f"{line}\n" for line in lines)
    assert doctor_facts.metrics_path([("unit", unit), ("drop-in", drop_in)]) == path
