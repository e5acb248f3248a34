"""Renderers as pure functions of verdicts (no kernel needed)."""

from __future__ import annotations

import io
import json

from shmjanitor.classify import Creator, State, Verdict
from shmjanitor.render import Cells, SegmentJson, _encode, cells, plain, segment_json
from shmjanitor.scan import Segment


def verdict(**kw) -> Verdict:
    seg = dict(key=0xFFFFFFFF, id=7, mode=0o3600, size=1, cpid=0, lpid=9, nattch=2, uid=0,
               gid=5, cuid=1, cgid=2, atime=None, dtime=17, ctime=3, rss=None, swap=0)  # fmt: skip
    seg.update(kw.pop("seg", {}))
    base = dict(segment=Segment(**seg), state=State.REMOVING,
                reason='odd "quotes", \\ back\\slash, tab\t and ünïcödé ✓',
                creator=Creator(4242, None, 'na"me\n'), idle_for=12)  # fmt: skip
    base.update(kw)
    return Verdict(**base)


def test_fast_json_text_is_the_schema_dicts_encoding():
    cases = [
        verdict(),
        verdict(creator=Creator(1, True, "server"), state=State.IDLE, reason="plain"),
        verdict(creator=Creator(1, False, None), seg={"atime": 5, "rss": 4096, "mode": 0o600}),
        verdict(seg={"uid": 4_000_000_000, "swap": None}),  # no passwd entry: owner is the number
        verdict(state=State.IDLE, reason="plain", last_user=Creator(9, True, "worker")),
        verdict(state=State.UNKNOWN, reason="plain", last_user=Creator(0, None, None)),
    ]
    # One encoder for all, twice over, as list --json uses it: the parts it reuses must
    # be those of the right verdict; and one that remembers a single part at a time.
    for encode in (SegmentJson(), SegmentJson(keep=1)):
        for v in cases + cases[::-1]:
            text = encode(v)
            assert text == _encode(segment_json(v))
            assert json.loads(text) == segment_json(v)


def test_plain_aligns_every_column_but_the_reason():
    out = io.StringIO()
    plain([verdict(), verdict(seg={"id": 123456, "size": 10**9})], False, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    starts = [line.index("removing") for line in lines[1:]]
    assert starts[0] == starts[1] and lines[0].index("STATE") == starts[0]
    assert lines[2].split()[4] == "953.7M" and lines[1].endswith("ünïcödé ✓")


def test_fast_cells_are_the_plain_cells():
    cases = [
        verdict(),
        verdict(creator=Creator(1, True, "server"), state=State.IDLE, reason="plain"),
        verdict(creator=Creator(1, False, None), seg={"atime": 5, "mode": 0o600}),
        verdict(seg={"uid": 4_000_000_000, "size": 10**9}),
    ]
    for exact in (False, True):
        for make in (Cells(exact), Cells(exact, keep=1)):
            assert [make(v) for v in cases + cases[::-1]] == [
                cells(v, exact) for v in cases + cases[::-1]
            ]
