"""Give every segment one state and a reason built from the evidence. Pure.

The rules, in order, each one an early return (as systemd's clean-ipc.c filters):

  removing  SHM_DEST is set: IPC_RMID was called, it goes when the last user detaches
  attached  nattch > 0
  idle      nattch 0, and the creator or the last user (lpid) is alive: may attach again
  unknown   nattch 0, none of them alive, and whether one lives cannot be known
  orphan    nattch 0, nobody could be using it: the creator is dead and so is the last
            user, if anyone ever attached (exited, zombie, or pid recycled)

Liveness (alive, dead, cannot know) is liveness.judge's; "cannot know" is never dead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from sys import intern
from typing import NamedTuple, Optional

from shmjanitor.durations import format_age
from shmjanitor.liveness import NO_EVIDENCE, Clock, judge, last_touch
from shmjanitor.model import Creator, State
from shmjanitor.procs import Proc
from shmjanitor.scan import Segment


class Verdict(NamedTuple):
    segment: Segment  # the object judged, of any kind: new code reads it as `obj`
    state: State
    reason: str
    creator: Creator
    idle_for: int  # seconds since ctime/atime/dtime, whichever is latest
    last_user: Optional[Creator] = None  # lpid's process; None when nobody ever attached

    @property
    def obj(self) -> Segment:
        """The object judged (the field keeps its name from when shm was the only kind)."""
        return self.segment


Evidence = tuple[Creator, str]  # a process's liveness and a clause for the reason


def _creator(seg: Segment, facts: Mapping[int, Proc], clock: Clock) -> Evidence:
    pid = seg.cpid
    if pid == 0:
        return Creator(0, None, None), "creator not visible from this PID namespace (cpid 0)"
    alive, evidence, name = judge(pid, seg.ctime, facts, clock)
    return Creator(pid, alive, name), f"creator {evidence}"


def _last_user(seg: Segment, facts: Mapping[int, Proc], clock: Clock) -> Optional[Evidence]:
    """The last attacher/detacher's liveness, judged as of its last attach/detach; None
    when nobody ever attached (lpid 0, atime and dtime never set)."""
    touched = last_touch(seg)
    pid = seg.lpid
    if pid == 0:
        if touched is None:
            return None
        return Creator(0, None, None), "last user not visible from this PID namespace (lpid 0)"
    alive, evidence, name = judge(pid, touched or seg.ctime, facts, clock)
    return Creator(pid, alive, name), f"last user {evidence}"


def classify(seg: Segment, facts: Mapping[int, Proc], now: float,
             clock: Clock = NO_EVIDENCE) -> Verdict:  # fmt: skip
    """One verdict for `seg` given process facts looked up at about `now`, with start
    times computed from `clock.btime` (`clock` carries the evidence of clock steps)."""
    return _verdict(seg, _creator(seg, facts, clock), _last_user(seg, facts, clock), facts, now)


def _verdict(seg: Segment, creator_evidence: Evidence, user_evidence: Optional[Evidence],
             facts: Mapping[int, Proc], now: float) -> Verdict:  # fmt: skip
    creator, evidence = creator_evidence
    user, user_said = user_evidence or (None, "")
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
            user,
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
            user,
        )
    if seg.atime is None:
        quiet = f"never attached, created {format_age(int(now - seg.ctime))} ago"
    else:
        quiet = f"nobody attached for {format_age(idle_for)}"
    # Interned: a leak is often thousands of segments with one and the same reason.
    if creator.alive:
        reason = intern(f"{evidence}, may attach again; {quiet}")
        return Verdict(seg, State.IDLE, reason, creator, idle_for, user)
    if user is not None and user.alive:
        # A worker that attaches now and then outlives the process that made the
        # segment (ipcmk, a parent that exited): between uses nattch is 0.
        reason = intern(f"{user_said}, may attach again; {evidence}; {quiet}")
        return Verdict(seg, State.IDLE, reason, creator, idle_for, user)
    # The last user's clause, unless it is the creator's pid with the same answer.
    if user is not None and (user.pid != creator.pid or user.alive != creator.alive):
        evidence = f"{evidence}; {user_said}"
    if creator.alive is None or (user is not None and user.alive is None):
        return Verdict(seg, State.UNKNOWN, intern(f"{evidence}; {quiet}"), creator, idle_for,
                       user)  # fmt: skip
    return Verdict(seg, State.ORPHAN, intern(f"{evidence}; {quiet}"), creator, idle_for, user)


def classify_all(
    segments: Iterable[Segment], facts: Mapping[int, Proc], now: float, clock: Clock = NO_EVIDENCE
) -> list[Verdict]:
    """Verdicts for a whole table. A process's part of a verdict depends only on its pid
    and the moment judged (ctime for the creator, the last attach/detach for the last
    user), so it is worked out once per pair, not per segment."""
    creators: dict[tuple[int, int], Evidence] = {}
    users: dict[tuple[int, int], Optional[Evidence]] = {}
    verdicts = []
    for s in segments:
        k = (s.cpid, s.ctime)
        ce = creators.get(k)
        if ce is None:
            ce = creators[k] = _creator(s, facts, clock)
        touched = max(s.atime or 0, s.dtime or 0)  # last_touch, inlined: 32,000 calls
        if not touched and s.lpid == 0:
            ue = None  # never attached, as ipcmk leaves them
        else:
            u = (s.lpid, touched or s.ctime)
            ue = users[u] if u in users else users.setdefault(u, _last_user(s, facts, clock))
        verdicts.append(_verdict(s, ce, ue, facts, now))
    return verdicts
