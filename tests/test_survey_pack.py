"""What a sweep's child sends its parent (survey.Tables.packed): the same objects come
back, of the same types, field by field; what repeats comes back as one object only
where a kind says its fields are plain ints and None (kinds/shm.py PLAIN)."""

from __future__ import annotations

import pickle

from shmjanitor import survey
from shmjanitor.kinds import msg, shm
from tests.test_scan import HEADER16, row


def _sent(tables: survey.Tables) -> survey.Tables:
    return survey.Tables.unpacked(pickle.loads(pickle.dumps(tables.packed(), protocol=5)))


def _typed(objects: list) -> list:
    """Each object with the type of each field: 1 == True and 0 == 0.0, not these."""
    return [(type(o), o, tuple(map(type, o))) for o in objects]


TABLE = "\n".join([HEADER16, row(key=1, shmid=0), row(key=2, shmid=1),
                   row(key=3, shmid=2, cpid=7, atime=1700000100, lpid=7),
                   row(key=4, shmid=3), row(key=-5, shmid=32771, rss=0, perms="1600")])  # fmt: skip


def test_segments_come_back_as_they_were_and_equal_fields_as_one_object():
    segs = shm.parse(TABLE + "\n")
    # PLAIN's promise: every field of a parsed segment is an int or None, exactly
    assert {type(f) for s in segs for f in s} == {int, type(None)}
    tables = survey.Tables(segs, list(map(shm.parties, segs)))
    back = _sent(tables)
    assert _typed(back.objects) == _typed(segs)
    assert back.parties == tables.parties
    first, second, other, fourth = back.objects[:4]
    assert first.ctime is second.ctime is fourth.ctime  # one object, sent once
    assert first.key is not second.key and other.atime is not first.atime


def test_a_kind_not_plain_keeps_each_field_as_it_was():
    """A queue's fields are not said PLAIN: 0, False and 0.0 (equal, and so one
    dict key) stay what each object had (fails when every kind's are shared)."""
    q = msg.Queue(1, 2, 0o600, 0, 0, 0, 0, 1000, 1000, 1000, 1000, None, None, 1700000000)
    queues = [q, q._replace(key=2, id=3, cbytes=False, qnum=0.0), q._replace(key=3, id=4)]
    back = _sent(survey.Tables(queues, [msg.parties(x) for x in queues]))
    assert _typed(back.objects) == _typed(queues)


def test_parties_are_reused_only_for_a_neighbour_equal_in_every_evidence():
    """survey.parties_of hands a segment the parties of the one before it when their
    EVIDENCE is equal; a field that changes a party, changed alone, still changes it
    (fails when EVIDENCE lacks cpid, lpid, atime, dtime or ctime)."""
    from tests.test_classify import CHANGES, USED, seg

    for base in (seg(**USED), seg(), seg(nattch=1, **USED)):
        for field, values in CHANGES.items():
            for value in values:
                pair = [base, base._replace(**{field: value})]
                for two in (pair, pair[::-1]):
                    assert survey.parties_of(shm, two) == [shm.parties(s) for s in two], field
    leak = [seg(id=i, key=i, size=i) for i in range(3)]
    got = survey.parties_of(shm, leak)
    assert got[0] is got[1] is got[2]  # one call for a leak, one tuple
