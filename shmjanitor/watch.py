"""`shmjanitor watch`: remember the makers of objects that an hourly run never sees alive.

A program that makes a segment and exits within the hour is gone when the timer's `list`
or `reap` looks: its cpid names nobody. `watch` polls the kernel's tables every few
seconds and writes each NEW object's creator and last user, while they live, into the
history store (history.watched), where `list`, `reap` and `leaks` read them.

Cheap on purpose (the cost is measured in the README): a poll reads
/proc/sysvipc/{shm,sem,msg} as text and lists /dev/shm and /dev/mqueue (names and inode
numbers from getdents, no stat), and compares them with the last poll. A table whose
text is the same as last time holds the same objects (its ids are in it): nothing else
is done for it. Only objects new since the last poll are parsed by their kind's reader
and looked up: a segment's cpid and lpid; a set's last operators (GETPID, one semctl per
semaphore of a new set); a queue's lspid and lrpid; a POSIX file's holders (one holders
pass over /proc, only in a poll that found a new file; a file's owner is not a process,
and the owner's other processes are not its maker). No classify, no holders pass for
what is already known. A poll with nothing new or gone writes nothing.

The first poll sees every object as new: it records them as a `list` would (the store
keeps what earlier runs knew). SIGTERM and SIGINT end the loop between polls: exit 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any, Callable, Optional

from shmjanitor import history, posixfs
from shmjanitor.holders import Holdings
from shmjanitor.holders import scan as holders_scan
from shmjanitor.sysvtable import PROC_SYSVIPC, unsigned_key

SYSV = ("shm", "sem", "msg")
POSIX_DIRS = (posixfs.SHM_DIR, posixfs.MQUEUE_DIR)

Token = tuple[str, str]  # a System V row's (key, id) as the table prints them


def parse_interval(text: str) -> float:
    """Seconds between polls: "5s", "0.2s", "500ms", "1m", "2". ValueError otherwise."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 0.001
    elif t.endswith("s"):
        t = t[:-1]
    elif t.endswith("m"):
        t, scale = t[:-1], 60.0
    try:
        seconds = float(t) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not an interval: use e.g. 5s, 0.5s, 500ms, 1m") from None
    if not 0 < seconds <= 86400:
        raise ValueError(f"{text!r}: the interval must be above 0 and at most a day")
    return seconds


def tokens(text: str) -> dict[Token, str]:
    """(key, id) of each row of a /proc/sysvipc table -> its line. Pure. The header is
    skipped; a blank line is not a row. Two fields split per row, no int(): the cheap
    path of every poll whose table changed."""
    out: dict[Token, str] = {}
    for line in text.splitlines()[1:]:
        f = line.split(None, 2)
        if len(f) >= 2:
            out[(f[0], f[1])] = line
    return out


class SysvTable:
    """One table's last text and rows, and what changed in a new read."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.text: Optional[str] = None
        self.rows: dict[Token, str] = {}

    def poll(self) -> tuple[list[Any], list[history.Ident]]:
        """(the kind's objects new since the last poll, idents of those gone)."""
        try:
            text = self.path.read_text("ascii")
        except (OSError, UnicodeDecodeError):
            return [], []  # no System V IPC here, or unreadable now: nothing learnt
        if text == self.text:
            return [], []  # the same ids (and everything else): nothing new
        self.text = text
        rows = tokens(text)
        added = [rows[t] for t in rows.keys() - self.rows.keys()]
        gone: list[history.Ident] = [(self.kind, int(i), unsigned_key(int(k)), None)
                                     for k, i in self.rows.keys() - rows.keys()]  # fmt: skip
        self.rows = rows
        if not added:
            return [], gone
        from shmjanitor import kinds

        head = text.split("\n", 1)[0]
        kind: Any = kinds.of(self.kind)
        found = kind.parse("\n".join([head, *added]) + "\n", str(self.path))
        if self.kind == "sem":
            found = kind.with_facts(found)  # GETPID of the new sets only
        return found, gone


def witnesses(o: Any) -> tuple[list[int], list[int]]:
    """(pids to record as its creator, as its last user) of a new object: what the
    kernel names (history._witness keeps only those alive). Pure."""
    kind = o.kind
    if kind == "shm":
        return ([o.cpid] if o.cpid > 0 else []), ([o.lpid] if o.lpid > 0 else [])
    if kind == "sem":
        ops = list(o.operators) if o.sempid is not None else []
        return ops[:1], ops[-1:]
    if kind == "msg":
        pids = [p for p in (o.lspid, o.lrpid) if p > 0]
        return pids[:1], pids[-1:]
    pids = sorted({h.pid for h in o.holders})  # POSIX: who holds it now
    return pids[:1], pids[-1:]


class PosixDir:
    """One directory's last names and inodes, and what changed in a new listing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: set[tuple[str, int]] = set()

    def poll(self) -> tuple[Optional[int], list[posixfs.Entry], list[history.Ident]]:
        """(st_dev, the new regular files stat'ed, idents of those gone)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None, [], []  # no /dev/mqueue mounted: no queues
        try:
            with os.scandir(fd) as it:
                now = {(e.name, e.inode()) for e in it}  # getdents: no stat per file
            added = now - self.seen
            gone_names = self.seen - now
            self.seen = now
            new: list[posixfs.Entry] = []
            dev = os.fstat(fd).st_dev if added else None
            for name, _ in added:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue  # gone again already
                if S_ISREG(st.st_mode) and st.st_dev == dev:  # posixfs.is_object
                    new.append(posixfs.Entry(name, st))
        finally:
            os.close(fd)
        gone: list[history.Ident] = [
            (_posix_kind(self.path, name), ino, 0, os.fsencode(f"{self.path}/{name}"))
            for name, ino in gone_names]  # fmt: skip
        return dev, new, gone


def _posix_kind(path: str, name: str) -> str:
    if path == posixfs.MQUEUE_DIR:
        return "posix-mqueue"
    return "posix-sem" if name.startswith(posixfs.SEM_PREFIX) else "posix-shm"


_CLASSES = {"posix-shm": posixfs.PosixShm, "posix-sem": posixfs.PosixSem,
            "posix-mqueue": posixfs.PosixMqueue}  # fmt: skip


def posix_objects(found: dict[str, tuple[int, list[posixfs.Entry]]],
                  scan: Callable[[set[int]], Holdings] = holders_scan) -> list[Any]:  # fmt: skip
    """The new files as their kinds' objects, with their holders: posixfs.objects over a
    snapshot of just these files and one holders pass (`scan`) for their devices."""
    h = scan({dev for dev, _ in found.values()})
    snap = posixfs.Snapshot({d: es for d, (_, es) in found.items()}, h, {}, {},
                            lambda uid: None)  # fmt: skip
    out: list[Any] = []
    for d, (_, entries) in found.items():
        for kind in {_posix_kind(d, e.name) for e in entries}:
            names = {e.name for e in entries if _posix_kind(d, e.name) == kind}
            out.extend(posixfs.objects(_CLASSES[kind], d, names.__contains__, snap))
    return out


class Watcher:
    """The poll loop's state: each table's and directory's last view."""

    def __init__(self, state_dir: Path, note: Callable[[str], None],
                 proc_sysvipc: Path = PROC_SYSVIPC,
                 posix_dirs: Sequence[str] = POSIX_DIRS) -> None:  # fmt: skip
        self.state_dir = state_dir
        self.note = note
        self.tables = [SysvTable(k, proc_sysvipc / k) for k in SYSV]
        self.dirs = [PosixDir(d) for d in posix_dirs]
        self.last: Optional[float] = None  # the last poll's time (history's clock)

    def poll(self) -> int:
        """One poll; the number of new objects recorded."""
        new: list[Any] = []
        gone: list[history.Ident] = []
        for t in self.tables:
            n, g = t.poll()
            new.extend(n)
            gone.extend(g)
        files: dict[str, tuple[int, list[posixfs.Entry]]] = {}
        for d in self.dirs:
            dev, entries, g = d.poll()
            gone.extend(g)
            if dev is not None and entries:
                files[d.path] = (dev, entries)
        if files:
            new.extend(posix_objects(files))
        history.watched([(o, *witnesses(o)) for o in new], gone, self.last, self.state_dir,
                        self.note)  # fmt: skip
        self.last = history.now()
        return len(new)


def run(state_dir: Path, interval: float, note: Callable[[str], None]) -> int:
    """Poll until SIGTERM or SIGINT; exit status 0."""
    stop = threading.Event()

    def ask_stop(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, ask_stop)
    said: set[str] = set()

    def once(text: str) -> None:  # a store that cannot be written: said once, not each poll
        if text not in said:
            said.add(text)
            note(text)

    w = Watcher(state_dir, once)
    while not stop.is_set():
        started = time.monotonic()
        w.poll()
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return 0
