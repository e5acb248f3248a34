"""Tests of the systemd units. The `e2e` ones boot a container (see nspawn.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# nspawn.py sits next to this file; make it importable whatever pytest's rootdir is.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):  # type: ignore[no-untyped-def]
    config.addinivalue_line(
        "markers",
        "e2e: slow end-to-end test that boots a Debian container under systemd-nspawn "
        "(needs root, systemd-container and debootstrap; see scripts/ci-deps)",
    )
