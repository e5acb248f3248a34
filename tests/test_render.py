"""Renderers as pure functions of verdicts (no kernel needed)."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

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


HOSTILE = "[/]\x1b]0;pwn\x07\x1b[2K\r[bold]\udcff"  # rich markup, escapes, a non-UTF-8 byte


def test_cells_escape_names_and_reasons_the_same_fast_or_slow():
    v = verdict(
        seg={"cpid": 7},
        creator=Creator(7, True, HOSTILE),
        state=State.IDLE,
        reason=f"by ({HOSTILE})",
    )
    for row in (cells(v, False), Cells(False)(v)):
        assert row[6:8] == ("7", "[/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff")
        assert row[11] == "by ([/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff)"
    out = io.StringIO()
    plain([v], False, out)
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert json.loads(_encode(segment_json(v)))["creator"]["name"] == HOSTILE
    assert SegmentJson()(v).isascii()


def test_reap_report_prints_hostile_text_as_text():
    from shmjanitor import report
    from shmjanitor.reaping import Outcome
    from shmjanitor.remove import Action, Result
    from shmjanitor.scan import Limits
    from shmjanitor.survey import Survey

    v = verdict(state=State.IDLE, reason=f"creator 7 ({HOSTILE}) alive")
    o = Outcome(Survey([v], Limits(None, None, None), 0.0),
                [Result(v, Action.KEPT, v.reason)], False, [f"segment 7: {HOSTILE}"])  # fmt: skip
    table, problems = io.StringIO(), io.StringIO()
    report.table(o, table, problems, verbose=True, width=300)  # a "[/]" is no markup here
    assert "[/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff" in table.getvalue()
    assert "\x1b" not in table.getvalue()  # colour only when asked for
    assert problems.getvalue() == "problem: segment 7: [/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff\n"
    out, err = io.StringIO(), io.StringIO()
    report.log(o, out, err, verbose=True)
    line = report.log_line(o.results[0])
    assert line.endswith('reason="creator 7 ([/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff) alive"')
    assert line in out.getvalue().splitlines()
    assert err.getvalue() == "problem: segment 7: [/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff\n"


def test_streamed_log_lines_and_notes_escape_too():
    from shmjanitor import report
    from shmjanitor.reaping import Outcome
    from shmjanitor.remove import Action, Result
    from shmjanitor.scan import Limits
    from shmjanitor.survey import Survey

    v = verdict(state=State.IDLE, reason=f"creator 7 ({HOSTILE}) alive")
    r = Result(v, Action.KEPT, v.reason)
    out, err = io.StringIO(), io.StringIO()
    log = report.Logger(out, err, verbose=True)
    log.result(r)
    log.note(f"set aside {HOSTILE}.json")
    log.finish(Outcome(Survey([v], Limits(None, None, None), 0.0), [r], False, [HOSTILE]))
    assert out.getvalue().splitlines()[0] == report.log_line(r)
    assert err.getvalue().splitlines() == [
        "shmjanitor: note: set aside [/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff.json",
        "problem: [/]\\x1b]0;pwn\\x07\\x1b[2K\\r[bold]\\xff",
    ]


WORDS = st.text(alphabet="abcdefghij;,()", min_size=1, max_size=30)


@given(
    reasons=st.lists(st.lists(WORDS, min_size=1, max_size=25).map(" ".join), min_size=1,
                     max_size=6),
    names=st.lists(st.text(alphabet="xyz _-", min_size=1, max_size=40), min_size=6, max_size=6),
    width=st.integers(min_value=45, max_value=200),
)  # fmt: skip
def test_a_fitted_table_never_overflows_and_loses_no_word_of_the_reason(reasons, names, width):
    """The table at any width from 45 columns: no line longer, and each reason, wrapped,
    is its words in order (a word longer than the column is split, never dropped)."""
    from shmjanitor.layout import draw
    from shmjanitor.render import COLUMNS, DEFAULT

    rows = []
    for i, reason in enumerate(reasons):
        v = verdict(seg={"id": 10**i, "size": 7**i}, creator=Creator(1, True, names[i]),
                    reason=reason)  # fmt: skip
        rows.append(Cells(False, one_word=False)(v))
    lines = draw([COLUMNS[c].layout for c in DEFAULT], rows, width)
    assert all(len(line) <= width for line in lines)
    start = lines[0].index("REASON")
    shown: list[str] = []
    for line in lines[1:]:
        if line[:start].strip():
            shown.append(line[start:])
        else:
            shown[-1] += " " + line[start:]  # a continuation: blank left of REASON
    assert len(shown) == len(reasons)
    for got, want in zip(shown, reasons):
        assert "".join(got.split()) == "".join(want.split())
