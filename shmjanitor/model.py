"""The small model every kind of IPC object shares. Kinds (kinds/*.py) import only this,
sysvtable and the kernel-call helpers; the shared layers (classify, policy, remove,
quarantine, render) reach kinds through the registry (kinds/__init__.py).

An object is a kind's NamedTuple of its table row (kinds/shm.py's Segment, ...). Every
kind's object has these attributes, named as the kernel names them:

    kind       the registry's name of its kind ("shm", "sem", "msg"): a class attribute
    id, key    key unsigned 32-bit (0 is IPC_PRIVATE)
    mode       the full mode word of the table (0o777 bits and the kind's flags)
    perms      mode & 0o777
    uid, gid, cuid, cgid, ctime
    size       bytes it holds in the kernel (shm: segsz; msg: cbytes; sem: 0)
    last_used  the latest time anybody touched it (epoch seconds)

Its evidence of use is said by its kind's `parties`, `in_use`, `removing` and `quiet`
(see kinds.Kind); classify.py turns evidence into a state and a reason, the same way
for every kind.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union


class State(str, Enum):
    ATTACHED = "attached"  # a process uses it right now (attached, waiting, blocked)
    IDLE = "idle"  # nobody uses it now, but a process that may come back lives
    ORPHAN = "orphan"  # nobody could be using it
    UNKNOWN = "unknown"  # whether somebody could be using it cannot be known
    REMOVING = "removing"  # IPC_RMID was called; the kernel frees it at the last detach

    def __str__(self) -> str:
        return self.value


class IpcObject(Protocol):
    """What kind-blind code may read of any kind's object (see the module docstring)."""

    @property
    def kind(self) -> str: ...
    @property
    def id(self) -> int: ...
    @property
    def key(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def perms(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def cuid(self) -> int: ...
    @property
    def cgid(self) -> int: ...
    @property
    def ctime(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def last_used(self) -> int: ...


class Party(NamedTuple):
    """A process (or a user) whose liveness is evidence that an object may be used.

    `pid` is the pid the table names (0: not visible from our PID namespace), `since`
    the moment it touched the object (epoch seconds; a process that started after it is
    someone else: the pid was recycled), `field` the kernel's name for the pid ("cpid",
    "lpid", "sempid", "lspid", "lrpid"), `role` the words for it in a reason ("creator",
    "last user", "last operator", ...).

    `uid` set instead of a pid: the evidence is a user, not a process (a semaphore set
    nobody ever operated on names no pid at all): alive while any process of that user
    lives, as systemd-logind's RemoveIPC= judges a user gone.

    `reopens`: the user may use the object again by itself (a POSIX object is opened by
    name, by anyone its mode lets in), so a user with a live process makes it idle,
    where a semaphore set's creating user with one is "cannot know".
    """

    role: str
    pid: int
    since: float
    field: str
    uid: Optional[int] = None
    reopens: bool = False


class Creator(NamedTuple):
    """A party as judged: alive None means cannot be known. (The name is from when the
    creator was the only party; the last user and others are judged the same way.)"""

    pid: int
    alive: Optional[bool]
    name: Optional[str]  # its command name, only while it is alive


class Action(str, Enum):
    REMOVED = "removed"
    WOULD_REMOVE = "would-remove"
    KEPT = "kept"
    FAILED = "failed"
    GONE = "gone"  # removed by someone else between our scan and our IPC_RMID

    def __str__(self) -> str:
        return self.value


class Fact(NamedTuple):
    """One fact of a kind's objects beyond the shared ones: a column of `list` (named as
    lsipc names it) and a field of its JSON. Renderers format it by `unit`."""

    column: str  # "NSEMS", "QBYTES", ...: upper case, as lsipc and ipcs head them
    json: str  # the JSON field name: "nsems", "cbytes", ...
    get: Callable[[Any], Union[int, str, None]]  # the value for one object (None: never)
    what: str  # one line for --help and the man page
    unit: str = ""  # "" (a number or text), "time" (epoch seconds), "bytes", "pid"
