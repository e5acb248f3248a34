"""The shm kind's table under its old name (kinds/shm.py is where it lives now)."""

from shmjanitor.kinds.shm import (
    IPC_PRIVATE,
    OPTIONAL,
    PROC_SHM,
    REQUIRED,
    SHM_DEST,
    SHM_LOCKED,
    Limits,
    Segment,
    parse,
    read,
    read_limits,
)

__all__ = ["IPC_PRIVATE", "OPTIONAL", "PROC_SHM", "REQUIRED", "SHM_DEST", "SHM_LOCKED",
           "Limits", "Segment", "parse", "read", "read_limits"]  # fmt: skip
