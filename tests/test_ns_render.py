"""Every object says which IPC namespace it is in (issue 14, parts 2 and 6): the NS and
CONTAINER columns, the JSON "namespace" member of every kind (in list, reap and rm),
and the metrics' namespace and container labels, bounded by an "other" bucket.

The -A listings run only inside a sealed world (tests/worlds.py, the `world` fixture),
with two long-lived IPC namespaces made there by `unshare --ipc` and a process that
stays, each holding real objects of several kinds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from segments import Spec, cli, make

from shmjanitor import metrics, render, shapes, survey
from shmjanitor.namespaces import Namespace, container_of, container_of_pid, here

PY = [sys.executable, "-m", "shmjanitor"]
ARRAYS = ("segments", "semaphores", "queues", "posix")

# A namespace of its own, holding a segment of SIZE bytes, a semaphore set, a message
# queue, a /dev/shm file and a POSIX queue; says its pid and namespace (as the world's
# /proc shows them), then stays.
HOLDER = r"""
mount -n -t tmpfs -o mode=1777 none /dev/shm || exit 1
mount -n -t mqueue none /dev/mqueue || exit 1
ipcmk -M "$1" >/dev/null && ipcmk -S 1 >/dev/null && ipcmk -Q >/dev/null || exit 1
head -c 8192 /dev/zero > "/dev/shm/leak-$1"
# A queue's room is charged to root's RLIMIT_MSGQUEUE, counted over the whole machine
# (every suite running as root): a small one (this namespace's own defaults, one
# message of 128 bytes, not 10 of 8 KiB) does not fail because others hold queues.
echo 1 > /proc/sys/fs/mqueue/msg_default && echo 128 > /proc/sys/fs/mqueue/msgsize_default
touch "/dev/mqueue/q-$1" || exit 1
echo "$$ $(readlink /proc/$$/ns/ipc)"
exec sleep 1000
"""


def _inode(link: str) -> int:
    """ipc:[4026532311] -> 4026532311"""
    return int(link.strip()[len("ipc:[") : -1])


def _holders(world: Any, sizes: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """size -> (pid, ipc inode) of a holder namespace per size."""
    out = {}
    for size in sizes:
        p = world.spawn(["unshare", "--ipc", "--mount", "--propagation", "private",
                         "sh", "-c", HOLDER, "holder", str(size)])  # fmt: skip
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert len(line) == 2, f"the holder said {line!r}"
        out[size] = (int(line[0]), _inode(line[1]))
    return out


def _objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for a in ARRAYS for o in doc.get(a, [])]


def test_list_A_names_the_namespace_of_every_object_of_every_kind(world: Any, tmp_path: Path):
    world.sh("ipcmk -M 1000 >/dev/null && head -c 4096 /dev/zero > /dev/shm/ours", check=True)
    ours = _inode(world.sh("readlink /proc/self/ns/ipc", check=True).stdout)
    held = _holders(world, (4096 * 3, 4096 * 5))
    by_ipc = {ipc: pid for pid, ipc in held.values()}
    assert len(set(by_ipc) | {ours}) == 3

    r = world.run([*PY, "list", "-A", "--json"])
    assert r.returncode == 0, r.stderr
    objects = _objects(json.loads(r.stdout))
    seen = {o["namespace"]["ipc"] for o in objects}
    assert seen == {ours, *by_ipc}
    for o in objects:
        ns = o["namespace"]
        assert set(ns) == {"ipc", "container", "pid"}
        if ns["ipc"] == ours:
            assert ns["pid"] == 1  # the world's init shares its namespace: the lowest pid
        else:
            pid = by_ipc[ns["ipc"]]
            assert ns["pid"] == pid, o  # nothing but the holder is in that namespace
            # its container: what its cgroup says (none here: no runtime made it)
            cgroup = world.sh(f"cat /proc/{pid}/cgroup", check=True).stdout
            assert ns["container"] == container_of(cgroup)
    kinds = {(o["namespace"]["ipc"], o.get("kind", "shm")) for o in objects}
    for ipc in by_ipc:  # every kind each holder made, in its namespace
        assert {k for i, k in kinds if i == ipc} == {"shm", "sem", "msg", "posix-shm",
                                                     "posix-mqueue"}  # fmt: skip
    segs = {s["size"]: s["namespace"]["ipc"] for s in json.loads(r.stdout)["segments"]}
    assert segs == {1000: ours, **{size: ipc for size, (_, ipc) in held.items()}}
    files = {p["name"]: p["namespace"]["ipc"] for p in json.loads(r.stdout)["posix"]}
    assert files["ours"] == ours
    for size, (_, ipc) in held.items():
        assert files[f"leak-{size}"] == ipc and files[f"q-{size}"] == ipc

    # Plain output: NS and CONTAINER first by default with -A, one row per segment.
    r = world.run([*PY, "list", "-A", "-m", "-f", "plain", "-b"])
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    assert head.split()[:4] == ["NS", "CONTAINER", "KEY", "ID"]
    got = {int(f[6]): (int(f[0]), f[1]) for f in (row.split() for row in rows)}
    want = {size: ipc for size, (_, ipc) in held.items()}
    assert got == {1000: (ours, "-"), **{s: (ipc, "-") for s, ipc in want.items()}}
    # Without -A the columns are as they were, and JSON names ours as -A does: pid 1,
    # the world's init, which shares it (namespaces.here()).
    r = world.run([*PY, "list", "-m", "-f", "plain"])
    assert r.stdout.split()[:2] == ["KEY", "ID"], r.stdout + r.stderr
    r = world.run([*PY, "list", "--json"])
    ns = {json.dumps(o["namespace"]) for o in _objects(json.loads(r.stdout))}
    cgroup = world.sh("cat /proc/1/cgroup", check=True).stdout
    assert ns == {json.dumps({"ipc": ours, "container": container_of(cgroup), "pid": 1})}

    # -o names them for any kind; --sort NS orders by the inode.
    for flag in ("-m", "-s", "-q", "-M", "-Q"):
        r = world.run([*PY, "list", "-A", flag, "-f", "plain", "-o", "ID,NS,CONTAINER,STATE",
                       "--sort", "ns"])  # fmt: skip
        assert r.returncode == 0, r.stderr
        head, *rows = r.stdout.splitlines()
        assert head.split() == ["ID", "NS", "CONTAINER", "STATE"], flag
        column = [int(row.split()[1]) for row in rows]
        assert column == sorted(column) and set(column) <= {ours, *by_ipc}, (flag, r.stdout)
        assert set(column) >= set(by_ipc), flag  # each holder made one of every kind

    # Metrics: each namespace its own labels (3 <= TOP: no "other").
    prom = tmp_path / "m.prom"
    r = world.run([*PY, "list", "-A", "--metrics-file", str(prom)])
    assert r.returncode == 0, r.stderr
    bytes_of = _samples(prom, "shmjanitor_segment_bytes", state="orphan")
    assert bytes_of == {(str(ours), ""): 1000,
                        **{(str(ipc), ""): size for size, (_, ipc) in held.items()}}  # fmt: skip
    objs = _samples(prom, "shmjanitor_objects", kind="posix-mqueue", state="idle")
    assert objs == {(str(ours), ""): 0, **{(str(ipc), ""): 1 for ipc in by_ipc}}


def _samples(prom: Path, name: str, **match: str) -> dict[tuple[str, str], float]:
    """(namespace, container) -> value of the series of `name` with labels `match`."""
    out = {}
    for family in text_string_to_metric_families(prom.read_text()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                out[(s.labels["namespace"], s.labels["container"])] = s.value
    return out


# --- our own namespace, without -A -----------------------------------------------------


def _ours() -> dict[str, Any]:
    """Our namespace as the JSON must name it, worked out here from /proc."""
    ipc = os.stat("/proc/self/ns/ipc").st_ino
    pid = 1 if os.stat("/proc/1/ns/ipc").st_ino == ipc else os.getpid()
    return {"ipc": ipc, "container": container_of_pid(pid), "pid": pid}


def test_a_plain_listing_names_our_own_namespace_for_every_object():
    make(Spec(size=100))
    os.system("ipcmk -S 2 >/dev/null; ipcmk -Q >/dev/null")
    Path("/dev/shm/plain").write_bytes(b"x" * 10)
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    objects = _objects(json.loads(r.stdout))
    assert {o.get("kind", "shm") for o in objects} == {"shm", "sem", "msg", "posix-shm"}
    for o in objects:
        assert o["namespace"] == _ours()
        assert list(o)[-2:] == ["namespace", "made_by"]  # made_by stays last


def test_reap_and_rm_json_results_name_our_namespace(tmp_path: Path):
    state = ["--state-dir", str(tmp_path / "state")]
    make(Spec(size=4096), Spec(size=8192))
    r = cli("reap", "--min-age", "0", "--include-system", "--no-quarantine", "--json",
            "--dry-run", *state)  # fmt: skip
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert len(results) == 2 and all(x["namespace"] == _ours() for x in results)
    shmid = results[0]["id"]
    r = cli("rm", "-m", str(shmid), "--json", "--no-quarantine", *state)
    assert r.exit_code == 0, r.output
    (result,) = json.loads(r.stdout)["results"]
    assert result["action"] == "removed" and result["namespace"] == _ours()


# --- rendering a verdict of another namespace -------------------------------------------

HOSTILE = Namespace(4026532999, 4242, "machine:web 1\x1b]0;pwn\x07", False)


def _elsewhere(verdicts: list[Any], ns: Namespace = HOSTILE) -> list[Any]:
    return [v._replace(ns=ns) for v in verdicts]


def test_the_fast_encoders_write_the_namespace_as_json_dumps_does(tmp_path: Path):
    """SegmentJson, FactsJson and PosixJson splice one cached text per namespace: it
    must be the dict's encoding byte for byte, for ours (ns None) and another's."""
    make(Spec(size=100))
    os.system("ipcmk -S 1 >/dev/null; ipcmk -Q >/dev/null")
    Path("/dev/shm/f").write_bytes(b"y")
    verdicts = survey.take().verdicts
    assert {v.obj.kind for v in verdicts} == {"shm", "sem", "msg", "posix-shm"}
    for v in verdicts + _elsewhere(verdicts):
        kind = v.obj.kind
        shape = shapes.of(kind)
        if kind == "shm":
            want = render.segment_json(v)
        elif kind.startswith("posix-"):
            want = shapes.posix_json(shape.kind, v)
        else:
            want = shapes.facts_json(shape.kind, v)
        ns = (v.ns or here()).as_json()
        assert want["namespace"] == ns and list(want)[-1] == "namespace"
        for encode in (shape.encoder(), type(shape.encoder())(*_kind_arg(shape), keep=1)):
            text = encode(v)
            assert text == render._encode(want) and text.isascii()
            assert json.loads(text)["namespace"] == ns


def _kind_arg(shape: Any) -> tuple[Any, ...]:
    return () if isinstance(shape, shapes.Segments) else (shape.kind,)


def test_ns_and_container_cells_are_one_escaped_word_in_plain_output():
    make(Spec(size=100))
    Path("/dev/shm/f").write_bytes(b"y")
    verdicts = _elsewhere(survey.take(kinds=["shm", "posix-shm"]).verdicts)
    for name in ("shm", "posix-shm"):
        shape = shapes.of(name)
        columns = shape.chosen(shapes.Output(("ID",), extra=True), spans=True)
        assert columns[:2] == ("NS", "CONTAINER") and columns[-1] == "ID"
        assert columns.count("NS") == 1  # +NS adds nothing it already has
        assert shape.chosen(shapes.Output(("NS",), extra=True), spans=True).count("NS") == 1
        rows = shape.rows([v for v in verdicts if v.obj.kind == name], False, columns,
                          one_word=True, commands={})  # fmt: skip
        assert rows and all(r[0] == "4026532999" for r in rows)
        assert all(r[1] == "machine:web\\x201\\x1b]0;pwn\\x07" for r in rows)
        # ours, for a verdict of a plain survey (no namespace): its inode, "-" or its name
        plain = shape.rows([v._replace(ns=None) for v in verdicts if v.obj.kind == name],
                           False, ("NS", "CONTAINER"), one_word=True, commands={})  # fmt: skip
        me = here()
        assert {r for r in plain} == {(str(me.ipc), me.container or "-")}


def test_list_help_names_ns_and_container_for_every_kind():
    from shmjanitor import kinds

    r = cli("list", "--help")
    assert r.exit_code == 0, r.output
    for column in ("NS", "CONTAINER"):
        lines = [x for x in r.stdout.splitlines() if x.split()[:1] == [column]]
        assert len(lines) == len(kinds.names()), column


# --- the metrics' bounded labels ----------------------------------------------------------


def test_labelled_keeps_ours_and_the_largest_others():
    sizes = {10: 0, 11: 500, 12: 900, 13: 900, 14: 1}
    assert metrics.labelled(sizes, own=10, top=3) == {10, 12, 13}
    assert metrics.labelled(sizes, own=10, top=2) == {10, 12}  # a tie: the lower inode
    assert metrics.labelled(sizes, own=11, top=1) == {11}
    assert metrics.labelled(sizes, own=10, top=10) == set(sizes)
    assert metrics.labelled({}, own=7, top=3) == {7}  # ours, even with nothing in it


def test_namespaces_beyond_top_are_summed_into_other(tmp_path: Path, monkeypatch: Any):
    """Four namespaces and TOP 2: ours (the smallest) and the largest other keep their
    labels, the other two are one "other" series each whose values are their sums; the
    total over every series is what the objects hold."""
    make(Spec(size=100), Spec(size=200), Spec(size=300), Spec(size=400), Spec(size=5000))
    verdicts = survey.take(kinds=["shm"]).verdicts
    by_size = {v.obj.size: v for v in verdicts}
    a = Namespace(4026530001, 11, "docker:aaaaaaaaaaaa")
    b = Namespace(4026530002, 12, None)
    c = Namespace(4026530003, 13, "unit:db.service")
    placed = [by_size[100], by_size[200]._replace(ns=a), by_size[300]._replace(ns=b),
              by_size[400]._replace(ns=c), by_size[5000]._replace(ns=c)]  # fmt: skip
    monkeypatch.setattr(metrics, "TOP", 2)
    prom = tmp_path / "m.prom"
    metrics.write(prom, placed, run=None, now=0.0)
    me = here()
    got = _samples(prom, "shmjanitor_segment_bytes", state="orphan")
    assert got == {(str(me.ipc), me.container or ""): 100,
                   (str(c.ipc), "unit:db.service"): 5400, ("other", "other"): 500}  # fmt: skip
    n = _samples(prom, "shmjanitor_objects", kind="shm", state="orphan")
    assert n == {(str(me.ipc), me.container or ""): 1, (str(c.ipc), "unit:db.service"): 2,
                 ("other", "other"): 2}  # fmt: skip
    zeros = _samples(prom, "shmjanitor_objects", kind="sem", state="idle")
    assert set(zeros) == set(n) and not any(zeros.values())  # every series, zeros too
    # Without the bound every namespace is labelled, and there is no "other".
    monkeypatch.setattr(metrics, "TOP", 10)
    metrics.write(prom, placed, run=None, now=0.0)
    got = _samples(prom, "shmjanitor_segment_bytes", state="orphan")
    assert ("other", "other") not in got and len(got) == 4
    assert got[(str(a.ipc), "docker:aaaaaaaaaaaa")] == 200 and got[(str(b.ipc), "")] == 300


@pytest.mark.parametrize("top", [1, 3])
def test_our_namespace_is_labelled_even_when_it_holds_least(tmp_path: Path, monkeypatch: Any,
                                                            top: int) -> None:  # fmt: skip
    make(Spec(size=4096))
    (v,) = survey.take(kinds=["shm"]).verdicts
    others = [v._replace(ns=Namespace(4026530100 + i, 100 + i, None)) for i in range(5)]
    monkeypatch.setattr(metrics, "TOP", top)
    prom = tmp_path / "m.prom"
    metrics.write(prom, others, run=None, now=0.0)
    got = _samples(prom, "shmjanitor_segment_bytes", state="orphan")
    me = here()
    assert got[(str(me.ipc), me.container or "")] == 0
    assert len(got) == top + 1 and got[("other", "other")] == 4096 * (5 - (top - 1))


def test_the_same_path_in_two_namespaces_is_two_largest_series(tmp_path: Path):
    """Two containers' /dev/shm/x are two files: shmjanitor_posix_largest_bytes keeps
    both, each with its namespace's labels (one series would hide one of them)."""
    Path("/dev/shm/x").write_bytes(b"z" * 8192)
    (v,) = survey.take(kinds=["posix-shm"]).verdicts
    a, b = Namespace(4026530201, 5, "docker:bbbbbbbbbbbb"), Namespace(4026530202, 6, None)
    prom = tmp_path / "m.prom"
    metrics.write(prom, [v._replace(ns=a), v._replace(ns=b)], run=None, now=0.0)
    got = _samples(prom, "shmjanitor_posix_largest_bytes", path="/dev/shm/x")
    assert got == {(str(a.ipc), "docker:bbbbbbbbbbbb"): 8192, (str(b.ipc), ""): 8192}
