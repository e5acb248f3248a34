"""POSIX named semaphores: the posix-sem kind, the regular files "sem.NAME" of
/dev/shm that glibc's sem_open(3) makes (a 32-byte sem_t, mapped by every process that
has it open: sem_open maps it and closes the fd).

A thin module: reading and evidence are posixfs's (one read of /dev/shm and one pass
over /proc for every POSIX kind), removal and the quarantine posixrm's. Waiting in
sem_wait is a futex on the mapping, so a waiter is a holder (mapped) like any user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from shmjanitor import posixfs
from shmjanitor.model import Fact
from shmjanitor.posixfs import PosixSem, in_use, parties, quiet, removing, unknowable
from shmjanitor.posixrm import remember

NAME = "posix-sem"
PLURAL = "POSIX semaphores"
NOUN = "POSIX semaphore"
VERB = "open it"  # "owner alice (1000) has processes (pid 4242, ...), may open it again"
IN_USE_RULE = "held"  # the rule code (rules.py) of in_use
TABLE = Path(posixfs.SHM_DIR)
FACTS: tuple[Fact, ...] = ()  # its columns are those every POSIX kind has (shapes.Posix)
IDLE_AFTER_KEY = "posix_idle_after"  # the config key that lets idle ones go (policy)
SEM_PREFIX = posixfs.SEM_PREFIX  # glibc's sem_open names its file "sem.NAME"


def read(path: Path = TABLE) -> list[PosixSem]:
    """The files of /dev/shm named "sem.*", with their holders (the run's posixfs
    snapshot; `path` is the kind's directory, always /dev/shm)."""
    found = posixfs.objects(PosixSem, posixfs.SHM_DIR)  # the snapshot's split: sem.*
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
