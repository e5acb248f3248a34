"""Prometheus metrics for node_exporter's textfile collector, written atomically.

prometheus_client does the exposition format and the atomic write (temp file, then
rename), so a scrape never sees half a file. It is imported only when --metrics-file is
given: start-up of a plain `list` does not pay for it. Labels are the five states only.

shmjanitor_last_run_success is 1 exactly when the run exits 0: every failure (lock
timeout, unreadable table, bad config, a crash, output that could not be written)
writes 0 and the time, so an alert on it fires for all of them (cli.errors_as_exit).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

from shmjanitor.classify import Verdict
from shmjanitor.errors import MetricsError
from shmjanitor.survey import by_state

__all__ = ["MetricsError", "RunStats", "write"]


class RunStats(NamedTuple):
    """What a reap run did, for the last_run_* metrics."""

    removed: int
    removed_bytes: int
    kept: int
    success: bool


def write(path: Path, verdicts: Optional[Sequence[Verdict]], run: Optional[RunStats],
          now: float, success: bool = True) -> None:  # fmt: skip
    """Write segments and bytes per state (after the run), and the run's outcome.

    `verdicts` None: a run that failed before it knew the segments writes only
    shmjanitor_last_run_success (0) and the time, rather than stale counts.
    """
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    reg = CollectorRegistry()
    if verdicts is not None:
        segs = Gauge("shmjanitor_segments", "System V shm segments by state", ["state"],
                     registry=reg)  # fmt: skip
        size = Gauge("shmjanitor_segment_bytes", "Bytes of System V shm segments by state",
                     ["state"], registry=reg)  # fmt: skip
        for state, tally in by_state(list(verdicts)).items():
            segs.labels(state.value).set(tally.segments)
            size.labels(state.value).set(tally.bytes)
    if run is not None:
        Gauge("shmjanitor_last_run_removed_segments", "Segments the last reap removed",
              registry=reg).set(run.removed)  # fmt: skip
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
