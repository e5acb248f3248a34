"""`shmjanitor list` over real segments, checked against the kernel and lsipc."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_real_root
from segments import Spec, attach, cli, list_json, make, mark_dest

NEG_KEY = 0x88000001  # printed negative by the kernel
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def mix():
    """One segment per state that can be made by construction, keys of every kind."""
    orphan_keyed = make(Spec(key=0x1234, size=100, mode=0o644))
    orphan_neg = make(Spec(key=NEG_KEY, size=5000))
    orphan_private = make(Spec(size=1))
    idle = make(Spec(key=0x2222, size=8192), stay=True)
    attached_seg = make(Spec(key=0x3333))
    attacher = attach(attached_seg.ids[0])
    dest_seg = make(Spec(key=0x4444))
    dest_user = attach(dest_seg.ids[0])
    mark_dest(dest_seg.ids[0])
    return {
        "orphan": orphan_keyed.ids + orphan_neg.ids + orphan_private.ids,
        "idle": idle.ids,
        "attached": attached_seg.ids,
        "removing": dest_seg.ids,
        "_creators": {
            orphan_keyed.ids[0]: orphan_keyed.pid,
            orphan_neg.ids[0]: orphan_neg.pid,
            orphan_private.ids[0]: orphan_private.pid,
            idle.ids[0]: idle.pid,
            attached_seg.ids[0]: attached_seg.pid,
            dest_seg.ids[0]: dest_seg.pid,
        },
        "_attachers": {attached_seg.ids[0]: attacher.pid, dest_seg.ids[0]: dest_user.pid},
    }


def lsipc() -> dict[int, dict]:
    out = subprocess.run(
        ["lsipc", "-m", "--json", "-b", "--numeric-perms",
         "-o", "KEY,ID,UID,SIZE,NATTCH,CPID,LPID,PERMS"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {int(r["id"]): r for r in json.loads(out)["sharedmemory"]}


def test_json_reports_kernel_values_and_states_by_construction(mix):
    got = list_json()
    assert set(got) == {i for k, ids in mix.items() if not k.startswith("_") for i in ids}
    for state in ("orphan", "idle", "attached", "removing"):
        for shmid in mix[state]:
            assert got[shmid]["state"] == state, got[shmid]
    oracle = lsipc()
    for shmid, s in got.items():
        o = oracle[shmid]
        assert int(o["key"], 16) == s["key"]
        assert (int(o["uid"]), int(o["size"]), int(o["nattch"]), int(o["cpid"]),
                int(o["lpid"])) == (s["uid"], s["size"], s["nattch"], s["cpid"], s["lpid"])  # fmt: skip
        assert int(o["perms"], 8) & 0o777 == s["perms"]
        assert s["cpid"] == mix["_creators"][shmid]
    neg = next(s for s in got.values() if s["key"] == NEG_KEY)
    assert neg["state"] == "orphan" and neg["size"] == 5000
    assert got[mix["orphan"][0]]["perms"] == 0o644


def test_json_schema_types(mix):
    got = list_json()
    types = {"id": int, "key": int, "owner": str, "uid": int, "gid": int, "cuid": int,
             "cgid": int, "perms": int, "size": int, "nattch": int, "cpid": int, "lpid": int,
             "ctime": int, "state": str, "reason": str}  # fmt: skip
    for s in got.values():
        for name, t in types.items():
            assert type(s[name]) is t, (name, s)
        for name in ("atime", "dtime", "rss", "swap"):
            assert s[name] is None or type(s[name]) is int
        assert set(s["creator"]) >= {"pid", "alive", "name"}
        assert s["state"] in {"attached", "idle", "orphan", "unknown", "removing"}
    never = got[mix["orphan"][2]]
    assert never["atime"] is None and never["dtime"] is None
    assert never["creator"] == {"pid": mix["_creators"][mix["orphan"][2]], "alive": False,
                                "name": None}  # fmt: skip
    idle = got[mix["idle"][0]]
    assert idle["creator"]["alive"] is True and idle["creator"]["name"]
    assert got[mix["attached"][0]]["atime"] is not None


def test_summary_counts_states_and_limits(mix):
    r = cli("list", "--json")
    summary = json.loads(r.stdout)["summary"]
    assert summary["segments"] == 6
    assert summary["states"]["orphan"] == {"segments": 3, "bytes": 100 + 5000 + 1}
    assert summary["states"]["unknown"] == {"segments": 0, "bytes": 0}
    assert summary["shmmni"] == int(Path("/proc/sys/kernel/shmmni").read_text())
    assert summary["pages"] == 1 + 2 + 1 + 2 + 1 + 1


@pytest.mark.parametrize("fmt", ["auto", "plain", "table", "json"])
def test_every_format(mix, fmt):
    r = cli("--color", "always", "list", "--format", fmt)
    assert r.exit_code == 0, r.output
    if fmt == "json":
        assert len(json.loads(r.stdout)["segments"]) == 6
        return
    lines = r.stdout.splitlines()
    body = [line for line in lines if "0x" in line]
    assert len(body) == 6
    assert any("orphan" in line and "0x00001234" in line for line in body)
    if fmt == "table":
        assert SGR.sub("", lines[0]).split()[:3] == ["KEY", "ID", "OWNER"]
        assert "\x1b[1;31morphan\x1b[0m" in r.stdout  # colour, as asked
        assert "┃" not in r.stdout and "│" not in r.stdout  # no boxes: columns, as lsipc
        footer = SGR.sub("", " ".join(lines[7:]))
        assert "segments" in footer and "orphan 3" in footer
    else:  # auto under CliRunner is not a terminal: plain, greppable, no colour
        assert lines[0].split()[:3] == ["KEY", "ID", "OWNER"]
        assert "\x1b[" not in r.stdout and len(lines) == 7


def test_bytes_flag_prints_exact_sizes(mix):
    r = cli("list", "--bytes", "--sort", "size")
    sizes = [line.split()[4] for line in r.stdout.splitlines()[1:]]
    assert sizes == ["8192", "5000", "4096", "4096", "100", "1"]


def test_filters(mix):
    r = cli("list", "--json", "--state", "orphan", "--state", "idle")
    states = [s["state"] for s in json.loads(r.stdout)["segments"]]
    assert sorted(states) == ["idle", "orphan", "orphan", "orphan"]
    r = cli("list", "--json", "--owner", "root")
    assert len(json.loads(r.stdout)["segments"]) == 6
    r = cli("list", "--json", "--owner", "12345")
    assert json.loads(r.stdout)["segments"] == []


def test_unknown_owner_is_exit_2_with_message():
    r = cli("list", "--owner", "no-such-user-xyz")
    assert r.exit_code == 2 and "no such user" in r.output


def test_bad_flag_value_is_usage_error():
    r = cli("list", "--state", "dead")
    assert r.exit_code == 2 and "invalid value for '--state'" in r.output


def scanner_in_child_pid_namespace() -> dict[int, dict]:
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc",
         sys.executable, "-m", "shmjanitor", "list", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {s["id"]: s for s in json.loads(out)["segments"]}


def test_child_pid_namespace_calls_nothing_orphan(mix):
    got = scanner_in_child_pid_namespace()
    assert len(got) == 6
    assert all(s["cpid"] == 0 for s in got.values())
    assert "orphan" not in {s["state"] for s in got.values()}
    for shmid in mix["orphan"] + mix["idle"]:
        assert got[shmid]["state"] == "unknown"
        assert "cpid 0" in got[shmid]["reason"]
    assert got[mix["attached"][0]]["state"] == "attached"


RECYCLE = r"""
import json, os, sys, time
import sysv_ipc
from shmjanitor import survey

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, size=4096)
    os.write(w, str(shm.id).encode()); os._exit(0)
shmid = int(os.read(r, 100)); os.waitpid(pid, 0)
time.sleep(3)  # the new process must start well after the segment's ctime
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(pid - 1))
again = os.fork()
if again == 0:
    time.sleep(60); os._exit(0)
v = next(v for v in survey.take().verdicts if v.segment.id == shmid)
print(json.dumps({"creator": pid, "reused_by": again, "state": v.state.value, "reason": v.reason}))
os.kill(again, 9)
"""


def test_recycled_creator_pid_is_seen_through():
    needs_pidns = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", RECYCLE]
    out = subprocess.run(needs_pidns, check=True, capture_output=True, text=True).stdout
    got = json.loads(out)
    assert got["reused_by"] == got["creator"], "ns_last_pid did not hand the pid over"
    assert got["state"] == "orphan"
    assert f"creator {got['creator']} exited; pid now used by a process started" in got["reason"]


def test_missing_proc_file_is_exit_2_one_line():
    needs_real_root()
    r = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f"mount -t tmpfs none /proc/sysvipc && exec {sys.executable} -m shmjanitor list"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no System V IPC" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_table_is_exit_2_without_traceback(tmp_path):
    needs_real_root()
    doctored = tmp_path / "shm"
    doctored.write_text(Path("/proc/sysvipc/shm").read_text() + "garbage line\n")
    r = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f"mount --bind {doctored} /proc/sysvipc/shm && exec {sys.executable} -m shmjanitor list"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "line 2" in r.stderr and "Traceback" not in r.stderr
    assert os.path.exists("/proc/sysvipc/shm")
