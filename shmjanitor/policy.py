"""Which orphans a reap may remove, and why it keeps the others. Pure.

Each rule is an early return that keeps the segment, read aloud in its reason (in the
manner of systemd's clean-ipc.c). Only `orphan` verdicts are ever considered.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from shmjanitor.classify import State, Verdict
from shmjanitor.config import Config
from shmjanitor.durations import format_age
from shmjanitor.render import owner_name


class Caller(NamedTuple):
    """Who runs the reap: IPC_RMID needs ownership (uid or cuid) or CAP_SYS_ADMIN."""

    euid: int
    cap_sys_admin: bool
    uid_min: int  # from /etc/login.defs: accounts below it are system accounts


class Decision(NamedTuple):
    verdict: Verdict
    remove: bool
    reason: str  # why it is removed, or why it is kept


def decide(v: Verdict, cfg: Config, caller: Caller) -> Optional[Decision]:
    """A decision for an orphan; None for any other state (reap does not consider it)."""
    if v.state is not State.ORPHAN:
        return None
    return _decide_orphan(v, cfg, caller)


def _decide_orphan(v: Verdict, cfg: Config, caller: Caller) -> Decision:
    s = v.segment
    uid, cuid = s.uid, s.cuid
    # Each `if` first asks the cheap question that is almost always "no" (empty set, both
    # uids at or above UID_MIN), then the rule in full: plan() runs this 32,000 times.
    if cfg.protect_keys and s.key in cfg.protect_keys:
        return Decision(v, False, f"protected key 0x{s.key:08x} (protect_keys)")
    if cfg.protect_owners:
        for u in (uid, cuid):
            if u in cfg.protect_owners:
                return Decision(v, False, f"protected owner {owner_name(u)} (protect_owners)")
    if not cfg.include_system and (uid < caller.uid_min or cuid < caller.uid_min):
        # As systemd-logind's RemoveIPC: system accounts (databases such as PostgreSQL
        # among them) manage their own segments and may come back for them.
        u = uid if uid < caller.uid_min else cuid
        return Decision(v, False, (
            f"system account {owner_name(u)} (uid {u} < UID_MIN {caller.uid_min});"
            " --include-system to reap"
        ))  # fmt: skip
    if v.idle_for < cfg.min_age:
        return Decision(v, False, (
            f"idle {format_age(v.idle_for)}, younger than min-age {format_age(cfg.min_age)}"
        ))  # fmt: skip
    if not caller.cap_sys_admin and caller.euid != uid and caller.euid != cuid:
        return Decision(v, False, f"owned by {owner_name(uid)}: needs root (CAP_SYS_ADMIN)")
    return Decision(v, True, v.reason)


def plan(verdicts: list[Verdict], cfg: Config, caller: Caller) -> list[Decision]:
    """A decision for every orphan, in table order."""
    orphan = State.ORPHAN
    return [_decide_orphan(v, cfg, caller) for v in verdicts if v.state is orphan]
