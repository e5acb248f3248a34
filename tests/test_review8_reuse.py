"""Adversarial review (review8) of the reuse of verdicts and parties (classify_all,
survey.parties_of) and of Tables.packed: random tables of segments mixed with sets and
queues, equal neighbours and near-equal ones, against each object judged alone."""

from __future__ import annotations

import pickle
import random

from shmjanitor import survey
from shmjanitor.classify import classify, classify_all
from shmjanitor.kinds import msg, sem, shm
from shmjanitor.procs import Proc
from tests.test_classify import NOW, T0, seg

FACTS = {
    4242: Proc(4242, False, None, None),
    77: Proc(77, True, T0 + 30, "worker"),
    78: Proc(78, None, None, None, "hidden"),
    79: Proc(79, False, T0 - 5, "z", "zombie"),
}
DOMAIN = {
    "mode": [0o600, 0o1600, 0o2600], "cpid": [4242, 77, 78, 0], "lpid": [0, 77, 79],
    "nattch": [0, 1], "atime": [None, T0 + 5, T0 + 700], "dtime": [None, T0 + 5],
    "ctime": [T0, T0 + 1], "size": [1, 4096], "uid": [0, 1000], "rss": [None, 0],
}  # fmt: skip


def _segment(rng: random.Random, prev):
    if prev is not None and rng.random() < 0.6:  # a neighbour: equal but for one or two
        kw = {f: rng.choice(v) for f, v in DOMAIN.items() if rng.random() < 0.15}
        return prev._replace(key=rng.randrange(9), id=rng.randrange(9), **kw)
    return seg(key=rng.randrange(9), id=rng.randrange(9),
               **{f: rng.choice(v) for f, v in DOMAIN.items()})  # fmt: skip


def _other(rng: random.Random):
    if rng.random() < 0.5:
        return sem.SemSet(1, 2, 0o600, 1, 1000, 1000, 1000, 1000, None, T0, (0,), (0,), (0,))
    return msg.Queue(1, 2, 0o600, 0, 0, rng.choice([0, 77]), 0, 1000, 1000, 1000, 1000,
                     None, None, T0, 16384)  # fmt: skip


def _tables(rng: random.Random) -> list:
    out: list = []
    prev = None
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.15:
            out.append(_other(rng))
        else:
            prev = _segment(rng, prev)
            out.append(prev)
    return out


def _parties(objs: list) -> list:
    """As survey.read does: parties_of over each run of one kind."""
    out: list = []
    run: list = []
    for o in objs + [None]:
        if run and (o is None or type(o) is not type(run[0])):
            k = {shm.Segment: shm, sem.SemSet: sem, msg.Queue: msg}[type(run[0])]
            out += survey.parties_of(k, run)
            run = []
        if o is not None:
            run.append(o)
    return out


def test_reused_verdicts_and_parties_are_those_made_alone():
    rng = random.Random(8)
    for _ in range(4000):
        objs = _tables(rng)
        alone = [classify(o, FACTS, NOW) for o in objs]
        assert classify_all(objs, FACTS, NOW) == alone, objs
        ps = _parties(objs)
        kinds = {shm.Segment: shm, sem.SemSet: sem, msg.Queue: msg}
        assert ps == [kinds[type(o)].parties(o) for o in objs]
        got = classify_all(objs, FACTS, NOW, parties=ps)
        assert got == alone
        assert all(v.segment is o for v, o in zip(got, objs))  # each its own object
        back = survey.Tables.unpacked(pickle.loads(pickle.dumps(survey.Tables(objs, ps).packed())))
        assert [(type(o), o, tuple(map(type, o))) for o in back.objects] == \
               [(type(o), o, tuple(map(type, o))) for o in objs]  # fmt: skip
        assert classify_all(back.objects, FACTS, NOW, parties=back.parties) == alone


def test_row_runs_cover_exactly_the_rows_given_with_their_values():
    from shmjanitor.history import row_runs

    rng = random.Random(5)
    for _ in range(5000):
        pairs = [(rng.randrange(40), rng.randrange(2)) for _ in range(rng.randrange(12))]
        want = dict(sorted(set(pairs)))  # a row given twice: the larger value, as sorted
        got: dict[int, int] = {}
        for first, last, value in row_runs(pairs):
            for r in range(first, last + 1):
                assert r not in got or len({v for rr, v in pairs if rr == r}) > 1
                got[r] = value
        assert got == want, pairs
