"""Every way a run can fail: one line on stderr, the documented exit code, no traceback,
and with --metrics-file `shmjanitor_last_run_success 0` and the time of the failure.

Real runs: `python -m shmjanitor` in a process of its own, in the test's IPC namespace;
a doctored /proc/sysvipc/shm is bind-mounted over the kernel's in a private mount
namespace (`unshare --mount`), so the program reads it from the path it always reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families
from segments import Spec, make, rows

from shmjanitor import lock

JANITOR = [sys.executable, "-m", "shmjanitor"]
HEADER = (
    "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid"
    "      atime      dtime      ctime                   rss                  swap\n"
)
ROW = "1234 7 600 4096 100 0 0 1000 1000 1000 1000 0 0 1700000000 4096 0\n"


def last_run(prom: Path) -> tuple[float, float]:
    """shmjanitor_last_run_success and _timestamp_seconds of a metrics file."""
    got = {s.name: s.value for f in text_string_to_metric_families(prom.read_text())
           for s in f.samples}  # fmt: skip
    return got["shmjanitor_last_run_success"], got["shmjanitor_last_run_timestamp_seconds"]


def succeeded_once(prom: Path) -> float:
    """A first, successful run: the file says success 1 (so a failure must overwrite it)."""
    p = subprocess.run([*JANITOR, "list", "--metrics-file", str(prom)], capture_output=True)
    assert p.returncode == 0, p.stderr
    success, when = last_run(prom)
    assert success == 1
    return when


def janitor(*args: str, table: Optional[Path] = None, no_table: bool = False,
            shell_tail: str = "") -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the program; with `table`, over that file bind-mounted on /proc/sysvipc/shm,
    with `no_table`, over an empty /proc/sysvipc (a kernel without System V IPC)."""
    mount = ""
    if table is not None:
        mount = f"mount --bind {table} /proc/sysvipc/shm && "
    elif no_table:
        mount = "mount -t tmpfs none /proc/sysvipc && "
    argv = " ".join(["exec", *JANITOR, *args])
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           f"{mount}{argv} {shell_tail}"]  # fmt: skip
    if not mount:
        cmd = ["sh", "-c", f"{argv} {shell_tail}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if mount and "mount:" in p.stderr:
        pytest.skip(f"cannot mount in a private mount namespace here: {p.stderr.strip()}")
    return p


def one_line(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


@pytest.mark.parametrize("command", ["list", "reap"])
@pytest.mark.parametrize(
    "body, words",
    [
        (b"\xff\xfe garbage\n", ("line 2", "byte 0xff is not ASCII")),  # not even UTF-8
        (ROW.replace("4096", "4k", 1).encode(), ("line 2", "not a number")),
        (ROW.replace("1234", "\u0661\u0662", 1).encode(), ("line 2", "not ASCII")),  # digits
        (b"", ()),  # a header and nothing else is a valid, empty table: no failure
    ],
)
def test_a_bad_table_fails_closed_and_says_so_in_the_metrics(tmp_path, command, body, words):
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    keep = make(Spec()).ids  # a real orphan that must survive a failed reap
    doctored = tmp_path / "shm"
    doctored.write_bytes(HEADER.encode() + body)
    prom = tmp_path / "shm.prom"
    before = succeeded_once(prom)
    extra = ["--min-age", "0", "--include-system", "--no-quarantine"] if command == "reap" else []
    p = janitor(command, *extra, "--metrics-file", str(prom), table=doctored)
    success, when = last_run(prom)
    if not body:
        assert (p.returncode, success) == (0, 1), p.stderr
        return
    assert p.returncode == 2, p.stderr
    one_line(p, "/proc/sysvipc/shm", *words)
    assert success == 0 and when >= before and abs(when - time.time()) < 60
    assert set(rows()) == set(keep)  # nothing removed


def test_no_sysv_ipc_is_exit_2_and_a_failed_run(tmp_path):
    prom = tmp_path / "shm.prom"
    succeeded_once(prom)
    p = janitor("reap", "--metrics-file", str(prom), no_table=True)
    assert p.returncode == 2
    one_line(p, "no System V IPC")
    assert last_run(prom)[0] == 0


def test_a_held_lock_is_exit_1_and_a_failed_run(tmp_path):
    keep = make(Spec()).ids
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text("lock_timeout = 0\n")
    prom = tmp_path / "shm.prom"
    before = succeeded_once(prom)
    with lock.held(lock.default_path(), 5):  # another reaper, as far as the run can tell
        p = janitor("reap", "--min-age", "0", "--include-system", "--no-quarantine",
                    "--config", str(cfg), "--metrics-file", str(prom))  # fmt: skip
    assert p.returncode == 1
    one_line(p, f"another shmjanitor (pid {os.getpid()})", "lock_timeout")
    success, when = last_run(prom)
    assert success == 0 and when >= before
    assert set(rows()) == set(keep)


def test_a_bad_config_is_exit_2_and_a_failed_run(tmp_path):
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text("min_age = \n")
    prom = tmp_path / "shm.prom"
    succeeded_once(prom)
    p = janitor("reap", "--config", str(cfg), "--metrics-file", str(prom))
    assert p.returncode == 2
    one_line(p, "not valid TOML")
    assert last_run(prom)[0] == 0


CRASH = (
    "import sys; from shmjanitor import survey\n"
    "def take(*a, **k): raise RuntimeError('boom')\n"
    "survey.take = take\n"
    "sys.argv[0] = 'shmjanitor'\n"
    "from shmjanitor.cli import main; main()\n"
)


@pytest.mark.parametrize("command", ["list", "reap"])
def test_a_crash_is_one_line_exit_70_and_a_failed_run(tmp_path, command):
    prom = tmp_path / "shm.prom"
    succeeded_once(prom)
    argv = [sys.executable, "-c", CRASH, command, "--metrics-file", str(prom)]
    env = {k: v for k, v in os.environ.items() if k != "SHMJANITOR_DEBUG"}
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert p.returncode == 70
    one_line(p, "internal error", "RuntimeError: boom", "SHMJANITOR_DEBUG=1")
    assert last_run(prom)[0] == 0
    # Asked for, the traceback is there for the bug report.
    p = subprocess.run(argv, capture_output=True, text=True, env={**env, "SHMJANITOR_DEBUG": "1"})
    assert p.returncode == 70 and "Traceback" in p.stderr and "boom" in p.stderr


@pytest.mark.parametrize("command", ["list", "reap"])
def test_closed_stdout_is_exit_2_before_anything_is_done(tmp_path, command):
    keep = make(Spec()).ids
    prom = tmp_path / "shm.prom"
    succeeded_once(prom)
    extra = ["--min-age", "0", "--include-system", "--no-quarantine"] if command == "reap" else []
    p = janitor(command, *extra, "--metrics-file", str(prom), shell_tail=">&-")
    assert p.returncode == 2
    one_line(p, "standard output is closed")
    assert last_run(prom)[0] == 0
    assert set(rows()) == set(keep)  # a reap that could not log removed nothing


def test_a_reader_that_goes_away_is_exit_141_and_silent(tmp_path):
    make(*[Spec() for _ in range(3)])
    prom = tmp_path / "shm.prom"
    r, w = os.pipe()
    os.close(r)  # nobody will ever read: the first write gets EPIPE
    try:
        p = subprocess.run([*JANITOR, "list", "--metrics-file", str(prom)], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (141, "")
    assert last_run(prom)[0] == 0  # exit 141 is not 0: not a run that did all it planned


def test_list_piped_into_head_exits_as_ipcs_would(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    make(*[Spec(size=1) for _ in range(4000)])  # ~400 KB, 6 pipefuls: head leaves early
    script = f"set -o pipefail; {' '.join(JANITOR)} list | head -1; echo status=$?"
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["KEY", "ID", "OWNER"]
    assert lines[-1] == "status=141"  # what `ipcs -m | head -1` gives: 128 + SIGPIPE


def test_version_into_a_closed_pipe_is_141_too():
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([*JANITOR, "--version"], stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (141, "")


TERM_AFTER_SCAN = (
    "import os, signal, sys; from shmjanitor import survey\n"
    "take = survey.take\n"
    "def take_then_term(*a, **k):\n"
    "    sv = take(*a, **k); os.kill(os.getpid(), signal.SIGTERM); return sv\n"
    "survey.take = take_then_term\n"
    "sys.argv[0] = 'shmjanitor'\n"
    "from shmjanitor.cli import main; main()\n"
)


def test_a_reap_stopped_by_sigterm_is_a_failed_run(tmp_path):
    keep = make(Spec(), Spec()).ids
    prom = tmp_path / "shm.prom"
    succeeded_once(prom)
    p = subprocess.run([sys.executable, "-c", TERM_AFTER_SCAN, "reap", "--min-age", "0",
                        "--include-system", "--no-quarantine", "--metrics-file", str(prom)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 143, p.stderr  # stopped before the first segment
    assert set(rows()) == set(keep)
    assert last_run(prom)[0] == 0  # 143 is not 0
