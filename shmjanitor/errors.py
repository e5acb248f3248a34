"""Domain errors: each carries a message a user can act on and the exit code it maps to.

Exit codes (documented in the README):
  0  everything went as planned (including nothing to do)
  1  the job could not be done in full: a removal failed, `rm` refused a segment,
     another reaper held the lock for too long
  2  usage, configuration or input error: bad flags, a bad config file, no
     /proc/sysvipc/shm, a table that cannot be parsed. Nothing is removed.
"""

from __future__ import annotations


class JanitorError(Exception):
    """A foreseeable failure: printed as one line, never as a traceback."""

    exit_code = 2


class NoSysvIpc(JanitorError):
    """/proc/sysvipc/shm is absent: not Linux, or a kernel without System V IPC."""


class CorruptTable(JanitorError):
    """/proc/sysvipc/shm could not be read or parsed completely."""


class ConfigError(JanitorError):
    """The configuration file or a flag value is unusable."""


class LockTimeout(JanitorError):
    """Another reaper kept the lock longer than we were willing to wait."""

    exit_code = 1


class StateDirError(JanitorError):
    """The state directory (quarantine) cannot be used."""


class SaveFailed(OSError):
    """One quarantine copy could not be written (disk full, I/O error). The data file
    was cut back to where it was, so the run goes on with the other segments."""
