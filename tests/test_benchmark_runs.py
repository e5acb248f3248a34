"""The benchmark script runs end to end at a small N and reports every figure.

No timing is asserted here (the suite must not depend on the machine's speed): only that
benchmarks/bench.py still works and prints the table the README and docs rely on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_ROOT

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"

FIGURES = (
    "start-up: list --json, no segments",
    "list --json, 40 segments",
    "list to a file, 40 segments",
    "peak RSS, list (--json and plain), 40 segments",
    "list --json, 40 distinct dead creators",
    "scaling: list --json, 40 vs 5",
    "list on a terminal, 5 segments",
    "reap --no-quarantine, 40 orphans",
    "reap with quarantine, 40 orphans",
    "sem: list --json, 40 orphans",
    "sem: reap --no-quarantine, 40 orphans",
    "msg: list --json, 40 orphans",
    "msg: reap --no-quarantine, 40 orphans",
    "posix: list --json, 400 objects x 10 holders",
    "history: list --json recording, 40 segments known",
    "ns: list -A --json, 10 namespaces x 10 segments",
)
INFORMATION = (  # shown with no target
    "floor: python, typer, read and int(), 40 rows",
    "peak RSS, list (--json and plain), 40 distinct creators",
    "floor: + IPC_STAT and IPC_RMID each, 40 orphans",
    "floor: + the last instant's calls, 40 orphans",
    "sem: floor: python, typer, read, int() and the semctl calls, 40 orphans",
    "sem: floor: + the last instant's calls, 40 orphans",
    "msg: floor: python, typer, read, int() and the msgctl calls, 40 orphans",
    "msg: floor: + the last instant's calls, 40 orphans",
    "reap with quarantine, 40 written orphans",
    "sem: list --json vs lsipc, 40 orphans",
    "sem: reap with quarantine, 40 orphans",
    "msg: list --json vs lsipc, 40 orphans",
    "msg: reap with quarantine, 40 orphans",
    "posix: list --json, 40 objects x 10 holders",
    "posix: list --json, 400 objects x 40 holders",
    "posix scaling: x10 objects (400 vs 40, 10 holders)",
    "posix scaling: x4 holders (40 vs 10, 400 objects)",
    "history: first list --json, 40 new rows",
    "ns: list -A --json vs ipcs, 10 namespaces x 10",
)


def test_benchmark_runs_at_small_n(tmp_path: Path) -> None:
    """Every row, on the default path: the checkout installed into a fresh venv (of
    the interpreter running the suite, which has the venv module wherever the suite
    runs; the default, /usr/bin/python3, may lack it)."""
    if not REAL_ROOT:
        pytest.skip("the benchmark makes segments as uid 1000: needs real root")
    docs = tmp_path / "benchmarks.md"
    p = subprocess.run(
        [sys.executable, str(BENCH), "--n", "40", "--runs", "1", "--workers", "2",
         "--docs", str(docs), "--python", sys.executable],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    for name in FIGURES:
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith(name)), None)
        assert line is not None, f"{name!r} missing from:\n{p.stdout}"
        assert line.rstrip().endswith(("yes", "NO")), line
    for name in INFORMATION:
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith(name)), None)
        assert line is not None and line.split()[-2:] == ["-", "-"], line
    assert f"of {len(FIGURES)} hold" in p.stdout
    assert "orphans made: 40 by one process" in p.stdout
    text = docs.read_text()
    assert "python benchmarks/bench.py --n 40" in text
    assert all(name in text for name in FIGURES + INFORMATION)
    assert "Linux " in text and "Python " in text
    # What was timed is a fresh non-editable install, not this checkout's venv.
    assert f"a fresh venv of {sys.executable}" in text and "not editable" in text
    # The script's namespaces were its own: ours is as empty as the fixture made it.
    assert Path("/proc/sysvipc/shm").read_text().count("\n") == 1
