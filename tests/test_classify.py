"""The classifier as a pure function: segments + process facts + now -> verdicts."""

from __future__ import annotations

from shmjanitor.classify import State, classify
from shmjanitor.procs import Proc
from shmjanitor.scan import Segment

NOW = 1_700_010_000
T0 = 1_700_000_000  # segment created 2 h 46 min before NOW


def seg(**kw) -> Segment:
    base = dict(key=0x1234, id=1, mode=0o600, size=4096, cpid=4242, lpid=0, nattch=0,
                uid=1000, gid=1000, cuid=1000, cgid=1000, atime=None, dtime=None, ctime=T0,
                rss=0, swap=0)  # fmt: skip
    base.update(kw)
    return Segment(**base)


ALIVE = {4242: Proc(4242, True, T0 - 100, "server")}
DEAD = {4242: Proc(4242, False, None, None)}


def test_dest_marked_is_removing_whatever_else():
    v = classify(seg(mode=0o1600, nattch=1), DEAD, NOW)
    assert v.state is State.REMOVING and "SHM_DEST" in v.reason


def test_attached_wins_over_a_dead_creator():
    v = classify(
        seg(nattch=2, lpid=77, atime=T0 + 5), {**DEAD, 77: Proc(77, True, T0, "client")}, NOW
    )
    assert v.state is State.ATTACHED
    assert v.reason == "2 attached; last attach/detach by pid 77 (client)"


def test_alive_creator_is_idle_and_says_so():
    v = classify(seg(atime=T0 + 60, dtime=T0 + 120), ALIVE, NOW)
    assert v.state is State.IDLE
    assert v.reason.startswith("creator 4242 (server) alive")
    assert "nobody attached for 2 h 44 min" in v.reason
    assert v.idle_for == NOW - (T0 + 120)
    assert v.creator.alive is True and v.creator.name == "server"


def test_dead_creator_is_orphan():
    v = classify(seg(), DEAD, NOW)
    assert v.state is State.ORPHAN
    assert v.reason == "creator 4242 exited; never attached, created 2 h 46 min ago"
    assert v.creator.alive is False and v.creator.name is None


def test_zombie_creator_is_dead():
    v = classify(seg(), {4242: Proc(4242, False, T0 - 5, "server", "zombie")}, NOW)
    assert v.state is State.ORPHAN and "zombie" in v.reason


def test_recycled_pid_is_seen_through():
    later = {4242: Proc(4242, True, T0 + 3 * 3600, "bash")}
    v = classify(seg(), later, NOW)
    assert v.state is State.ORPHAN
    assert "creator 4242 exited; pid now used by a process started 3 h later" in v.reason


def test_start_within_clock_slack_is_the_same_process():
    v = classify(seg(), {4242: Proc(4242, True, T0 + 1.5, "server")}, NOW)
    assert v.state is State.IDLE


def test_invisible_creator_is_unknown_never_orphan():
    v = classify(seg(cpid=0), {}, NOW)
    assert v.state is State.UNKNOWN and "cpid 0" in v.reason


def test_access_denied_is_unknown():
    v = classify(seg(), {4242: Proc(4242, None, None, None, "access denied")}, NOW)
    assert v.state is State.UNKNOWN and "access denied" in v.reason


def test_hidepid_hides_others_but_not_our_own():
    hidden = {4242: Proc(4242, None, None, None, "hidden by hidepid")}
    assert classify(seg(cuid=2000), hidden, NOW, viewer_uid=1000).state is State.UNKNOWN
    assert classify(seg(cuid=1000), hidden, NOW, viewer_uid=1000).state is State.ORPHAN
