"""Account names for uids and gids, and the uid of a name: what every printed owner,
group and reason says. Standard library only (classify, liveness and policy use it
without importing the renderers)."""

from __future__ import annotations

import grp
import pwd
from functools import cache


@cache
def owner_name(uid: int) -> str:
    """The user name of `uid`, or the number itself when it has no passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def uid_of(user: str) -> int:
    """A user name or numeric uid to a uid; ValueError naming the user if unknown."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ValueError(f"no such user: {user!r}") from None


@cache
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
