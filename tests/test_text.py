"""Terminal and log injection: a name anybody can choose reaches no output raw.

A process names itself (prctl(PR_SET_NAME) or /proc/self/comm); its name is in the
creator column and in reasons. Printed raw, "\\e]0;pwn\\a" retitles root's terminal,
"\\e[2K\\r" erases the line being read, a newline forges a journal line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st
from segments import Spec, make_named, rows

from shmjanitor.text import printable

EVIL = b"\x1b]0;pwn\x07\x1b[2K\r"  # set the title, erase the line, back to its start
NOT_UTF8 = b"\xff\x9b2J-x"  # 0x9b is CSI to a terminal that takes 8-bit controls
JANITOR = [sys.executable, "-m", "shmjanitor"]
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours the table draws on purpose


def unescape(text: str) -> str:
    """The inverse of printable, as a reader of our logs would write it."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        kind = text[i + 1]
        if kind in "\\tnr":
            out.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[kind])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}[kind]
        n = int(text[i + 2 : i + 2 + width], 16)
        # \xNN of 80..ff is a byte that was not UTF-8, which Python keeps as U+DCNN
        out.append(chr(0xDC00 + n) if kind == "x" and n >= 0x80 else chr(n))
        i += 2 + width
    return "".join(out)


def raw_controls(text: str) -> list[str]:
    """Characters that a terminal or journald would act on rather than print."""
    return [c for c in text if (not c.isprintable() and c != "\n") or 0xDC80 <= ord(c) <= 0xDCFF]


def test_escapes_are_visible_and_named():
    assert printable("plain ünïcödé ✓") == "plain ünïcödé ✓"
    assert printable(EVIL.decode()) == "\\x1b]0;pwn\\x07\\x1b[2K\\r"
    assert printable("a\\b\tc\nd\x7f\x85\u202e") == "a\\\\b\\tc\\nd\\x7f\\u0085\\u202e"
    assert printable(NOT_UTF8.decode(errors="surrogateescape")) == "\\xff\\x9b2J-x"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate that is not a byte


@given(st.text(alphabet=st.characters(), max_size=40))
def test_escaping_is_reversible_and_leaves_nothing_raw(text):
    shown = printable(text)
    assert unescape(shown) == text
    assert not raw_controls(shown.replace("\n", "\x00"))  # not even a newline


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*JANITOR, *args], capture_output=True, timeout=60)


def test_a_hostile_process_name_reaches_no_output_raw(tmp_path):
    evil = make_named(EVIL, Spec(key=0x0E0E)).ids[0]
    odd = make_named(NOT_UTF8, Spec(key=0x0F0F)).ids[0]
    state = ["--state-dir", str(tmp_path)]
    runs = {
        "plain": run("list", "--format", "plain"),
        "table": run("list", "--format", "table"),
        "json": run("list", "--json"),
        "rm log": run("rm", str(evil), str(odd), *state),
        "rm json": run("rm", str(evil), str(odd), "--json", *state),
        "reap log": run("reap", "-v", "--dry-run", "--min-age", "0", "--include-system"),
    }
    for what, p in runs.items():
        out, err = p.stdout.decode(), p.stderr.decode()  # valid UTF-8, or this raises
        assert "Traceback" not in err, (what, err)
        assert not raw_controls(SGR.sub("", out + err)), (what, out, err)
    # Said, not done: the name is there, escaped, in the columns and reasons.
    plain = runs["plain"].stdout.decode()
    assert "\\x1b]0;pwn\\x07\\x1b[2K\\r" in plain and "\\xff\\x9b2J-x" in plain
    assert "\\x1b]0;pwn" in runs["table"].stdout.decode()
    # rm refuses both (their creators live) and says so once, on stderr, as ipcrm would.
    assert runs["rm log"].returncode == 1 and runs["rm log"].stdout == b""
    shown = "(\\x1b]0;pwn\\x07\\x1b[2K\\r) alive"
    assert shown in runs["rm log"].stderr.decode()  # the refusal's line
    # JSON is ASCII: the encoder escapes the name, and a parser gets it back exactly.
    for what in ("json", "rm json"):
        assert runs[what].stdout.isascii(), what
    got = {s["id"]: s for s in json.loads(runs["json"].stdout)["segments"]}
    assert got[evil]["creator"]["name"] == EVIL.decode()
    assert got[odd]["creator"]["name"] == NOT_UTF8.decode(errors="surrogateescape")
    assert set(rows()) == {evil, odd}
