"""`list` over kinds: the flags that choose them, the JSON document's arrays, and the
shape every kind but segments is shown in (from its FACTS), checked on real segments.

Segments keep their documented table and JSON (tests/test_list.py, test_columns.py);
the generic shape is what semaphore sets and message queues get, tried here on the
one kind that exists in this tree's registry for sure, with real objects.
"""

from __future__ import annotations

import io
import json

import pytest
from segments import Spec, attach, cli, list_json, make

from shmjanitor import kinds, render, shapes, survey
from shmjanitor.render import _encode

FLAGS = {"shm": ("-m", "--shm"), "sem": ("-s", "--sem"), "msg": ("-q", "--msg")}


@pytest.fixture
def some():
    """An orphan with a key the kernel prints negative, one attached, one never used."""
    make(Spec(key=0x88000001, size=5000, touch=True))
    busy = make(Spec(key=0x3333)).ids[0]
    attach(busy)
    make(Spec())


def arrays(doc: dict) -> list[str]:  # type: ignore[type-arg]
    return [k for k in doc if k != "summary"]


def test_every_registered_kind_is_listed_by_default_in_registry_order(some):
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc)[-1] == "summary"
    # One array per kind, but the POSIX kinds share "posix" (shapes.Shape.array).
    assert arrays(doc) == list(dict.fromkeys(shapes.of(n).array for n in kinds.names()))
    assert len(doc["segments"]) == 3


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_a_kind_flag_lists_that_kind_alone_or_says_it_is_not_known(some, kind):
    for flag in FLAGS[kind]:
        r = cli("list", "--json", flag)
        if kind in kinds.names():
            assert r.exit_code == 0, r.output
            doc = json.loads(r.stdout)
            assert arrays(doc) == [kinds.of(kind).PLURAL]
        else:
            assert r.exit_code == 2 and "this shmjanitor does not list" in r.output, r.output


def test_shm_flag_and_no_flag_give_the_same_segments_and_summary(some):
    default, chosen = (json.loads(cli("list", "--json", *a).stdout) for a in ((), ("-m",)))
    assert [s["id"] for s in default["segments"]] == [s["id"] for s in chosen["segments"]]
    for key in ("segments", "bytes", "pages", "shmmni", "shmall", "states"):
        assert default["summary"][key] == chosen["summary"][key]
    r = cli("list", "--format", "plain", "-m")
    assert r.stdout.splitlines()[0].split()[:3] == ["KEY", "ID", "OWNER"]  # no section line


def test_state_has_no_short_form_any_more(some):
    assert cli("list", "--json", "--state", "orphan").exit_code == 0
    r = cli("list", "--json", "-s", "orphan")
    assert r.exit_code == 2, r.output  # -s is --sem: "orphan" is no argument of list


def test_output_names_the_columns_of_one_kind():
    r = cli("list", "-m", "-q", "-o", "ID,STATE")
    assert r.exit_code == 2
    assert "-q/--msg" in r.output, r.output  # either unknown here, or one kind too many


# -- the shape of every other kind, tried on segments -------------------------------


def generic() -> shapes.Facts:
    return shapes.Facts(kinds.of("shm"))


def test_a_kinds_json_is_its_facts_beside_the_shared_fields(some):
    kind = kinds.of("shm")
    documented = list_json()
    encode = shapes.FactsJson(kind)
    tight = shapes.FactsJson(kind, keep=1)  # reuses no part of another object's text
    for v in survey.take().verdicts:
        text = encode(v)
        assert text == tight(v) == _encode(shapes.facts_json(kind, v))
        assert text.isascii()
        doc = json.loads(text)
        shared = ["kind", "id", "key", "owner", "uid", "gid", "cuid", "cgid", "perms", "ctime"]
        assert list(doc) == [*shared, *(f.json for f in kind.FACTS), "state", "reason", "rule",
                             "namespace"]  # fmt: skip
        seg = documented[v.obj.id]
        assert doc["kind"] == "shm"
        for name in shared[1:] + ["nattch", "cpid", "lpid", "atime", "dtime", "rss", "swap"]:
            assert doc[name] == seg[name], name  # the key unsigned, as the documented one
        assert doc["status"] == ("dest" if seg["dest"] else "-")
        assert doc["state"] == seg["state"] and doc["reason"].split(";")[0] == \
            seg["reason"].split(";")[0]  # fmt: skip


def test_a_kinds_summary_counts_its_states_with_its_limits(some):
    sv = survey.take()
    got = generic().summary(sv, sv.verdicts)["segments"]
    assert got["segments"] == 3 and got["bytes"] == 5000 + 4096 + 4096
    assert got["shmmni"] == sv.limits.shmmni and "shmmax" in got
    assert got["states"]["orphan"] == {"segments": 2, "bytes": 9096}
    assert got["states"]["attached"] == {"segments": 1, "bytes": 4096}


def test_a_kinds_plain_rows_are_one_word_each_but_the_reason(some):
    shape = generic()
    sv = survey.take()
    shape.sort(sv.verdicts, "ID", {})
    names = (*shape.default[:-1], "UID", "USER", "CTIME", "SIZE", "REASON")
    rows = shape.rows(sv.verdicts, False, names, one_word=True, commands={})
    out = io.StringIO()
    render.write_plain([shape.columns[n].layout for n in names], rows, out)
    lines = out.getvalue().splitlines()
    header = lines[0].split()
    assert header == ["KEY", "ID", "OWNER", "PERMS", "NATTCH", "CPID", "LPID", "ATIME",
                      "DTIME", "RSS", "SWAP", "STATUS", "IDLE", "STATE", "UID", "USER",
                      "CTIME", "SIZE", "REASON"]  # fmt: skip
    n = len(header)
    for line in lines[1:]:
        fields = line.split(maxsplit=n - 1)
        assert len(fields) == n, line
        assert fields[0].startswith("0x") and fields[13] in ("orphan", "attached")
        assert fields[n - 1].startswith(("creator", "1 attached")), line
    ids = [int(line.split()[1]) for line in lines[1:]]
    assert ids == sorted(ids) and len(ids) == 3


def test_a_kinds_table_fits_and_sorts_bytes_largest_first(some):
    shape = generic()
    sv = survey.take()
    vs = list(sv.verdicts)
    shape.sort(vs, "RSS", {})
    rss = [v.obj.rss for v in vs]
    assert rss == sorted(rss, reverse=True)
    rows = shape.rows(vs, False, shape.default, one_word=False, commands={})
    lines = render.table_lines([shape.columns[n].layout for n in shape.default], rows, vs, 70,
                               False, header=True, chosen=False,
                               footer=shape.footer(sv, vs))  # fmt: skip
    assert all(len(line) <= 70 for line in lines), "\n".join(lines)
    assert lines[0].split()[-2:] == ["STATE", "REASON"]
    assert any(line.startswith("3 segments (kernel.shmmni ") for line in lines), lines
