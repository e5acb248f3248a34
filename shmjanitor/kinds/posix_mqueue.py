"""POSIX message queues: the posix-mqueue kind, the files of /dev/mqueue (an mqueue
file system of our IPC namespace) that mq_open(3) makes. No /dev/mqueue mounted: no
queues, not an error.

A thin module: reading and evidence are posixfs's (one read of /dev/mqueue and one pass
over /proc for every POSIX kind; mq_getattr for each queue's messages), removal and the
quarantine posixrm's. An mqd_t is an fd: a process with the queue open is a holder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from shmjanitor import posixfs
from shmjanitor.model import Fact
from shmjanitor.posixfs import PosixMqueue, in_use, parties, quiet, removing, unknowable
from shmjanitor.posixrm import remember

NAME = "posix-mqueue"
PLURAL = "POSIX queues"
NOUN = "POSIX message queue"
VERB = "open it"  # "owner alice (1000) has processes (pid 4242, ...), may open it again"
IN_USE_RULE = "held"  # the rule code (rules.py) of in_use
TABLE = Path(posixfs.MQUEUE_DIR)
# Its own columns beside those every POSIX kind has (shapes.Posix); None: not readable.
FACTS = (
    Fact(
        "MSGS",
        "msgs",
        lambda o: None if o.mq is None else o.mq.curmsgs,
        "messages on it (mq_curmsgs)",
    ),
    Fact(
        "MAXMSG",
        "maxmsg",
        lambda o: None if o.mq is None else o.mq.maxmsg,
        "most messages it holds (mq_maxmsg)",
    ),
    Fact(
        "MSGSIZE",
        "msgsize",
        lambda o: None if o.mq is None else o.mq.msgsize,
        "largest message (mq_msgsize)",
        "bytes",
    ),
)
IDLE_AFTER_KEY = "posix_idle_after"  # the config key that lets idle ones go (policy)


def read(path: Path = TABLE) -> list[PosixMqueue]:
    """The queues of /dev/mqueue, with their holders and attributes (the run's posixfs
    snapshot; `path` is the kind's directory, always /dev/mqueue)."""
    found = posixfs.objects(PosixMqueue, posixfs.MQUEUE_DIR)
    remember(found)
    return found  # type: ignore[return-value]


def limits() -> dict[str, Optional[int]]:
    return {}  # fs.mqueue.* limits apply per queue and per user, not to a table


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
    save_bound,
    stat,
    unlock,
    users_after_rmid,
)
from shmjanitor.posixrm import mq_save as save  # noqa: E402  a queue's own copy

__all__ += ["busy_now", "changed_since_copy", "changed_since_scan", "changed_while_locked",
            "check_record", "data_size", "known_empty", "lock", "record", "restore", "rmid",
            "same", "save", "save_bound", "stat", "unlock", "users_after_rmid"]  # fmt: skip
