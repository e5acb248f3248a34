"""Adversarial review (review8): a benchmark floor makes the calls its target must make,
not more (benchmarks/bench.py: floors are the least a Python CLI could do)."""

from __future__ import annotations

import ctypes
import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shmjanitor import kernel
from shmjanitor.kinds import sem

_LIBC = ctypes.CDLL(None)
BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Counting:
    """libc as the floor program sees it: semctl counted by command, then called."""

    def __init__(self, calls: Counter[int]) -> None:
        self._libc, self._calls = _LIBC, calls

    def semctl(self, *args: Any) -> int:
        self._calls[args[2]] += 1
        return int(self._libc.semctl(*args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._libc, name)


def test_the_sem_list_floor_makes_the_semctl_calls_list_makes_and_no_more(monkeypatch):
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(3):  # sets of one, as the benchmark's orphans
        assert libc.semget(0, 1, 0o1600) >= 0
    tool: Counter[int] = Counter()
    fast = kernel.semctl_no_errno

    def counted(*args: Any) -> int:
        tool[args[2]] += 1
        return int(fast(*args))

    monkeypatch.setattr(kernel, "semctl_no_errno", counted)
    assert len(sem.read()) == 3  # what `list -s` reads: the table, then with_facts
    floor: Counter[int] = Counter()
    monkeypatch.setattr(ctypes, "CDLL", lambda *_a, **_k: _Counting(floor))
    pytest.importorskip("typer")
    exec(_bench().floor_list("sem"), {"__name__": "floor"})  # noqa: S102
    assert floor == tool, f"floor's semctl commands {dict(floor)}, list's {dict(tool)}"
