"""docs/alerts.yml is valid Prometheus and its alerts fire when they should (promtool).

alerts-test.yml plays recorded series of a few lab machines through every rule: each
alert is checked just before it may fire (nothing) and after (exactly the hosts and
checks that should, with their labels and texts).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "docs" / "alerts.yml"

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus; see scripts/ci-deps)",
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=HERE)


def test_rules_check() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout


def test_every_rule_is_tested() -> None:
    """A rule added to docs/alerts.yml without a case in alerts-test.yml fails here."""
    rules = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"^\s*alertname: (\w+)$", (HERE / "alerts-test.yml").read_text(),
                            re.MULTILINE))  # fmt: skip
    assert len(rules) == 9
    assert rules == tested


def test_rules_fire_as_documented() -> None:
    r = promtool("test", "rules", "alerts-test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
