"""Where shmjanitor keeps its state: one rule for the quarantine, the clock record and
a user's lock. Standard library only: `list` reads the clock record and must not pay
for importing the quarantine (its config and TOML parser: ~40 ms)."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """$STATE_DIRECTORY under systemd, /var/lib/shmjanitor for root, else XDG's."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/shmjanitor")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "shmjanitor"
