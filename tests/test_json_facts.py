"""A kind's json_facts (kinds/sem.py, kinds/msg.py) writes its FACTS as JSON in one
call, for speed (issue 12: list --json of 32,000 queues): the text must be the one
shapes.FactsJson makes of the same FACTS one call per fact, for every value a field
can hold, and the whole object the one json.dumps makes of shapes.facts_json.

Every test runs in its own IPC namespace (conftest).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Optional

import sysv_ipc
from hypothesis import given
from hypothesis import strategies as st

from shmjanitor import kinds, shapes, survey
from shmjanitor.kinds.msg import Queue
from shmjanitor.kinds.sem import SemSet
from shmjanitor.render import _encode, json_string
from shmjanitor.waiters import Blocked

WHOLE = st.integers(min_value=0, max_value=2**63)
TIME = st.one_of(st.none(), st.integers(min_value=1, max_value=2**40))


def one_by_one(kind: Any, o: Any) -> str:
    """What shapes.FactsJson writes of a kind without json_facts."""
    return "".join(f"{json_string(f.json)}:{shapes._json_value(f.get(o))}," for f in kind.FACTS)


@st.composite
def sem_sets(draw: Any) -> SemSet:
    nsems = draw(st.integers(min_value=1, max_value=4))
    unreadable = draw(st.booleans())  # EACCES: every fact None
    facts: tuple[Optional[tuple[int, ...]], ...] = (None, None, None)
    each = st.lists(st.sampled_from([0, 1, 7, 4242, 2**22]), min_size=nsems, max_size=nsems)
    if not unreadable:
        facts = tuple(tuple(draw(each)) for _ in range(3))
    return SemSet(draw(WHOLE), draw(WHOLE), 0o600, nsems, 0, 0, 0, 0, draw(TIME), draw(WHOLE),
                  *facts)  # fmt: skip


@st.composite
def queues(draw: Any) -> Queue:
    blocked = tuple(Blocked(p, p, "msgrcv", None) for p in draw(st.lists(WHOLE, max_size=3)))
    return Queue(draw(WHOLE), draw(WHOLE), 0o600, draw(WHOLE), draw(WHOLE), draw(WHOLE),
                 draw(WHOLE), 0, 0, 0, 0, draw(TIME), draw(TIME), draw(WHOLE),
                 draw(st.one_of(st.none(), WHOLE)), blocked)  # fmt: skip


@given(sem_sets())
def test_a_sets_facts_in_one_call_are_the_facts_one_by_one(s: SemSet) -> None:
    kind = kinds.of("sem")
    assert kind.json_facts(s) == one_by_one(kind, s)  # type: ignore[attr-defined]


@given(queues())
def test_a_queues_facts_in_one_call_are_the_facts_one_by_one(q: Queue) -> None:
    kind = kinds.of("msg")
    assert kind.json_facts(q) == one_by_one(kind, q)  # type: ignore[attr-defined]


def test_real_sets_and_queues_are_written_as_json_dumps_writes_them() -> None:
    """Sets and queues as the kernel has them (never used, operated on by a process that
    exited, holding messages): each object's text is json.dumps of facts_json."""
    subprocess.run(["ipcmk", "-S", "3"], check=True, capture_output=True)
    used = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, initial_value=2)
    used.acquire()  # a semop: otime and a sempid of ours
    q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX)
    q.send(b"held", type=3)
    sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX)  # empty, never used
    verdicts = survey.take(kinds=["sem", "msg"]).verdicts
    assert sorted(v.obj.kind for v in verdicts) == ["msg", "msg", "sem", "sem"]
    for v in verdicts:
        kind = kinds.kind_of(v.obj)
        text = shapes.FactsJson(kind)(v)
        assert text == _encode(shapes.facts_json(kind, v))
        assert json.loads(text)["kind"] == v.obj.kind
