"""An interrupted reap leaves a quarantine that tells the truth (issue 10, item 7).

Killed by SIGINT, SIGTERM or SIGKILL at any moment, a reap leaves: every removed
segment restorable byte for byte, no entry restorable whose segment still exists, no
temporary file after the next run, every removal in the log. Black box: each command is
a `python -m shmjanitor` process in the test's private IPC namespace (so it sees only
the test's segments), with the quarantine in a tmp state dir and /run replaced by a tmp
directory (root's reaper lock is /run/shmjanitor.lock: the machine's is never touched,
and other test runs on the machine never make ours wait). The tests look inside the
quarantine only to read stored bytes (quarantine.Store.read) and to show the on-disk
state a kill left before anything settles it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import json
import os
import platform
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import sysv_ipc
from segments import _fork, rows, table
from test_quarantine import content

from shmjanitor.config import Config
from shmjanitor.quarantine import Entry, Store

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)  # fmt: skip
CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000

REAP = ("reap", "--min-age", "0", "--include-system")  # the tests' segments are root's
REMOVED_LINE = re.compile(r"^(?:shmjanitor: note: )?action=removed id=(\d+) ", re.M)


# --- Segments whose every byte the test knows --------------------------------------------


@dataclass(frozen=True)
class Seg:
    """A segment as the test made it: `data` written at offset `at`, zeros elsewhere."""

    size: int
    mode: int
    key: int  # 0: IPC_PRIVATE
    at: int = 0
    data: bytes = b""
    attach: bool = True  # False: shmget only, never attached (as ipcmk leaves it)

    def content(self) -> bytes:
        return bytes(self.at) + self.data + bytes(self.size - self.at - len(self.data))


_keys = itertools.count(0x5EED0000)


def random_segs(n: int, rng: random.Random) -> list[Seg]:
    """`n` segments of every kind a leak has, sizes log-uniform from 1 B to 64 KiB (three
    in four under a page, few page multiples): never attached (saved as zeros
    without attaching), attached but never written (no page), written with zeros (pages
    that are all zero), full of random bytes, random bytes in a part (holes around)."""
    out = []
    for _ in range(n):
        size = int(2 ** rng.uniform(0, 16))
        mode = rng.choice((0o600, 0o640, 0o604))
        key = next(_keys) if rng.random() < 0.2 else 0
        kind = rng.random()
        if kind < 0.15:
            out.append(Seg(size, mode, key, attach=False))
        elif kind < 0.22:
            out.append(Seg(size, mode, key))
        elif kind < 0.3:
            out.append(Seg(size, mode, key, data=bytes(size)))
        elif kind < 0.8:
            out.append(Seg(size, mode, key, data=os.urandom(size)))
        else:
            at = rng.randrange(size)
            out.append(Seg(size, mode, key, at, os.urandom(rng.randint(1, size - at))))
    return out


def make_orphans(segs: list[Seg], known: dict[int, Seg]) -> dict[int, Seg]:
    """Create `segs` in one process that then exits (its segments are orphans); adds
    them to `known` (ids never repeat: the kernel hands out an index cyclically and bumps
    the sequence when it wraps, ipc/util.c ipc_idr_alloc)."""

    def body() -> list[int]:
        ids = []
        for s in segs:
            key = s.key - (1 << 32) if s.key >= 0x80000000 else s.key
            shmid = _libc.shmget(key, s.size, sysv_ipc.IPC_CREX | s.mode)
            if shmid < 0:
                raise OSError(ctypes.get_errno(), "shmget")
            if s.attach:
                shm = sysv_ipc.attach(shmid)
                if s.data:
                    shm.write(s.data, s.at)
                shm.detach()
            ids.append(shmid)
        return ids

    made = dict(zip(_fork(body, stay=False).ids, segs))
    assert len(made) == len(segs) and not made.keys() & known.keys(), "a segment id repeated"
    known.update(made)
    return made


def column(name: str) -> dict[int, int]:
    """One column of /proc/sysvipc/shm, by shmid."""
    col = table().splitlines()[0].split().index(name)
    return {i: int(r[col], 8 if name == "perms" else 10) for i, r in rows().items()}


def perms() -> dict[int, int]:
    """Each segment's mode bits as the kernel has them now."""
    return {i: m & 0o777 for i, m in column("perms").items()}


# --- shmjanitor, as a process ------------------------------------------------------------


# Syscall numbers by machine, for the seccomp filter (audit arch, then each call).
_SYSCALLS = {
    "x86_64": (0xC000003E, {"shmctl": 31, "unlink": 87, "unlinkat": 263}),
    "aarch64": (0xC00000B7, {"shmctl": 195, "unlinkat": 35}),
}


def seccomp_kill(calls: tuple[str, ...], args: Optional[dict[int, int]] = None
                 ) -> Callable[[], None]:  # fmt: skip
    """A seccomp filter under which the kernel kills the process the instant it makes
    one of `calls` with args[i] == v for each i: v of `args` (as a preexec_fn). Some
    windows of the protocol are microseconds wide (between the last-instant lock and
    IPC_RMID; between the last index write and deleting the journal): no timer hits
    them, this hits them every time. The kill is SECCOMP_RET_KILL_PROCESS: as sudden as
    SIGKILL, reported as SIGSYS."""
    if platform.machine() not in _SYSCALLS:
        pytest.skip(f"the seccomp filter knows syscall numbers of {sorted(_SYSCALLS)} only")
    arch, numbers = _SYSCALLS[platform.machine()]
    nrs = [numbers[c] for c in calls if c in numbers]
    checks = sorted((args or {}).items())
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    first_check = 3 + len(nrs)
    kill = first_check + 2 * len(checks)
    allow = kill + 1

    def jump(at: int, to: int) -> int:
        return to - at - 1

    # struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low half first).
    prog = [(ld, 0, 0, 4), (jeq, 0, jump(1, allow), arch), (ld, 0, 0, 0)]
    for n in nrs:
        at = len(prog)
        prog.append((jeq, jump(at, first_check), 0 if at < first_check - 1 else jump(at, allow), n))
    for i, v in checks:
        prog.append((ld, 0, 0, 16 + 8 * i))
        prog.append((jeq, 0, jump(len(prog), allow), v))
    prog += [(ret, 0, 0, 0x80000000), (ret, 0, 0, 0x7FFF0000)]  # KILL_PROCESS, ALLOW
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(code))

    def install() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS would dump core
        if _libc.prctl(38, 1, 0, 0, 0) or _libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")  # 38: NO_NEW_PRIVS

    install.keep = (code, fprog)  # type: ignore[attr-defined]
    return install


def kill_at_rmid(shmid: int) -> Callable[[], None]:
    """Killed at shmctl(shmid, IPC_RMID): right after the last-instant lock (mode 000).
    IPC_RMID is 0, and glibc adds no IPC_64 flag to it on 64-bit machines."""
    return seccomp_kill(("shmctl",), {0: shmid, 1: 0})


def kill_at_first_unlink() -> Callable[[], None]:
    """Killed at its first unlink: in a reap of a clean quarantine, deleting the journal
    once the final index is written (Batch.finish)."""
    return seccomp_kill(("unlink", "unlinkat"))


class Janitor:
    """Runs shmjanitor commands on one state dir, with a config file of defaults and a
    /run of their own (a bind mount in a private mount namespace)."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.run_dir = tmp / "run"
        self.run_dir.mkdir(mode=0o755)
        self.config = tmp / "shmjanitor.toml"
        self.config.write_text("")  # no /etc/shmjanitor.toml of the machine
        self.store = Store(self.state, Config())
        self.logs: list[str] = []  # what the commands run to their end wrote
        self.files: dict[Path, int] = {}  # where the started ones write: offset read so far
        self._logged: set[int] = set()
        self._logs_read = 0
        # The reaper lock in this /run (RUNTIME_DIRECTORY would move it elsewhere).
        self.env = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}

    @property
    def lock_path(self) -> Path:
        """The reaper lock of the test's IPC namespace, as the commands see it in /run."""
        d = self.run_dir / "shmjanitor"
        d.mkdir(mode=0o700, exist_ok=True)
        return d / f"ipc-{os.stat('/proc/self/ns/ipc').st_ino}.lock"

    def logged(self) -> set[int]:
        """The ids of every `action=removed` line any command wrote (stdout or stderr).
        Call it when no command runs: it reads the logs once, incrementally."""
        for f, at in self.files.items():
            with open(f, "rb") as fh:
                fh.seek(at)
                text = fh.read()
            self.files[f] = at + len(text)
            self._logged.update(removed_in(text.decode()))
        for text in self.logs[self._logs_read :]:
            self._logged.update(removed_in(text))
        self._logs_read = len(self.logs)
        return self._logged

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shmjanitor", *args,
                "--state-dir", str(self.state), "--config", str(self.config)]  # fmt: skip

    def preexec(self, other_ipc: bool = False, trap: Optional[Callable[[], None]] = None
                ) -> Callable[[], None]:  # fmt: skip
        run_dir = os.fsencode(self.run_dir)

        def setup() -> None:
            flags = CLONE_NEWNS | (CLONE_NEWIPC if other_ipc else 0)
            if (_libc.unshare(flags) or _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
                    or _libc.mount(run_dir, b"/run", None, MS_BIND, None)):  # fmt: skip
                raise OSError(ctypes.get_errno(), "private /run")
            if trap is not None:
                trap()

        return setup

    def start(self, *args: str, out: Path, err: Path, **kw: Any) -> subprocess.Popen[bytes]:
        for f in (out, err):
            self.files.setdefault(f, 0)
        with open(out, "ab") as o, open(err, "ab") as e:
            return subprocess.Popen(self.argv(*args), stdout=o, stderr=e, env=self.env,
                                    preexec_fn=self.preexec(**kw))  # fmt: skip

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=300,
                           env=self.env, preexec_fn=self.preexec(**kw))  # fmt: skip
        self.logs += [p.stdout, p.stderr]
        return p

    def entries(self, settle: bool = True, **kw: Any) -> tuple[list[dict[str, Any]], str]:
        """The entries (`quarantine list --json`), after a reap that settles interrupted
        runs first and removes nothing here (min-age 1d): settling is the reaper's, whose
        log is the record. Returns them, and what the commands said (the reap's log)."""
        said = ""
        if settle:
            r = self.run("reap", "--min-age", "1d", "--include-system", **kw)
            assert r.returncode == 0, r.stderr
            said = r.stdout + r.stderr
        p = self.run("quarantine", "list", "--json", **kw)
        assert p.returncode == 0, p.stderr
        assert "Traceback" not in p.stderr, p.stderr
        return json.loads(p.stdout)["entries"], said + p.stderr

    def leftovers(self) -> list[str]:
        """Files no settled quarantine should hold: temporary, journals, set aside."""
        q = self.state / "quarantine"
        return sorted(p.name for p in q.iterdir()
                      if p.name.endswith((".tmp", ".journal", ".damaged")))  # fmt: skip

    def stored(self, names: set[str]) -> Iterator[tuple[str, bytes]]:
        """Entries' stored segments, every byte (holes are zeros), read from the data."""
        for run in sorted({name.rpartition(".")[0] for name in names}):
            for doc in self.store.load(run)["entries"]:
                entry = Entry(run, doc)
                if entry.name in names:
                    buf = bytearray(doc["size"])
                    for off, piece in self.store.read(entry):
                        buf[off : off + len(piece)] = piece
                    yield entry.name, bytes(buf)


def tail(log: Path, offset: int) -> str:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode()


def removed_in(text: str) -> list[int]:
    """Ids of every `action=removed` line (the reap's own, or a settle's note)."""
    return [int(i) for i in REMOVED_LINE.findall(text)]


def wait_removals(p: subprocess.Popen[bytes], log: Path, offset: int, k: int,
                  timeout: float = 120) -> bool:  # fmt: skip
    """Wait until the run has logged `k` removals of its own (after `offset` of its log);
    False if it ended first. The reap writes each line the moment its segment is removed
    (and, before, those it settled for a run that was killed: not counted)."""
    seen, tail = 0, b""
    deadline = time.monotonic() + timeout
    with open(log, "rb") as f:
        f.seek(offset)
        while time.monotonic() < deadline:
            chunk = f.read()
            if chunk:
                *lines, tail = (tail + chunk).split(b"\n")
                seen += sum(line.startswith(b"action=removed ") and b'"settled after' not in line
                            for line in lines)  # fmt: skip
                if seen >= k:
                    return True
            elif p.poll() is not None:
                return False
            else:
                time.sleep(0.0005)
    raise AssertionError(f"no {k} removals logged in {timeout} s")


def check_settled(j: Janitor, made: dict[int, Seg], entries: list[dict[str, Any]],
                  verified: set[str]) -> set[int]:  # fmt: skip
    """The invariants of a settled quarantine; returns the ids removed so far.

    (a) every segment made that is gone has exactly one entry, removed, whose stored
        bytes are the bytes written (checked once per entry: data files never change);
    (b) no entry whose segment still exists, and none pending;
    (c) no temporary file, journal or damaged file;
    (d) every removal in the log, and no log line of a removal that did not happen;
    and what was not removed keeps its mode (a last-instant lock was put back).
    """
    present = perms()
    gone = made.keys() - present.keys()
    by_id: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        by_id.setdefault(e["id"], []).append(e)
    assert by_id.keys() <= made.keys(), "an entry for a segment the test never made"
    assert [e for e in entries if e["status"] != "removed"] == [], "pending after a settle"
    still_there = sorted(by_id.keys() & present.keys())
    assert still_there == [], f"entries restorable whose segment exists: {still_there[:10]}"
    dup = sorted(i for i, es in by_id.items() if len(es) > 1)
    assert dup == [], f"segments with more than one entry: {dup[:10]}"
    lost = sorted(gone - by_id.keys())
    assert lost == [], f"segments removed without an entry: {lost[:10]}"
    new = {}
    for i in gone:
        (e,) = by_id[i]
        s = made[i]
        assert (e["size"], e["key"], e["mode"]) == (s.size, s.key, s.mode), (e, s)
        if e["entry"] not in verified:
            new[e["entry"]] = s
    for name, data in j.stored(set(new)):
        assert data == new.pop(name).content(), f"entry {name}: bytes differ"
        verified.add(name)
    assert new == {}, "entries listed but not in the store"
    assert j.leftovers() == []
    logged = j.logged()
    unlogged = sorted(gone - logged)
    assert unlogged == [], f"removed without a log line: {unlogged[:10]}"
    false = sorted(logged & present.keys())
    assert false == [], f"logged as removed, still there: {false[:10]}"
    moved = {i: oct(m) for i, m in present.items() if i in made and m != made[i].mode}
    assert moved == {}, f"modes not what they were: {dict(list(moved.items())[:10])}"
    return set(gone)


def restore_sample(j: Janitor, made: dict[int, Seg], entries: list[dict[str, Any]],
                   rng: random.Random, n: int = 2) -> None:  # fmt: skip
    """Restore a few entries through the CLI (keyed and private ones): same key, mode,
    size, bytes. The new segments are removed again after (they are the test's)."""
    keyed = [e for e in entries if e["key"]]
    private = [e for e in entries if not e["key"]]
    half = n // 2
    sample = rng.sample(keyed, min(len(keyed), half)) + rng.sample(private, min(len(private), half))
    assert sample
    for e in sample:
        p = j.run("restore", e["entry"], "--json")
        assert p.returncode == 0, p.stderr
        back = json.loads(p.stdout)
        s = made[e["id"]]
        assert back["key"] == s.key
        assert content(back["id"]) == s.content()
        assert perms()[back["id"]] == s.mode
        sysv_ipc.remove_shared_memory(back["id"])


# --- SIGINT and SIGTERM: stop after the current segment, say what was done ---------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_or_sigterm_stops_after_the_current_segment(tmp_path: Path, sig: int) -> None:
    rng = random.Random(sig)
    j = Janitor(tmp_path)
    made = make_orphans(random_segs(2000, rng), {})
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    p = j.start(*REAP, out=out, err=err)
    assert wait_removals(p, out, 0, 1), "the reap ended before its first removal was logged"
    p.send_signal(sig)
    assert p.wait(timeout=120) == 128 + sig  # 130, 143: as a shell says a run was stopped
    stdout, stderr = out.read_text(), err.read_text()
    assert stderr == "", stderr  # no traceback, no failure
    *lines, summary = stdout.splitlines()
    assert summary.startswith("summary ") and summary.endswith(
        f" interrupted={signal.Signals(sig).name}"
    ), summary

    present = perms()
    gone = made.keys() - present.keys()
    assert 0 < len(gone) < len(made), "the signal should land while segments are removed"
    logged = removed_in(stdout)
    assert sorted(logged) == sorted(gone)  # each removal logged once, as it happened
    assert f" removed={len(gone)} " in summary
    # What it had not removed yet is exactly as it was, and has no entry; what it removed
    # is recorded as removed, nothing pending: the run finished its records itself, so
    # the next command has nothing to settle and says nothing.
    entries, notes = j.entries()
    assert notes.splitlines() == [  # the settling reap's summary, and nothing settled
        f"summary dry_run=false considered={len(present)} removed=0 would_remove=0 "
        f"kept={len(present)} failed=0 gone=0 bytes=0"
    ], notes
    assert {e["id"] for e in entries} == gone
    verified: set[str] = set()
    check_settled(j, made, entries, verified)

    # The next run removes the rest, once each: nothing is copied or recorded twice.
    p2 = j.run(*REAP)
    assert p2.returncode == 0, p2.stderr
    assert sorted(removed_in(p2.stdout)) == sorted(present)
    assert rows() == {}
    entries, _ = j.entries()
    assert check_settled(j, made, entries, verified) == made.keys()
    restore_sample(j, made, entries, rng)


# --- SIGKILL: the next command settles what the run could not ----------------------------


@pytest.mark.parametrize("settle_by", ["a reap removing nothing", "reap"])
def test_sigkill_mid_run_is_settled_by_the_next_command(tmp_path: Path, settle_by: str) -> None:
    rng = random.Random(settle_by)
    j = Janitor(tmp_path)
    made = make_orphans(random_segs(2000, rng), {})
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    p = j.start(*REAP, out=out, err=err)
    assert wait_removals(p, out, 0, rng.randint(1, 500)), "the reap ended too soon"
    p.kill()
    assert p.wait(timeout=60) == -signal.SIGKILL
    present = set(rows())
    gone = made.keys() - present
    assert 0 < len(gone) < len(made)

    # What the kill left on disk: the index written ahead, every entry pending, and the
    # journal of what was removed (white box: this is the state the next run settles).
    q = j.state / "quarantine"
    (index,) = q.glob("*.json")
    doc = json.loads(index.read_text())
    assert {e["status"] for e in doc["entries"]} == {"pending"}
    lines = index.with_suffix(".journal").read_text().split()
    journal = {doc["entries"][int(n)]["id"] for n in lines}
    assert journal <= gone and len(gone - journal) <= 1  # at most the one killed in between

    # From another IPC namespace these ids mean other segments (or none): nothing is
    # settled there, and a pending entry is not restorable.
    elsewhere, said = j.entries(other_ipc=True)
    assert {e["status"] for e in elsewhere} == {"pending"}
    assert "interrupted in IPC namespace" in said
    victim = next(e for e in elsewhere if e["id"] in gone)
    r = j.run("restore", victim["entry"], "--json", other_ipc=True)
    assert r.returncode == 1 and r.stdout == ""
    assert "is pending" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert rows().keys() == present  # the refused restore made nothing here either

    if settle_by == "reap":
        # The next reap settles first, logging each removal the killed run made (again
        # if it had logged it: a line twice beats a removal unsaid), then reaps the rest.
        r = j.run(*REAP)
        assert r.returncode == 0, r.stderr
        settled = re.findall(r"^action=removed id=(\d+) .*reason=\"settled after an "
                             r"interrupted run: [^\"]+\"$", r.stdout, re.M)  # fmt: skip
        assert sorted(map(int, settled)) == sorted(gone)
        # The settled, then the rest, the one the kill caught locked at its last instant
        # too: the reap puts its mode back (the lock's note) before it surveys.
        assert rows() == {}
        assert sorted(removed_in(r.stdout)) == sorted(made)
    else:
        # quarantine list alone settles nothing (its output is no log): all pending.
        entries, _ = j.entries(settle=False)
        assert {e["status"] for e in entries} == {"pending"}
        entries, notes = j.entries()  # a reap that removes nothing (min-age 1d) settles
        settled = re.findall(r"^(?:shmjanitor: note: )?action=removed id=(\d+) .*reason=\"settled "
                             r"after an interrupted run: [^\"]+\"$", notes, re.M)  # fmt: skip
        assert sorted(map(int, settled)) == sorted(gone)
        assert f"settled quarantine run {index.stem}: {len(gone)} entries" in notes
        assert {e["id"] for e in entries} == gone
    entries, _ = j.entries()
    assert all(e["status"] == "removed" for e in entries)
    removed = check_settled(j, made, entries, set())
    assert removed == (made.keys() if settle_by == "reap" else gone)
    restore_sample(j, made, entries, rng)


@contextlib.contextmanager
def holding_reaper_lock(j: Janitor) -> Iterator[None]:
    """Hold the reaper lock (in the commands' /run): a reap started meanwhile waits for
    it before it surveys, so the test decides the instant its survey starts."""
    fd = os.open(j.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def waiting_on_lock(pid: int, lock: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd).endswith(lock.name) for fd in fds.iterdir())
    return False


@pytest.mark.parametrize("same_second", [False, True], ids=["later-second", "same-second"])
def test_killed_between_lock_and_rmid_gets_its_mode_back(tmp_path: Path, same_second: bool
                                                         ) -> None:  # fmt: skip
    """The last-instant lock sets a segment's mode to 000 just before IPC_RMID; a run
    killed right then leaves it so. The next command puts the mode back, drops the
    entry (the segment was not removed), and the next reap removes it and can restore it.

    IPC_SET sets ctime to now in seconds (ipc/shm.c, shmctl_down): in the same second
    as the ctime the scan saw, it does not move it. `same_second` makes that happen."""
    from shmjanitor import kernel

    rng = random.Random(7)
    j = Janitor(tmp_path)
    made: dict[int, Seg] = {}
    for attempt in range(5):
        out, err = tmp_path / f"out{attempt}.log", tmp_path / f"err{attempt}.log"
        segs = [Seg(100 * (i + 1), rng.choice((0o640, 0o604, 0o600)), next(_keys),
                    data=os.urandom(50)) for i in range(20)]  # fmt: skip
        batch = make_orphans(segs, made)
        order = [i for i in rows() if i in batch]  # the reap's order: the table's
        victim = order[5]
        if not same_second:
            time.sleep(1.1)  # its lock comes in a later second than its ctime
            p = j.start(*REAP, out=out, err=err, trap=kill_at_rmid(victim))
        else:
            with holding_reaper_lock(j):  # the reaper waits on it, started and ready
                p = j.start(*REAP, out=out, err=err, trap=kill_at_rmid(victim))
                while not waiting_on_lock(p.pid, j.lock_path):
                    assert p.poll() is None, err.read_text()
                    time.sleep(0.01)
                # A second that just began (and a few clock ticks into it: ctime is the
                # kernel's coarse clock, a tick behind), which becomes their ctime (an
                # IPC_SET of the same mode): the reaper's lock comes within it.
                time.sleep(1.02 - time.time() % 1)
                for i in order:
                    kernel.shm_stat(i)
                    kernel.set_mode_after_stat(i, made[i].mode)
        born = column("ctime")[victim]
        assert p.wait(timeout=60) == -signal.SIGSYS  # killed by the filter, not by us
        if (column("ctime")[victim] == born) == same_second:
            break
        # Too slow to lock it within the second of its ctime: clear, and again.
        for i in rows():
            sysv_ipc.remove_shared_memory(i)
        for i in batch:
            del made[i]
        assert j.run("quarantine", "purge", "--all").returncode == 0
    else:
        pytest.fail("could not make the lock land in the wanted second in 5 tries")
    assert perms()[victim] == 0  # locked, not removed: the state a kill leaves
    assert removed_in(out.read_text()) == order[:5]

    entries, notes = j.entries()
    assert perms()[victim] == made[victim].mode, "the lock's mode 000 was left in place"
    assert victim not in {e["id"] for e in entries}
    assert {e["id"] for e in entries} == set(order[:5])
    assert "settled quarantine run" in notes
    check_settled(j, made, entries, set())

    r = j.run(*REAP)
    assert r.returncode == 0, r.stderr
    assert removed_in(r.stdout) == order[5:]
    entries, _ = j.entries()
    check_settled(j, made, entries, set())
    (e,) = [e for e in entries if e["id"] == victim]
    assert e["mode"] == made[victim].mode
    r = j.run("restore", e["entry"], "--json")
    assert r.returncode == 0, r.stderr
    back = json.loads(r.stdout)["id"]
    assert perms()[back] == made[victim].mode and content(back) == made[victim].content()


# --- Thirty-odd kills at random moments ---------------------------------------------------

# Scale, for ~90 s on a 2-core machine that other work shares. A reap surveys and copies
# every segment present before it removes any (~0.6 ms a segment here; more when the disk
# is busy), and a command starts in ~0.4-0.7 s. With N = 2000 a run takes ~1.5-2 s to its
# first removal, so 32 kills take ~60 s. Each run has 1000 to 2000 segments to do
# (refilled below N / 2), most of them small (sizes log-uniform: many segments, few
# bytes to copy). The settles run in-process (no start-up), and the quarantine is purged
# after every few checks (its bytes were verified), so that reading every index, which
# every command does, does not grow with the runs.
N = 2000
KILLS = 32  # kills that land while the reap runs (the issue asks for 30 or more)
PURGE_EVERY = 6  # checks
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def test_kills_at_random_moments_leave_a_true_quarantine(tmp_path: Path) -> None:
    """Kill reaps over thousands of segments at random moments with SIGINT, SIGTERM or
    SIGKILL; after each settle (by the next reap), the quarantine and the logs tell the
    truth (see check_settled). SHMJANITOR_KILL_SEED=n replays the same choices."""
    from segments import cli

    seed = int(os.environ.get("SHMJANITOR_KILL_SEED") or random.randrange(1 << 30))
    print(f"SHMJANITOR_KILL_SEED={seed}")  # pytest shows it when the test fails
    rng = random.Random(seed)
    j = Janitor(tmp_path)
    made: dict[int, Seg] = {}  # segments made whose entries (if any) are not purged
    purged = 0  # segments removed, checked, and their entries purged
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    verified: set[str] = set()
    to_first = 0.0  # seconds from a start to its first removal, as last seen
    kills: list[str] = []  # how each landed kill ended its run, for a failure message
    landed = {s: 0 for s in SIGNALS}
    run = checks = 0
    while sum(landed.values()) < KILLS:
        run += 1
        assert run <= 3 * KILLS, f"too few kills landed during a run: {kills} (seed {seed})"
        present = set(rows())
        if len(present) < N // 2:  # every run has thousands to do
            make_orphans(random_segs(N - len(present), rng), made)
            present = set(rows())
        sig = rng.choice(SIGNALS)
        offset = out.stat().st_size if out.exists() else 0
        err_at = err.stat().st_size if err.exists() else 0
        t0 = time.monotonic()
        p = j.start(*REAP, out=out, err=err)
        if not to_first or rng.random() < 2 / 3:
            # In the removal phase or as it ends: once k removals are logged (a timer
            # would seldom hit it: it is ~0.3 s of a run that copies for seconds).
            if wait_removals(p, out, offset, 1):
                to_first = time.monotonic() - t0
            k = rng.randint(1, len(present))
            wait_removals(p, out, offset, k)
            moment = f"after {k}/{len(present)} removals"
        else:
            # Anywhere before the removals: start-up, survey, copies, the commit.
            delay = rng.uniform(0, to_first * 1.1)
            while p.poll() is None and time.monotonic() < t0 + delay:
                time.sleep(0.001)
            moment = f"at {delay:.2f} s"
        p.send_signal(sig)
        rc = p.wait(timeout=120)
        if rc == 0:
            continue  # it had finished: not a kill during a run
        name = signal.Signals(sig).name
        kills.append(f"{name} {moment}: rc {rc}")
        landed[sig] += 1
        said = tail(out, offset).splitlines()
        if rc == 128 + sig:
            # The handler stopped it after the current segment, and it said so last. (A
            # SIGINT before the command began is a silent 130 too: typer turns the
            # KeyboardInterrupt into one. Then it said nothing.)
            last = said[-1] if said else f"summary interrupted={name}"
            assert last.startswith("summary ") and last.endswith(f" interrupted={name}"), last
        elif rc == 1 and sig == signal.SIGINT and not said:
            # Python's own start-up, before the main module runs, exits 1 on a SIGINT.
            assert "KeyboardInterrupt" in tail(err, err_at), kills[-1]
        else:  # killed: by SIGKILL, or by SIGTERM before its handler was set
            assert rc == -sig, kills[-1]
        # Most kills are checked at once; one in four is settled by the next reap
        # instead, which may itself be killed while it settles.
        if rng.random() < 1 / 4 and sum(landed.values()) < KILLS:
            continue
        # A reap settles (in a process of its own: it must take the reaper lock the
        # killed run held, in the commands' /run, and read the note it left there).
        entries, _ = j.entries()
        try:
            gone = check_settled(j, made, entries, verified)
        except AssertionError as e:
            raise AssertionError(f"after {kills[-1]} (seed {seed}; kills: {kills}): {e}") from e
        checks += 1
        if checks % PURGE_EVERY == 0 and sum(landed.values()) < KILLS:
            r = cli("quarantine", "purge", "--all", "--state-dir", str(j.state))
            assert r.exit_code == 0, r.output
            for i in gone:
                del made[i]
            purged += len(gone)
            verified.clear()

    # The last state: every stored byte once more, and a few restored through the CLI.
    entries, _ = j.entries()
    if not entries:
        # Every run since the last purge was killed before its copies were committed (a
        # loaded machine makes that likely): one reap let run to its end gives the
        # restores below their entries, and is checked with the rest.
        if len(rows()) < N // 2:
            make_orphans(random_segs(N - len(rows()), rng), made)
        p = j.run(*REAP)
        assert p.returncode == 0, p.stderr
        entries, _ = j.entries()
    removed = check_settled(j, made, entries, set())
    assert purged + len(removed) > N, f"only {purged + len(removed)} removed in {run} runs"
    assert all(landed.values()), landed
    restore_sample(j, made, entries, rng)
    print(
        f"seed {seed}: {purged + len(made)} segments made, {purged + len(removed)} removed, "
        f"{len(kills)} kills in {run} runs: {landed}"
    )


def test_killed_between_final_index_and_journal_delete_leaves_no_journal(tmp_path: Path) -> None:
    """A run killed after it wrote its final index (every entry decided) but before it
    deleted its journal: the next command deletes the journal; every entry stands."""
    j = Janitor(tmp_path)
    made = make_orphans(random_segs(20, random.Random(3)), {})
    p = j.start(*REAP, out=tmp_path / "out.log", err=tmp_path / "err.log",
                trap=kill_at_first_unlink())  # fmt: skip
    assert p.wait(timeout=60) == -signal.SIGSYS
    assert rows() == {}
    (index,) = (j.state / "quarantine").glob("*.json")
    assert {e["status"] for e in json.loads(index.read_text())["entries"]} == {"removed"}
    assert j.leftovers() == [index.with_suffix(".journal").name]  # the state the kill left

    entries, _ = j.entries()
    assert j.leftovers() == [], "the journal of a finished run was left behind"
    assert check_settled(j, made, entries, set()) == made.keys()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_while_copying_removes_nothing_and_leaves_nothing(tmp_path: Path, sig: int
                                                                  ) -> None:  # fmt: skip
    """Stopped while it copies (before its index is written), a reap has removed
    nothing: SIGTERM ends it cleanly, and what a SIGKILL leaves (the copies' .data.tmp)
    is deleted by the next command. No entry, every segment as it was."""
    j = Janitor(tmp_path)
    made = make_orphans(random_segs(2000, random.Random(sig)), {})
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    p = j.start(*REAP, out=out, err=err)
    q = j.state / "quarantine"

    def copying() -> bool:  # copies are being written, and no index yet
        with contextlib.suppress(OSError):
            return any(f.stat().st_size for f in q.glob("*.data.tmp"))
        return False

    deadline = time.monotonic() + 120
    while not copying():
        assert p.poll() is None and time.monotonic() < deadline, "no copy seen being made"
        time.sleep(0.001)
    p.send_signal(sig)
    assert p.wait(timeout=60) in (-signal.SIGKILL, 128 + signal.SIGTERM)
    assert perms() == {i: s.mode for i, s in made.items()}  # nothing removed, modes as made
    if sig == signal.SIGKILL:
        assert [f.suffixes[-2:] for f in q.iterdir() if f.name != ".lock"] == [
            [".data", ".tmp"]
        ]  # the state left
    else:
        summary = out.read_text().splitlines()[-1]
        assert summary.startswith("summary dry_run=false considered=2000 removed=0 "), summary
        assert [f.name for f in q.iterdir()] == [".lock"]  # the run dropped its own files
    entries, notes = j.entries()
    assert entries == [] and [f.name for f in q.iterdir()] == [".lock"]
    assert ("left by a run that died" in notes) == (sig == signal.SIGKILL)


def test_a_reap_that_settles_a_locked_segment_does_not_save_the_locks_mode(tmp_path: Path
                                                                            ) -> None:  # fmt: skip
    """Run A is killed at its last instant (the victim's mode is 000); run B waits for
    the reaper lock meanwhile. Holding it, B first puts the victim's mode back (the
    lock's note names it) and settles A's run, and only then surveys: it sees the true
    mode, so the copy it saves and the segment a restore makes have the true mode, not
    the lock's 000 (a survey before the repair would have saved 000)."""
    rng = random.Random(11)
    j = Janitor(tmp_path)
    made: dict[int, Seg] = {}
    lock = j.lock_path
    segs = [Seg(100 * (i + 1), rng.choice((0o640, 0o604, 0o600)), 0,
                data=os.urandom(50)) for i in range(20)]  # fmt: skip
    batch = make_orphans(segs, made)
    order = [i for i in rows() if i in batch]
    victim = order[5]
    logs = [tmp_path / f"{n}.log" for n in ("a_out", "a_err", "b_out", "b_err")]
    with holding_reaper_lock(j):  # both wait for it; B is stopped, so A goes first
        a = j.start(*REAP, out=logs[0], err=logs[1], trap=kill_at_rmid(victim))
        b = j.start(*REAP, out=logs[2], err=logs[3])
        while not (waiting_on_lock(a.pid, lock) and waiting_on_lock(b.pid, lock)):
            assert a.poll() is None and b.poll() is None
            time.sleep(0.01)
        b.send_signal(signal.SIGSTOP)
        time.sleep(1.02 - time.time() % 1)  # early in a second: the repair lands in it
    assert a.wait(timeout=60) == -signal.SIGSYS
    assert perms()[victim] == 0  # A left it locked
    b.send_signal(signal.SIGCONT)  # it takes the lock A's death freed
    assert b.wait(timeout=60) == 0, logs[3].read_text()
    assert "its mode" in logs[3].read_text() and "put back" in logs[3].read_text()
    assert rows() == {}  # B removed all, the victim too, once its mode was back
    assert set(removed_in(logs[2].read_text())) == set(order)
    entries, _ = j.entries()
    assert check_settled(j, made, entries, set()) == made.keys()
    (e,) = [e for e in entries if e["id"] == victim and e["status"] == "removed"
            and e["mode"] == made[victim].mode]  # fmt: skip
    r = j.run("restore", e["entry"], "--json")
    assert r.returncode == 0, r.stderr
    back = json.loads(r.stdout)["id"]
    assert perms()[back] == made[victim].mode and content(back) == made[victim].content()
