"""`shmjanitor explain OBJECT` and the stable `rule` codes, with real objects and real
processes in the test's own IPC namespace (issue 15, item 1)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sysv_ipc
from segments import Spec, _fork, attach, cli, make
from test_msg import new_queue, reader, seen  # noqa: F401 (seen: a fixture)

from shmjanitor import policy, rules
from shmjanitor.classify import Creator, State, Verdict
from shmjanitor.config import Config
from shmjanitor.kinds.shm import Segment

README = Path(__file__).parent.parent / "README.md"
POLICY = ["protected-key", "protected-path", "protected-owner", "system-account",
          "younger-than-min-age", "needs-root"]  # fmt: skip


def explain(*args: str) -> dict[str, Any]:
    r = cli("explain", "--json", *args)
    assert r.exit_code == 0, r.output
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def _spawn(code: str) -> subprocess.Popen[bytes]:
    """A Python process running `code`, killed at the test's end (fixture `kids`)."""
    p = subprocess.Popen([sys.executable, "-c", code])
    _kids.append(p)
    return p


_kids: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def kids() -> Any:
    yield
    while _kids:
        p = _kids.pop()
        p.kill()
        p.wait()


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


# --- who uses it now -------------------------------------------------------------------


def _attach_in_another_ipc_namespace(key: int) -> int:
    """A process in an IPC namespace of its own, attached to a segment made there with
    `key`: the kernel's shm mount is one for every namespace, so its maps line looks
    like ours (SYSV<key>, and the same first id)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def body() -> list[int]:
        assert libc.unshare(0x08000000) == 0  # CLONE_NEWIPC
        seg = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, size=4096)  # attached
        _hold.append(seg)
        return [seg.id]

    m = _fork(body, True)
    return m.ids[0]


_hold: list[object] = []


def test_explain_lists_exactly_the_attached_pids():
    # IPC_PRIVATE: the target and a decoy are both named SYSV00000000 in maps; only
    # the inode (the shmid) tells them apart.
    target = make(Spec()).ids[0]
    decoy = make(Spec()).ids[0]
    attached = {attach(target).pid for _ in range(3)}
    attach(decoy)
    foreign = _attach_in_another_ipc_namespace(sysv_ipc.IPC_PRIVATE)
    assert foreign == target, "the other namespace's first segment has our target's id"
    doc = explain("-m", str(target))
    assert {u["pid"] for u in doc["users"]} == attached
    assert doc["facts"]["nattch"] == 3 and doc["state"] == "attached"
    assert doc["rule"] == "attached"
    for u in doc["users"]:
        assert u["how"] == "attached" and u["user"] == "root" and "pytest" in u["command"]
    assert doc["remove_anyway"] == f"shmjanitor rm -m {target} --force"
    assert doc["reap"]["action"] == "not-considered"
    assert doc["made_by"] is None
    # The human forms say the same.
    r = cli("explain", str(target), "--format", "plain")
    assert r.exit_code == 0, r.output
    for pid in attached:
        assert f"pid {pid}  attached, root" in r.stdout
    assert "shmjanitor rm -m" in r.stdout and "\x1b[" not in r.stdout
    t = cli("explain", str(target), "--format", "table", "--json")
    assert json.loads(t.stdout)["id"] == target  # --json wins, as list's


def test_a_posix_file_held_by_an_fd_and_by_a_mapping_whose_fd_was_closed():
    path = "/dev/shm/p9-held"
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
    opener = _spawn(f"import time; f = open({path!r}, 'rb'); time.sleep(600)")
    mapper = _spawn(
        "import mmap, os, time\n"
        f"fd = os.open({path!r}, os.O_RDWR); m = mmap.mmap(fd, 4096); os.close(fd)\n"
        "open('/dev/shm/.p9-ready', 'w').close(); time.sleep(600)"
    )
    _until(lambda: os.path.exists("/dev/shm/.p9-ready") and len(os.listdir(
        f"/proc/{opener.pid}/fd")) > 3, "the holders are ready")  # fmt: skip
    os.unlink("/dev/shm/.p9-ready")
    doc = explain(path)
    hows = {u["pid"]: u["how"] for u in doc["users"]}
    assert set(hows) == {opener.pid, mapper.pid}
    assert hows[mapper.pid] == "mapped" and hows[opener.pid].startswith("fd ")
    assert doc["state"] == "attached" and doc["rule"] == "held"
    assert doc["remove_anyway"] == f"shmjanitor rm {path} --force"
    assert doc["kind"] == "posix-shm" and doc["path"] == path


def test_a_set_with_a_waiter():
    sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, initial_value=0)
    _spawn(f"import sysv_ipc; sysv_ipc.Semaphore({sem.key}).acquire()")
    _until(lambda: sem.waiting_for_nonzero == 1, "the waiter blocks in semop")
    doc = explain("-s", str(sem.id))
    assert doc["state"] == "attached" and doc["rule"] == "waiting"
    assert doc["waiting"].startswith("1 waiting in semop (semaphore 0: 1 to decrease it)")
    rows = {r["rule"]: r for r in doc["rules"] if r["stage"] == "state"}
    assert rows["waiting"]["applies"] and rows["waiting"]["decides"]
    assert doc["remove_anyway"] == f"shmjanitor rm -s {sem.id} --force"


def test_a_queue_with_a_blocked_reader(seen: None) -> None:  # noqa: F811
    q = new_queue()
    pid = reader(q)
    doc = explain("-q", str(q.id))
    assert [(u["pid"], u["how"]) for u in doc["users"]] == [(pid, "blocked in msgrcv")]
    assert doc["state"] == "attached" and doc["rule"] == "blocked"
    assert doc["remove_anyway"] == f"shmjanitor rm -q {q.id} --force"


# --- the rules, and what reap would do ---------------------------------------------------


def test_an_orphan_every_rule_answered_and_reap_would_remove_it(tmp_path):
    shmid = make(Spec(touch=True)).ids[0]  # its creator, also its last user, exited
    doc = explain("-m", str(shmid), "--min-age", "0", "--include-system")
    assert doc["state"] == "orphan" and doc["rule"] == "creator-dead"
    rows = doc["rules"]
    assert [r["rule"] for r in rows if r["stage"] == "policy"] == POLICY
    assert not any(r["applies"] for r in rows if r["stage"] == "policy")
    state = [(r["rule"], r["applies"], r["decides"]) for r in rows if r["stage"] == "state"]
    assert state == [("removing", False, False), ("attached", False, False),
                     ("creator-dead", True, True), ("last-user-dead", True, False),
                     ("evidence-unreadable", False, False)]  # fmt: skip
    assert [p["rule"] for p in doc["parties"]] == ["creator-dead", "last-user-dead"]
    assert doc["reap"] == {"action": "would-remove", "rule": "creator-dead",
                           "reason": doc["reason"]}  # fmt: skip
    assert doc["remove_anyway"] is None
    # reap itself agrees.
    r = cli("reap", "--dry-run", "--min-age", "0", "--include-system", "--json",
            "--state-dir", str(tmp_path))  # fmt: skip
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)["results"]
    assert (res["id"], res["action"], res["rule"]) == (shmid, "would-remove", "creator-dead")


def test_a_young_and_a_protected_orphan_say_the_rule_that_keeps_them(tmp_path):
    young = make(Spec(key=0x5EED)).ids[0]
    doc = explain("-m", str(young), "--include-system")
    assert doc["reap"]["action"] == "kept"
    assert doc["reap"]["rule"] == "younger-than-min-age"
    assert re.match(r"idle \d+s, younger than min-age 1h$", doc["reap"]["reason"])
    assert doc["remove_anyway"] == f"shmjanitor rm -m {young}"  # an orphan: no --force
    keeping = [r["rule"] for r in doc["rules"] if r["decides"] and r["stage"] == "policy"]
    assert keeping == ["younger-than-min-age"]
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text("protect_keys = [0x5eed]\n")
    doc = explain("--key", "0x5eed", "--min-age", "0", "--include-system", "-c", str(cfg))
    assert (doc["id"], doc["reap"]["action"], doc["reap"]["rule"]) == (young, "kept",
                                                                     "protected-key")  # fmt: skip
    applies = [r["rule"] for r in doc["rules"] if r["stage"] == "policy" and r["applies"]]
    assert applies == ["protected-key"]
    # Root's orphan without --include-system: both rules that hold are said, the first keeps.
    doc = explain("-m", str(young), "-c", str(cfg))
    applies = [r["rule"] for r in doc["rules"] if r["stage"] == "policy" and r["applies"]]
    assert applies == ["protected-key", "system-account", "younger-than-min-age"]
    assert doc["reap"]["rule"] == "protected-key"
    # An idle one (its creator lives): rm needs --force.
    idle = make(Spec(), stay=True).ids[0]
    doc = explain("-m", str(idle))
    assert (doc["state"], doc["rule"]) == ("idle", "creator-alive")
    assert doc["remove_anyway"] == f"shmjanitor rm -m {idle} --force"
    (creator,) = doc["parties"][:1]
    assert creator["alive"] and creator["process"]["pid"] == creator["pid"]


def test_policy_verdicts_agree_with_reaps_decision():
    """explain lists policy.verdicts; reap asks _decide_orphan: the first rule that keeps
    in the one is the decision of the other, for every combination of rules."""
    caller = policy.Caller(euid=0, cap_sys_admin=True, uid_min=1000)
    for uid in (0, 1500):
        for idle in (0, 7200):
            for keys in (frozenset(), frozenset({7})):
                for owners in (frozenset(), frozenset({1500})):
                    for me in (caller, caller._replace(euid=1600, cap_sys_admin=False)):
                        seg = Segment(7, 1, 0o600, 4096, 9, 0, 0, uid, uid, uid, uid, None,
                                      None, 1, None, None)  # fmt: skip
                        v = Verdict(
                            seg,
                            State.ORPHAN,
                            "creator 9 exited",
                            Creator(9, False, None),
                            idle,
                            None,
                            rules.CREATOR_DEAD,
                        )
                        cfg = Config(protect_keys=keys, protect_owners=owners)
                        d = policy.decide(v, cfg, me)
                        assert d is not None
                        keeps = [(c, why) for c, why in policy.verdicts(v, cfg, me) if why]
                        if keeps:
                            assert (d.remove, d.rule, d.reason) == (False, *keeps[0])
                        else:
                            assert (d.remove, d.rule) == (True, "creator-dead")


# --- rule beside every reason --------------------------------------------------------------


def test_rule_in_list_reap_and_rm_json(tmp_path):
    busy = make(Spec()).ids[0]
    attach(busy)
    idle = make(Spec(), stay=True).ids[0]
    orphan = make(Spec()).ids[0]
    sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX)  # SETVAL by us: we live
    made = subprocess.run(["ipcmk", "-S", "1"], capture_output=True, text=True, check=True)
    untouched = int(made.stdout.split()[-1])  # "Semaphore id: N"; nobody operated on it
    with open("/dev/shm/p9-file", "wb"):
        pass
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    segs = {s["id"]: (s["state"], s["rule"]) for s in doc["segments"]}
    assert segs == {busy: ("attached", "attached"), idle: ("idle", "creator-alive"),
                    orphan: ("orphan", "creator-dead")}  # fmt: skip
    sets = {s["id"]: (s["state"], s["rule"]) for s in doc["semaphores"]}
    assert sets == {
        sem.id: ("idle", "last-user-alive"),
        untouched: ("unknown", "user-has-processes"),
    }  # root has processes
    (p,) = doc["posix"]
    assert (p["state"], p["rule"]) == ("idle", "owner-alive")  # root has processes
    # reap: one kept young, one would go (the same orphan, two policies).
    state = ["--state-dir", str(tmp_path), "--json", "-m"]
    r = cli("reap", "--dry-run", "--include-system", *state)
    (res,) = json.loads(r.stdout)["results"]
    assert (res["action"], res["rule"]) == ("kept", "younger-than-min-age")
    r = cli("reap", "--dry-run", "--min-age", "0", *state)
    (res,) = json.loads(r.stdout)["results"]
    assert (res["action"], res["rule"]) == ("kept", "system-account")
    # rm: refused as in use (the state's rule), named, forced.
    r = cli("rm", "--state-dir", str(tmp_path), "--json", str(busy), str(orphan))
    got = {x["id"]: (x["action"], x["rule"]) for x in json.loads(r.stdout)["results"]}
    assert got == {busy: ("kept", "attached"), orphan: ("removed", "named")}
    r = cli("rm", "--state-dir", str(tmp_path), "--json", "--force", "--no-quarantine",
            str(idle))  # fmt: skip
    (res,) = json.loads(r.stdout)["results"]
    assert (res["action"], res["rule"]) == ("removed", "forced")
    r = cli("rm", "--state-dir", str(tmp_path), "--json", str(idle))
    (res,) = json.loads(r.stdout)["results"] or [None]
    assert res is None and r.exit_code == 1  # gone: nothing to say of it but "no segment"
    # Every code said is a documented one.
    assert {"attached", "named", "forced", "younger-than-min-age"} <= set(rules.ALL)


def test_every_rule_code_is_in_the_readme_table_and_back():
    text = README.read_text()
    table = text[text.index("### Rule codes") :]
    table = table[: table.index("\n\n", table.index("| ---"))]
    documented = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert documented == list(rules.ALL)
    for code in rules.ALL:
        assert rules.ALL.count(code) == 1


# --- a bad OBJECT --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "code", "said"), [
    (["999"], 1, "no segment with id 999"),
    (["-s", "5"], 1, "no semaphore set with id 5"),
    (["--key", "0x77"], 1, "no segment with key 0x00000077"),
    (["/dev/shm/none"], 1, "no POSIX object at /dev/shm/none"),
    (["/etc/passwd"], 2, "is not the path of a POSIX object"),  # as rm: a usage error
    (["abc"], 2, "is not a segment id"),
    ([], 2, "name exactly one object"),
    (["1", "-s", "2"], 2, "name exactly one object"),
])  # fmt: skip
def test_a_bad_object_is_one_line_and_its_exit_code(args, code, said):
    r = cli("explain", *args)
    assert r.exit_code == code, r.output
    assert said in r.output and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("shmjanitor:")]
    assert len(lines) == 1, r.output


def test_explain_writes_nothing(tmp_path):
    shmid = make(Spec()).ids[0]
    before = Path("/proc/sysvipc/shm").read_text()
    explain("-m", str(shmid), "--state-dir", str(tmp_path))
    assert Path("/proc/sysvipc/shm").read_text() == before
    assert list(tmp_path.iterdir()) == []


def test_the_rm_command_for_an_odd_name_names_that_very_file(tmp_path):
    """A name with a newline, an escape sequence, a backslash and a byte that is no
    UTF-8: the `rm` command explain prints gives the shell back the file's own bytes
    (bash $'...'), never the escaped text, which could be another file's name."""
    raw = b"/dev/shm/a\nb\x1b[31m\\x41\xff"
    with open(raw, "wb") as f:
        f.write(b"x")
    decoy = b"/dev/shm/a\\nb\\x1b[31m\\\\x41\\xff"  # the escaped text, as a real name
    with open(decoy, "wb") as f:
        f.write(b"y")
    doc = explain(os.fsdecode(raw), "--min-age", "1d", "--state-dir", str(tmp_path))
    command = doc["remove_anyway"]
    assert command.startswith("shmjanitor rm $'"), command
    word = command.split(" ", 2)[2].removesuffix(" --force")
    p = subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, check=True)
    assert p.stdout == raw, (p.stdout, raw)
