"""The classifier as a pure function: segments + process facts + now -> verdicts."""

from __future__ import annotations

from shmjanitor import procs
from shmjanitor.classify import Creator, State, classify, classify_all
from shmjanitor.kinds import shm
from shmjanitor.liveness import Clock
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
    assert "nobody attached for 2h44m" in v.reason
    assert v.idle_for == NOW - (T0 + 120)
    assert v.creator.alive is True and v.creator.name == "server"


def test_dead_creator_is_orphan():
    v = classify(seg(), DEAD, NOW)
    assert v.state is State.ORPHAN
    assert v.reason == "creator 4242 exited; never attached, created 2h46m ago"
    assert v.creator.alive is False and v.creator.name is None


def test_zombie_creator_is_dead():
    v = classify(seg(), {4242: Proc(4242, False, T0 - 5, "server", "zombie")}, NOW)
    assert v.state is State.ORPHAN and "zombie" in v.reason


def test_recycled_pid_is_seen_through():
    later = {4242: Proc(4242, True, T0 + 3 * 3600, "bash")}
    v = classify(seg(), later, NOW)
    assert v.state is State.ORPHAN
    assert "creator 4242 exited; pid now used by a process started 3h later" in v.reason


def test_start_within_clock_slack_is_the_same_process():
    v = classify(seg(), {4242: Proc(4242, True, T0 + 1.5, "server")}, NOW)
    assert v.state is State.IDLE


def test_invisible_creator_is_unknown_never_orphan():
    v = classify(seg(cpid=0), {}, NOW)
    assert v.state is State.UNKNOWN and "cpid 0" in v.reason


def test_access_denied_is_unknown():
    v = classify(seg(), {4242: Proc(4242, None, None, None, "access denied")}, NOW)
    assert v.state is State.UNKNOWN and "access denied" in v.reason


def test_hidden_by_hidepid_is_unknown_whoever_owns_it():
    # procs.look_up asks kill(2) about a pid hidepid hides: "hidden" means it exists.
    # Our own uid's processes can be hidden too (root without CAP_SYS_PTRACE does not
    # see its own processes that hold more capabilities), so the owner changes nothing.
    hidden = {4242: Proc(4242, None, None, None, procs.HIDDEN)}
    for cuid in (0, 1000, 2000):
        v = classify(seg(cuid=cuid), hidden, NOW)
        assert v.state is State.UNKNOWN, v
        assert "creator 4242 exists but is hidden (/proc mounted with hidepid)" in v.reason


def test_another_pid_namespaces_proc_is_unknown():
    v = classify(seg(), {4242: Proc(4242, None, None, None, procs.FOREIGN)}, NOW)
    assert v.state is State.UNKNOWN and "another PID namespace" in v.reason


def test_zombie_leader_with_running_threads_is_alive():
    leader = {4242: Proc(4242, True, T0 - 5, "worker", procs.LEADER_EXITED)}
    v = classify(seg(), leader, NOW)
    assert v.state is State.IDLE
    assert v.reason.startswith("creator 4242 (worker) alive; main thread exited")


# -- the last user (lpid): nobody may be using it ---------------------------------------

USED = dict(lpid=77, atime=T0 + 600, dtime=T0 + 660)  # last detach 11 min after ctime


def test_live_last_user_keeps_it_idle_though_the_creator_exited():
    v = classify(seg(**USED), {**DEAD, 77: Proc(77, True, T0 + 30, "worker")}, NOW)
    assert v.state is State.IDLE
    assert v.reason.startswith(
        "last user 77 (worker) alive, may attach again; creator 4242 exited; nobody attached"
    )
    assert v.last_user == Creator(77, True, "worker") and v.creator.alive is False


def test_dead_creator_and_dead_last_user_is_orphan_and_says_both():
    v = classify(seg(**USED), {**DEAD, 77: Proc(77, False, None, None)}, NOW)
    assert v.state is State.ORPHAN
    assert v.reason.startswith("creator 4242 exited; last user 77 exited; nobody attached")


def test_last_user_started_after_its_last_touch_is_a_recycled_pid():
    later = {**DEAD, 77: Proc(77, True, T0 + 660 + 3600, "bash")}
    v = classify(seg(**USED), later, NOW)
    assert v.state is State.ORPHAN
    assert "last user 77 exited; pid now used by a process started 1h later" in v.reason


def test_last_user_that_is_the_creator_is_said_once():
    v = classify(seg(lpid=4242, atime=T0 + 5, dtime=T0 + 6), DEAD, NOW)
    assert v.state is State.ORPHAN
    assert v.reason.startswith("creator 4242 exited; nobody attached")


def test_same_pid_new_process_is_not_the_creator_but_may_be_the_last_user():
    # The creator exited; its pid went to a process that started after ctime and then
    # attached and detached: that one is alive and may attach again.
    v = classify(seg(lpid=4242, **{k: USED[k] for k in ("atime", "dtime")}),
                 {4242: Proc(4242, True, T0 + 300, "worker")}, NOW)  # fmt: skip
    assert v.state is State.IDLE
    assert v.reason.startswith("last user 4242 (worker) alive, may attach again; creator 4242 "
                               "exited; pid now used by a process started 5m later")  # fmt: skip


def test_unknown_last_user_is_unknown_never_orphan():
    for facts, words in (
        ({**DEAD, 77: Proc(77, None, None, None, procs.HIDDEN)}, "last user 77 exists but is"),
        ({**DEAD, 77: Proc(77, None, None, None, procs.DENIED)}, "last user 77: access denied"),
    ):
        v = classify(seg(**USED), facts, NOW)
        assert v.state is State.UNKNOWN and words in v.reason, v.reason


def test_attached_from_another_pid_namespace_is_unknown():
    # lpid 0 with an attach time: the last user is outside our PID namespace.
    v = classify(seg(lpid=0, atime=T0 + 5, dtime=T0 + 9), DEAD, NOW)
    assert v.state is State.UNKNOWN and "lpid 0" in v.reason


def test_never_attached_has_no_last_user():
    v = classify(seg(), DEAD, NOW)
    assert v.state is State.ORPHAN and v.last_user is None


# -- clock steps: a start time a step could explain is "cannot know" ----------------------

STEPPED = {4242: Proc(4242, True, T0 + 3600, "server")}  # seems to start 1 h after ctime


def test_a_recorded_step_explains_a_late_start():
    stepped = Clock(btime=T0 - 86400 + 3600, earliest=T0 - 86400)  # boot time moved 1 h
    v = classify(seg(), STEPPED, NOW, stepped)
    assert v.state is State.UNKNOWN
    assert "which a step of the clock this boot (1h forward) could explain" in v.reason


def test_a_step_too_small_to_explain_it_leaves_recycling():
    small = Clock(btime=T0 - 86400 + 60, earliest=T0 - 86400)
    assert classify(seg(), STEPPED, NOW, small).state is State.ORPHAN
    assert classify(seg(), STEPPED, NOW).state is State.ORPHAN  # no evidence at all


def test_a_segment_older_than_the_boot_proves_a_step():
    after = Clock(btime=T0 + 100, earliest=T0 + 100)  # no record, but ctime < btime
    v = classify(seg(), STEPPED, NOW, after)
    assert v.state is State.UNKNOWN
    assert "the clock was stepped forward at least 1m40s since" in v.reason


def test_the_last_users_moment_is_judged_against_the_clock_too():
    stepped = Clock(btime=T0 - 86400 + 7200, earliest=T0 - 86400)
    facts = {**DEAD, 77: Proc(77, True, T0 + 660 + 3600, "worker")}
    assert classify(seg(**USED), facts, NOW, stepped).state is State.UNKNOWN
    assert classify(seg(**USED), facts, NOW).state is State.ORPHAN


def test_classify_all_is_classify_for_each():
    segs = [seg(), seg(id=2, **USED), seg(id=3, lpid=4242, atime=T0 + 1, dtime=T0 + 2),
            seg(id=4, cpid=77), seg(id=5, nattch=1, **USED), seg(id=6, **USED)]  # fmt: skip
    facts = {**DEAD, 77: Proc(77, True, T0 + 30, "worker")}
    clock = Clock(T0 - 50, T0 - 80)
    assert classify_all(segs, facts, NOW, clock) == [classify(s, facts, NOW, clock) for s in segs]


# Values that change a verdict, field by field, and some that do not (kinds/shm.py
# EVIDENCE names the fields a verdict is read from besides its parties).
CHANGES = {
    "key": [0, 0xFFFFFFFF], "id": [2, 32769], "mode": [0o1600, 0o2600, 0o644],
    "size": [1, 1 << 40], "cpid": [0, 77, 78], "lpid": [0, 78, 4242], "nattch": [0, 1, 3],
    "uid": [0], "gid": [0], "cuid": [0], "cgid": [0], "atime": [None, T0 + 700, T0 + 5000],
    "dtime": [None, T0 + 5000], "ctime": [T0 - 86_400, T0 + 1, T0 + 650], "rss": [None, 8192],
    "swap": [None, 4096],
}  # fmt: skip


def test_a_verdict_is_reused_only_for_a_neighbour_equal_in_every_evidence():
    """classify_all gives a segment the verdict of the one before it when they differ
    only in fields no rule reads; a field that changes a verdict, changed alone between
    two neighbours, still changes it (fails when EVIDENCE lacks mode, lpid, nattch or
    atime, and when the parties are the same, lpid, dtime or ctime)."""
    assert set(CHANGES) == set(Segment._fields)
    facts = {**DEAD, 77: Proc(77, True, T0 + 30, "worker"), 78: Proc(78, True, T0, "other")}
    bases = [seg(**USED), seg(nattch=2, **USED), seg(), seg(mode=0o1600, nattch=1, **USED)]
    for base in bases:
        for field, values in CHANGES.items():
            for value in values:
                for pair in ([base, base._replace(**{field: value})],
                             [base._replace(**{field: value}), base]):  # fmt: skip
                    alone = [classify(s, facts, NOW) for s in pair]
                    assert classify_all(pair, facts, NOW) == alone, (field, value, pair)
                    # the same parties for both (as a caller may hand them): the
                    # fields the parties are made of are evidence of their own too
                    ps = [shm.parties(base)] * 2
                    alone = [classify_all([s], facts, NOW, parties=ps[:1])[0] for s in pair]
                    assert classify_all(pair, facts, NOW, parties=ps) == alone, (field, value)
    # and reused it is, for a leak's segments (one verdict's reason, not an equal one)
    leak = [seg(id=i, key=i, size=4096 * i, **USED) for i in range(1, 4)]
    verdicts = classify_all(leak, facts, NOW)
    assert verdicts == [classify(s, facts, NOW) for s in leak]
    assert verdicts[0].reason is verdicts[1].reason is verdicts[2].reason


def test_neighbours_differing_in_attaches_or_times_have_their_own_verdicts():
    facts = {**DEAD, 77: Proc(77, True, T0 + 30, "worker")}
    idle, attached = classify_all([seg(**USED), seg(nattch=1, **USED)], facts, NOW)
    assert (idle.state, attached.state) == (State.IDLE, State.ATTACHED)
    old, recent = classify_all([seg(**USED), seg(**{**USED, "dtime": NOW - 5})], DEAD, NOW)
    assert old.idle_for != recent.idle_for and old.reason != recent.reason


def test_neighbours_equal_in_evidence_but_given_other_parties_have_their_own_verdicts():
    """classify_all reuses a verdict only for the very parties of the object before:
    parties handed in for each object count, whatever the objects' fields say."""
    facts = {**DEAD, 77: Proc(77, True, T0 + 30, "worker")}
    a, b = seg(**USED), seg(id=2, **USED)
    ps = [shm.parties(a), shm.parties(a)[:1]]  # the second: no last user
    got = classify_all([a, b], facts, NOW, parties=ps)
    assert got == [classify_all([s], facts, NOW, parties=[p])[0] for s, p in zip([a, b], ps)]
    assert (got[0].state, got[1].state) == (State.IDLE, State.ORPHAN)
