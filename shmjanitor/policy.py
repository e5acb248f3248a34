"""Which orphans a reap may remove, and why it keeps the others. Pure, and kind-blind:
the rules read only what every kind's object has (model.IpcObject: key, uid, cuid) and
the verdict's idle_for (now minus the object's last_used, from its kind's own times).

Each rule is an early return that keeps the object, read aloud in its reason (in the
manner of systemd's clean-ipc.c). Only `orphan` verdicts are ever considered.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Callable, NamedTuple, Optional

from shmjanitor import rules
from shmjanitor.accounts import owner_name
from shmjanitor.classify import State, Verdict
from shmjanitor.config import Config
from shmjanitor.durations import format_age


class Caller(NamedTuple):
    """Who runs the reap: IPC_RMID needs ownership (uid or cuid) or CAP_SYS_ADMIN, for
    every kind (ipc/util.c, ipcctl_obtain_check)."""

    euid: int
    cap_sys_admin: bool
    uid_min: int  # UID_MIN of /etc/login.defs: accounts below it are system accounts
    uid_max: int = 60000  # UID_MAX: accounts above it (nobody, 65534) are too


class Decision(NamedTuple):
    verdict: Verdict
    remove: bool
    reason: str  # why it is removed, or why it is kept
    rule: str = ""  # the code of the rule that decided (rules.py)


def decide(v: Verdict, cfg: Config, caller: Caller) -> Optional[Decision]:
    """A decision for an orphan (or an idle POSIX object, with posix_idle_after); None
    for any other state (reap does not consider it)."""
    if v.state is State.ORPHAN:
        return _decide_orphan(v, cfg, caller)
    if v.state is State.IDLE and cfg.posix_idle_after is not None:
        return _decide_idle(v, cfg, caller, cfg.posix_idle_after)
    return None


def _posix_path(v: Verdict) -> Optional[str]:
    """The path of a POSIX object (posixfs.PosixObject.path); None for System V ones."""
    return getattr(v.obj, "path", None)


def _decide_idle(v: Verdict, cfg: Config, caller: Caller, after: int) -> Optional[Decision]:
    """An idle POSIX object (nobody holds it; its owner lives and may open it again by
    name) is a candidate once idle longer than posix_idle_after, which the admin sets
    (off by default): the same rules as an orphan's then. The write lease still proves
    at the last instant that nobody holds it. Other idle objects: not considered."""
    if _posix_path(v) is None:
        return None
    why = _young_idle(v, cfg, caller)
    if why is not None:
        return Decision(v, False, why, rules.YOUNGER_THAN_POSIX_IDLE_AFTER)
    d = _decide_orphan(v, cfg, caller)
    if not d.remove:
        return d
    return Decision(v, True, f"{v.reason}; idle longer than posix_idle_after {format_age(after)}",
                    rules.POSIX_IDLE_AFTER)  # fmt: skip


def system_account(uid: int, cuid: int, caller: Caller) -> Optional[str]:
    """Why the object is a system account's, or None when it is an ordinary user's.

    The owner (uid) decides; so does the creator (cuid), unless the creator is root.
    A system account's daemon (PostgreSQL, say) manages its own objects, and keeps
    owner's access to one it made even after giving it to a user (ipcperms() grants
    the creator the owner's bits), so it may come back for it. Root, though, makes
    objects *for* users: `shmjanitor restore` run by root, a setuid helper, a login
    service. Such an object is its owner's, and an orphan of an ordinary owner is
    reaped like any other, not kept for ever as "system account root".
    """
    lo, hi = caller.uid_min, caller.uid_max
    if uid < lo or uid > hi:
        who, u = "system account", uid
    elif cuid != 0 and (cuid < lo or cuid > hi):
        who, u = "created by system account", cuid
    else:
        return None
    limit = f"< UID_MIN {lo}" if u < lo else f"> UID_MAX {hi}"
    return f"{who} {owner_name(u)} (uid {u} {limit})"


# The rules, each a function of (verdict, config, caller): why it keeps the object, or
# None. _decide_orphan asks them in RULES' order, the first that keeps decides; explain
# lists every one's answer (`verdicts`).
Rule = Callable[[Verdict, Config, Caller], Optional[str]]


def _protected_key(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    key = v.obj.key
    if key in cfg.protect_keys:
        return f"protected key 0x{key:08x} (protect_keys)"
    return None


def _protected_path(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    path = _posix_path(v)
    if path is not None:
        for pattern in sorted(cfg.protect_paths):
            if fnmatchcase(path, pattern):
                return f"protected path {pattern} (protect_paths)"
    return None


def _protected_owner(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    for u in (v.obj.uid, v.obj.cuid):
        if u in cfg.protect_owners:
            return f"protected owner {owner_name(u)} (protect_owners)"
    return None


def _system(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    # As systemd-logind's RemoveIPC: system accounts (databases such as PostgreSQL
    # among them) manage their own objects and may come back for them.
    if cfg.include_system:
        return None
    why = system_account(v.obj.uid, v.obj.cuid, caller)
    return None if why is None else f"{why}; --include-system to reap"


def _young(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    if v.idle_for < cfg.min_age:
        return f"idle {format_age(v.idle_for)}, younger than min-age {format_age(cfg.min_age)}"
    return None


def _not_ours(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    uid = v.obj.uid
    if not caller.cap_sys_admin and caller.euid != uid and caller.euid != v.obj.cuid:
        return f"owned by {owner_name(uid)}: needs root (CAP_SYS_ADMIN)"
    return None


def _young_idle(v: Verdict, cfg: Config, caller: Caller) -> Optional[str]:
    """Only for an idle POSIX object under posix_idle_after (_decide_idle)."""
    after = cfg.posix_idle_after
    if after is not None and v.idle_for < after:
        return (f"idle {format_age(v.idle_for)}, younger than posix_idle_after "
                f"{format_age(after)}")  # fmt: skip
    return None


RULES: tuple[tuple[str, Rule], ...] = (
    (rules.PROTECTED_KEY, _protected_key),
    (rules.PROTECTED_PATH, _protected_path),
    (rules.PROTECTED_OWNER, _protected_owner),
    (rules.SYSTEM_ACCOUNT, _system),
    (rules.YOUNGER_THAN_MIN_AGE, _young),
    (rules.NEEDS_ROOT, _not_ours),
)


def verdicts(v: Verdict, cfg: Config, caller: Caller) -> list[tuple[str, Optional[str]]]:
    """Every rule's answer for `v`, in order: (its code, why it keeps `v` or None). For
    `explain`; reap asks them through _decide_orphan, which stops at the first that
    keeps. An idle POSIX object under posix_idle_after is first asked its own age."""
    out = [(code, rule(v, cfg, caller)) for code, rule in RULES]
    if v.state is State.IDLE and cfg.posix_idle_after is not None and _posix_path(v):
        out.insert(0, (rules.YOUNGER_THAN_POSIX_IDLE_AFTER, _young_idle(v, cfg, caller)))
    return out


def _decide_orphan(v: Verdict, cfg: Config, caller: Caller) -> Decision:
    s = v.obj
    uid, cuid = s.uid, s.cuid
    # Each `if` first asks the cheap question that is almost always "no" (empty set, both
    # uids ordinary ones), then the rule in full: plan() runs this 32,000 times.
    if cfg.protect_keys and s.key in cfg.protect_keys:
        return _kept(v, cfg, caller, rules.PROTECTED_KEY, _protected_key)
    if cfg.protect_paths and _protected_path(v, cfg, caller) is not None:
        return _kept(v, cfg, caller, rules.PROTECTED_PATH, _protected_path)
    if cfg.protect_owners and _protected_owner(v, cfg, caller) is not None:
        return _kept(v, cfg, caller, rules.PROTECTED_OWNER, _protected_owner)
    lo, hi = caller.uid_min, caller.uid_max
    ordinary = lo <= uid <= hi and lo <= cuid <= hi
    if not cfg.include_system and not ordinary and _system(v, cfg, caller) is not None:
        return _kept(v, cfg, caller, rules.SYSTEM_ACCOUNT, _system)
    if v.idle_for < cfg.min_age:
        return _kept(v, cfg, caller, rules.YOUNGER_THAN_MIN_AGE, _young)
    if not caller.cap_sys_admin and caller.euid != uid and caller.euid != cuid:
        return _kept(v, cfg, caller, rules.NEEDS_ROOT, _not_ours)
    return Decision(v, True, v.reason, v.rule)


def _kept(v: Verdict, cfg: Config, caller: Caller, code: str, rule: Rule) -> Decision:
    why = rule(v, cfg, caller)
    assert why is not None
    return Decision(v, False, why, code)


def plan(verdicts: list[Verdict], cfg: Config, caller: Caller) -> list[Decision]:
    """A decision for every orphan (and idle POSIX object, with posix_idle_after), in
    table order."""
    orphan = State.ORPHAN
    if cfg.posix_idle_after is None:
        return [_decide_orphan(v, cfg, caller) for v in verdicts if v.state is orphan]
    return [d for d in map(lambda v: decide(v, cfg, caller), verdicts) if d is not None]
