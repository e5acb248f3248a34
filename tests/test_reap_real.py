"""`shmjanitor reap` against real clients and real adversity (issue 3).

Real programs (PostgreSQL 15, the seed's demo), real ordinary accounts, two reapers at
once, bad configuration and a doctored table, and one run over every state at once.
Everything happens in the test's private IPC namespace (conftest); the quarantine always
lives in a temporary directory, never in /var/lib/shmjanitor.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from conftest import ACCOUNTS, REAL_ROOT, needs_real_root, python_as
from segments import Spec, attach, list_json, make, mark_dest, rows, table

JANITOR = [sys.executable, "-m", "shmjanitor"]


def shared_tmpdir(owner: Optional[int] = None) -> Path:
    """A directory other accounts can reach (pytest's tmp_path is 0700 root's)."""
    d = Path(tempfile.mkdtemp(prefix="shmjanitor-reap-"))
    d.chmod(0o755)
    if owner is not None:
        os.chown(d, owner, owner)
    return d


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    d = shared_tmpdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def demo(uid: Optional[int]) -> list[str]:
    """argv prefix of the seed's demo, run as `uid` (None: as we are)."""
    return [*python_as(uid), "-m", "shmjanitor.demo"]


def reap_json(
    *args: str, env: Optional[dict[str, str]] = None, as_uid: Optional[int] = None
) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m shmjanitor reap --json ARGS` in a process of its own (same namespaces)."""
    p = subprocess.run(
        [*python_as(as_uid), "-m", "shmjanitor", "reap", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "Traceback" not in p.stderr, p.stderr
    doc = json.loads(p.stdout) if p.stdout.strip() else {}
    return p, doc


def by_action(doc: dict, action: str) -> dict[int, dict]:
    return {r["id"]: r for r in doc["results"] if r["action"] == action}


# --------------------------------------------------------------------------- PostgreSQL

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """A throw-away cluster run by user postgres, as a child of the test (so its segment
    is in the test's IPC namespace). Each start is a new session: killpg reaches all."""

    def __init__(self, base: Path) -> None:
        import pwd

        pw = pwd.getpwnam("postgres")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.base = base
        self.data = base / "data"
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen] = None
        os.chown(base, self.uid, self.gid)
        self.run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )

    def start(self) -> None:
        log = open(self.base / "log", "ab")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.base),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=",
            ],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            start_new_session=True,
            stdout=log,
            stderr=log,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )
        log.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("postgres exited:\n" + (self.base / "log").read_text())
            if self.psql("select 1").returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("postgres did not come up:\n" + (self.base / "log").read_text())

    def psql(self, sql: str) -> subprocess.CompletedProcess:
        return self.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                str(self.base),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atc",
                sql,
            ],
            check=False,
        )

    def segment(self) -> int:
        """The postmaster's interlock segment: the one it created."""
        assert self.proc is not None
        mine = [shmid for shmid, s in list_json().items() if s["cpid"] == self.proc.pid]
        assert len(mine) == 1, list_json()
        return mine[0]

    def kill9(self) -> None:
        """SIGKILL the postmaster and every child of it; wait until all are gone."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError("postgres children outlived the postmaster")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "postgres").exists():
        pytest.skip("PostgreSQL 15 is not installed")
    needs_real_root()  # to run as user postgres
    base = shared_tmpdir()
    pg = Postgres(base)
    try:
        yield pg
    finally:
        if pg.proc is not None and pg.proc.poll() is None:
            pg.kill9()
        elif pg.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pg.proc.pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_segment_survives_reaps_and_its_orphan_goes_only_with_include_system(
    postgres, tmp_path
):
    postgres.start()
    shmid = postgres.segment()
    seg = list_json()[shmid]
    assert seg["state"] == "attached" and seg["uid"] == postgres.uid < 1000
    assert seg["nattch"] >= 2  # the postmaster and its auxiliary processes

    # Segments only (-m): PostgreSQL's dynamic shared memory (/dev/shm/PostgreSQL.*) is
    # the POSIX kinds' business, tested there.
    # Running: the most eager reaps, with and without a quarantine, leave it alone.
    for extra in (["--no-quarantine"], ["--state-dir", str(tmp_path / "state")]):
        p, doc = reap_json("-m", "--min-age", "0", "--include-system", *extra)
        assert p.returncode == 0, p.stderr
        assert doc["summary"]["considered"] == 0 and doc["summary"]["removed"] == 0
        assert list_json()[shmid]["state"] == "attached"
    assert postgres.psql("select 1").stdout.strip() == "1"

    postgres.kill9()
    deadline = time.time() + 10
    while rows()[shmid][6] != "0" and time.time() < deadline:  # nattch
        time.sleep(0.05)
    orphan = list_json()[shmid]
    assert orphan["state"] == "orphan" and orphan["nattch"] == 0, orphan

    # By default a system account's orphan is kept, and said why.
    p, doc = reap_json("-m", "--min-age", "0", "--state-dir", str(tmp_path / "state"))
    assert p.returncode == 0, p.stderr
    (kept,) = doc["results"]
    assert kept["id"] == shmid and kept["action"] == "kept"
    assert "system account postgres" in kept["reason"] and "--include-system" in kept["reason"]
    assert shmid in rows()

    p, doc = reap_json(
        "-m", "--min-age", "0", "--include-system", "--state-dir", str(tmp_path / "state")
    )
    assert p.returncode == 0, p.stderr
    assert list(by_action(doc, "removed")) == [shmid] and doc["summary"]["failed"] == 0
    assert rows() == {}
    q = subprocess.run(
        [*JANITOR, "quarantine", "list", "--json", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        check=True,
    )
    (entry,) = json.loads(q.stdout)["entries"]
    assert entry["id"] == shmid and entry["uid"] == postgres.uid

    # PostgreSQL comes back on the same data directory, with a segment of its own again.
    postgres.start()
    assert postgres.psql("select 1").stdout.strip() == "1"
    assert (
        postgres.run(
            [str(PG_BIN / "pg_ctl"), "status", "-D", str(postgres.data)], check=False
        ).returncode
        == 0
    )
    again = postgres.segment()
    assert list_json()[again]["state"] == "attached"


# ------------------------------------------------------------------ the seed's programs


@pytest.fixture
def demo_uid() -> Optional[int]:
    """uid 1000 under real root, so the demo's leaks belong to an ordinary account."""
    return 1000 if REAL_ROOT else None


def test_crashed_demo_server_is_reaped_and_its_copy_kept(shared_dir, demo_uid, tmp_path):
    r = subprocess.run(
        [
            *demo(demo_uid),
            "server",
            "--path",
            str(shared_dir),
            "--leak",
            "crash",
            "1",
            "2",
            "3",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == -signal.SIGKILL
    (shmid,) = rows()
    assert list_json()[shmid]["state"] == "orphan"
    system = [] if demo_uid is not None else ["--include-system"]
    p, doc = reap_json("--min-age", "0", *system, "--state-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    removed = by_action(doc, "removed")
    assert list(removed) == [shmid] and "exited" in removed[shmid]["reason"]
    assert rows() == {}
    # The quarantine kept the server's struct Memory: status FILLED (0) and 1 2 3 4.
    q = subprocess.run(
        [
            *JANITOR,
            "restore",
            "--json",
            "--state-dir",
            str(tmp_path),
            json.loads(
                subprocess.run(
                    [*JANITOR, "quarantine", "list", "--json", "--state-dir", str(tmp_path)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )["entries"][0]["entry"],
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    back = json.loads(q.stdout)["id"]
    import struct

    import sysv_ipc

    shm = sysv_ipc.attach(back)
    try:
        from shmjanitor.demo import FILLED

        assert struct.unpack("i4i", shm.read(20)) == (FILLED, 1, 2, 3, 4)
    finally:
        shm.detach()


def test_child_leak_is_reaped(demo_uid):
    r = subprocess.run(
        [*demo(demo_uid), "child", "--leak", "5", "6", "7", "8"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.startswith("5 6 7 8\n")
    (shmid,) = rows()
    system = [] if demo_uid is not None else ["--include-system"]
    p, doc = reap_json("--min-age", "0", *system, "--no-quarantine")
    assert p.returncode == 0 and list(by_action(doc, "removed")) == [shmid]
    assert rows() == {}


def test_waiting_server_survives_a_reap_and_its_client_still_gets_the_numbers(
    shared_dir, demo_uid, tmp_path
):
    server = subprocess.Popen(
        [*demo(demo_uid), "server", "--path", str(shared_dir), "1", "2", "3", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "waiting" in server.stdout.readline()
        (shmid,) = rows()
        before = rows()[shmid]
        for extra in (["--no-quarantine"], ["--state-dir", str(tmp_path)]):
            p, doc = reap_json("--min-age", "0", "--include-system", *extra)
            assert p.returncode == 0, p.stderr
            assert doc["results"] == [] and doc["summary"]["considered"] == 0
        assert rows()[shmid] == before  # not even attached by the reaper: no copy taken
        assert list_json()[shmid]["state"] == "attached"
        client = subprocess.run(
            [*demo(demo_uid), "client", "--path", str(shared_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert client.stdout == "1 2 3 4\n"
        assert server.wait(timeout=10) == 0
        assert rows() == {}  # the server cleaned up after itself, as it should
    finally:
        server.kill()
        server.wait()


# ------------------------------------------------------------- an unprivileged reaper


def test_unprivileged_reaper_removes_only_its_own_orphan():
    needs_real_root()
    home = shared_tmpdir(owner=1001)
    try:
        mine = make(Spec(key=0x1001), Spec(), uid=1001).ids
        theirs = make(Spec(key=0x1002), Spec(), uid=1002).ids
        before = rows()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "LC_ALL": "C.UTF-8",
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_RUNTIME_DIR": str(home),
        }
        p, doc = reap_json("--min-age", "0", env=env, as_uid=1001)
        assert p.returncode == 0, p.stderr
        assert sorted(by_action(doc, "removed")) == sorted(mine)
        kept = by_action(doc, "kept")
        assert sorted(kept) == sorted(theirs)
        for r in kept.values():
            assert "needs root" in r["reason"], r
        assert doc["summary"]["failed"] == 0
        after = rows()
        assert set(after) == set(theirs)
        assert all(after[i] == before[i] for i in theirs)  # untouched, every field
        # Its quarantine and lock live in its own directories, made private.
        qdir = home / "state" / "shmjanitor" / "quarantine"
        assert qdir.is_dir() and qdir.stat().st_uid == 1001
        (lock,) = home.glob("shmjanitor-ipc-*.lock")  # one per IPC namespace
        assert lock.stat().st_uid == 1001
        assert any(qdir.glob("*.json"))
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ two reapers at once


def test_two_concurrent_reapers_remove_each_orphan_exactly_once(tmp_path):
    ids = make(*[Spec(size=4096) for _ in range(150)]).ids
    if REAL_ROOT:
        ids += make(*[Spec(size=1) for _ in range(150)], uid=1000).ids
    else:
        ids += make(*[Spec(size=1) for _ in range(150)]).ids
    assert len(set(ids)) == 300 == len(rows())
    argv = [
        *JANITOR,
        "reap",
        "--json",
        "--min-age",
        "0",
        "--include-system",
        "--state-dir",
        str(tmp_path),
    ]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    docs = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
        docs.append(json.loads(out))
    removed = [i for d in docs for i in by_action(d, "removed")]
    assert sorted(removed) == sorted(ids)  # all of them, none twice
    assert sum(d["summary"]["removed"] for d in docs) == 300
    assert all(d["summary"]["failed"] == 0 for d in docs)
    assert rows() == {}
    # Every removed segment has exactly one quarantine copy.
    q = subprocess.run(
        [*JANITOR, "quarantine", "list", "--json", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(e["id"] for e in json.loads(q.stdout)["entries"]) == sorted(ids)


# ---------------------------------------------------------- bad configuration and input


@pytest.fixture
def victims() -> dict[str, list[int]]:
    """Segments a broken reap must not touch: orphans of every kind, an idle and an
    attached one."""
    orphans = make(Spec(key=0x5001), Spec(), Spec(key=0x5002, touch=True)).ids
    if REAL_ROOT:
        orphans += make(Spec(key=0x5003), uid=1000).ids
    idle = make(Spec(key=0x5004), stay=True).ids
    used = make(Spec()).ids
    attach(used[0])
    return {"orphan": orphans, "idle": idle, "attached": used}


BAD_CONFIGS = {
    "unknown-key": ('min_ages = "1h"\n', ["unknown key 'min_ages'"]),
    "min-age-bool": ("min_age = true\n", ["min_age = True is wrong", "duration"]),
    "protect-keys-str": ('protect_keys = "x"\n', ["protect_keys = 'x' is wrong", "list of keys"]),
    "protect-keys-bad-item": ('protect_keys = ["zz"]\n', ["protect_keys", "is wrong"]),
    "protect-owner-unknown": ('protect_owners = ["no-such-user-xyz"]\n', ["protect_owners"]),
    "min-age-garbage": ('min_age = "5x"\n', ["min_age = '5x' is wrong"]),
    "not-toml": ("min_age = \n[[[\n", ["not valid TOML"]),
    "not-utf8": (b'min_age = "\xff1h"\n', ["not valid TOML", "utf-8"]),
    "negative-size": ("quarantine_max_bytes = -1\n", ["quarantine_max_bytes = -1 is wrong"]),
}


def _reap_refused(config: Path, *more: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [
            *JANITOR,
            "reap",
            "--min-age",
            "0",
            "--include-system",
            "--no-quarantine",
            "--config",
            str(config),
            *more,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return p


def _assert_refused(p: subprocess.CompletedProcess, before: str, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    for n in needles:
        assert n in p.stderr, (n, p.stderr)
    assert p.stdout == ""  # no results: nothing was even considered
    assert table() == before  # byte for byte: nothing removed, nothing attached


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_exit_2_naming_file_and_problem(victims, tmp_path, name):
    text, needles = BAD_CONFIGS[name]
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    cfg.chmod(0o600)
    before = table()
    _assert_refused(_reap_refused(cfg), before, str(cfg), *needles)


def test_missing_config_file_is_exit_2(victims, tmp_path):
    before = table()
    cfg = tmp_path / "nope.toml"
    _assert_refused(_reap_refused(cfg), before, str(cfg), "no such file")


def test_root_refuses_config_owned_by_another_user(victims, tmp_path):
    needs_real_root()
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text('min_age = "0"\ninclude_system = true\n')
    cfg.chmod(0o600)
    os.chown(cfg, 1000, 1000)
    before = table()
    _assert_refused(_reap_refused(cfg), before, str(cfg), "owned by uid 1000, not root")


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_root_refuses_config_writable_by_group_or_others(victims, tmp_path, mode):
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text('min_age = "0"\ninclude_system = true\n')
    cfg.chmod(mode)
    before = table()
    _assert_refused(
        _reap_refused(cfg), before, str(cfg), "writable by group or others", f"{mode:04o}"
    )


def test_good_config_next_to_the_bad_ones_does_reap(victims, tmp_path):
    # The control: the same invocation with a sound file removes the orphans, so the
    # refusals above are the config's doing, not the setup's.
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text('min_age = "0s"\nprotect_keys = ["0x5001"]\n')
    cfg.chmod(0o600)
    p = _reap_refused(cfg, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    expected = set(victims["orphan"]) - {i for i, r in rows().items() if r[0] == str(0x5001)}
    assert set(by_action(doc, "removed")) == expected
    assert set(rows()) == set(victims["orphan"]) - expected | set(victims["idle"]) | set(
        victims["attached"]
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--min-age", "5x"], "--min-age"),
        (["--min-age", "-1s"], "--min-age"),
        (["--frobnicate"], "error: no such option"),
        (["--include-system=maybe"], ""),
    ],
)
def test_bad_flags_are_exit_2(victims, args, needle):
    before = table()
    p = subprocess.run(
        [*JANITOR, "reap", "--no-quarantine", *args], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert table() == before


def test_corrupt_table_is_exit_2_and_removes_nothing(victims, tmp_path):
    needs_real_root()
    before = table()
    for doctor in ("garbage line\n", "  1 2 3\n"):
        doctored = tmp_path / "shm"
        doctored.write_text(before + doctor)
        p = subprocess.run(
            [
                "unshare",
                "--mount",
                "sh",
                "-c",
                f"mount --bind {doctored} /proc/sysvipc/shm && exec {sys.executable} -m shmjanitor"
                f" reap --min-age 0 --include-system --no-quarantine",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and "/proc/sysvipc/shm" in p.stderr, p.stderr
        assert table() == before


# ------------------------------------------------------------ every state in one run

RECYCLED_REAP = r"""
import json, os, subprocess, sys, time
import sysv_ipc

# Runs as pid 1 of a fresh PID namespace: every segment made outside reads cpid 0 here.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    shm = sysv_ipc.SharedMemory(0x7ec7c1ed, sysv_ipc.IPC_CREX, size=4096)
    os.write(w, str(shm.id).encode()); os._exit(0)
shmid = int(os.read(r, 100)); os.waitpid(pid, 0)
time.sleep(3)  # the pid's next user must start well after the segment's ctime
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(pid - 1))
again = os.fork()
if again == 0:
    time.sleep(60); os._exit(0)
p = subprocess.run([sys.executable, "-m", "shmjanitor", "reap", "--json", "--min-age", "0",
                    "--include-system", "--no-quarantine"], capture_output=True, text=True)
os.kill(again, 9); os.waitpid(again, 0)
print(json.dumps({"creator": pid, "reused_by": again, "shmid": shmid, "rc": p.returncode,
                  "stderr": p.stderr, "doc": json.loads(p.stdout or "{}")}))
"""


def in_child_pid_namespace(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def list_in_child_pid_namespace() -> dict[int, dict]:
    p = in_child_pid_namespace(*JANITOR, "list", "--json")
    assert p.returncode == 0, p.stderr
    return {s["id"]: s for s in json.loads(p.stdout)["segments"]}


def test_one_reap_over_every_state(tmp_path):
    needs_real_root()  # ordinary accounts' orphans next to root's (a system account's)
    old = make(Spec(key=0x0A000001), Spec(), Spec(touch=True), uid=1000).ids
    protected_key = make(Spec(key=0x0A000002), uid=1000).ids
    # An owner protected by name: bob, an account the suite makes (conftest.ACCOUNTS).
    protected_owner = make(Spec(key=0x0A000003), Spec(), uid=ACCOUNTS["bob"]).ids
    system = make(Spec(key=0x0A000004), Spec()).ids  # root's
    idle = make(Spec(key=0x0A000005), uid=1000, stay=True).ids
    attached = make(Spec(key=0x0A000006), uid=1000).ids
    attach(attached[0], uid=1000)
    removing = make(Spec(key=0x0A000007), uid=1000).ids
    attach(removing[0])
    mark_dest(removing[0])
    made = time.time()
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text('protect_keys = ["0x0A000002"]\nprotect_owners = ["bob"]\n')
    cfg.chmod(0o600)
    base = ["--config", str(cfg), "--state-dir", str(tmp_path / "state")]
    before = table()

    # From a child PID namespace every creator reads cpid 0: nothing is an orphan there,
    # so even the most eager reap removes nothing.
    seen = list_in_child_pid_namespace()
    assert {seen[i]["state"] for i in old + idle + system + protected_key} == {"unknown"}
    p = in_child_pid_namespace(
        *JANITOR, "reap", "--json", "--min-age", "0", "--include-system", "--no-quarantine"
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    doc = json.loads(p.stdout)
    assert doc["results"] == [] and doc["summary"]["considered"] == 0
    assert table() == before

    # A recycled creator pid, seen through from inside such a namespace: the only orphan
    # there, so the only removal; everything made out here stays as it was.
    p = in_child_pid_namespace(sys.executable, "-c", RECYCLED_REAP)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["reused_by"] == got["creator"], "ns_last_pid did not hand the pid over"
    assert got["rc"] == 0, got["stderr"]
    (res,) = got["doc"]["results"]
    assert res["id"] == got["shmid"] and res["action"] == "removed", res
    assert "pid now used by a process started" in res["reason"]
    assert table() == before

    # min-age 1h: every orphan is too young; nothing goes (and nothing is attached).
    p, doc = reap_json("--min-age", "1h", *base)
    assert p.returncode == 0, p.stderr
    assert by_action(doc, "removed") == {} and table() == before

    # min-age 3s: the old ordinary orphans go; every other one is kept, for its reason.
    time.sleep(max(0.0, made + 4.5 - time.time()))
    young = make(Spec(key=0x0A000008), Spec(), uid=1000).ids
    before = table()
    p, doc = reap_json("--min-age", "3s", *base)
    assert p.returncode == 0, p.stderr
    assert sorted(by_action(doc, "removed")) == sorted(old)
    assert doc["summary"]["failed"] == 0
    reasons = {i: r["reason"] for i, r in by_action(doc, "kept").items()}
    assert sorted(reasons) == sorted(protected_key + protected_owner + system + young)
    assert all("protected key 0x0a000002" in reasons[i] for i in protected_key)
    assert all("protected owner bob" in reasons[i] for i in protected_owner)
    assert all("system account root" in reasons[i] for i in system)
    assert all("younger than min-age" in reasons[i] for i in young)
    after, was = rows(), rows_of(before)
    assert not set(after) & set(old)
    for i in protected_key + protected_owner + system + young + idle + attached + removing:
        assert after[i] == was[i], i  # untouched, every field
    states = {i: s["state"] for i, s in list_json().items()}
    assert states[idle[0]] == "idle" and states[attached[0]] == "attached"
    assert states[removing[0]] == "removing"

    # And with --include-system --min-age 0 the system and young ones go too; protected
    # ones and those in use still stay.
    p, doc = reap_json("--min-age", "0", "--include-system", *base)
    assert p.returncode == 0, p.stderr
    assert sorted(by_action(doc, "removed")) == sorted(system + young)
    assert set(rows()) == set(protected_key + protected_owner + idle + attached + removing)


def rows_of(text: str) -> dict[int, list[str]]:
    lines = text.splitlines()
    i = lines[0].split().index("shmid")
    return {int(line.split()[i]): line.split() for line in lines[1:] if line.strip()}
