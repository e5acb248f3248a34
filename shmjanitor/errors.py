"""Domain errors: each carries a message a user can act on and the exit code it maps to.

Exit codes (documented in the README; shmjanitor.cli turns every failure into one line
on stderr and one of these, never a traceback):
  0    everything went as planned (including nothing to do)
  1    the job could not be done in full: a removal failed, `rm` kept or refused a
       segment it was asked for, another reaper held the lock for too long, a metrics
       file or the output could not be written
  2    usage, configuration or input error: bad flags, a bad config file, no
       /proc/sysvipc/shm, a table that cannot be parsed, standard output closed.
       Nothing is removed.
  70   a bug in shmjanitor (an exception nobody foresaw; EX_SOFTWARE of sysexits.h)
  75   `reap --if-owner-gone`: the owner still has a process (another job), so nothing
       was removed: not now, by design (EX_TEMPFAIL of sysexits.h: try again later; the
       epilog of their last job will)
  141  the reader of standard output went away (`list | head -1`), as 128 + SIGPIPE
       from ipcs or lsipc
"""

from __future__ import annotations

EXIT_BUG = 70
EXIT_OWNER_PRESENT = 75
EXIT_BROKEN_PIPE = 141


class JanitorError(Exception):
    """A foreseeable failure: printed as one line, never as a traceback."""

    exit_code = 2


class NoSysvIpc(JanitorError):
    """/proc/sysvipc/shm is absent: not Linux, or a kernel without System V IPC."""


class CorruptTable(JanitorError):
    """/proc/sysvipc/shm could not be read or parsed completely."""


class ConfigError(JanitorError):
    """The configuration file or a flag value is unusable."""


class OutputClosed(JanitorError):
    """Standard output is closed (`>&-`): a run would have nowhere to say what it did."""


class LockTimeout(JanitorError):
    """Another reaper kept the lock longer than we were willing to wait."""

    exit_code = 1


class MetricsError(JanitorError):
    """The metrics file cannot be written."""

    exit_code = 1


class StateDirError(JanitorError):
    """The state directory (quarantine) cannot be used."""


class SaveFailed(OSError):
    """One quarantine copy could not be written (disk full, I/O error). The data file
    was cut back to where it was, so the run goes on with the other segments."""
