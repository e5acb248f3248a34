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

Every per-state gauge (the four above) also has `namespace` and `container` labels
(issue 14): the IPC namespace's inode ("4026531839") and its container or unit ("" when
none). A machine with 500 containers must not make 500 times the series: the TOP
namespaces with the most bytes keep their own labels, our own always among them, and
the rest are summed into namespace="other", container="other" (a series set only while
there is a rest). The largest POSIX objects carry their own namespace's labels.

shmjanitor_last_run_success is 1 exactly when the run exits 0: every failure (lock
timeout, unreadable table, bad config, a crash, output that could not be written)
writes 0 and the time, so an alert on it fires for all of them (cli.errors_as_exit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

from shmjanitor.classify import State, Verdict
from shmjanitor.errors import MetricsError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MetricsError", "RunStats", "write"]

LARGEST = 10  # POSIX objects named by path in the metrics, the largest first
TOP = 10  # namespaces with labels of their own, the most bytes first (ours always)
OTHER = ("other", "other")  # the (namespace, container) labels of the rest
SEGMENTS = "shm"  # the kind shmjanitor_segments{state} counts (named before there were kinds)


class RunStats(NamedTuple):
    """What a reap run did, for the last_run_* metrics."""

    removed: int
    removed_bytes: int
    kept: int
    success: bool


def labelled(sizes: Mapping[int, int], own: int, top: int = TOP) -> set[int]:
    """The namespaces (inodes) that keep their own labels: `own` and the top - 1 others
    holding the most bytes (`sizes`: inode -> bytes), ties by inode. Pure."""
    others = sorted((ipc for ipc in sizes if ipc != own), key=lambda ipc: (-sizes[ipc], ipc))
    return {own, *others[: max(top - 1, 0)]}


def _labels(verdicts: Sequence[Verdict]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Each verdict's (namespace, container) labels, and every label pair to write
    (zeros included): ours, the top others, and "other" when some were folded."""
    from shmjanitor.render import ours

    me = ours()
    named: dict[int, str] = {me.ipc: me.container or ""}
    sizes: dict[int, int] = {me.ipc: 0}
    of: list[int] = []
    for v in verdicts:
        ns = v.ns or me
        ipc = ns.ipc
        if ipc not in named:
            named[ipc] = ns.container or ""
            sizes[ipc] = 0
        sizes[ipc] += v.obj.size
        of.append(ipc)
    keep = labelled(sizes, me.ipc, TOP)
    pair = {ipc: (str(ipc), named[ipc]) if ipc in keep else OTHER for ipc in named}
    every = sorted({pair[ipc] for ipc in keep}) + ([OTHER] if len(keep) < len(named) else [])
    return [pair[ipc] for ipc in of], every


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
        # ... in every labelled namespace.
        each, every = _labels(verdicts)
        counts = {(k, s, ns): [0, 0] for k in kinds.names() for s in State for ns in every}
        for v, ns in zip(verdicts, each):
            c = counts[v.obj.kind, v.state, ns]
            c[0] += 1
            c[1] += v.obj.size
        where = ["namespace", "container"]
        objs = Gauge("shmjanitor_objects", "IPC objects (System V and POSIX) by kind and state",
                     ["kind", "state", *where], registry=reg)  # fmt: skip
        size = Gauge("shmjanitor_object_bytes", "Bytes IPC objects hold in memory, by kind "
                     "and state", ["kind", "state", *where], registry=reg)  # fmt: skip
        for (kind, state, ns), (n, b) in counts.items():
            objs.labels(kind, state.value, *ns).set(n)
            size.labels(kind, state.value, *ns).set(b)
        segs = Gauge("shmjanitor_segments", "System V shm segments by state",
                     ["state", *where], registry=reg)  # fmt: skip
        seg_bytes = Gauge("shmjanitor_segment_bytes", "Bytes of System V shm segments by state",
                          ["state", *where], registry=reg)  # fmt: skip
        for state in State:
            for ns in every:
                n, b = counts.get((SEGMENTS, state, ns), (0, 0))
                segs.labels(state.value, *ns).set(n)
                seg_bytes.labels(state.value, *ns).set(b)
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

    from shmjanitor.render import ns_of
    from shmjanitor.text import printable

    named = [v for v in verdicts if getattr(v.obj, "path", None) is not None]
    named.sort(key=lambda v: (-v.obj.size, v.obj.path))
    g = Gauge("shmjanitor_posix_largest_bytes", f"Bytes held by the {LARGEST} largest POSIX "
              "objects, by kind, path (escaped), state and namespace",
              ["kind", "path", "state", "namespace", "container"], registry=reg)  # fmt: skip
    for v in named[:LARGEST]:
        # Its own namespace's labels, never "other": two containers' /dev/shm/x are two.
        ns = ns_of(v)
        g.labels(v.obj.kind, printable(v.obj.path), v.state.value, str(ns.ipc),
                 ns.container or "").set(v.obj.size)  # fmt: skip


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
