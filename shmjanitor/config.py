"""The configuration file (TOML) and the flags that override it, checked strictly.

A config file decides what a root janitor deletes, so anything doubtful in it is an
error (exit 2) naming the file and the problem, never a silent default.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Optional

from shmjanitor.durations import parse_duration
from shmjanitor.errors import ConfigError

DEFAULT_PATH = Path("/etc/shmjanitor.toml")
MiB = 1 << 20


@dataclass(frozen=True)
class Config:
    """Policy and quarantine settings; defaults are the cautious ones."""

    min_age: int = 3600  # seconds a segment must have been idle before it is reaped
    include_system: bool = False  # reap segments of accounts below UID_MIN too
    protect_keys: frozenset[int] = field(default_factory=frozenset)
    protect_owners: frozenset[int] = field(default_factory=frozenset)  # uids
    state_dir: Optional[Path] = None  # None: /var/lib/shmjanitor or $XDG_STATE_HOME/...
    quarantine_max_bytes: int = 256 * MiB  # largest segment we copy before removing
    quarantine_budget_bytes: int = 2048 * MiB  # disk the quarantine may use in all
    quarantine_days: int = 7  # entries older than this are pruned
    # free space always left on the quarantine's file system (f_bavail, not root's reserve)
    quarantine_min_free_bytes: int = 64 * MiB
    lock_timeout: int = 60  # seconds a reaper waits for another one
    # POSIX objects (/dev/shm, /dev/mqueue) whose path matches one of these fnmatch
    # patterns are never reaped ("/dev/shm/PostgreSQL.*")
    protect_paths: frozenset[str] = field(default_factory=frozenset)
    # an idle POSIX object (nobody holds it, its owner lives) idle this long is reaped
    # too; None (the default): never, only orphans are
    posix_idle_after: Optional[int] = None
    # rows of the history store (history.py) about objects gone longer ago than this
    # are pruned; 0: never pruned
    history_max_age: int = 90 * 86400
    # list and reap sweep every IPC namespace of the machine (containers too), as -A
    # does, when neither -A nor --namespace is given: for the timer's service, which
    # must also be allowed to setns(2) (systemd/all-namespaces.conf)
    all_namespaces: bool = False

    def with_overrides(self, **flags: Any) -> Config:
        """Flags given on the command line (not None) win over the file."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})


def _key(value: Any) -> int:
    from shmjanitor.keys import parse_key

    # 0 (IPC_PRIVATE) may be protected: it keeps every private segment.
    return parse_key(value, private_ok=True)


def _owner(value: Any) -> int:
    from shmjanitor.accounts import uid_of

    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        return uid_of(value)
    raise ValueError


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError
    return value


def _duration(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("each one an absolute path, wildcards allowed")
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError
    return Path(value)


# key: (parser of one value, whether the value is a list, what to say when it is wrong)
_KEYS = {
    "min_age": (_duration, False, 'a duration such as "90s", "10m", "1h" or "2d"'),
    "include_system": (_bool, False, "true or false"),
    "protect_keys": (_key, True, 'a list of keys: integers or strings like "0x1234"'),
    "protect_owners": (_owner, True, "a list of user names or uids of existing users"),
    "state_dir": (_path, False, "a directory path as a string"),
    "quarantine_max_bytes": (_size, False, "a number of bytes"),
    "quarantine_budget_bytes": (_size, False, "a number of bytes"),
    "quarantine_days": (_size, False, "a whole number of days"),
    "quarantine_min_free_bytes": (_size, False, "a number of bytes"),
    "lock_timeout": (_size, False, "a number of seconds"),
    "protect_paths": (_pattern, True, 'a list of glob patterns such as "/dev/shm/PostgreSQL.*"'),
    "posix_idle_after": (_duration, False, 'a duration such as "7d"'),
    "history_max_age": (_duration, False, 'a duration such as "90d" (0: keep every row)'),
    "all_namespaces": (_bool, False, "true or false"),
}


def _check_trust(path: Path, st: os.stat_result) -> None:
    """Running as root, the file decides what root deletes: only root may write it."""
    if os.geteuid() != 0:
        return
    if st.st_uid != 0:
        raise ConfigError(
            f"{path}: owned by uid {st.st_uid}, not root; as root shmjanitor only trusts a "
            f"config file that only root can change (chown root {path})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"as root shmjanitor refuses it (chmod go-w {path})"
        )


def load(path: Optional[Path]) -> Config:
    """Read `path` (given with --config: it must exist) or the default file if present."""
    explicit = path is not None
    path = path if path is not None else DEFAULT_PATH
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: not a regular file")
            _check_trust(path, st)
            data = _toml(f, path)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file (given with --config)") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse(data, str(path))


def _toml(f: IO[bytes], path: Path) -> dict[str, Any]:
    # Imported here: most runs have no config file, and tomllib compiles its regular
    # expressions at import (a few ms of every reap's start-up).
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10
        import tomli as tomllib
    try:
        return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # TOML is UTF-8 only
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def parse(data: dict[str, Any], source: str) -> Config:
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _KEYS:
            raise ConfigError(
                f"{source}: unknown key {name!r}; known keys: {', '.join(sorted(_KEYS))}"
            )
        one, is_list, expected = _KEYS[name]
        try:
            if is_list:
                if not isinstance(value, list):
                    raise ValueError
                values[name] = frozenset(one(v) for v in value)
            else:
                values[name] = one(value)
        except ValueError as e:
            detail = f" ({e})" if str(e) else ""
            raise ConfigError(
                f"{source}: {name} = {value!r} is wrong: expected {expected}{detail}"
            ) from None
    return Config(**values)


def _login_defs(name: str, default: int, login_defs: Path) -> int:
    try:
        for line in login_defs.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == name and parts[1].isdigit():
                return int(parts[1])
    except (OSError, UnicodeDecodeError):
        pass
    return default


def uid_min(login_defs: Path = Path("/etc/login.defs")) -> int:
    """UID_MIN from login.defs, 1000 when absent: accounts below it are system accounts."""
    return _login_defs("UID_MIN", 1000, login_defs)


def uid_max(login_defs: Path = Path("/etc/login.defs")) -> int:
    """UID_MAX from login.defs, 60000 when absent (as systemd-logind): accounts above it,
    nobody (65534) among them, are system accounts too."""
    return _login_defs("UID_MAX", 60000, login_defs)


def sys_uid_max(login_defs: Path = Path("/etc/login.defs")) -> int:
    """SYS_UID_MAX from login.defs, 999 when absent: systemd's boundary of system
    accounts (uid_is_system), which logind's RemoveIPC= spares."""
    return _login_defs("SYS_UID_MAX", 999, login_defs)
