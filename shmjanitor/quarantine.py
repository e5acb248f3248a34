"""The quarantine: a durable copy of every IPC object before it is removed, and an index
that tells the truth at every instant, even when a run is killed. Kind-blind: an
entry's "kind" (absent: "shm", as every entry written before there were kinds) names
the kind module that saved it (kinds.Kind: record, check_record, same, restore).

Layout under the state directory (0700, created by us; files 0600, owned by us):

    quarantine/<run>.data.tmp  the copies while a run makes them (flock held by the run)
    quarantine/<run>.data      the copies, back to back (zlib, only the bytes that exist)
    quarantine/<run>.json      the run's index: metadata, extents, crc32, status
    quarantine/<run>.journal   one line per object removed, appended as each goes
    quarantine/<name>.damaged  an index or data file that failed its checks, set aside

A run's lifecycle (remove.execute drives it):

1. copies stream into `.data.tmp`; no object has been removed yet;
2. commit: fsync the data, rename it, write the index with every entry `pending`
   (write-ahead: nothing is removed before this is durable);
3. each removal appends the entry's number to `.journal` right after IPC_RMID;
4. finish: the index is rewritten with `removed` entries only; the journal goes.

An entry is restorable only when its status is `removed`. A run that died between 2
and 4 still holds `pending` entries: the next reap or rm settles it (`settle`, under the
reaper lock, in its log): in the same boot and IPC namespace, an entry whose object is
still there (same kind and id, and k.same: a segment's key and creator) was not
removed, and is dropped (the mode our last-instant lock may have left is put back from
the lock's note, remove.undo_left_lock); one whose object is gone is `removed` if the
journal or the lock's note names it, else its owner removed it and the entry is
dropped. After a reboot every object of the old boot is gone, so every pending entry
is `removed`. A run in another IPC namespace is
left pending (not restorable) until settled there. tidy, settle, restore and purge
work under the store's own flock (`.lock`).
Temporary files of dead runs (their flock is free) are deleted; an index or data file
that fails its checks is renamed `.damaged`, reported, and never blocks the rest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union

from shmjanitor import kinds
from shmjanitor.classify import Verdict
from shmjanitor.config import Config
from shmjanitor.durations import format_size
from shmjanitor.errors import JanitorError, SaveFailed, StateDirError
from shmjanitor.lock import ipc_namespace
from shmjanitor.paths import default_state_dir
from shmjanitor.remove import LEGACY_KIND, parse_lock_note
from shmjanitor.render import json_int, json_string

VERSION = 2
PENDING, REMOVED = "pending", "removed"


class RestoreError(JanitorError):
    exit_code = 1


class Damaged(Exception):
    """An index or data file that fails its checks (a message says which)."""


def store_for(cfg: Config, state_dir: Optional[Path] = None,
              note: Optional[Callable[[str], None]] = None) -> Store:  # fmt: skip
    """The quarantine a command uses: --state-dir, else config state_dir, else default."""
    return Store(state_dir or cfg.state_dir or default_state_dir(), cfg, note)


def _check_dir(path: Path, st: os.stat_result, private: bool) -> None:
    """A directory we trust: a real directory (no symlink), ours, that nobody else can
    write into (and, for the quarantine itself, nobody else can read)."""
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path}: not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"state directory {path}: owned by uid {st.st_uid}, not by us (uid "
            f"{os.geteuid()}); use a directory of our own (--state-dir)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (0o077 if private else 0o022):
        # Never chmod it: a directory others could write may already hold their files
        # (issue 10: a planted index was trusted), and a directory we did not make may
        # be someone's (--state-dir /var/lib once made /var/lib/postgresql unreadable).
        need = "0700" if private else "not writable by group or others"
        raise StateDirError(
            f"state directory {path}: mode {mode:04o} is too open (must be {need}); "
            f"check nobody else's files are in it, then chmod {'700' if private else 'go-w'} "
            f"{path}"
        )


def _private_dir(path: Path, private: bool = True) -> Path:
    """Create `path` 0700 (and missing parents, 0700), or check an existing one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        try:
            path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        except OSError as e:
            raise StateDirError(f"state directory {path}: {e.strerror}") from None
        try:
            st = path.lstat()
        except OSError as e:
            raise StateDirError(f"state directory {path}: {e.strerror}") from None
    except OSError as e:
        raise StateDirError(f"state directory {path}: {e.strerror}") from None
    _check_dir(path, st, private)
    return path


def _open_trusted(path: Path, flags: int = os.O_RDONLY) -> int:
    """Open a file of ours: never through a symlink, only a regular file that we own and
    nobody else may write. Raises Damaged for anything else, OSError as the kernel says."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Damaged(f"{path.name}: not a regular file")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise Damaged(
                f"{path.name}: owned by uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):04o}, "
                "not a file this program wrote"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_trusted(path: Path) -> bytes:
    fd = _open_trusted(path)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    """Atomically: temp file, fsync, rename, fsync the directory. Cleans up on failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# --- The index: checked on the way in, written by hand on the way out --------------------

# Every kind's entries have these; its own members are its kind's (check_record).
_INT_FIELDS = ("n", "id", "key", "size", "mode", "uid", "gid", "cuid", "cgid", "removed_at",
               "offset", "length", "crc32")  # fmt: skip


# The kernel's key_t, uid_t and gid_t are 32 bits: restore would pass another number
# (a key cut to its low bits, IPC_PRIVATE even) or fail to pack it at all.
_U32_FIELDS = ("key", "uid", "gid", "cuid", "cgid")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entry(e: Any, version: int) -> None:
    if not isinstance(e, dict):
        raise Damaged("an entry is not an object")
    for name in _INT_FIELDS:
        if not _is_int(e.get(name)) or e[name] < 0:
            raise Damaged(f"entry {e.get('n')!r}: {name} missing or not a whole number")
    for name in _U32_FIELDS:
        if e[name] > 0xFFFFFFFF:
            raise Damaged(f"entry {e['n']}: {name} {e[name]} does not fit the kernel's 32 bits")
    # Every kind records its permission bits alone (_entry_head: perms): more would be a
    # setuid, setgid or sticky bit restore would set (or a number fchmod cannot take).
    if e["mode"] > 0o777:
        raise Damaged(f"entry {e['n']}: mode {e['mode']:o} is more than permission bits")
    kind = e.get("kind", LEGACY_KIND)
    if kind not in kinds.names() or (version == 1 and kind != LEGACY_KIND):
        raise Damaged(f"entry {e['n']}: unknown kind {kind!r}")
    why = kinds.of(kind).check_record(e)
    if why is not None:
        raise Damaged(f"entry {e['n']}: {why}")
    for name in ("restored_as", "restored_at"):
        if e.get(name) is not None and not _is_int(e[name]):
            raise Damaged(f"entry {e['n']}: {name} is not a whole number")
    if not isinstance(e.get("reason"), str):
        raise Damaged(f"entry {e['n']}: reason missing")
    if version == 1:  # written by shmjanitor 0.1: "removed" true, or null while running
        if e.get("encoding") not in ("zero", "zlib"):
            raise Damaged(f"entry {e['n']}: unknown encoding {e.get('encoding')!r}")
        e["status"] = REMOVED if e.get("removed") is True else PENDING
        e["extents"] = [] if e["encoding"] == "zero" else [[0, e["size"]]]
        return
    if e.get("encoding") != "extents" or e.get("status") not in (PENDING, REMOVED):
        raise Damaged(f"entry {e['n']}: unknown encoding or status")
    ext = e.get("extents")
    bound = kinds.of(kind).data_size(e)  # the object's data the extents lie in
    if not isinstance(ext, list) or not all(
        isinstance(x, list) and len(x) == 2 and all(_is_int(v) and v >= 0 for v in x)
        and x[0] + x[1] <= bound
        for x in ext
    ):  # fmt: skip
        raise Damaged(f"entry {e['n']}: extents are not [offset, length] pairs in the object")


def check_index(doc: Any) -> dict[str, Any]:
    """The index document if it is one this program could have written; else Damaged."""
    if not isinstance(doc, dict):
        raise Damaged("the index is not a JSON object")
    version = doc.get("version")
    if version not in (1, VERSION):
        raise Damaged(f"unknown index version {version!r}")
    if not isinstance(doc.get("run"), str) or not _is_int(doc.get("created_at")):
        raise Damaged("run name or created_at missing")
    if not isinstance(doc.get("entries"), list):
        raise Damaged("entries missing")
    for e in doc["entries"]:
        _check_entry(e, version)
    return doc


def entry_path(doc: dict[str, Any]) -> Optional[str]:
    """Where a POSIX object's entry was (its kind's record: dir and name), else None."""
    return f"{doc['dir']}/{doc['name']}" if "name" in doc and "dir" in doc else None


def kind_of_entry(doc: dict[str, Any]) -> kinds.Kind:
    """The kind module of an entry (checked by check_index: a registered kind)."""
    return kinds.of(doc.get("kind", LEGACY_KIND))


def _kind_member(kind: str) -> str:
    """'"kind": "sem", ' for an entry; nothing for a segment's (see _entry_head)."""
    return "" if kind == LEGACY_KIND else f'"kind": {json_string(kind)}, '


def _entry_head(n: int, v: Verdict, removed_at: int, reason: str, extents: list[tuple[int, int]],
                offset: int, length: int, crc32: int) -> str:  # fmt: skip
    """An index entry's JSON up to and including '"status": ' (by hand: a reap writes
    32,000 of these; json.dumps of a dict costs ~4 us more an entry). A segment's entry
    has no "kind", as before there were kinds: an index stays readable by them, byte
    for byte the same."""
    s = v.obj
    kind = s.kind
    ext = ", ".join(f"[{o}, {n}]" for o, n in extents)
    return (
        f'{{"n": {n}, {_kind_member(kind)}"id": {s.id}, "key": {s.key}, "size": {s.size}, '
        f'"mode": {s.perms}, "uid": {s.uid}, "gid": {s.gid}, "cuid": {s.cuid}, '
        f'"cgid": {s.cgid}, {kinds.of(kind).record(s)}, '
        f'"creator": {json_string(v.creator.name)}, '
        f'"removed_at": {removed_at}, "reason": {json_string(reason)}, '
        f'"encoding": "extents", "extents": [{ext}], "offset": {offset}, '
        f'"length": {length}, "crc32": {crc32}, "status": '
    )


_TAIL = {PENDING: '"pending", "restored_as": null, "restored_at": null}',
         REMOVED: '"removed", "restored_as": null, "restored_at": null}'}  # fmt: skip


class Entry(NamedTuple):
    run: str
    doc: dict[str, Any]  # the entry's record in the run's index

    @property
    def name(self) -> str:
        return f"{self.run}.{self.doc['n']}"

    @property
    def digest(self) -> str:
        """A handle to type instead of the name (31+ characters): hex of a hash of the
        name, which any unique prefix of SHORT or more stands for (as git's ids)."""
        return hashlib.sha256(self.name.encode()).hexdigest()


SHORT = 6  # hex digits of a digest shown at least, and typed at least


def short_names(entries: list[Entry]) -> dict[str, str]:
    """Each entry's name -> the shortest prefix of its digest, SHORT digits or more,
    that no other entry's digest starts with."""
    digests = sorted((e.digest, e.name) for e in entries)
    out = {}
    for i, (d, name) in enumerate(digests):
        n = SHORT
        for j in (i - 1, i + 1):  # in sorted order, the longest common prefix is a neighbour's
            if 0 <= j < len(digests):
                other = digests[j][0]
                common = next((k for k in range(len(d)) if d[k] != other[k]), len(d))
                n = max(n, common + 1)
        out[name] = d[:n]
    return out


class Store:
    """The quarantine directory of one state dir, with the config's limits.

    `notes` collects what a command should tell its user about the store itself: runs
    pruned, runs settled after an interruption, files set aside as damaged.
    """

    def __init__(self, state_dir: Path, cfg: Config, note: Optional[Callable[[str], None]] = None
                 ) -> None:  # fmt: skip
        self.dir = state_dir / "quarantine"
        self.state_dir = state_dir
        self.cfg = cfg
        self.notes: list[str] = []
        self._note_cb = note

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self._note_cb is not None:
            self._note_cb(text)

    def ensure(self) -> Path:
        _private_dir(self.state_dir, private=False)
        return _private_dir(self.dir)

    def exists(self) -> bool:
        """Whether there is a quarantine to read; its directory is checked if there is."""
        try:
            st = self.dir.lstat()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StateDirError(f"state directory {self.dir}: {e.strerror}") from None
        _check_dir(self.dir, st, private=True)
        return True

    def _names(self, suffix: str) -> list[str]:
        return sorted(p.name[: -len(suffix)] for p in self.dir.iterdir()
                      if p.name.endswith(suffix))  # fmt: skip

    def runs(self) -> list[str]:
        """Runs with an index, oldest first (run names start with a UTC timestamp)."""
        return self._names(".json") if self.exists() else []

    def load(self, run: str) -> dict[str, Any]:
        """A run's index, checked; Damaged when it is not one we wrote."""
        try:
            raw = _read_trusted(self.dir / f"{run}.json")
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise Damaged(f"{run}.json: not JSON ({e})") from None
        except OSError as e:
            raise Damaged(f"{run}.json: {e.strerror}") from None
        return check_index(doc)

    def set_aside(self, run: str, why: str) -> None:
        """Rename a damaged run's files to *.damaged: reported, kept for a person to look
        at, counted in the budget, purged with the rest; never read again."""
        for suffix in (".json", ".data", ".journal"):
            p = self.dir / f"{run}{suffix}"
            if p.exists() or p.is_symlink():
                with contextlib.suppress(OSError):
                    os.replace(p, p.with_name(p.name + ".damaged"))
        self.note(f"quarantine run {run} is damaged ({why}); set aside as {run}.*.damaged")

    def index(self, run: str) -> dict[str, Any]:
        try:
            return self.load(run)
        except Damaged as e:
            raise StateDirError(f"quarantine index {run}.json: {e}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The store's own lock (flock on quarantine/.lock): tidy, settle, restore and
        purge read, decide and rewrite indexes under it, so none of them deletes or
        overwrites what another is writing. A run's own files are guarded by the flock
        on its data file instead (a run writes only its own)."""
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def tidy(self, settle_runs: bool = False, locked: str = "") -> None:
        """Delete temporary files of dead runs, set damaged runs aside, and (`settle_runs`:
        reap and rm, whose log is the record) settle runs that were interrupted. Nothing
        here may stop a command: a store that cannot be written (a read-only mount) is
        said in a note and left as it is."""
        if not self.exists():
            return
        try:
            with self.locked():
                self._tidy(settle_runs, locked)
        except OSError as e:
            self.note(f"quarantine {self.dir} left as it is: {e.strerror or e}")

    def _tidy(self, settle_runs: bool, locked: str) -> None:
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp") and _owner_is_gone(p):
                p.unlink(missing_ok=True)
                self.note(f"deleted {p.name}, left by a run that died")
        for run in self._names(".json"):
            try:
                doc = self.load(run)
            except Damaged as e:
                self.set_aside(run, str(e))
                continue
            data = self.dir / f"{run}.data"
            if data.exists() and not _owner_is_gone(data):
                continue  # its run is still going
            if any(e["status"] == PENDING for e in doc["entries"]):
                if settle_runs:
                    settle(self, run, doc, locked)
                continue
            journal = self.dir / f"{run}.journal"
            if journal.exists():
                # Every entry is decided: its run (or a settle) died after writing the
                # final index and before deleting the journal, which says nothing more.
                journal.unlink(missing_ok=True)
        # A data file or journal without its index: the run died before its index was
        # written, so nothing of it was removed; or it was set aside.
        for suffix in (".data", ".journal"):
            for run in self._names(suffix):
                p = self.dir / f"{run}{suffix}"
                if not (self.dir / f"{run}.json").exists() and _owner_is_gone(p):
                    p.unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        for run in self.runs():
            try:
                doc = self.load(run)
            except Damaged:
                continue  # tidy() sets it aside; a read-only look just skips it
            out.extend(Entry(run, e) for e in doc["entries"])
        return out

    def usage(self) -> int:
        """Bytes the quarantine's files take (temporary and damaged ones included)."""
        if not self.dir.is_dir():
            return 0
        total = 0
        for p in self.dir.iterdir():
            with contextlib.suppress(OSError):
                st = p.lstat()
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total

    def drop(self, run: str) -> None:
        for suffix in (".json", ".data", ".journal"):
            (self.dir / f"{run}{suffix}").unlink(missing_ok=True)

    def _created_at(self, run: str) -> Optional[int]:
        try:
            return int(self.load(run)["created_at"])
        except Damaged:
            return None

    def purgeable(self, older_than: Optional[int], now: float) -> tuple[list[str], list[Path]]:
        """The runs created more than `older_than` seconds ago (all runs when None), and
        the set-aside files of that age (all when None): what `purge` drops."""
        runs = []
        for run in self.runs():
            data = self.dir / f"{run}.data"
            if data.exists() and not _owner_is_gone(data):
                continue  # a run still going: it would remove segments whose copies are gone
            created = self._created_at(run)
            if older_than is None or (created is not None and created < now - older_than):
                runs.append(run)
        files = []
        if self.exists():
            for p in self.dir.iterdir():
                if p.name.endswith((".damaged", ".tmp")) and (
                    older_than is None or p.lstat().st_mtime < now - older_than
                ) and (p.name.endswith(".damaged") or _owner_is_gone(p)):  # fmt: skip
                    files.append(p)
        return runs, files

    def purge(self, older_than: Optional[int], now: float) -> list[str]:
        """Drop what `purgeable` names, under the store lock; the runs dropped."""
        if not self.exists():
            return []
        with self.locked():
            runs, files = self.purgeable(older_than, now)
            for run in runs:
                self.drop(run)
            for p in files:
                p.unlink(missing_ok=True)
        return runs

    def drop_entry(self, entry: Entry) -> None:
        """Drop one entry: its run's index is rewritten without it (atomically, as every
        index), or the run goes whole when it was the last. Its bytes stay in the run's
        data file, which goes with the run's last entry. A pending entry is refused: its
        run is still going, or was interrupted and is not settled yet."""
        if entry.doc["status"] != REMOVED:
            raise RestoreError(f"entry {entry.name} is pending: its run is not finished; "
                               "try again once it is")  # fmt: skip
        with self.locked():
            doc = self.index(entry.run)
            doc["entries"] = [e for e in doc["entries"] if e["n"] != entry.doc["n"]]
            if doc["entries"]:
                _write_text(self.dir / f"{entry.run}.json", json.dumps(check_index(doc)))
            else:
                self.drop(entry.run)

    def prune(self, now: float) -> None:
        """Drop runs past quarantine_days, each one said. The budget never evicts a
        younger run: a full quarantine keeps the next segment instead, so one user's
        large leak cannot push another user's copy out early."""
        days = self.cfg.quarantine_days
        for run in self.runs():
            created = self._created_at(run)
            if created is not None and created < now - days * 86400:
                n = len(self.load(run)["entries"])
                self.drop(run)
                self.note(f"pruned quarantine run {run} ({n} entries, older than {days}d)")
        if self.exists():
            for p in self.dir.iterdir():
                if p.name.endswith(".damaged") and p.lstat().st_mtime < now - days * 86400:
                    p.unlink(missing_ok=True)

    def open_batch(self, now: float) -> Batch:
        """A new run. Its caller has tidied (and settled) the store already, under the
        reaper lock (reaping._locked): every index is not read and checked twice."""
        self.ensure()
        self.prune(now)
        with self.locked():  # made and flocked before any tidy() can look at it
            return Batch(self, now)

    def find(self, name: str) -> Entry:
        """The entry called `name`, or whose digest starts with `name` (SHORT hex digits
        or more) when only one does."""
        run, _, n = name.rpartition(".")
        if run and run in self.runs():
            for e in self.index(run)["entries"]:
                if str(e["n"]) == n:
                    return Entry(run, e)
        prefix = name.lower()
        if len(prefix) >= SHORT and all(c in "0123456789abcdef" for c in prefix):
            found = [e for e in self.entries() if e.digest.startswith(prefix)]
            if len(found) == 1:
                return found[0]
            if found:
                raise RestoreError(self._ambiguous(f"entry {name!r}", found))
        raise RestoreError(
            f"no quarantine entry {name!r} in {self.dir}; `shmjanitor quarantine list` "
            "shows the entries"
        )

    def find_by(self, field: str, value: int, said: str, kind: str = LEGACY_KIND) -> Entry:
        """The one entry whose object of `kind` had `field` (id or key) `value` (ids and
        keys are per kind: set 5 is not segment 5). When several did, the one still to
        restore if only one is; else RestoreError naming them."""
        every = [e for e in self.entries() if e.doc[field] == value]
        found = [e for e in every if e.doc.get("kind", LEGACY_KIND) == kind]
        if not found:
            others = sorted({kind_of_entry(e.doc).NOUN for e in every})
            also = f" of a {kinds.of(kind).NOUN} (a {' and a '.join(others)} had it: " \
                "ids and keys are per kind)" if others else ""  # fmt: skip
            raise RestoreError(f"no quarantine entry for {said}{also} in {self.dir}; "
                               "`shmjanitor quarantine list` shows the entries")  # fmt: skip
        if len(found) > 1:
            open_ = [e for e in found
                     if e.doc["status"] == REMOVED and e.doc.get("restored_as") is None]  # fmt: skip
            if len(open_) != 1:
                raise RestoreError(self._ambiguous(said, found))
            found = open_
        return found[0]

    def find_by_path(self, path: str) -> Entry:
        """The one entry of a POSIX object that was at `path` (as find_by: when several
        were, the one still to restore if only one is)."""
        found = [e for e in self.entries() if entry_path(e.doc) == path]
        if not found:
            raise RestoreError(f"no quarantine entry for {path} in {self.dir}; "
                               "`shmjanitor quarantine list` shows the entries")  # fmt: skip
        if len(found) > 1:
            open_ = [e for e in found
                     if e.doc["status"] == REMOVED and e.doc.get("restored_as") is None]  # fmt: skip
            if len(open_) != 1:
                raise RestoreError(self._ambiguous(path, found))
            found = open_
        return found[0]

    def _ambiguous(self, said: str, found: list[Entry]) -> str:
        names = short_names(self.entries())

        def one(e: Entry) -> str:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.doc["removed_at"]))
            done = ", restored" if e.doc.get("restored_as") is not None else ""
            return f"{names[e.name]} (removed {when}{done})"

        listed = ", ".join(one(e) for e in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        return f"{len(found)} quarantine entries match {said}: {listed}{more}; name one of them"

    def read(self, entry: Entry) -> Iterator[tuple[int, bytes]]:
        """The entry's stored bytes as (offset, piece), at most 1 MiB at a time; raises
        RestoreError "damaged" when they do not decompress, are short or long, or do not
        match the crc32 (checked as the last piece is handed out)."""
        e = entry.doc
        damaged = RestoreError(
            f"quarantine entry {entry.name} is damaged (its data is truncated or does not "
            "match its crc32); it cannot be restored"
        )
        extents = [(int(o), int(n)) for o, n in e["extents"]]
        if not extents:
            return
        try:
            fd = _open_trusted(self.dir / f"{entry.run}.data")
        except (OSError, Damaged) as err:
            raise RestoreError(
                f"quarantine entry {entry.name}: data file unusable: {err}"
            ) from None
        with os.fdopen(fd, "rb") as f:
            f.seek(e["offset"])
            stream = _inflate(f, e["length"], damaged)
            crc = 0
            buf = b""
            for off, want in extents:
                while want:
                    if not buf:
                        buf = next(stream, b"")
                        if not buf:
                            raise damaged
                    piece, buf = buf[:want], buf[want:]
                    crc = zlib.crc32(piece, crc)
                    yield off, piece
                    off += len(piece)
                    want -= len(piece)
            if buf or next(stream, b"") or crc != e["crc32"]:
                raise damaged

    def mark_restored(self, entry: Entry, new_id: int, now: float) -> None:
        doc = self.index(entry.run)
        for e in doc["entries"]:
            if e["n"] == entry.doc["n"]:
                e["restored_as"] = new_id
                e["restored_at"] = int(now)
        _write_text(self.dir / f"{entry.run}.json", json.dumps(doc))


def _inflate(f: Any, length: int, damaged: Exception) -> Iterator[bytes]:
    """Decompress `length` bytes of `f`, never more than 1 MiB of output at a time."""
    d = zlib.decompressobj()
    left = length
    raw = b""
    try:
        while True:
            if not raw:
                if not left:
                    break
                raw = f.read(min(left, 1 << 20))
                if not raw:
                    raise damaged  # the data file is shorter than the index says
                left -= len(raw)
            out = d.decompress(raw, 1 << 20)
            raw = d.unconsumed_tail
            if out:
                yield out
        tail = d.flush()
        if tail:
            yield tail
    except zlib.error:
        raise damaged from None
    if not d.eof:
        raise damaged


def _owner_is_gone(path: Path) -> bool:
    """Whether the run that wrote `path` has ended: it holds a flock on its data file for
    as long as it lives (a pid could be reused; a flock dies with its process)."""
    data = path
    for suffix in (".journal", ".json.tmp", ".json"):
        if path.name.endswith(suffix):
            data = path.with_name(path.name[: -len(suffix)] + ".data")
    if path.name.endswith(".data.tmp"):
        data = path
    candidates = [data, data.with_name(data.name + ".tmp")] if data.name.endswith(".data") \
        else [data]  # fmt: skip
    for p in candidates:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return True


def _where() -> str:
    """A run of a sweep's child (-A): the namespace's container and a process in it
    (pid and start time), which restore checks to find that very namespace again."""
    from shmjanitor import namespaces

    ns = namespaces.working
    if ns is None:
        return ""
    start = namespaces.start_time(ns.pid) if ns.pid is not None else None
    return (f'"container": {json_string(ns.container)}, "ns_pid": {json_int(ns.pid)}, '
            f'"ns_pid_start": {json_int(start)}, ')  # fmt: skip


def settle(store: Store, run: str, doc: dict[str, Any], locked: str = "") -> None:
    """Decide every `pending` entry of an interrupted run (see the module docstring).

    `locked` is the reaper lock's note ("KIND ID KEY MODE", lock.Held): the one object
    the run had locked for its last instant, the only one it may have removed without a
    journal line (killed between IPC_RMID and the write)."""
    note = parse_lock_note(locked)
    in_hand = note[:3] if note is not None else None
    here = doc.get("boot_id") == boot_id() and doc.get("ipc_ns") == ipc_namespace()
    rebooted = doc.get("boot_id") not in (None, boot_id())
    if not here and not rebooted:
        store.note(
            f"quarantine run {run} was interrupted in IPC namespace {doc.get('ipc_ns')}; its "
            "pending entries are settled by a shmjanitor run there"
        )
        return
    journal: set[int] = set()
    with contextlib.suppress(OSError, Damaged, ValueError):
        journal = {int(x) for x in _read_trusted(store.dir / f"{run}.journal").split()}
    kept = []
    for e in doc["entries"]:
        if e["status"] != PENDING:
            kept.append(e)
            continue
        kind = e.get("kind", LEGACY_KIND)
        k = kinds.of(kind)
        if rebooted:
            why = "the machine rebooted"
        else:
            try:
                now = k.stat(e["id"])
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.EIDRM):
                    store.note(f"quarantine entry {run}.{e['n']}: cannot settle: {err.strerror}")
                    kept.append(e)
                    continue
                now = None
            if now is not None and k.same(e, now):
                # Still there: the run stopped before removing it. (A mode our last-
                # instant lock left is put back from the reaper lock's note, which
                # names the one object locked: the mode here may be its owner's.)
                continue  # dropped: it was not removed
            if e["n"] in journal:
                why = "removed before the run was stopped"
            elif in_hand == (kind, e["id"], e["key"]):
                why = "removed as the run was stopped"
            else:
                # Gone, but this run never removed it: its owner (or another reaper)
                # did, after we saved it. Not ours to claim or to bring back (the copy
                # is older than the owner's last use): the entry is dropped.
                store.note(
                    f"quarantine entry {run}.{e['n']} dropped: {k.NOUN} {e['id']} was "
                    "removed by another process after it was saved, not by shmjanitor"
                )
                continue
        e["status"] = REMOVED
        kept.append(e)
        if why:  # said even if the run logged it: a line twice beats a removal unsaid
            path = entry_path(e)
            where = "" if path is None else f"path={json_string(path)} "
            store.note(
                f"action=removed id={e['id']} kind={kind} {where}key=0x{e['key']:08x} "
                f"size={e['size']} "
                f'uid={e["uid"]} entry={run}.{e["n"]} reason="settled after an interrupted '
                f'run: {why}"'
            )
    doc["entries"] = kept
    doc["version"] = VERSION if doc.get("version") == VERSION else doc["version"]
    if not kept:
        store.drop(run)
        store.note(f"quarantine run {run} was interrupted before removing anything; dropped")
        return
    _write_text(store.dir / f"{run}.json", json.dumps(doc))
    (store.dir / f"{run}.journal").unlink(missing_ok=True)
    store.note(f"settled quarantine run {run}: {len(kept)} entries removed and restorable")


class _WriteFailed(Exception):
    def __init__(self, err: OSError) -> None:
        self.err = err


class Batch:
    """One run's copies: `save` streams them to disk, `commit` makes them durable before
    anything is removed, `removed` journals each removal, `finish` closes the run."""

    def __init__(self, store: Store, now: float) -> None:
        self.store = store
        self.now = now
        # UTC time to the microsecond, then our pid: names sort by age and do not collide.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        self.run = f"{stamp}.{int(now * 1e6) % 1000000:06d}Z-{os.getpid()}"
        while (store.dir / f"{self.run}.json").exists():
            self.run += "x"
        self.tmp = store.dir / f"{self.run}.data.tmp"
        self.data = store.dir / f"{self.run}.data"
        self._heads: list[str] = []
        self._removed: list[bool] = []
        self.offset = 0
        self.base_usage = store.usage()
        self._journal = -1
        self._free_at: Optional[int] = None  # f_bavail bytes, as of offset _free_offset
        self._free_offset = 0
        self._free_until = 0.0
        # Opened now, before any segment is attached to copy it: a state dir we cannot
        # write fails the run here, with every segment left exactly as it was. The flock
        # says "this run is alive" to tidy() in other processes.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def _free(self) -> int:
        st = os.statvfs(self.store.dir)
        return st.f_bavail * st.f_frsize

    def save(self, v: Verdict, reason: str, copier: Optional[Callable[[Callable[[bytes], None]],
             list[tuple[int, int]]]]) -> Optional[str]:  # fmt: skip
        """Append one copy; a reason when it cannot be kept (budget, free space).

        `copier(write)` hands the object's data to `write` and returns their extents;
        None means its data is known to be empty (remove.known_zero).
        Raises SaveFailed when this copy could not be written (the run goes on), OSError
        when the disk fails us in a way that leaves the file unknown (nothing more is
        removed).
        """
        s = v.obj
        budget = self.store.cfg.quarantine_budget_bytes
        # At most the bytes the object holds are written (compressed, usually far less):
        # checked before anything is read (a segment is not even attached).
        expect = 0 if copier is None else kinds.kind_of(s).save_bound(s)
        if self.base_usage + self.offset + expect > budget and expect:
            return self._full(budget)
        # Never fill the state directory's file system: a user who fills a disk to its
        # reserve and leaks a few segments must not make root write into root's reserved
        # blocks. Only f_bavail counts (what non-root could still write).
        floor = self.store.cfg.quarantine_min_free_bytes
        # statvfs again when a second has passed, 16 MiB were written, or what was
        # written since could have taken it near the floor; not per segment (a reap of
        # 32,000 zero entries asked it 32,000 times: 5% of its time). Others may fill
        # the disk meanwhile: for at most a second, and a write that fails is SaveFailed.
        written = self.offset - self._free_offset
        if (self._free_at is None or written > 16 << 20 or time.monotonic() > self._free_until
                or self._free_at - written - expect < floor):  # fmt: skip
            self._free_at, self._free_offset = self._free(), self.offset
            self._free_until = time.monotonic() + 1.0
        free = self._free_at - (self.offset - self._free_offset)
        if free - expect < floor:
            return (f"not enough free space for its copy in {self.store.dir} "
                    f"({format_size(free)} free, quarantine_min_free_bytes "
                    f"{format_size(floor)} always left)")  # fmt: skip
        start = self.offset
        extents: list[tuple[int, int]] = []
        crc = 0
        if copier is not None:
            comp = zlib.compressobj(1)
            crcs = [0]

            def put(blob: bytes) -> None:
                try:
                    self._write(blob)
                except OSError as e:  # our disk, not the segment: told apart from a read
                    raise _WriteFailed(e) from None

            def write(data: bytes) -> None:
                crcs[0] = zlib.crc32(data, crcs[0])
                put(comp.compress(data))

            try:
                extents = copier(write)
                if extents:
                    put(comp.flush())
            except _WriteFailed as w:
                self._truncate(start)  # raises OSError if it cannot: then the run stops
                raise SaveFailed(w.err.errno, w.err.strerror) from None
            except BaseException:
                with contextlib.suppress(OSError):
                    self._truncate(start)
                raise
            crc = crcs[0]
            if self.base_usage + self.offset > budget:
                self._truncate(start)
                return self._full(budget)
        self._heads.append(_entry_head(len(self._heads), v, int(self.now), reason, extents,
                                       start, self.offset - start, crc))  # fmt: skip
        self._removed.append(False)
        return None

    def _full(self, budget: int) -> str:
        self.store.note(
            f"quarantine budget ({format_size(budget)}) is full: objects are kept until "
            f"older runs expire (quarantine_days) or are purged"
        )
        return f"quarantine budget ({format_size(budget)}) is full: kept"

    def _write(self, blob: bytes) -> None:
        view = memoryview(blob)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.offset += n

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)
        self.offset = size

    @property
    def count(self) -> int:
        return len(self._heads)

    def _index_text(self, only_removed: bool) -> str:
        if only_removed:
            entries = ", ".join(h + _TAIL[REMOVED] for h, r in zip(self._heads, self._removed) if r)
        else:
            entries = ", ".join(h + _TAIL[PENDING] for h in self._heads)
        return (f'{{"version": {VERSION}, "run": {json_string(self.run)}, '
                f'"created_at": {int(self.now)}, "boot_id": {json_string(boot_id())}, '
                f'"ipc_ns": {ipc_namespace()}, "pid": {os.getpid()}, {_where()}'
                f'"entries": [{entries}]}}')  # fmt: skip

    def commit(self) -> None:
        """Make every copy durable, and the index (every entry pending), before anything
        is removed. Raises OSError (after cleaning up)."""
        try:
            os.fsync(self._fd)
            os.replace(self.tmp, self.data)
            _write_text(self.store.dir / f"{self.run}.json", self._index_text(False))
            self._journal = os.open(
                self.store.dir / f"{self.run}.journal",
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError:
            self.abort()
            raise

    def removed(self, n: int) -> None:
        """Entry n's segment was removed (IPC_RMID succeeded): say so on disk at once (one
        write, no fsync: after a power cut the kernel has lost every segment anyway)."""
        self._removed[n] = True
        if self._journal >= 0:
            with contextlib.suppress(OSError):
                os.write(self._journal, b"%d\n" % n)

    def finish(self) -> None:
        """Keep only the entries whose segment was removed; drop the run if none was."""
        try:
            if not any(self._removed):
                self.store.drop(self.run)
                return
            _write_text(self.store.dir / f"{self.run}.json", self._index_text(True))
            (self.store.dir / f"{self.run}.journal").unlink(missing_ok=True)
        finally:
            self._close()

    def _close(self) -> None:
        for fd in (self._journal, self._fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._journal = self._fd = -1

    def abort(self) -> None:
        """Nothing of this run was removed: delete its files, whatever fails on the way."""
        for p in (self.tmp, self.data, self.store.dir / f"{self.run}.json",
                  self.store.dir / f"{self.run}.journal"):  # fmt: skip
            with contextlib.suppress(OSError):
                p.unlink()
        self._close()


def restore(store: Store, which: Union[str, Entry], now: float) -> tuple[int, int]:
    """Recreate an entry (by name, digest prefix, or as found): same key, mode, owner
    and data (its kind's restore). Returns (id, key).

    Only an entry whose object was removed can be restored. A keyed object whose key
    is in use again is refused: two programs would share it. An IPC_PRIVATE one comes
    back under a new id. The entry stays, marked restored.
    """
    store.tidy()
    name = which if isinstance(which, str) else which.name
    if not store.exists():
        store.find(name)  # raises: "no quarantine entry ..."
    with store.locked():  # two restores of one entry: the second sees restored_as
        return _restore(store, name, now)


def _restore(store: Store, name: str, now: float) -> tuple[int, int]:
    entry = store.find(name)  # read again under the lock: another restore may have run
    name = entry.name
    e = entry.doc
    k = kind_of_entry(e)
    if e["status"] != REMOVED:
        raise RestoreError(
            f"entry {name} is pending: its run was interrupted and it is not known yet "
            f"whether its {k.NOUN} was removed; the next `shmjanitor reap` (or the timer's "
            "run) in the IPC namespace where it was made settles it"
        )
    ns = store.load(entry.run).get("ipc_ns")
    if ns is not None and ns != ipc_namespace():
        raise RestoreError(
            f"entry {name} was removed in IPC namespace {ns}, not this one "
            f"({ipc_namespace()}); restore it from inside that namespace "
            "(nsenter --ipc --target PID shmjanitor restore ...)"
        )
    if e.get("restored_as") is not None:
        raise RestoreError(
            f"entry {name} was already restored as id {e['restored_as']}; "
            "`shmjanitor quarantine purge` removes old entries"
        )
    try:
        new_id = k.restore(e, store.read(entry))
    except OSError as err:
        if err.errno == errno.EEXIST and "name" in e:  # a POSIX file: O_CREAT|O_EXCL
            raise RestoreError(
                f"{entry_path(e)} exists now; remove or rename it first, or leave entry "
                f"{name} be (a restore never replaces a file)"
            ) from None
        if err.errno == errno.EEXIST:
            raise RestoreError(
                f"key 0x{e['key']:08x} is in use by another {k.NOUN} now; remove that one "
                f"first (shmjanitor list --json shows it) or leave entry {name} be"
            ) from None
        raise RestoreError(f"cannot restore entry {name}: {err.strerror or err}") from None
    store.mark_restored(entry, new_id, now)
    return new_id, int(e["key"])
