"""POSIX shared memory: the posix-shm kind, the regular files of /dev/shm made by
shm_open(3) (every name but glibc's "sem.NAME" semaphores: kinds/posix_sem.py).

A thin module: reading and evidence are posixfs's (one read of /dev/shm and one pass
over /proc for every POSIX kind), removal and the quarantine posixrm's. A file is in
use while a process has it open or mapped (holders.py); nobody keeps a record of who
opened it last, so the parties that may open it again are the creator its name names
(torch_<pid>_...) or else its owner (posixfs.parties).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from shmjanitor import posixfs
from shmjanitor.model import Fact
from shmjanitor.posixfs import PosixShm, in_use, parties, quiet, removing, unknowable
from shmjanitor.posixrm import remember

NAME = "posix-shm"
PLURAL = "POSIX shm objects"
NOUN = "POSIX shared memory object"
VERB = "open it"  # "owner alice (1000) has processes (pid 4242, ...), may open it again"
IN_USE_RULE = "held"  # the rule code (rules.py) of in_use
TABLE = Path(posixfs.SHM_DIR)
FACTS: tuple[Fact, ...] = ()  # its columns are those every POSIX kind has (shapes.Posix)
IDLE_AFTER_KEY = "posix_idle_after"  # the config key that lets idle ones go (policy)
SEM_PREFIX = posixfs.SEM_PREFIX  # glibc's sem_open names its file "sem.NAME"


def read(path: Path = TABLE) -> list[PosixShm]:
    """The files of /dev/shm that are not named "sem.*", with their holders (the run's
    posixfs snapshot; `path` is the kind's directory, always /dev/shm)."""
    found = posixfs.objects(PosixShm, posixfs.SHM_DIR)  # the snapshot's split: not sem.*
    remember(found)
    return found  # type: ignore[return-value]


def limits() -> dict[str, Optional[int]]:
    return {}  # /dev/shm's size is the tmpfs's (df), not a kernel.* limit


__all__ = ["in_use", "parties", "quiet", "removing", "unknowable"]

# The removal half (P2: posixrm.py), named as kinds.Kind names it.
from shmjanitor.posixrm import (  # noqa: E402
    busy_now,
    changed_since_copy,
    changed_since_scan,
    changed_while_locked,
    check_record,
    data_size,
    known_empty,
    lock,
    record,
    restore,
    rmid,
    same,
    save,
    save_bound,
    stat,
    unlock,
    users_after_rmid,
)

__all__ += ["busy_now", "changed_since_copy", "changed_since_scan", "changed_while_locked",
            "check_record", "data_size", "known_empty", "lock", "record", "restore", "rmid",
            "same", "save", "save_bound", "stat", "unlock", "users_after_rmid"]  # fmt: skip
