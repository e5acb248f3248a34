"""PLACEHOLDER for P2's removal half of the POSIX kinds (branch posix-remove): every
name the kind modules import, refusing. P2's real module replaces this file at merge."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any


def remember(objects: Iterable[Any]) -> None:
    """Where read() hands P2 its objects (id -> dir, name); nothing to keep here."""


def _not_built(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.EPERM, "removal of POSIX objects is not built yet")


stat = changed_since_scan = lock = changed_while_locked = busy_now = rmid = _not_built
users_after_rmid = unlock = known_empty = save_bound = data_size = save = _not_built
mq_save = changed_since_copy = record = check_record = same = restore = _not_built
