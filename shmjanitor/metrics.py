"""Prometheus metrics for node_exporter's textfile collector, written atomically.

prometheus_client does the exposition format and the atomic write (temp file, then
rename), so a scrape never sees half a file. It is imported only when --metrics-file is
given: start-up of a plain `list` does not pay for it.

Objects of every kind are counted in shmjanitor_objects{kind,state} and their bytes in
shmjanitor_object_bytes{kind,state} (kind: "shm", "sem", "msg", "posix-shm",
"posix-sem", "posix-mqueue": every registered kind; state: the five
states). shmjanitor_segments{state} and shmjanitor_segment_bytes{state} stay as they
were, the shm kind's alone, so that dashboards and alerts written for them keep
meaning what they meant. The last_run_* gauges are the run's totals over the kinds it
reaped.

POSIX objects have paths, and the largest are named: shmjanitor_posix_largest_bytes
{kind,path,state} for at most LARGEST of them by bytes held (a bounded set of series,
however many files a machine has; the path escaped as `list` prints it: a name is any
bytes its creator chose).

shmjanitor_last_run_success is 1 exactly when the run exits 0: every failure (lock
timeout, unreadable table, bad config, a crash, output that could not be written)
writes 0 and the time, so an alert on it fires for all of them (cli.errors_as_exit).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

from shmjanitor.classify import State, Verdict
from shmjanitor.errors import MetricsError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MetricsError", "RunStats", "write"]

LARGEST = 10  # POSIX objects named by path in the metrics, the largest first
SEGMENTS = "shm"  # the kind shmjanitor_segments{state} counts (named before there were kinds)


class RunStats(NamedTuple):
    """What a reap run did, for the last_run_* metrics."""

    removed: int
    removed_bytes: int
    kept: int
    success: bool


def write(path: Path, verdicts: Optional[Sequence[Verdict]], run: Optional[RunStats],
          now: float, success: bool = True) -> None:  # fmt: skip
    """Write objects and bytes per kind and state (after the run), and the run's outcome.

    `verdicts` None: a run that failed before it knew the segments writes only
    shmjanitor_last_run_success (0) and the time, rather than stale counts.
    """
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    from shmjanitor import kinds

    reg = CollectorRegistry()
    if verdicts is not None:
        # Every registered kind and state, zeros included: a series that vanishes when
        # the last orphan goes would leave an alert on it pending, not resolved.
        counts = {(k, s): [0, 0] for k in kinds.names() for s in State}
        for v in verdicts:
            c = counts[v.obj.kind, v.state]
            c[0] += 1
            c[1] += v.obj.size
        objs = Gauge("shmjanitor_objects", "IPC objects (System V and POSIX) by kind and state",
                     ["kind", "state"], registry=reg)  # fmt: skip
        size = Gauge("shmjanitor_object_bytes", "Bytes IPC objects hold in memory, by kind "
                     "and state", ["kind", "state"], registry=reg)  # fmt: skip
        for (kind, state), (n, b) in counts.items():
            objs.labels(kind, state.value).set(n)
            size.labels(kind, state.value).set(b)
        segs = Gauge("shmjanitor_segments", "System V shm segments by state", ["state"],
                     registry=reg)  # fmt: skip
        seg_bytes = Gauge("shmjanitor_segment_bytes", "Bytes of System V shm segments by state",
                          ["state"], registry=reg)  # fmt: skip
        for state in State:
            n, b = counts.get((SEGMENTS, state), (0, 0))
            segs.labels(state.value).set(n)
            seg_bytes.labels(state.value).set(b)
        _largest(reg, verdicts)
    if run is not None:
        Gauge("shmjanitor_last_run_removed_segments", "Objects the last reap removed (all "
              "kinds)", registry=reg).set(run.removed)  # fmt: skip
        Gauge("shmjanitor_last_run_removed_bytes", "Bytes the last reap freed",
              registry=reg).set(run.removed_bytes)  # fmt: skip
        Gauge("shmjanitor_last_run_kept_orphans", "Orphans the last reap kept (policy)",
              registry=reg).set(run.kept)  # fmt: skip
        success = run.success
    Gauge("shmjanitor_last_run_success", "1 if the last run did all it planned",
          registry=reg).set(1 if success else 0)  # fmt: skip
    Gauge("shmjanitor_last_run_timestamp_seconds", "When the last run ended (epoch)",
          registry=reg).set(now)  # fmt: skip
    try:
        write_to_textfile(str(path), reg)
    except OSError as e:
        raise MetricsError(f"cannot write metrics file {path}: {e.strerror}") from None


def _largest(reg: CollectorRegistry, verdicts: Sequence[Verdict]) -> None:
    """The LARGEST POSIX objects by bytes held, by kind, path and state."""
    from prometheus_client import Gauge

    from shmjanitor.text import printable

    named = [v for v in verdicts if getattr(v.obj, "path", None) is not None]
    named.sort(key=lambda v: (-v.obj.size, v.obj.path))
    g = Gauge("shmjanitor_posix_largest_bytes", f"Bytes held by the {LARGEST} largest POSIX "
              "objects, by kind, path (escaped) and state", ["kind", "path", "state"],
              registry=reg)  # fmt: skip
    for v in named[:LARGEST]:
        g.labels(v.obj.kind, printable(v.obj.path), v.state.value).set(v.obj.size)


def write_doctor(path: Path, checks: Sequence[tuple[str, int]], now: float) -> None:
    """`doctor --metrics-file`: shmjanitor_doctor_check{check} is each check's worst
    severity (0 ok, 1 warning, 2 error), so a fleet alerts on `> 0` per check, and
    shmjanitor_doctor_timestamp_seconds says when (an alert on its age finds a doctor
    that stopped running)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    reg = CollectorRegistry()
    gauge = Gauge("shmjanitor_doctor_check", "shmjanitor doctor: 0 ok, 1 warning, 2 error",
                  ["check"], registry=reg)  # fmt: skip
    worst: dict[str, int] = {}
    for check, severity in checks:
        worst[check] = max(severity, worst.get(check, 0))
    for check, severity in worst.items():
        gauge.labels(check).set(severity)
    Gauge("shmjanitor_doctor_timestamp_seconds", "When shmjanitor doctor last ran (epoch)",
          registry=reg).set(now)  # fmt: skip
    try:
        write_to_textfile(str(path), reg)
    except OSError as e:
        raise MetricsError(f"cannot write metrics file {path}: {e.strerror}") from None
