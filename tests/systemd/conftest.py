"""Tests of the systemd units. The `e2e` ones boot a container (see nspawn.py)."""

from __future__ import annotations


def pytest_configure(config):  # type: ignore[no-untyped-def]
    config.addinivalue_line(
        "markers",
        "e2e: slow end-to-end test that boots a Debian container under systemd-nspawn "
        "(needs root, systemd-container and debootstrap; see scripts/ci-deps)",
    )
