"""The history store: who made each object, remembered after they exit (issue 15).

A process that leaks an object is usually gone by the time anybody looks: the kernel
keeps its pid (cpid, sempid, lspid), which names nobody once it exits and may name
somebody else later. Every `list` and `reap` already looks up each live party of each
object; this module writes down what it saw, in SQLite (the standard library's sqlite3)
at STATE_DIR/history.sqlite3, so that a later run can say "made by `python3 train.py`
(alice, session-3.scope), first seen 3d ago" and `leaks` can rank the programs.

Tables (one row per thing, written only when new or changed; a kind whose objects are as
the last run left them, none used by a live process, is not even read back: a digest of
its objects says so, and a run over 32,000 unchanged leaks costs 1.01x a list without
history, benchmarks/bench.py --only history):

  runs     one per run: when, which command, which IPC namespace
  procs    each process seen alive as a party or holder: (boot id, pid, start ticks)
           names it exactly (a pid is reused, its start time in one boot is not), with
           its command line, executable, user and systemd unit or container (the last
           component of its cgroup v2 path, /proc/PID/cgroup)
  objects  each object seen: namespace, kind, id, key or path, size, owner; first seen,
           gone (first run that missed it) and last seen (the run before), orphan since,
           its creator and its last user as seen alive, its removal (when, by which
           run, quarantined or not) and restoration

Its "creator" is the kind's creator field where the kernel keeps one (a segment's cpid,
recorded whenever it is seen alive); for the other kinds, whose tables keep no creator
(a set's sempid, a queue's lspid, a POSIX file's holders), the first live party or
holder at the run that first saw the object, never a later one (a later party is a
user, not its maker): the best witness there is, said as "made by" all the same.

Concurrency: WAL (readers never wait for the writer) and a busy timeout; each run writes
in one BEGIN IMMEDIATE transaction, so two runs at once take turns and lose nothing.
A corrupt database is renamed aside (history.sqlite3.corrupt-YYYYmmddTHHMMSS) and
rebuilt; one that cannot be written (a read-only state directory, a non-root user
without one) is skipped: the run goes on without history and says so once on stderr.

The clock: $SHMJANITOR_NOW (epoch seconds) replaces the wall clock of this module, for
tests that script a week in seconds. Nothing else reads it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Optional

from shmjanitor.classify import State, Verdict

FILE = "history.sqlite3"
NOW_ENV = "SHMJANITOR_NOW"  # tests only: the clock of the history (epoch seconds)
BUSY_MS = 10_000  # a run waits this long for another run's transaction
DEFAULT_MAX_AGE = 90 * 86400  # rows of objects gone this long ago are pruned
PRUNE_EVERY = 3600  # pruning is a scan: at most once an hour

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, at REAL NOT NULL,
    command TEXT NOT NULL, ns TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS procs(id INTEGER PRIMARY KEY, boot TEXT NOT NULL,
    pid INTEGER NOT NULL, start INTEGER NOT NULL, command TEXT, exe TEXT, uid INTEGER,
    user TEXT, unit TEXT, seen_at REAL NOT NULL, UNIQUE(boot, pid, start));
CREATE TABLE IF NOT EXISTS objects(id INTEGER PRIMARY KEY, ns TEXT NOT NULL,
    kind TEXT NOT NULL, objid INTEGER NOT NULL, key INTEGER NOT NULL, path BLOB,
    size INTEGER NOT NULL, uid INTEGER NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL, gone_at REAL, orphan_at REAL, creator INTEGER REFERENCES procs,
    last_user INTEGER REFERENCES procs, removed_at REAL, removed_run INTEGER,
    quarantined INTEGER, restored_at REAL);
-- The live objects of a kind (a run's read), and one by its ident (removed, restored,
-- look_up): without it each of a reap's 32,000 removals scanned every live row of its
-- kind (32,000 x 32,000).
CREATE INDEX IF NOT EXISTS objects_ident ON objects(ns, kind, objid) WHERE gone_at IS NULL;
-- The rows to prune (gone_at < cutoff); a live row (NULL) is in no such index, so a
-- new object costs it nothing.
CREATE INDEX IF NOT EXISTS objects_gone_at ON objects(gone_at) WHERE gone_at IS NOT NULL;
-- Each index costs every insert and every removal: objects_ident answers what these
-- two did (a store made before this release has them).
DROP INDEX IF EXISTS objects_live;
DROP INDEX IF EXISTS objects_gone;
CREATE INDEX IF NOT EXISTS objects_made ON objects(ns, kind)
    WHERE gone_at IS NULL AND creator IS NOT NULL;
"""


def now() -> float:
    """The history's clock: the wall clock, or $SHMJANITOR_NOW in tests."""
    text = os.environ.get(NOW_ENV)
    if text:
        try:
            return float(text)
        except ValueError:
            pass
    return time.time()


class MadeBy(NamedTuple):
    """Who made an object, as recorded while they lived."""

    command: Optional[str]
    exe: Optional[str]
    user: Optional[str]
    unit: Optional[str]
    seen_at: float  # when that process was recorded alive with the object
    first_seen: float  # when the object was first seen
    orphan_at: Optional[float]  # first run that found it an orphan

    def as_json(self) -> dict[str, Any]:
        return {"command": self.command, "exe": self.exe, "user": self.user,
                "unit": self.unit, "seen_at": self.seen_at}  # fmt: skip

    def said(self, at: float) -> str:
        """'made by `python3 train.py` (alice, session-3.scope), first seen 3d ago,
        orphan since 2h'."""
        from shmjanitor.durations import format_age

        who = ", ".join(x for x in (self.user, self.unit) if x)
        text = f"made by `{self.command or self.exe or '?'}`" + (f" ({who})" if who else "")
        text += f", first seen {format_age(at - self.first_seen)} ago"
        if self.orphan_at is not None:
            text += f", orphan since {format_age(at - self.orphan_at)}"
        return text


Ident = tuple[str, int, int, Optional[bytes]]  # kind, id, key, path (POSIX) or None


def ident(o: Any) -> Ident:
    """What names one object among those alive: its kind, id (a POSIX file's inode),
    key and, for a POSIX object, its path (a file made again under a name is another
    inode). An id the kernel hands out again later is a new object: a row is matched
    only among objects not yet gone."""
    path = getattr(o, "path", None)
    # bytes, as the file system has them: a name is any bytes (a str of them holds
    # surrogates, which sqlite cannot store as text)
    return (o.kind, o.id, o.key, None if path is None else os.fsencode(path))


# --------------------------------------------------------------- process facts


class ProcFacts(NamedTuple):
    start: int  # starttime of /proc/PID/stat: clock ticks after boot
    command: Optional[str]
    exe: Optional[str]
    uid: Optional[int]
    unit: Optional[str]


def start_ticks(pid: int, proc: str = "/proc") -> Optional[int]:
    """Field 22 of /proc/PID/stat (after the command name, which may hold spaces and
    parentheses: split after the last ')'); None when the process is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def unit_of(cgroup: str) -> Optional[str]:
    """The systemd unit or container of a process from /proc/PID/cgroup: the last
    component of its cgroup v2 path ("0::/user.slice/user-1000.slice/session-3.scope"
    -> "session-3.scope", a container's "docker-<id>.scope" or "machine-x.scope");
    under cgroup v1, the name=systemd hierarchy's. None at the root."""
    chosen = None
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[0] == "0" or parts[1] == "name=systemd"):
            chosen = parts[2]
            if parts[0] == "0":
                break
    if not chosen:
        return None
    last = chosen.rstrip("/").rsplit("/", 1)[-1]
    return last or None


def read_proc(pid: int, proc: str = "/proc") -> Optional[ProcFacts]:
    """What to remember of a live process; None when it is gone. Start read first and
    again last: if it changed, the pid was reused while we read, and nothing is kept."""
    from shmjanitor.listing import cmdline
    from shmjanitor.text import printable

    start = start_ticks(pid, proc)
    if start is None:
        return None
    base = f"{proc}/{pid}"
    try:
        exe: Optional[str] = printable(os.readlink(f"{base}/exe"))
    except OSError:
        exe = None  # another user's without CAP_SYS_PTRACE, a kernel thread
    try:
        uid: Optional[int] = os.stat(base).st_uid
    except OSError:
        uid = None
    try:
        with open(f"{base}/cgroup", encoding="utf-8", errors="replace") as f:
            unit = unit_of(f.read())
    except OSError:
        unit = None
    command = cmdline(pid, Path(proc))
    if start_ticks(pid, proc) != start:
        return None
    return ProcFacts(start, command, exe, uid, unit)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "?"


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/ipc")
    except OSError:
        return "?"


def witnesses(v: Verdict) -> tuple[list[int], list[int]]:
    """The live pids that may be recorded for `v`: (as its creator, as its last user).

    A segment's creator only from cpid, alive; the other kinds' from their first live
    party or holder (their tables keep no creator). The last user: the last live party
    (lpid, the last operator or receiver) or holder."""
    o = v.segment
    live = []
    creator = v.creator
    if creator.alive and creator.pid > 0:
        live.append(creator.pid)
    last = v.last_user
    if last is not None and last.alive and last.pid > 0 and last.pid not in live:
        live.append(last.pid)
    for h in getattr(o, "holders", ()):
        if h.pid not in live:
            live.append(h.pid)
    if o.kind == "shm":
        return ([creator.pid] if creator.alive and creator.pid > 0 else []), live[-1:]
    return live[:1], live[-1:]


# --------------------------------------------------------------------- the store


def path_for(state_dir: Path) -> Path:
    return state_dir / FILE


class Unusable(Exception):
    """The store cannot be used this run: the message says why, once."""


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=BUSY_MS / 1000, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            # A new file: its switch to WAL writes the header under a rollback journal
            # kept in memory, not a -journal file made and unlinked (a reap's unlinks
            # are its own: tests stop it at its first).
            db.execute("PRAGMA journal_mode=MEMORY")
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("cannot use WAL")
        # Never fsync: a run's close checkpoints the WAL, and its fsync cost more than
        # the whole recording (list at 32,000 segments: 1.22x with NORMAL, 1.01x
        # without). What a power cut may cost is the last runs' rows, or a file found
        # corrupt next time: set aside and made anew (_write), as any other.
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def corrupt(e: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT and SQLITE_NOTADB are raised as DatabaseError itself; a locked,
    read-only or missing file as one of its subclasses (OperationalError, ...)."""
    return type(e) is sqlite3.DatabaseError


def _set_aside(path: Path, at: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):  # the old file's journal must not meet the new one
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def _writable(state_dir: Path) -> None:
    """The state directory, made 0700 if missing; refused unless it is a directory of
    ours that nobody else may write (sqlite follows symlinks: another user able to put
    one there would have root write where they choose)."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = state_dir.lstat()
    except OSError as e:
        raise Unusable(f"{state_dir}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise Unusable(f"{state_dir}: not a directory of ours that only we may write")
    if not os.access(state_dir, os.W_OK):
        raise Unusable(f"{state_dir}: not writable")
    try:  # made 0600 before sqlite opens it: it holds other users' command lines
        os.close(os.open(path_for(state_dir), os.O_CREAT | os.O_NOFOLLOW | os.O_WRONLY, 0o600))
    except OSError as e:
        raise Unusable(f"{path_for(state_dir)}: {e.strerror}") from None


_open: dict[Path, sqlite3.Connection] = {}  # this process's connections, by file


def forget() -> None:
    """Close this process's connections to the store. Kept open until then (or exit):
    closing the last connection checkpoints the WAL and deletes it, an unlink in the
    middle of a reap's own file operations; once, at exit, is enough."""
    while _open:
        _open.popitem()[1].close()


def _write(state_dir: Path, note: Callable[[str], None], at: float,
           work: Callable[[sqlite3.Connection], Any]) -> Any:  # fmt: skip
    """Run `work` in one transaction of the store in `state_dir`, made if need be. A
    corrupt file is set aside (said with `note`) and `work` done again on a new one.
    Unusable: the directory or the file cannot be written, or the store is busy."""
    _writable(state_dir)
    path = path_for(state_dir)
    for attempt in (1, 2):
        db = _open.pop(path, None)
        try:
            if db is None:
                db = _connect(path)
            with db:
                db.execute("BEGIN IMMEDIATE")  # one writer at a time: others wait
                done = work(db)
            if not _open:
                atexit.register(forget)
            _open[path] = db
            return done
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            if not corrupt(e) or attempt == 2:
                raise Unusable(f"{path}: {e}") from None
            try:
                aside = _set_aside(path, at)
            except OSError as e2:
                raise Unusable(f"{path}: {e}; cannot set it aside: {e2.strerror}") from None
            note(f"history {path} was unreadable ({e}): set aside as {aside.name}, "
                 "started anew")  # fmt: skip
    raise AssertionError("unreachable")


class Seen(NamedTuple):
    """What a run recorded: each object's record of its maker (ident -> MadeBy)."""

    made_by: dict[Ident, MadeBy]
    run: Optional[int]
    # The row of each object this run read or wrote (a kind skipped by its digest: none),
    # for `removed` to mark by row id rather than look each one up by its ident.
    rows: Mapping[Ident, int] = MappingProxyType({})


_last: dict[Ident, MadeBy] = {}  # the last run's, for made_by()


def made_by(obj: Any) -> Optional[dict[str, Any]]:
    """Who made `obj`, as this process's last recorded run found it: the JSON object
    {"command", "exe", "user", "unit", "seen_at"}, or None (never seen alive)."""
    m = _last.get(ident(obj))
    return None if m is None else m.as_json()


def read_only_uri(path: Path) -> str:
    """The URI that opens the store read-only. The path is %-escaped: a state directory
    may hold "?", "#" or "%", which a URI would read as its own. (A reader of a WAL
    database may still make SQLite's -wal and -shm side files beside it, in the state
    directory, when the last writer removed them: the database itself is not written.)"""
    from urllib.parse import quote

    return f"file:{quote(str(path))}?mode=ro"


def look_up(obj: Any, state_dir: Path) -> Optional[MadeBy]:
    """Who made `obj`, read from the store without writing to it (explain changes no
    row): None when the store is absent or unusable, or its maker was never seen."""
    path = path_for(state_dir)
    if not path.is_file():
        return None
    kind, objid, key, where = ident(obj)
    query = _MADE + " AND o.objid = ? AND o.key = ? AND o.path IS ?"
    try:
        db = sqlite3.connect(read_only_uri(path), uri=True, timeout=BUSY_MS / 1000)
        try:
            r = db.execute(query, (_namespace(), kind, objid, key, where)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None  # a damaged store: list and reap set it aside; explain only reads
    return None if r is None else MadeBy(r[3], r[4], r[5], r[6], r[7], r[8], r[9])


def nothing() -> Seen:
    """A run that records nothing (a dry run): no maker known, not even a past run's."""
    _last.clear()
    return Seen({}, None)


def said(obj: Any) -> Optional[str]:
    """made_by(obj) in words ("made by `cmd` (user, unit), first seen 3d ago, ...")."""
    m = _last.get(ident(obj))
    return None if m is None else m.said(now())


def record(verdicts: Sequence[Verdict], kinds: Iterable[str], command: str,
           state_dir: Path, note: Callable[[str], None],
           max_age: int = DEFAULT_MAX_AGE) -> Seen:  # fmt: skip
    """Write down what a survey saw; never raises for a store it cannot use (says so
    with `note` and records nothing)."""
    at = now()
    chosen = tuple(kinds)
    try:
        seen: Seen = _write(state_dir, note, at,
                            lambda db: _record(db, verdicts, chosen, command, at, max_age))  # fmt: skip
    except Unusable as e:
        note(f"history not recorded: {e}")
        return Seen({}, None)
    global _last
    _last = seen.made_by
    return seen


_INSERT = ("INSERT INTO objects(ns, kind, objid, key, path, size, uid, first_seen, orphan_at)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")  # fmt: skip
# The same, with the row id chosen by the run (_record: max(id) + 1 on, in its transaction)
_INSERT_ROW = ("INSERT INTO objects(id, ns, kind, objid, key, path, size, uid, first_seen,"
               " orphan_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")  # fmt: skip
# What a run compares, of each object alive at the last run: as few columns as that needs
# (32,000 rows are read every run), the last user's pid to tell a new one.
_LIVE = """SELECT o.id, o.objid, o.key, o.path, o.size, o.uid, o.orphan_at, o.creator, lu.pid
    FROM objects o LEFT JOIN procs lu ON lu.id = o.last_user
    WHERE o.ns = ? AND o.kind = ? AND o.gone_at IS NULL"""
# Who made them, of those whose maker is known (objects_made: only those rows are read).
_MADE = """SELECT o.objid, o.key, o.path, c.command, c.exe, c.user, c.unit, c.seen_at,
    o.first_seen, o.orphan_at FROM objects o JOIN procs c ON c.id = o.creator
    WHERE o.ns = ? AND o.kind = ? AND o.gone_at IS NULL AND o.creator IS NOT NULL"""


def _digest(verdicts: Sequence[Verdict]) -> tuple[str, bool]:
    """A digest of what a run compares of these objects (which exist, their size and
    owner, which are orphans), and whether none has a live party or holder to record
    (every one an orphan or unknown). Python's hash of a tuple of ints is the same in
    every process (only str hashes are salted); a POSIX object's path goes to blake2b."""
    ORPHAN, UNKNOWN = State.ORPHAN, State.UNKNOWN
    quiet = True
    facts = []
    paths = []
    for v in verdicts:
        o = v.segment
        state = v.state
        if state is not ORPHAN and state is not UNKNOWN:
            quiet = False
        facts.append((o.id, o.key, o.size, o.uid, state is ORPHAN))
        path = getattr(o, "path", None)
        if path is not None:
            paths.append(os.fsencode(path))
    named = ""
    if paths:
        import hashlib

        named = hashlib.blake2b(b"\0".join(paths)).hexdigest()
    return f"{len(facts)} {hash(tuple(facts)):x} {named}", quiet


def _record(db: sqlite3.Connection, verdicts: Sequence[Verdict], kinds: tuple[str, ...],
            command: str, at: float, max_age: int) -> Seen:  # fmt: skip
    ns = _namespace()
    prev = db.execute("SELECT max(at) FROM runs WHERE ns = ?", (ns,)).fetchone()[0]
    run = db.execute("INSERT INTO runs(at, command, ns) VALUES (?, ?, ?)",
                     (at, command, ns)).lastrowid  # fmt: skip
    # A kind whose objects are as the last run left them (same digest) and that no
    # live process uses is not read back: an hourly run over 32,000 leaked segments
    # then costs a digest, not 32,000 rows read and compared.
    by_kind: dict[str, list[Verdict]] = {kind: [] for kind in kinds}
    for v in verdicts:
        by_kind[v.segment.kind].append(v)
    verdicts = []
    digests = []
    stored: dict[Ident, tuple[Any, ...]] = {}
    for kind, vs in by_kind.items():
        digest, quiet = _digest(vs)
        name = f"digest {ns} {kind}"
        last = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if quiet and last is not None and last[0] == digest:
            continue
        digests.append((name, digest))
        verdicts.extend(vs)
        for row in db.execute(_LIVE, (ns, kind)):
            stored[(kind, row[1], row[2], row[3])] = row
    # Each new row's id is ours to choose: BEGIN IMMEDIATE (_write) keeps every other
    # writer out until we commit, so max(id) + 1 on are free. Then every row of this run
    # is known by id (Seen.rows) without inserting the rows one by one.
    next_id = db.execute("SELECT coalesce(max(id), 0) + 1 FROM objects").fetchone()[0]
    ids: dict[Ident, int] = {}
    new: list[tuple[Any, ...]] = []
    changed: list[tuple[Any, ...]] = []
    orphaned: list[tuple[float, int]] = []
    wanted: list[tuple[int, list[int], list[int]]] = []
    pop = stored.pop
    ORPHAN, UNKNOWN = State.ORPHAN, State.UNKNOWN
    for v in verdicts:
        o = v.segment
        path = getattr(o, "path", None)  # ident(o), inlined: 32,000 calls a run
        key = (o.kind, o.id, o.key, None if path is None else os.fsencode(path))
        row = pop(key, None)
        state = v.state
        if row is None:
            c, lu = witnesses(v)
            orphan_at = at if state is ORPHAN else None
            ids[key] = next_id
            new.append((next_id, ns, o.kind, o.id, o.key, key[3], o.size, o.uid, at, orphan_at))
            if c or lu:
                wanted.append((next_id, c, lu))
            next_id += 1
            continue
        ids[key] = row[0]
        if row[4] != o.size or row[5] != o.uid:
            changed.append((o.size, o.uid, row[0]))
        if state is ORPHAN:
            if row[6] is None:
                orphaned.append((at, row[0]))
        elif state is not UNKNOWN:
            c, lu = witnesses(v)
            # Seen before without a creator: only a segment's cpid may still name it
            # (a later party of another kind is a user, not its maker).
            c = c if row[7] is None and o.kind == "shm" else []
            if c or (lu and lu[0] != row[8]):
                wanted.append((row[0], c, lu))
    db.executemany(_INSERT_ROW, new)
    db.executemany("UPDATE objects SET size = ?, uid = ? WHERE id = ?", changed)
    db.executemany("UPDATE objects SET orphan_at = ? WHERE id = ?", orphaned)
    if stored:  # not in this survey of their kinds: gone since the previous run
        db.executemany("UPDATE objects SET gone_at = ?, last_seen = ? WHERE id = ?",
                       [(at, prev, row[0]) for row in stored.values()])  # fmt: skip
    if wanted:
        _witness(db, wanted, at)
    db.executemany("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", digests)
    if max_age > 0:
        _prune(db, at, max_age)
    made: dict[Ident, MadeBy] = {}
    for kind in kinds:
        for r in db.execute(_MADE, (ns, kind)):
            made[(kind, r[0], r[1], r[2])] = MadeBy(r[3], r[4], r[5], r[6], r[7], r[8], r[9])
    return Seen(made, run, ids)


def _witness(db: sqlite3.Connection, wanted: list[tuple[int, list[int], list[int]]],
             at: float) -> None:  # fmt: skip
    """Record the live creators and last users of objects (row id, creator pids, last
    user pids): each pid read and looked up once."""
    from shmjanitor.accounts import owner_name

    boot = _boot_id()
    ids: dict[int, Optional[int]] = {}  # pid -> procs.id (None: gone meanwhile)

    def proc_id(pid: int) -> Optional[int]:
        if pid in ids:
            return ids[pid]
        facts = read_proc(pid)
        found: Optional[int] = None
        if facts is not None:
            row = db.execute("SELECT id FROM procs WHERE boot = ? AND pid = ? AND start = ?",
                             (boot, pid, facts.start)).fetchone()  # fmt: skip
            if row is not None:
                found = row[0]
            else:
                user = None if facts.uid is None else owner_name(facts.uid)
                found = db.execute(
                    "INSERT INTO procs(boot, pid, start, command, exe, uid, user, unit, "
                    "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (boot, pid, facts.start, facts.command, facts.exe, facts.uid, user,
                     facts.unit, at)).lastrowid  # fmt: skip
        ids[pid] = found
        return found

    for oid, creators, users in wanted:
        for pid in creators:
            p = proc_id(pid)
            if p is not None:
                db.execute("UPDATE objects SET creator = ? WHERE id = ? AND creator IS NULL",
                           (p, oid))  # fmt: skip
        for pid in users:
            p = proc_id(pid)
            if p is not None:
                db.execute("UPDATE objects SET last_user = ? WHERE id = ?", (p, oid))


def watched(new: Sequence[tuple[Any, list[int], list[int]]], gone: Sequence[Ident],
            last_seen: Optional[float], state_dir: Path,
            note: Callable[[str], None]) -> None:  # fmt: skip
    """What one poll of `watch` found: objects new since its last poll, each with the
    pids to record as its creator and as its last user (recorded only if alive now), and
    the idents of those gone since (`last_seen`: that last poll). Nothing to write, no
    transaction. Never raises for a store it cannot use (says so with `note`)."""
    if not new and not gone:
        return
    at = now()
    try:
        _write(state_dir, note, at, lambda db: _watched(db, new, gone, at, last_seen))
    except Unusable as e:
        note(f"history not recorded: {e}")


def _watched(db: sqlite3.Connection, new: Sequence[tuple[Any, list[int], list[int]]],
             gone: Sequence[Ident], at: float, last_seen: Optional[float]) -> None:  # fmt: skip
    ns = _namespace()
    # The live rows of the kinds concerned, read once (objects_ident): a poll that finds
    # 32,000 new objects must not look each one up by a scan of the others.
    kinds = {o.kind for o, _, _ in new} | {g[0] for g in gone}
    live: dict[Ident, tuple[int, Optional[int]]] = {}
    for kind in kinds:
        for r in db.execute("SELECT id, objid, key, path, creator FROM objects WHERE ns = ?"
                            " AND kind = ? AND gone_at IS NULL", (ns, kind)):  # fmt: skip
            live[(kind, r[1], r[2], r[3])] = (r[0], r[4])
    wanted: list[tuple[int, list[int], list[int]]] = []
    for o, c, lu in new:
        key = ident(o)
        row = live.get(key)
        if row is None:
            oid = db.execute(_INSERT, (ns, *key, o.size, o.uid, at, None)).lastrowid
            assert oid is not None
        else:
            # Known to a run before: as _record, only a segment's cpid may still name
            # its maker (another kind's party seen later is a user, not its maker).
            oid = row[0]
            c = c if row[1] is None and o.kind == "shm" else []
        if c or lu:
            wanted.append((oid, c, lu))
    if wanted:
        _witness(db, wanted, at)
    ended = [(at, last_seen, live[g][0]) for g in gone if g in live]
    db.executemany("UPDATE objects SET gone_at = ?, last_seen = ? WHERE id = ?", ended)


def _prune(db: sqlite3.Connection, at: float, max_age: int) -> None:
    """Rows of objects gone more than `max_age` ago, runs as old, and processes no
    object names any more: at most once per PRUNE_EVERY (a scan of the tables)."""
    last = db.execute("SELECT value FROM meta WHERE name = 'pruned_at'").fetchone()
    if last is not None and at - float(last[0]) < PRUNE_EVERY:
        return
    cutoff = at - max_age
    db.execute("DELETE FROM objects WHERE gone_at < ?", (cutoff,))
    db.execute("DELETE FROM runs WHERE at < ?", (cutoff,))
    db.execute(
        "DELETE FROM procs WHERE seen_at < ? AND id NOT IN (SELECT creator FROM objects "
        "WHERE creator IS NOT NULL) AND id NOT IN (SELECT last_user FROM objects WHERE "
        "last_user IS NOT NULL)", (cutoff,))  # fmt: skip
    db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('pruned_at', ?)", (str(at),))


def row_runs(rows: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(first, last, value) of each run of consecutive row ids with the same value, from
    (row, value) pairs: every id from first to last is one of `rows`. A reap removes
    the objects its own record just numbered one after another (_record), so its
    32,000 removals are one run, one UPDATE, not 32,000. Pure."""
    out: list[tuple[int, int, int]] = []
    for row, value in sorted(set(rows)):
        if out and out[-1][1] == row - 1 and out[-1][2] == value:
            out[-1] = (out[-1][0], row, value)
        else:
            out.append((row, row, value))
    return out


def removed(objs: Sequence[tuple[Any, bool]], run: Optional[int], state_dir: Path,
            note: Callable[[str], None], rows: Mapping[Ident, int] = MappingProxyType({})
            ) -> None:  # fmt: skip
    """Record removals: (object, whether a copy went to the quarantine) each. `rows`
    (Seen.rows): the row of an object by its ident, when the run knows it; others are
    looked up by ident."""
    if not objs or run is None:
        return
    at = now()
    ns = _namespace()
    known: list[tuple[int, int]] = []  # (row, quarantined)
    by_ident = []
    for o, q in objs:
        i = ident(o)
        row = rows.get(i)
        if row is None:
            by_ident.append((at, run, int(q), at, at, ns, *i))
        else:
            known.append((row, int(q)))
    set_ = ("UPDATE objects SET removed_at = ?, removed_run = ?, quarantined = ?,"
            " gone_at = ?, last_seen = ?")  # fmt: skip
    # A row gone since (pruned, or marked gone by another run) is left as it is, either way.
    sql_rows = f"{set_} WHERE id BETWEEN ? AND ? AND gone_at IS NULL"
    sql_ident = (f"{set_} WHERE ns = ? AND kind = ? AND objid = ? AND key = ? AND path IS ?"
                 " AND gone_at IS NULL")  # fmt: skip
    by_rows = [(at, run, q, at, at, first, last) for first, last, q in row_runs(known)]

    def work(db: sqlite3.Connection) -> None:
        # sqlite, 32,000 removals: by ident 0.38 s, by id one at a time 0.19 s
        db.executemany(sql_rows, by_rows)
        db.executemany(sql_ident, by_ident)

    try:
        _write(state_dir, note, at, work)
    except Unusable as e:
        note(f"history not recorded: {e}")


def restored(kind: str, objid: int, key: int, path: Optional[str], state_dir: Path,
             note: Callable[[str], None]) -> None:  # fmt: skip
    """Mark the latest removal of this object restored (`restore`)."""
    at = now()
    sql = (
        "UPDATE objects SET restored_at = ? WHERE id = (SELECT id FROM objects WHERE "
        "kind = ? AND objid = ? AND key = ? AND path IS ? AND removed_at IS NOT NULL AND "
        "restored_at IS NULL ORDER BY removed_at DESC LIMIT 1)"
    )
    try:
        name = None if path is None else os.fsencode(path)
        _write(state_dir, note, at, lambda db: db.execute(sql, (at, kind, objid, key, name)))
    except Unusable as e:
        note(f"history not recorded: {e}")


# -------------------------------------------------------------------------- leaks


BY = {"command": "coalesce(c.command, c.exe)", "user": "c.user", "unit": "c.unit"}


class Leak(NamedTuple):
    """One program (or user, or unit) and what it left over a period."""

    who: Optional[str]
    leaked: int  # objects it made that were found orphans in the period
    leaked_bytes: int
    removed: int  # of its objects, removed in the period
    removed_bytes: int
    restored: int


def leaks(state_dir: Path, since: float, by: str, at: float) -> list[Leak]:
    """The makers of objects found orphaned, removed or restored since `since`, most
    objects leaked first (then bytes, then name). Objects with no recorded maker are
    one row, who None. Raises Unusable when there is no store to read."""
    path = path_for(state_dir)
    if not path.exists():
        raise Unusable(f"{path}: no history yet (list and reap record it)")
    try:
        db = sqlite3.connect(read_only_uri(path), uri=True, timeout=BUSY_MS / 1000)
    except sqlite3.DatabaseError as e:
        raise Unusable(f"{path}: {e}") from None
    group = BY[by]
    query = f"""SELECT {group},
        sum(o.orphan_at BETWEEN :s AND :t), sum(CASE WHEN o.orphan_at BETWEEN :s AND :t
            THEN o.size ELSE 0 END),
        sum(o.removed_at BETWEEN :s AND :t), sum(CASE WHEN o.removed_at BETWEEN :s AND :t
            THEN o.size ELSE 0 END),
        sum(o.restored_at BETWEEN :s AND :t)
        FROM objects o LEFT JOIN procs c ON c.id = o.creator
        WHERE o.orphan_at BETWEEN :s AND :t OR o.removed_at BETWEEN :s AND :t
            OR o.restored_at BETWEEN :s AND :t
        GROUP BY 1"""
    try:
        rows = db.execute(query, {"s": since, "t": at}).fetchall()
    except sqlite3.DatabaseError as e:
        raise Unusable(f"{path}: {e}") from None
    finally:
        db.close()
    out = [Leak(r[0], *(int(x or 0) for x in r[1:])) for r in rows]
    out.sort(key=lambda x: (-x.leaked, -x.leaked_bytes, -x.removed, x.who is None, x.who or ""))
    return out
