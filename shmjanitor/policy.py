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
    s = v.segment
    if s.key in cfg.protect_keys:
        return Decision(v, False, f"protected key 0x{s.key:08x} (protect_keys)")
    for uid in (s.uid, s.cuid):
        if uid in cfg.protect_owners:
            return Decision(v, False, f"protected owner {owner_name(uid)} (protect_owners)")
    if not cfg.include_system:
        # As systemd-logind's RemoveIPC: system accounts (databases such as PostgreSQL
        # among them) manage their own segments and may come back for them.
        for uid in (s.uid, s.cuid):
            if uid < caller.uid_min:
                return Decision(v, False, (
                    f"system account {owner_name(uid)} (uid {uid} < UID_MIN {caller.uid_min});"
                    " --include-system to reap"
                ))  # fmt: skip
    if v.idle_for < cfg.min_age:
        return Decision(v, False, (
            f"idle {format_age(v.idle_for)}, younger than min-age {format_age(cfg.min_age)}"
        ))  # fmt: skip
    if not caller.cap_sys_admin and caller.euid not in (s.uid, s.cuid):
        return Decision(v, False, f"owned by {owner_name(s.uid)}: needs root (CAP_SYS_ADMIN)")
    return Decision(v, True, v.reason)


def plan(verdicts: list[Verdict], cfg: Config, caller: Caller) -> list[Decision]:
    """A decision for every orphan, in table order."""
    return [d for d in (decide(v, cfg, caller) for v in verdicts) if d is not None]
