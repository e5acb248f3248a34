"""`list`'s columns: one field each in plain output, -o, sorting, and the table's fit.

Real segments of every state (the `unknown` ones as a scanner in a child PID namespace
sees them: there every creator's pid is 0), listed by real processes.
"""

from __future__ import annotations

import grp
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from segments import Spec, attach, cli, list_json, make, make_named, mark_dest, table

from shmjanitor import render, survey
from shmjanitor.classify import State
from shmjanitor.render import ALIASES, COLUMNS, DEFAULT

JANITOR = [sys.executable, "-m", "shmjanitor"]
EVERY = ",".join(COLUMNS)
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def states():
    """A segment in each state that can be made here, creators named with a space
    ("Web Content", as Firefox names a process) so CREATOR and COMMAND hold one."""
    make(Spec(key=0x1234, size=100, mode=0o644))  # orphan, never attached
    make(Spec(key=0x88000001, size=5000, touch=True))  # orphan, attached once
    make_named(b"Web Content", Spec(key=0x2222, size=8192))  # idle
    busy = make(Spec(key=0x3333)).ids[0]
    attach(busy)  # attached
    dest = make(Spec(key=0x4444)).ids[0]
    attach(dest)
    mark_dest(dest)  # removing


def plain(*args: str, pidns: bool = False) -> list[str]:
    cmd = [*JANITOR, "list", "--format", "plain", *args]
    if pidns:  # every cpid is 0 there: creators cannot be known
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


@pytest.mark.parametrize("columns", [None, "ID,STATE,REASON", EVERY, "REASON,COMMAND,ID",
                                     "+COMMAND,LAST_USER"])  # fmt: skip
def test_every_row_has_as_many_fields_as_the_header(states, columns):
    args = [] if columns is None else ["-o", columns]
    seen = set()
    for pidns in (False, True):
        lines = plain(*args, pidns=pidns)
        header = lines[0].split()
        want = list(DEFAULT) if columns is None else [c for c in columns.lstrip("+").split(",")]
        if columns and columns.startswith("+"):
            want = [*DEFAULT, *want]
        assert header == want
        n, last = len(header), header[-1]
        for line in lines[1:]:
            if last in ("REASON", "COMMAND"):  # the last column is the one sentence
                assert len(line.split(maxsplit=n - 1)) == n, line
            else:
                assert len(line.split()) == n, line
        if "STATE" in header:
            seen |= {line.split()[header.index("STATE")] for line in lines[1:]}
        assert len(lines) == 6
    if "STATE" in (columns or "STATE"):
        assert seen == {s.value for s in State}  # every state, in one listing or the other


def test_a_name_with_a_space_is_one_field(states):
    lines = plain("-o", "CREATOR,COMMAND,ID")
    (named,) = [line.split() for line in lines if line.startswith("Web\\x20Content ")]
    # The creator's argv (a fork of pytest's) has spaces: written \x20, one field.
    assert len(named) == 3 and "\\x20" in named[1] and "pytest" in named[1]


def test_noheadings_and_output_choose_and_order(states):
    lines = plain("-n", "-o", "state,id,SIZE")
    assert len(lines) == 5 and not any(line.startswith("STATE") for line in lines)
    got = {int(f[1]): (f[0], f[2]) for f in map(str.split, lines)}
    assert got == {i: (s["state"], _size(s["size"])) for i, s in list_json().items()}


def _size(n: int) -> str:
    from shmjanitor.durations import format_size

    return format_size(n)


def test_new_columns_agree_with_the_json(states):
    doc = list_json()
    lines = plain("-b", "-o", "ID,RSS,SWAP,CUID,CGID,UID,GID,CTIME,ATIME,DTIME,STATUS,GROUP")
    header = lines[0].split()
    for line in lines[1:]:
        row = dict(zip(header, line.split()))
        s = doc[int(row["ID"])]
        assert (row["RSS"], row["SWAP"]) == (str(s["rss"]), str(s["swap"]))
        assert [row[k] for k in ("CUID", "CGID", "UID", "GID")] == [
            str(s[k]) for k in ("cuid", "cgid", "uid", "gid")
        ]
        assert row["GROUP"] == grp.getgrgid(s["gid"]).gr_name
        for col in ("CTIME", "ATIME", "DTIME"):
            t = s[col.lower()]
            assert row[col] == ("-" if t is None else _iso(t))
        assert row["STATUS"] == ("dest" if s["dest"] else "-")


def _iso(t: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def test_command_is_the_live_creators_command_line(states):
    lines = plain("-o", "ID,STATE,COMMAND")
    for line in lines[1:]:
        shmid, state, command = line.split(maxsplit=2)
        if state == "idle":  # the creator lives: its argv, as /proc/PID/cmdline has it
            assert (
                command
                == " ".join(
                    Path(f"/proc/{list_json()[int(shmid)]['cpid']}/cmdline").read_text().split("\0")
                ).strip()
            )
        else:
            assert command == "-"


def test_default_sort_is_numeric_not_the_kernels_slot_order():
    import sysv_ipc

    first = make(Spec(), Spec()).ids
    sysv_ipc.remove_shared_memory(first[0])  # its slot (id % 32768) is free again
    # An id is its slot plus a sequence number times 32768 (ipc/util.h); slots are
    # handed out in turn, so a reused one needs 32,768 segments or, as here, the
    # namespace's own shm_next_id (as checkpoint/restore sets it): slot 0, sequence 3.
    with open("/proc/sys/kernel/shm_next_id", "w") as f:
        f.write(str(3 * 32768 + first[0] % 32768))
    again = make(Spec()).ids[0]
    kernel_order = [int(line.split()[1]) for line in table().splitlines()[1:]]
    assert kernel_order == [again, first[1]] and again > first[1], kernel_order
    assert [int(line.split()[1]) for line in plain()[1:]] == sorted(kernel_order)
    assert list(list_json()) == sorted(kernel_order)


# Each column's order, said independently of render.COLUMNS: numbers and names
# ascending, sizes, nattch and idle largest first, states in the README's table order.
STATE_ORDER = ["attached", "idle", "orphan", "unknown", "removing"]


def _name(p):  # type: ignore[no-untyped-def]
    return p["name"] if p is not None and p["alive"] else "-"


def _cmdline(s):  # type: ignore[no-untyped-def]
    if not s["creator"]["alive"]:
        return (True, "")
    raw = Path(f"/proc/{s['cpid']}/cmdline").read_bytes().rstrip(b"\0")
    return (False, raw.replace(b"\0", b" ").decode())


EXPECT = {
    "key": lambda s: s["key"], "id": lambda s: s["id"], "owner": lambda s: s["owner"],
    "perms": lambda s: s["perms"], "size": lambda s: -s["size"],
    "nattch": lambda s: -s["nattch"], "cpid": lambda s: s["cpid"],
    "creator": lambda s: _name(s["creator"]), "lpid": lambda s: s["lpid"],
    "idle": lambda s: -s["idle_seconds"], "state": lambda s: STATE_ORDER.index(s["state"]),
    "reason": lambda s: s["reason"], "uid": lambda s: s["uid"], "user": lambda s: s["owner"],
    "gid": lambda s: s["gid"], "group": lambda s: grp.getgrgid(s["gid"]).gr_name,
    "cuid": lambda s: s["cuid"], "cuser": lambda s: s["owner"], "cgid": lambda s: s["cgid"],
    "cgroup": lambda s: grp.getgrgid(s["cgid"]).gr_name, "rss": lambda s: -s["rss"],
    "swap": lambda s: -s["swap"], "ctime": lambda s: s["ctime"],
    "atime": lambda s: s["atime"] or 0, "dtime": lambda s: s["dtime"] or 0,
    "attach": lambda s: s["atime"] or 0, "detach": lambda s: s["dtime"] or 0,
    "status": lambda s: (s["dest"], s["locked"]), "command": _cmdline,
    "last_user": lambda s: _name(s["last_user"]),
    "ns": lambda s: s["namespace"]["ipc"],
    "container": lambda s: (s["namespace"]["container"] is None, s["namespace"]["container"] or ""),
}  # fmt: skip


def test_sort_expectations_cover_every_column():
    assert set(EXPECT) == {c.lower() for c in (*COLUMNS, *ALIASES)}


@pytest.mark.parametrize("key", sorted(EXPECT))
def test_sort_by_every_column(states, key):
    make(Spec(key=0x0F00, size=1 << 20))  # a big one, and ties in most columns
    r = cli("list", "--json", "--sort", key.upper() if key == "ctime" else key)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["segments"]
    want = sorted(sorted(got, key=lambda s: s["id"]), key=EXPECT[key])
    assert [s["id"] for s in got] == [s["id"] for s in want]
    # plain output is in the same order
    ids = [int(line.split()[0]) for line in plain("-n", "-o", "ID", "--sort", key)]
    assert ids == [s["id"] for s in want]


def reasons_in_table(lines: list[str], n: int) -> tuple[list[str], int]:
    """The REASON of the table's `n` rows, each one's wrapped lines joined again; and the
    REASON column's start. A row starts on a line with text left of REASON, and goes on
    over lines blank there; the footer follows the last row."""
    start = lines[0].index("REASON")
    rows: list[str] = []
    for line in lines[1:]:
        if line[:start].strip():
            if len(rows) == n:
                break  # the footer
            rows.append(line[start:])
        elif rows:
            rows[-1] += " " + line[start:]
    return rows, start


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_table_fits_the_terminal_and_wraps_the_reason(states, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    r = cli("--color", "never", "list", "--format", "table")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    want = [s["reason"] for s in list_json().values()]  # default sort: id
    reasons, start = reasons_in_table(lines, len(want))
    assert start >= 20  # the reason is not pushed off the line
    assert len(reasons) == len(want) == 5
    for shown, full in zip(reasons, want):
        first = full.split(";")[0]
        assert shown.startswith(first), (shown, full)  # its first clause, whole
    header = lines[0].split()
    assert header[-2:] == ["STATE", "REASON"] and "ID" in header
    if width >= 120:
        assert "KEY" in header and "OWNER" in header


def test_a_table_of_every_column_still_fits_or_names_its_rows(states, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("--color", "never", "list", "--format", "table", "-o", "ID,STATE,COMMAND,REASON")
    assert r.exit_code == 0, r.output
    assert all(len(line) <= 80 for line in r.stdout.splitlines()), r.stdout


def _table_text(width, notruncate=False) -> list[str]:  # type: ignore[no-untyped-def]
    sv = survey.take()
    vs = sorted(sv.verdicts, key=lambda v: v.segment.id)
    out = io.StringIO()
    render.table(sv, vs, False, out, None if notruncate else width, color=False)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_wrapped_reason_is_the_whole_reason(states, width):
    lines = _table_text(width)
    sv = sorted(survey.take().verdicts, key=lambda v: v.segment.id)
    reasons, _ = reasons_in_table(lines, len(sv))
    # Times in a reason ("created 0s ago") may tick between two surveys: compare words
    # up to the last clause.
    for shown, v in zip(reasons, sv):
        assert shown.split(";")[:-1] == v.reason.split(";")[:-1] or shown == v.reason


def test_notruncate_cuts_nothing(states):
    lines = _table_text(40, notruncate=True)
    assert lines[0].split() == list(DEFAULT)
    assert all("…" not in line for line in lines)
    assert len([line for line in lines if line.startswith("0x")]) == 5  # one line each
    r = cli("--color", "never", "list", "--format", "table", "--notruncate")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split() == list(DEFAULT)


def test_the_table_keeps_spaces_in_names(states):
    # Plain output writes a space inside a field as \x20; the table, for a person, not.
    assert any("Web Content" in line for line in _table_text(160))
