"""inside.run_all, the way `list -A` reads every namespace: a few children that each enter
their places one after another (setns), rather than a child per namespace.

The namespaces here are made by the test (`unshare --ipc` and a process that makes a
number of segments and stays), and the places are built by hand from them: run_all
enters only the places it is given, never a namespace the test did not make (no sweep
of /proc, so no sealed world is needed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from shmjanitor import inside, namespaces
from shmjanitor.errors import JanitorError
from shmjanitor.namespaces import Namespace, Place

# A holder: makes argv[1] segments in the IPC namespace unshare gave it, says so, stays.
HOLDER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
for _ in range(int(sys.argv[1])):
    if libc.shmget(0, 4096, 0o1000 | 0o2000 | 0o600) < 0:
        sys.exit("shmget failed")
print("ready", flush=True)
time.sleep(1000)
"""


class Holder:
    def __init__(self, segments: int) -> None:
        self.segments = segments
        self.proc = subprocess.Popen(["unshare", "--ipc", sys.executable, "-c", HOLDER,
                                      str(segments)], stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.ipc = os.stat(f"/proc/{self.proc.pid}/ns/ipc").st_ino
        self.place = Place(Namespace(self.ipc, self.proc.pid, None), True, pids=(self.proc.pid,))

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    if os.geteuid() != 0:
        pytest.skip("setns(2) into another IPC namespace needs CAP_SYS_ADMIN")
    made: list[Holder] = []
    try:
        for k in range(1, 6):
            made.append(Holder(k))
        yield made
    finally:
        for h in made:
            h.end()


def ours() -> Place:
    ipc = namespaces.own_ipc()
    return Place(Namespace(ipc, os.getpid(), None, own=True), True, pids=(os.getpid(),))


def where(_place: Place) -> tuple[int, int, int]:
    """The job: the namespace it runs in, the segments it sees there, and who runs it."""
    with open("/proc/sysvipc/shm") as f:
        rows = len(f.read().splitlines()) - 1
    return os.stat("/proc/self/ns/ipc").st_ino, rows, os.getpid()


def test_each_place_is_read_inside_its_own_namespace_by_a_few_children(
    holders: list[Holder],
) -> None:
    me, before = os.getpid(), namespaces.own_ipc()
    places = [ours(), *(h.place for h in holders)]
    came: list[int] = []

    def slow(place: Place) -> tuple[int, int, int]:
        # the children take places from a queue as they are done with one: a job long
        # enough that one child cannot take them all before the other is ready
        time.sleep(0.05)
        return where(place)

    got = inside.run_all(places, slow, workers=2, each=lambda xs: came.extend(i for i, _ in xs))
    assert got[0] == (before, 0, me)  # ours: read here, in our namespace
    for h, (ipc, rows, pid) in zip(holders, got[1:]):
        assert (ipc, rows) == (h.ipc, h.segments), "a place read in another's namespace"
        assert pid != me  # never this process: it does not change namespace
    assert len({pid for _, _, pid in got[1:]}) == 2  # two children for five places
    assert sorted(came) == list(range(len(places)))  # each answer handed over once
    assert namespaces.own_ipc() == before
    left = {c.pid for c in psutil.Process().children()} - {h.proc.pid for h in holders}
    assert not left, f"children left: {left}"


def test_a_child_that_is_slow_takes_fewer_places(holders: list[Holder]) -> None:
    """The places go to the children as each is done with one (inside._taken): the
    child held up at its first place answers that one alone, the other answers the
    rest (fails with a fixed share each: three and two)."""
    slow = holders[0].ipc

    def job(place: Place) -> tuple[int, int, int]:
        if place.ns.ipc == slow:
            time.sleep(0.5)
        else:
            time.sleep(0.02)
        return where(place)

    got = inside.run_all([h.place for h in holders], job, workers=2)
    for h, (ipc, rows, _) in zip(holders, got):
        assert (ipc, rows) == (h.ipc, h.segments)
    held_up = got[0][2]
    assert [pid for _, _, pid in got].count(held_up) == 1, got


def test_too_many_places_for_one_write_are_shared_out_fixed(holders, monkeypatch) -> None:
    """More places than one write of the queue holds (PIPE_BUF, 4 bytes a place): each
    child gets a fixed share, and every place is still answered once, in its own."""
    monkeypatch.setattr(inside.select, "PIPE_BUF", 8)  # two places' worth
    got = inside.run_all([h.place for h in holders], where, workers=2)
    for h, (ipc, rows, _) in zip(holders, got):
        assert (ipc, rows) == (h.ipc, h.segments)
    pids = [pid for _, _, pid in got]
    assert pids[0::2] == [pids[0]] * 3 and pids[1::2] == [pids[1]] * 2 != [pids[0]] * 2


def test_a_place_that_ended_is_vanished_and_a_killed_child_is_died(
    holders: list[Holder],
) -> None:
    holders[1].end()  # ended before it was entered: nobody holds it
    victim = holders[2].ipc

    def job(place: Place) -> Any:
        if place.ns.ipc == victim:
            os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, say
        return where(place)

    got = inside.run_all([h.place for h in holders], job, workers=1)
    assert got[0][:2] == (holders[0].ipc, 1)
    assert isinstance(got[1], inside.Vanished)
    # The one child had the victim's place and those after it: said, not waited for.
    assert all(isinstance(g, inside.Died) for g in got[2:]), got


class Refused(JanitorError):
    """A foreseeable failure inside a namespace (pickled back: defined at module level)."""


def test_a_failing_job_fails_its_own_place_only(holders: list[Holder]) -> None:
    def job(place: Place) -> Any:
        if place is holders[1].place:
            raise ValueError("a bug")
        if place is holders[2].place:
            raise Refused("said to the user as it is")
        return where(place)

    got = inside.run_all([h.place for h in holders], job, workers=2)
    assert isinstance(got[1], RuntimeError) and "ValueError: a bug" in str(got[1])
    assert isinstance(got[2], Refused) and str(got[2]) == "said to the user as it is"
    for i in (0, 3, 4):
        assert got[i][:2] == (holders[i].ipc, holders[i].segments)


class _Stopped(BaseException):
    """As cli._Interrupted: raised by a signal handler, the signal it was for."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


def test_a_signal_to_the_parent_alone_is_passed_on_and_the_childs_answer_said(holders, tmp_path):
    """restore's parent gets SIGTERM (its handler raises) while its child works inside a
    namespace: the child is told, stops as it would itself, and the parent says what the
    child did (stopped), not something of its own over a job that went on."""
    done = tmp_path / "done"

    def job() -> str:
        import time

        for _ in range(100):  # 10 s at most: the signal comes long before
            time.sleep(0.1)
        done.write_text("finished")
        return "finished"

    def raising(signum: int, _frame: Any) -> None:
        raise _Stopped(signum)

    old = signal.signal(signal.SIGTERM, raising)
    timer = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -TERM {os.getpid()}"])
    try:
        with pytest.raises(_Stopped) as stopped:
            inside.run(holders[0].place, job)
    finally:
        signal.signal(signal.SIGTERM, old)
        timer.wait()
    assert stopped.value.signum == signal.SIGTERM
    assert not done.exists()  # the child stopped: the job did not go on unsaid
