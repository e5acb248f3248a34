"""Process facts for the pids a table mentions: alive, dead, or unknown, and since when.

One psutil lookup per distinct *live* pid. Which pids are alive at all comes from a
single listing of /proc (as psutil.pids() reads it): a pid missing from it has exited, so
32,000 segments left by 32,000 dead creators cost one directory read, not 32,000 lookups,
and a table of orphans only does not even import psutil (a third of start-up).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, Optional


class Proc(NamedTuple):
    """What we know about one pid at the time we looked."""

    pid: int
    alive: Optional[bool]  # None: cannot be known (access denied, hidden by hidepid)
    started: Optional[float]  # psutil create_time(), epoch seconds
    name: Optional[str]
    note: Optional[str] = None  # "zombie", "access denied", "hidden by hidepid"


def _procfs_hides_others(mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """True when /proc is mounted with hidepid=1/2/invisible/noaccess and we are not root.

    Then other users' processes are missing from /proc although alive: their absence
    proves nothing (systemd's ProtectProc=invisible does the same).
    """
    if os.geteuid() == 0:
        return False
    try:
        for line in mountinfo.read_text().splitlines():
            parts = line.split(" - ", 1)
            if len(parts) != 2 or parts[0].split()[4] != "/proc":
                continue
            for opt in parts[1].split()[2].split(","):
                if opt.startswith("hidepid=") and opt.split("=", 1)[1] not in ("0", "off"):
                    return True
    except (OSError, IndexError):
        return False
    return False


def look_up(pids: Iterable[int]) -> dict[int, Proc]:
    """Facts for each distinct pid (0, the "not visible" pid, is skipped)."""
    wanted = {pid for pid in pids if pid > 0}
    live = _live_pids()
    hidden = _procfs_hides_others()
    facts: dict[int, Proc] = {}
    for pid in wanted:
        if pid not in live:
            if hidden:
                facts[pid] = Proc(pid, None, None, None, "hidden by hidepid")
            else:
                facts[pid] = Proc(pid, False, None, None)
            continue
        facts[pid] = _one(pid)
    return facts


def _live_pids(proc: str = "/proc") -> set[int]:
    """Every pid /proc lists now (the same listing as psutil.pids())."""
    return {int(name) for name in os.listdir(proc) if name.isdigit()}


def _one(pid: int) -> Proc:
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            # A zombie has exited: it can never attach again, only its parent's wait()
            # is pending. psutil may report it through status() or ZombieProcess.
            if p.status() == psutil.STATUS_ZOMBIE:
                return Proc(pid, False, p.create_time(), p.name(), "zombie")
            return Proc(pid, True, p.create_time(), p.name())
    except psutil.ZombieProcess:
        return Proc(pid, False, None, None, "zombie")
    except psutil.NoSuchProcess:
        # Listed a moment ago, gone now: it exited while we looked.
        return Proc(pid, False, None, None)
    except psutil.AccessDenied:
        # Exists, but we may not look: never call that dead.
        return Proc(pid, None, None, None, "access denied")
