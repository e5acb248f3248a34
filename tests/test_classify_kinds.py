"""The classifier's rules for any kind, as a pure function: parties (processes and
users), evidence that could not be read, and objects whose table names nobody.

A kind is whatever the registry hands classify (kinds.Kind). The rules are tested here
with a probe: a kind-shaped double registered as "probe" that says what the object it
is given carries, so every case the rules name can be built. It stands for no real
kind; sem and msg are tested with real objects in their own files.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple, Optional

import pytest

from shmjanitor import kinds, procs
from shmjanitor.classify import NOBODY, State, classify, classify_all
from shmjanitor.model import Creator, Party
from shmjanitor.procs import Proc, User

NOW = 1_700_010_000
T0 = 1_700_000_000


class Thing(NamedTuple):
    """An object of the probe kind: its evidence, as a kind module would read it."""

    id: int
    parties: tuple[Party, ...] = ()
    busy: Optional[str] = None  # in_use's clause
    unknowable: Optional[str] = None
    going: Optional[str] = None  # removing's clause
    ctime: int = T0
    size: int = 0

    @property
    def kind(self) -> str:
        return "probe"

    @property
    def last_used(self) -> int:
        return self.ctime


PROBE = SimpleNamespace(
    NAME="probe",
    VERB="use it",
    IN_USE_RULE="attached",
    parties=lambda o: o.parties,
    in_use=lambda o, name_of: o.busy,
    unknowable=lambda o: o.unknowable,
    removing=lambda o: o.going,
    quiet=lambda o, now: f"quiet for {int(now - o.ctime)}s",
)


@pytest.fixture(autouse=True)
def probe_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds._MODULES, "probe", "tests.probe")
    monkeypatch.setitem(kinds._loaded, "tests.probe", PROBE)  # type: ignore[arg-type]


OP = Party("last operator", 4242, T0 + 60, "sempid")
OP2 = Party("last operator", 77, T0 + 90, "sempid")
USER = Party("creating user", 0, T0, "cuid", uid=1000)
DEAD = {4242: Proc(4242, False, None, None), 77: Proc(77, False, None, None)}
ALIVE77 = {**DEAD, 77: Proc(77, True, T0, "worker")}
QUIET = "quiet for 10000s"


def test_no_party_is_an_orphan_with_only_the_quiet_clause():
    v = classify(Thing(1), {}, NOW)
    assert (v.state, v.reason) == (State.ORPHAN, QUIET)
    assert v.creator == NOBODY and v.last_user is None


def test_every_party_dead_is_an_orphan_naming_each():
    v = classify(Thing(1, (OP, OP2)), DEAD, NOW)
    assert v.state is State.ORPHAN
    assert v.reason == f"last operator 4242 exited; last operator 77 exited; {QUIET}"
    assert v.creator == Creator(4242, False, None) and v.last_user == Creator(77, False, None)


def test_the_first_live_party_makes_it_idle_after_the_earlier_ones():
    third = Party("last operator", 4242, T0 + 95, "sempid")
    v = classify(Thing(1, (OP, OP2, third)), ALIVE77, NOW)
    assert v.state is State.IDLE
    assert v.reason == f"last operator 77 (worker) alive, may use it again; last operator " \
                       f"4242 exited; {QUIET}"  # fmt: skip


def test_a_repeated_pid_with_the_same_answer_is_said_once():
    again = Party("last operator", 4242, T0 + 70, "sempid")
    v = classify(Thing(1, (OP, again)), DEAD, NOW)
    assert v.reason == f"last operator 4242 exited; {QUIET}"
    # The same pid with another answer is another process: both are said.
    recycled = {4242: Proc(4242, True, T0 + 65, "bash")}
    v = classify(Thing(1, (OP, again)), recycled, NOW)
    assert v.state is State.IDLE and v.reason.startswith("last operator 4242 (bash) alive")


def test_a_party_that_cannot_be_known_makes_it_unknown_never_orphan():
    hidden = {**DEAD, 77: Proc(77, None, None, None, procs.HIDDEN)}
    v = classify(Thing(1, (OP, OP2)), hidden, NOW)
    assert v.state is State.UNKNOWN
    assert "last operator 77 exists but is hidden" in v.reason and "4242 exited" in v.reason


def test_a_pid_0_party_is_not_visible_from_here():
    outside = Party("last operator", 0, T0 + 60, "sempid")
    v = classify(Thing(1, (outside,)), {}, NOW)
    assert v.state is State.UNKNOWN
    assert v.reason == f"last operator not visible from this PID namespace (sempid 0); {QUIET}"


def test_a_user_party_without_a_process_is_dead():
    v = classify(Thing(1, (USER,)), {}, NOW, users={1000: User(1000, False)})
    assert (v.state, v.reason) == (
        State.ORPHAN,
        f"creating user alice (1000) has no process left; {QUIET}",
    )


def test_a_user_party_with_a_process_is_unknown_not_idle():
    # Which of the user's processes used it (if any did) cannot be known.
    v = classify(Thing(1, (USER,)), {}, NOW, users={1000: User(1000, True, 812)})
    assert v.state is State.UNKNOWN
    assert v.reason == "creating user alice (1000) has processes (pid 812, ...); which of them used " \
                       f"it cannot be known; {QUIET}"  # fmt: skip


@pytest.mark.parametrize("user,says", [
    (User(1000, None, None, procs.HIDDEN), "its processes may be hidden (/proc mounted with "
                                           "hidepid)"),
    (User(1000, None, None, procs.FOREIGN), "/proc shows another PID namespace"),
    (None, "alice (1000) not looked up"),
])  # fmt: skip
def test_a_user_party_that_cannot_be_seen_is_unknown(user, says):
    v = classify(Thing(1, (USER,)), {}, NOW, users={} if user is None else {1000: user})
    assert v.state is State.UNKNOWN and says in v.reason, v.reason


def test_a_live_pid_party_wins_over_a_user_party():
    v = classify(Thing(1, (USER, OP2)), ALIVE77, NOW, users={1000: User(1000, False)})
    assert v.state is State.IDLE
    assert v.reason == f"last operator 77 (worker) alive, may use it again; creating user " \
                       f"alice (1000) has no process left; {QUIET}"  # fmt: skip


def test_unknowable_evidence_is_unknown_unless_a_party_lives():
    shut = "waiters cannot be read (no read permission)"
    v = classify(Thing(1, (OP,), unknowable=shut), DEAD, NOW)
    assert (v.state, v.reason) == (State.UNKNOWN, f"{shut}; last operator 4242 exited; {QUIET}")
    assert classify(Thing(1, (), unknowable=shut), {}, NOW).reason == f"{shut}; {QUIET}"
    assert classify(Thing(1, (OP2,), unknowable=shut), ALIVE77, NOW).state is State.IDLE


def test_removing_then_in_use_come_first():
    busy = Thing(1, (OP,), busy="1 waiting (pid 5)")
    assert (classify(busy, DEAD, NOW).state, classify(busy, DEAD, NOW).reason) == (
        State.ATTACHED, "1 waiting (pid 5)")  # fmt: skip
    going = busy._replace(going="IPC_RMID already called")
    assert classify(going, DEAD, NOW).state is State.REMOVING


def test_classify_all_is_classify_for_each_whatever_repeats():
    things = [Thing(1, (OP, OP2)), Thing(2, (OP, OP2)), Thing(3, (USER,)), Thing(4, (OP2,)),
              Thing(5), Thing(6, (USER, OP)), Thing(7, (OP,), unknowable="x")]  # fmt: skip
    users = {1000: User(1000, False)}
    assert classify_all(things, ALIVE77, NOW, users=users) == [
        classify(t, ALIVE77, NOW, users=users) for t in things
    ]
