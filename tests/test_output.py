"""What `rm` and `reap` print, on a pipe and on a terminal (issue 11, item 4).

rm is as quiet as ipcrm: nothing when all went well, unless -v; each segment refused,
failed or not found is one line on stderr, said once. reap says the same on a terminal
(a table) and a pipe (key=value lines): kept orphans only with -v, in both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import needs_real_root, python_as
from segments import Spec, attach, make, rows, run_on_pty

JANITOR = [sys.executable, "-m", "shmjanitor"]
SGR = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JANITOR, *args], capture_output=True, text=True, timeout=60)


def env(tmp: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(tmp),
            "RUNTIME_DIRECTORY": os.environ["RUNTIME_DIRECTORY"]}  # fmt: skip


def test_rm_is_silent_on_success(tmp_path):
    a, b = make(Spec(), Spec(key=0xABC)).ids
    p = run("rm", str(a), "--key", "0xabc", "--state-dir", str(tmp_path))
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert rows() == {}
    # On a terminal too: no table, no summary.
    c = make(Spec()).ids[0]
    code, shown = run_on_pty([*JANITOR, "rm", str(c), "--state-dir", str(tmp_path)], env(tmp_path))
    assert (code, shown) == (0, "")
    assert rows() == {}


def test_rm_verbose_says_each_removal(tmp_path):
    a, b = make(Spec(), Spec()).ids
    p = run("rm", "-v", str(a), "-m", str(b), "--state-dir", str(tmp_path))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["action=removed", f"id={a}"],
                                                   ["action=removed", f"id={b}"]]  # fmt: skip
    c = make(Spec()).ids[0]
    argv = [*JANITOR, "rm", "-v", str(c), "--state-dir", str(tmp_path)]
    code, shown = run_on_pty(argv, env(tmp_path))
    table = SGR.sub("", shown).splitlines()
    assert code == 0 and table[0].split()[:2] == ["ACTION", "ID"], shown
    assert table[1].split()[:2] == ["removed", str(c)] and len(table) == 2


def test_a_refusal_is_one_line_on_stderr_said_once(tmp_path):
    busy = make(Spec()).ids[0]
    attach(busy)
    gone = make(Spec()).ids[0]
    for args in ([], ["-v"]):
        p = run("rm", *args, str(busy), "999999", "--state-dir", str(tmp_path))
        assert p.returncode == 1
        assert p.stdout == ""  # -v has nothing removed to say
        err = p.stderr.splitlines()
        assert err == [
            "shmjanitor: no segment with id 999999",
            f"shmjanitor: segment {busy}: refused: in use: 1 attached; last attach/detach "
            f"by pid {err[1].split('by pid ')[1].split()[0]} (python); --force to remove anyway",
        ], err
    p = run("rm", str(busy), str(gone), "--state-dir", str(tmp_path))
    assert p.returncode == 1 and p.stdout == "" and len(p.stderr.splitlines()) == 1
    assert set(rows()) == {busy}


def test_a_dry_run_rm_says_what_it_would_do(tmp_path):
    a = make(Spec()).ids[0]
    p = run("rm", "--dry-run", str(a))
    assert p.returncode == 0 and p.stdout.startswith(f"action=would-remove id={a} ")
    assert set(rows()) == {a}


def reap_both_ways(tmp_path: Path, *args: str) -> tuple[str, str]:
    """`reap --dry-run ARGS` on a pipe (its stdout) and on a terminal (what it shows)."""
    argv = [*JANITOR, "reap", "--dry-run", "--include-system", *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env(tmp_path))
    assert p.returncode == 0, p.stderr
    code, shown = run_on_pty(argv, env(tmp_path), columns=160)
    assert code == 0, shown
    return p.stdout, SGR.sub("", shown)


def test_reap_shows_kept_orphans_only_with_v_on_a_terminal_and_a_pipe(tmp_path):
    young = make(*[Spec() for _ in range(5)]).ids  # orphans, kept for --min-age 1h
    piped, shown = reap_both_ways(tmp_path, "--min-age", "1h")
    assert piped.splitlines() == [
        "summary dry_run=true considered=5 removed=0 would_remove=0 kept=5 failed=0 gone=0 bytes=0"
    ]
    assert shown.splitlines() == [
        "dry run: would remove 0 (0B), kept 5, failed 0, already gone 0 of 5 considered"
    ]
    piped, shown = reap_both_ways(tmp_path, "--min-age", "1h", "-v")
    logged = [int(line.split()[1][3:]) for line in piped.splitlines() if "action=kept" in line]
    table = shown.splitlines()
    assert table[0].split()[:2] == ["ACTION", "ID"]
    tabled = [int(line.split()[1]) for line in table if line.startswith("kept ")]
    assert logged == tabled == sorted(young)
    assert all("younger than min-age 1h" in line for line in piped.splitlines()[:-1])
    assert sum("younger than min-age" in line for line in table) == 5
    # What would go is shown either way, with or without -v.
    piped, shown = reap_both_ways(tmp_path, "--min-age", "0")
    assert piped.count("action=would-remove") == 5
    assert sum(line.startswith("would-remove ") for line in shown.splitlines()) == 5


def test_an_ordinary_user_is_told_in_plain_words_whose_segment_it_is():
    needs_real_root()
    roots = make(Spec(key=0x0BAD, mode=0o600)).ids[0]  # root's, 0600: not even readable
    home = Path(tempfile.mkdtemp(prefix="shmjanitor-out-"))
    try:
        os.chown(home, 1001, 1001)
        # python_as: this checkout's code as uid 1001, wherever the checkout lives.
        argv = [*python_as(1001), "-m", "shmjanitor", "rm", str(roots), "--force"]
        own = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=own, cwd="/")
        assert p.returncode == 1 and p.stdout == "", p.stderr
        assert p.stderr == (
            f"shmjanitor: segment {roots}: belongs to root; only root can remove it\n"
        )
        assert set(rows()) == {roots}
    finally:
        shutil.rmtree(home, ignore_errors=True)
