"""Give every segment one state and a reason built from the evidence. Pure.

The rules, in order, each one an early return (as systemd's clean-ipc.c filters):

  removing  SHM_DEST is set: IPC_RMID was called, it goes when the last user detaches
  attached  nattch > 0
  unknown   nattch 0, and whether the creator lives cannot be known
  idle      nattch 0, the creator is alive and may attach again
  orphan    nattch 0, the creator is dead (exited, zombie, or its pid was recycled)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from sys import intern
from typing import NamedTuple, Optional

from shmjanitor.durations import format_age
from shmjanitor.procs import Proc
from shmjanitor.scan import Segment

# A process that started more than this after the segment's ctime cannot have created
# it: its pid was recycled. create_time comes from boot time + jiffies and ctime is
# whole seconds, so the two clocks can disagree by about a second either way.
RECYCLE_SLACK = 2.0


class State(str, Enum):
    ATTACHED = "attached"
    IDLE = "idle"
    ORPHAN = "orphan"
    UNKNOWN = "unknown"
    REMOVING = "removing"

    def __str__(self) -> str:
        return self.value


class Creator(NamedTuple):
    """The creating process as far as we can tell: alive None means cannot be known."""

    pid: int
    alive: Optional[bool]
    name: Optional[str]  # its command name, only while it is alive


class Verdict(NamedTuple):
    segment: Segment
    state: State
    reason: str
    creator: Creator
    idle_for: int  # seconds since ctime/atime/dtime, whichever is latest


def _creator(
    seg: Segment, facts: Mapping[int, Proc], viewer_uid: Optional[int]
) -> tuple[Creator, str]:
    """The creator's liveness and a clause of evidence for the reason."""
    pid = seg.cpid
    if pid == 0:
        return Creator(0, None, None), ("creator not visible from this PID namespace (cpid 0)")
    p = facts.get(pid)
    if p is None:
        return Creator(pid, None, None), f"creator {pid} not looked up"
    if p.note == "hidden by hidepid":
        # Our own processes stay visible under hidepid: a missing one of ours is gone.
        if viewer_uid is not None and seg.cuid == viewer_uid:
            return Creator(pid, False, None), f"creator {pid} exited"
        return Creator(pid, None, None), f"creator {pid} not visible (/proc mounted with hidepid)"
    if p.alive is None:
        return Creator(pid, None, None), f"creator {pid}: {p.note or 'unknown'}"
    if not p.alive:
        if p.note == "zombie":
            return Creator(pid, False, None), f"creator {pid} is a zombie (exited)"
        return Creator(pid, False, None), f"creator {pid} exited"
    if p.started is not None and p.started > seg.ctime + RECYCLE_SLACK:
        later = format_age(p.started - seg.ctime)
        return Creator(pid, False, None), (
            f"creator {pid} exited; pid now used by a process started {later} later"
        )
    return Creator(pid, True, p.name), f"creator {pid} ({p.name}) alive"


def classify(
    seg: Segment, facts: Mapping[int, Proc], now: float, viewer_uid: Optional[int] = None
) -> Verdict:
    """One verdict for `seg` given process facts looked up at about `now`.

    `viewer_uid` is the euid the facts were gathered as (None for root, who sees every
    process); it only matters when /proc hides other users' processes.
    """
    return _verdict(seg, _creator(seg, facts, viewer_uid), facts, now)


def _verdict(
    seg: Segment, creator_evidence: tuple[Creator, str], facts: Mapping[int, Proc], now: float
) -> Verdict:
    creator, evidence = creator_evidence
    idle_for = max(0, int(now - seg.last_used))
    if seg.dest:
        return Verdict(
            seg,
            State.REMOVING,
            (
                f"IPC_RMID already called (SHM_DEST); the kernel frees it when the last of "
                f"{seg.nattch} attached detaches"
            ),
            creator,
            idle_for,
        )
    if seg.nattch > 0:
        last = facts.get(seg.lpid)
        who = f" ({last.name})" if last is not None and last.alive and last.name else ""
        return Verdict(
            seg,
            State.ATTACHED,
            (f"{seg.nattch} attached; last attach/detach by pid {seg.lpid}{who}"),
            creator,
            idle_for,
        )
    if seg.atime is None:
        quiet = f"never attached, created {format_age(int(now - seg.ctime))} ago"
    else:
        quiet = f"nobody attached for {format_age(idle_for)}"
    # Interned: a leak is often thousands of segments with one and the same reason.
    if creator.alive is None:
        return Verdict(seg, State.UNKNOWN, intern(f"{evidence}; {quiet}"), creator, idle_for)
    if creator.alive:
        reason = intern(f"{evidence}, may attach again; {quiet}")
        return Verdict(seg, State.IDLE, reason, creator, idle_for)
    return Verdict(seg, State.ORPHAN, intern(f"{evidence}; {quiet}"), creator, idle_for)


def classify_all(
    segments: Iterable[Segment],
    facts: Mapping[int, Proc],
    now: float,
    viewer_uid: Optional[int] = None,
) -> list[Verdict]:
    """Verdicts for a whole table. The creator's part of the verdict depends only on the
    creator (pid, ctime, cuid), so it is worked out once per creator, not per segment."""
    creators: dict[tuple[int, int, int], tuple[Creator, str]] = {}
    verdicts = []
    for s in segments:
        k = (s.cpid, s.ctime, s.cuid)
        ce = creators.get(k)
        if ce is None:
            ce = creators[k] = _creator(s, facts, viewer_uid)
        verdicts.append(_verdict(s, ce, facts, now))
    return verdicts
