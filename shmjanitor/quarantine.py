"""The quarantine: a durable, compact copy of every segment before it is removed.

Layout under the state directory (0700; files 0600):

    quarantine/<run>.data   the copies of one run, back to back (zlib; all-zero
                            segments, common among leaks, take no bytes at all)
    quarantine/<run>.json   the run's index: metadata, offsets, crc32, status

A run's files are written, fsynced and renamed into place *before* any of its segments
is removed (remove.py); afterwards the index is rewritten to keep only the entries
whose segment really was removed. An entry is named `<run>.<n>`. Pruning (age, then
budget, oldest first) works on whole runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Optional

from shmjanitor.classify import Verdict
from shmjanitor.config import Config
from shmjanitor.durations import format_size
from shmjanitor.errors import JanitorError, StateDirError
from shmjanitor.render import json_int, json_string

VERSION = 1


class RestoreError(JanitorError):
    exit_code = 1


def default_state_dir() -> Path:
    """$STATE_DIRECTORY under systemd, /var/lib/shmjanitor for root, else XDG's."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/shmjanitor")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "shmjanitor"


def store_for(cfg: Config, state_dir: Optional[Path] = None) -> Store:
    """The quarantine a command uses: --state-dir, else config state_dir, else default."""
    return Store(state_dir or cfg.state_dir or default_state_dir(), cfg)


def _private_dir(path: Path) -> Path:
    """Create `path` 0700 (parents as needed), or check an existing one is ours alone."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise StateDirError(f"state directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path}: not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"state directory {path}: owned by uid {st.st_uid}, not by us")
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            path.chmod(0o700)
        except OSError as e:
            raise StateDirError(f"state directory {path}: {e.strerror}") from None
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    """Atomically: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    # json.dumps, not json.dump: dump streams through the pure-Python encoder in tiny
    # writes (~1.5 s for a run of 32,000 entries); dumps encodes in C at once.
    _write_text(path, json.dumps(doc))


# A run's index, encoded by hand: json.dumps spends ~8 us an entry re-escaping the same
# 24 keys, and the index is written twice (commit, finish). Each entry is encoded once,
# in add(), up to its "removed" status; commit and finish only append the status. The
# text is exactly what json.dumps(doc) gives for these entries (ints, None, str; tests
# compare the two), so readers see no difference. Strings and nullable ints go through
# the same cached encoders as `list --json` (render.json_string, render.json_int).


def _entry_head(n: int, v: Verdict, removed_at: int, reason: str, zero: bool, offset: int,
                length: int, crc32: int) -> str:  # fmt: skip
    """An index entry's JSON up to and including '"removed": ' (the entry is documented in
    Batch.records; built from the values, not from a dict: ~4 us an entry less)."""
    s = v.segment
    return (
        f'{{"n": {n}, "id": {s.id}, "key": {s.key}, "size": {s.size}, '
        f'"mode": {s.perms}, "uid": {s.uid}, "gid": {s.gid}, "cuid": {s.cuid}, '
        f'"cgid": {s.cgid}, "cpid": {s.cpid}, "lpid": {s.lpid}, '
        f'"atime": {json_int(s.atime)}, "dtime": {json_int(s.dtime)}, "ctime": {s.ctime}, '
        f'"creator": {json_string(v.creator.name)}, '
        f'"removed_at": {removed_at}, "reason": {json_string(reason)}, '
        f'"encoding": {_ENCODING[zero]}, "offset": {offset}, '
        f'"length": {length}, "crc32": {crc32}, "removed": '
    )


_ENCODING = {True: '"zero"', False: '"zlib"'}


# The rest of an entry in a batch: its status, and never restored yet.
_TAIL = {None: 'null, "restored_as": null, "restored_at": null}',
         True: 'true, "restored_as": null, "restored_at": null}'}  # fmt: skip


# All-zero copies (most leaks) are the common case: compare with zero bytes of the same
# length (a memcmp, ~0.5 us for 4 KiB; bytes.strip(b"\0") took ~20 us) and take their
# crc32 from a cache. Sizes up to 1 MiB are cached, a few at a time (a leak is usually
# thousands of segments of one size); larger ones get fresh zero bytes (calloc).
_ZERO_CACHE_MAX = 1 << 20


@lru_cache(maxsize=8)
def _zeros(size: int) -> bytes:
    return bytes(size)


def _is_zero(data: bytes) -> bool:
    n = len(data)
    return data == (_zeros(n) if n <= _ZERO_CACHE_MAX else bytes(n))


@lru_cache(maxsize=64)
def _zero_crc32(size: int) -> int:
    return zlib.crc32(_zeros(size) if size <= _ZERO_CACHE_MAX else bytes(size))


class Entry(NamedTuple):
    run: str
    doc: dict[str, Any]  # the entry's record in the run's index

    @property
    def name(self) -> str:
        return f"{self.run}.{self.doc['n']}"


class Store:
    """The quarantine directory of one state dir, with the config's limits."""

    def __init__(self, state_dir: Path, cfg: Config) -> None:
        self.dir = state_dir / "quarantine"
        self.state_dir = state_dir
        self.cfg = cfg

    def ensure(self) -> Path:
        _private_dir(self.state_dir)
        return _private_dir(self.dir)

    def runs(self) -> list[str]:
        """Committed runs, oldest first (run names start with a UTC timestamp)."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".json")] for p in self.dir.glob("*.json"))

    def index(self, run: str) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.dir / f"{run}.json").read_text())
        except (OSError, ValueError) as e:
            raise StateDirError(f"quarantine index {run}.json unreadable: {e}") from None
        return doc

    def entries(self) -> list[Entry]:
        return [Entry(run, e) for run in self.runs() for e in self.index(run)["entries"]]

    def usage(self) -> int:
        """Bytes the quarantine's files take."""
        if not self.dir.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def drop(self, run: str) -> None:
        for suffix in (".json", ".data"):
            (self.dir / f"{run}{suffix}").unlink(missing_ok=True)

    def purge(self, older_than: Optional[int], now: float) -> list[str]:
        """Drop runs created more than `older_than` seconds ago (all runs when None)."""
        dropped = []
        for run in self.runs():
            if older_than is None or self.index(run)["created_at"] < now - older_than:
                self.drop(run)
                dropped.append(run)
        return dropped

    def prune(self, now: float, room: int = 0) -> None:
        """Drop runs past quarantine_days, then oldest runs until `room` more bytes fit."""
        self.purge(self.cfg.quarantine_days * 86400, now)
        for run in self.runs():
            if self.usage() + room <= self.cfg.quarantine_budget_bytes:
                break
            self.drop(run)

    def open_batch(self, now: float) -> Batch:
        self.ensure()
        self.prune(now)
        return Batch(self, now)

    def find(self, name: str) -> Entry:
        run, _, n = name.rpartition(".")
        if run in self.runs():
            for e in self.index(run)["entries"]:
                if str(e["n"]) == n:
                    return Entry(run, e)
        raise RestoreError(
            f"no quarantine entry {name!r} in {self.dir}; `shmjanitor quarantine list` "
            "shows the entries"
        )

    def read(self, entry: Entry) -> bytes:
        e = entry.doc
        if e["encoding"] == "zero":
            data = bytes(e["size"])
        else:
            with open(self.dir / f"{entry.run}.data", "rb") as f:
                f.seek(e["offset"])
                data = zlib.decompress(f.read(e["length"]))
        if len(data) != e["size"] or zlib.crc32(data) != e["crc32"]:
            raise RestoreError(f"quarantine entry {entry.name} is damaged (size or crc32)")
        return data

    def mark_restored(self, entry: Entry, new_id: int, now: float) -> None:
        doc = self.index(entry.run)
        for e in doc["entries"]:
            if e["n"] == entry.doc["n"]:
                e["restored_as"] = new_id
                e["restored_at"] = int(now)
        _write_json(self.dir / f"{entry.run}.json", doc)


class Batch:
    """One reap's copies: add() streams them to disk, commit() makes them durable."""

    def __init__(self, store: Store, now: float) -> None:
        self.store = store
        self.now = now
        # UTC time to the microsecond, then our pid: names sort by age and do not collide.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        self.run = f"{stamp}.{int(now * 1e6) % 1000000:06d}Z-{os.getpid()}"
        while (store.dir / f"{self.run}.json").exists():
            self.run += "x"
        self.tmp = store.dir / f"{self.run}.data.tmp"
        # Entries, as JSON text up to their status (_entry_head), with their segment ids.
        # Every entry of a batch has the same status: None until finish(), then True.
        self._heads: list[str] = []
        self._ids: list[int] = []
        self._status: Optional[bool] = None
        self.offset = 0
        self.base_usage = store.usage()
        # Opened now, before any segment is attached to copy it: a state dir we cannot
        # write fails the run here, with every segment left exactly as it was.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file: Optional[Any] = os.fdopen(fd, "wb")

    def add(self, v: Verdict, data: Optional[bytes], reason: str) -> Optional[str]:
        """Append one copy; a reason when it cannot be kept within the budget.

        `data` None: the segment is known to be all zero bytes (remove.known_zero).
        """
        s = v.segment
        if data is None or _is_zero(data):
            zero, blob, crc32 = True, b"", _zero_crc32(s.size if data is None else len(data))
        else:
            zero, blob, crc32 = False, zlib.compress(data, 1), zlib.crc32(data)
        budget = self.store.cfg.quarantine_budget_bytes
        if self.base_usage + self.offset + len(blob) > budget:
            self.store.prune(self.now, room=self.offset + len(blob))
            self.base_usage = self.store.usage()
            if self.base_usage + self.offset + len(blob) > budget:
                return f"quarantine budget ({format_size(budget)}) is full: kept"
        if blob:
            assert self._file is not None, "add() after commit() or abort()"
            self._file.write(blob)
        self._heads.append(_entry_head(len(self._heads), v, int(self.now), reason, zero,
                                       self.offset, len(blob), crc32))  # fmt: skip
        self._ids.append(s.id)
        self.offset += len(blob)
        return None

    @property
    def records(self) -> list[dict[str, Any]]:
        """The entries as the index holds them: n, id, key, size, mode (permission bits),
        uid, gid, cuid, cgid, cpid, lpid, atime, dtime, ctime (the segment's, as the
        survey saw it), creator (command name or None), removed_at, reason, encoding
        ("zero": no bytes stored, or "zlib"), offset and length in the .data file, crc32
        of the segment's bytes, removed (None until finish(), then True), restored_as and
        restored_at (None until `shmjanitor restore`). Decoded from the text: for tests."""
        return [json.loads(h + _TAIL[self._status]) for h in self._heads]

    def _doc(self) -> dict[str, Any]:
        return {"version": VERSION, "run": self.run, "created_at": int(self.now),
                "entries": self.records}  # fmt: skip

    def _index_text(self) -> str:
        """json.dumps(self._doc()), from the entries' heads and their common status."""
        tail = _TAIL[self._status]
        entries = (tail + ", ").join(self._heads) + tail if self._heads else ""
        return (f'{{"version": {VERSION}, "run": {json_string(self.run)}, '
                f'"created_at": {int(self.now)}, "entries": [{entries}]}}')  # fmt: skip

    def commit(self) -> None:
        """Make every copy durable before anything is removed. Raises OSError."""
        d = self.store.dir
        try:
            assert self._file is not None, "commit() twice or after abort()"
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.tmp, d / f"{self.run}.data")
            _write_text(d / f"{self.run}.json", self._index_text())
        except OSError:
            self.abort()
            raise

    def finish(self, removed: set[int]) -> None:
        """Keep only the entries whose segment was removed; drop the run if none was."""
        if not removed.issuperset(self._ids):  # else: keep them all
            kept = [(i, h) for i, h in zip(self._ids, self._heads) if i in removed]
            self._ids = [i for i, _ in kept]
            self._heads = [h for _, h in kept]
        self._status = True
        if not self._heads:
            self.store.drop(self.run)
            return
        _write_text(self.store.dir / f"{self.run}.json", self._index_text())

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for p in (self.tmp, self.store.dir / f"{self.run}.data"):
            with contextlib.suppress(OSError):  # best effort: we are already failing
                p.unlink()


def restore(store: Store, name: str, now: float) -> tuple[int, int]:
    """Recreate entry `name`: same key, size, mode, owner and bytes. Returns (id, key).

    A keyed segment whose key is in use again is refused: two programs would share it.
    An IPC_PRIVATE one comes back under a new id. The entry stays, marked restored.
    """
    import sysv_ipc

    entry = store.find(name)
    e = entry.doc
    if e.get("restored_as") is not None:
        raise RestoreError(
            f"entry {name} was already restored as id {e['restored_as']}; "
            "`shmjanitor quarantine purge` removes old entries"
        )
    data = store.read(entry)
    key = e["key"] if e["key"] else sysv_ipc.IPC_PRIVATE
    try:
        # 0600 while we fill it; the saved mode is set once the bytes are in.
        shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=e["size"],
                                    init_character=b"\0")  # fmt: skip
    except sysv_ipc.ExistentialError:
        raise RestoreError(
            f"key 0x{e['key']:08x} is in use by another segment now; remove that one "
            f"first (shmjanitor list --json shows it) or leave entry {name} be"
        ) from None
    except sysv_ipc.Error as e2:
        raise RestoreError(f"cannot create the segment: {e2}") from None
    try:
        shm.write(data)
        shm.uid, shm.gid = e["uid"], e["gid"]
        shm.mode = e["mode"]
    except (sysv_ipc.Error, OSError) as e2:
        shm.detach()
        shm.remove()
        raise RestoreError(f"cannot restore owner or mode of entry {name}: {e2}") from None
    shm.detach()
    store.mark_restored(entry, shm.id, now)
    return int(shm.id), int(e["key"])
