"""The join: the kernel's table plus process facts, classified. One read of each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple, Optional

from shmjanitor import liveness, procs, scan
from shmjanitor.classify import State, Verdict, classify_all


class Survey(NamedTuple):
    verdicts: list[Verdict]
    limits: scan.Limits
    taken_at: float


def take(path: Path = scan.PROC_SHM, now: Optional[float] = None,
         state_dir: Optional[Path] = None, record: bool = False) -> Survey:  # fmt: skip
    """Read the table first, then look at processes: a process that dies in between is
    seen dead, and one whose pid is reused in between is caught by its start time.

    The clock evidence (liveness.observe) is read from `state_dir` (None: the default
    state directory), and written back there with `record` (reap and rm, not dry runs).
    """
    segments = scan.read(path)
    clock = liveness.observe(state_dir, record)
    pids = {pid for s in segments for pid in (s.cpid, s.lpid)}
    facts = procs.look_up(pids, clock.btime or None)  # 0: no btime, no start times
    taken_at = time.time() if now is None else now
    return Survey(classify_all(segments, facts, taken_at, clock), scan.read_limits(), taken_at)


class Tally(NamedTuple):
    segments: int
    bytes: int


def by_state(verdicts: list[Verdict]) -> dict[State, Tally]:
    """Count and bytes per state, every state present (zeros included) in enum order."""
    counts = {s: [0, 0] for s in State}
    for v in verdicts:
        c = counts[v.state]
        c[0] += 1
        c[1] += v.segment.size
    return {s: Tally(n, b) for s, (n, b) in counts.items()}
