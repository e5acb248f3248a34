"""The kinds of IPC object, one module each, and the registry that names them.

A kind module sits below every shared layer: it imports only model.py (the object
protocol, Party, Fact, ...), sysvtable.py and the kernel-call helpers, never classify,
policy, remove, quarantine or render. Those reach kinds through `KINDS` / `of()`.
Adding a kind = a module that provides what `Kind` lists, one line in `_MODULES`, and its
tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Protocol, cast

from shmjanitor.model import Fact, IpcObject, Party

# name -> module, in the order ipcs shows them (-m, -q, -s: ipcs prints shm, msg, sem;
# we follow lsipc's and the order: shm, sem, msg).
_MODULES = {
    "shm": "shmjanitor.kinds.shm",
    "sem": "shmjanitor.kinds.sem",
    "msg": "shmjanitor.kinds.msg",
    "posix-shm": "shmjanitor.kinds.posix_shm",
    "posix-sem": "shmjanitor.kinds.posix_sem",
    "posix-mqueue": "shmjanitor.kinds.posix_mqueue",
}


class Kind(Protocol):
    """What a kind module provides (module-level names). Objects are its NamedTuples."""

    NAME: str  # "shm", "sem", "msg": /proc/sysvipc/<NAME>, the `kind` of its objects
    PLURAL: str  # its JSON array and section: "segments", "semaphores", "queues"
    NOUN: str  # one object in a sentence: "segment", "semaphore set", "message queue"
    VERB: str  # what a user does with it, for "may ... again": "attach", "operate on it"
    IN_USE_RULE: str  # the rule code (rules.py) when in_use says so: "attached", ...
    TABLE: Path  # /proc/sysvipc/<NAME>
    FACTS: tuple[Fact, ...]  # its own columns and JSON fields, beyond the shared ones

    # --- reading (pure but for read/limits) ---------------------------------------
    def read(self, path: Path = ...) -> list[Any]:
        """Its table as objects, with any fact that needs a call per object (a set's
        waiters, say). NoSysvIpc when the table is absent, CorruptTable when unreadable."""

    def limits(self) -> dict[str, Optional[int]]:
        """Its kernel limits, by sysctl name ("shmmni", "semmni", "msgmni", ...)."""

    def parties(self, o: Any) -> tuple[Party, ...]:
        """The processes (or users) whose liveness says it may be used again, in the
        order a reason names them. Empty when the table names nobody."""

    def in_use(self, o: Any, name_of: Callable[[int], Optional[str]]) -> Optional[str]:
        """The clause when a process uses it right now (attached, waiting, blocked),
        else None. `name_of(pid)` is a live process's command name, if known."""

    def unknowable(self, o: Any) -> Optional[str]:
        """The clause when evidence of use could not be read (no permission to ask the
        kernel for a set's waiters, a process whose syscall cannot be read), else None:
        the object is `unknown` unless a party is alive (then idle) or it is in use."""

    def removing(self, o: Any) -> Optional[str]:
        """The clause when IPC_RMID was called and the kernel frees it later, else None."""

    def quiet(self, o: Any, now: float) -> str:
        """How long nobody used it, in words ("never attached, created 5 min ago")."""

    # --- removing (remove.py drives these; see its docstring) --------------------
    def stat(self, id: int) -> Any:
        """IPC_STAT now (and any per-object fact the re-check compares), with at least
        `key` and `mode` (remove.py puts a mode back from it and compares the key of a
        lock note). Raises OSError: EINVAL/EIDRM gone, EACCES no read permission."""

    def changed_since_scan(self, o: Any, now: Any, forced: bool) -> Optional[str]:
        """Why it is no longer what was judged ("changed since scan: ..."), else None.
        `forced` (rm --force) skips the in-use checks, never the identity ones. Pure."""

    def lock(self, id: int, mode: int) -> None:
        """IPC_SET its permission bits to `mode`, right after `stat(id)` (IPC_SET writes
        uid, gid and mode together: they come from that IPC_STAT). A POSIX file takes a
        write lease instead (posixrm.py). Raises OSError: EAGAIN with the reason as its
        strerror when it is in use (kept, said as it is)."""

    def unlock(self, id: int, mode: int) -> None:
        """Undo lock: System V kinds put the permission bits back to `mode` & 0o777 (an
        IPC_STAT, then IPC_SET); a POSIX file's write lease is let go. Raises OSError."""

    def changed_while_locked(self, before: Any, locked: Any) -> Optional[str]:
        """Why it cannot go, comparing the IPC_STAT before the lock with the one after,
        else None. Pure."""

    def busy_now(self, id: int) -> Optional[str]:
        """Evidence of use that IPC_STAT does not show, read now (a process blocked in
        msgrcv), else None."""

    def rmid(self, id: int) -> None:
        """IPC_RMID (a POSIX file: unlink under its lease). Raises OSError: EINVAL/EIDRM
        gone, EPERM not ours, EAGAIN (its reason as strerror) used at the last instant."""

    def users_after_rmid(self, id: int) -> Optional[int]:
        """After IPC_RMID: how many still use it (shm: nattch of a segment the kernel
        keeps until the last detach), None when it is gone."""

    # --- the quarantine ------------------------------------------------------------
    def known_empty(self, o: Any) -> bool:
        """Its saved data is known to be empty without reading it (shm: never attached
        and no page; msg: no message). Only for unforced removals."""

    def save_bound(self, o: Any) -> int:
        """At most how many bytes `save` hands to `write`: the quarantine refuses the
        object before anything is read when that much would pass its budget or its
        free-space floor (shm: resident and swapped pages, not its size)."""

    def data_size(self, doc: Mapping[str, Any]) -> int:
        """The length of the data an entry's extents lie in (shm: the segment's size; a
        set: two bytes per semaphore), from an entry its check_record accepted."""

    def save(self, o: Any, write: Callable[[bytes], None]) -> list[tuple[int, int]]:
        """Write its data through `write` and return the extents [(offset, length)] of
        the object's data they are (holes are zeros): data that `record(o)` describes,
        within `data_size` of that record, even for rm --force (EAGAIN, with the reason
        as its strerror, when the object changed under the copy: it is kept). Raises
        OSError."""

    def changed_since_copy(self, o: Any, now: Any, empty: bool, forced: bool) -> Optional[str]:
        """Why the copy may be stale ("changed since scan: ..."), else None. Pure."""

    def record(self, o: Any) -> str:
        """Its own facts for a quarantine entry, as JSON members ('"nsems": 3, ...')."""

    def check_record(self, doc: Mapping[str, Any]) -> Optional[str]:
        """What is wrong with an entry's own facts (the index was tampered), else None."""

    def same(self, doc: Mapping[str, Any], now: Any) -> bool:
        """Is the object `now` (stat) the one an entry recorded (same key, creator)?"""

    def restore(self, doc: Mapping[str, Any], data: Iterator[tuple[int, bytes]]) -> int:
        """Create it again from an entry (key, mode, owner, data); its new id. Raises
        OSError as the kernel's calls do (EEXIST: the key is in use)."""


def of(name: str) -> Kind:
    """The kind module registered as `name` (KeyError for an unknown name)."""
    return cast(Kind, _load(_MODULES[name]))


def kind_of(o: IpcObject) -> Kind:
    return of(o.kind)


def names() -> tuple[str, ...]:
    return tuple(_MODULES)


_loaded: dict[str, ModuleType] = {}


def _load(module: str) -> ModuleType:
    m = _loaded.get(module)
    if m is None:
        m = _loaded[module] = importlib.import_module(module)
    return m
