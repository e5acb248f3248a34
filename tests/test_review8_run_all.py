"""Adversarial review (review8) of run_all's queue of places (inside._taken)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from shmjanitor import inside
from shmjanitor.namespaces import Place
from tests.test_run_all import Holder, holders, where  # noqa: F401 (fixture)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_child_killed_mid_way_loses_its_own_place_only_and_no_fd_is_left(holders):  # noqa: F811
    """With the queue, the child SIGKILLed at one place loses that one; the other child
    takes every place left (a fixed share lost the killed child's later places too).
    No pipe or namespace fd is left open here, and no child left behind."""
    victim = holders[1].ipc
    before = _fds()

    def job(place: Place) -> Any:
        if place.ns.ipc == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.03)
        return where(place)

    got = inside.run_all([h.place for h in holders], job, workers=2)
    assert isinstance(got[1], inside.Died), got
    for i in (0, 2, 3, 4):
        assert got[i][:2] == (holders[i].ipc, holders[i].segments), got
    assert _fds() == before
    mine = {h.proc.pid for h in holders}
    left = [c for c in __import__("psutil").Process().children() if c.pid not in mine]
    assert not left, left


def test_every_place_is_answered_once_in_its_own_namespace_many_times(holders):  # noqa: F811
    before = _fds()
    for _ in range(30):
        places = [h.place for h in holders] * 3  # the same namespace at several places
        got = inside.run_all(places, where, workers=2)
        for p, (ipc, _rows, _pid) in zip(places, got):
            assert ipc == p.ns.ipc
        assert _fds() == before
