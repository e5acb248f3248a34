"""--metrics-file: valid exposition format (prometheus_client's parser, and promtool
where installed), the kernel's numbers, written atomically."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families
from segments import Spec, attach, cli, make


def samples(path) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def ours(**labels: str) -> tuple[tuple[str, str], ...]:
    """A series' sorted labels, in our own IPC namespace (issue 14: every per-state gauge
    has namespace and container labels)."""
    from shmjanitor.namespaces import here

    me = here()
    labels.update(namespace=str(me.ipc), container=me.container or "")
    return tuple(sorted(labels.items()))


def test_list_metrics_count_states_and_bytes(tmp_path):
    make(Spec(size=100), Spec(size=200))  # two orphans
    busy = make(Spec(size=4096)).ids[0]
    attach(busy)
    make(Spec(size=50), stay=True)  # idle
    prom = tmp_path / "shm.prom"
    r = cli("list", "--metrics-file", str(prom))
    assert r.exit_code == 0, r.output
    got = samples(prom)
    assert got[("shmjanitor_segments", ours(state="orphan"))] == 2
    assert got[("shmjanitor_segment_bytes", ours(state="orphan"))] == 300
    assert got[("shmjanitor_segments", ours(state="attached"))] == 1
    assert got[("shmjanitor_segments", ours(state="idle"))] == 1
    assert got[("shmjanitor_segments", ours(state="removing"))] == 0
    assert got[("shmjanitor_last_run_success", ())] == 1
    assert ("shmjanitor_last_run_removed_segments", ()) not in got  # list removes nothing
    assert not list(tmp_path.glob("*.tmp*"))  # the temp file was renamed into place


def test_reap_metrics_say_what_was_removed(tmp_path):
    make(Spec(size=1000), Spec(size=24), uid=None)
    make(Spec(size=7), stay=True)
    prom = tmp_path / "shm.prom"
    r = cli("reap", "--min-age", "0", "--include-system", "--no-quarantine",
            "--metrics-file", str(prom))  # fmt: skip
    assert r.exit_code == 0, r.output
    got = samples(prom)
    assert got[("shmjanitor_last_run_removed_segments", ())] == 2
    assert got[("shmjanitor_last_run_removed_bytes", ())] == 1024
    assert got[("shmjanitor_segments", ours(state="orphan"))] == 0  # after the run
    assert got[("shmjanitor_segments", ours(state="idle"))] == 1
    assert got[("shmjanitor_last_run_success", ())] == 1
    assert got[("shmjanitor_last_run_timestamp_seconds", ())] > 1.7e9
    assert stat.S_IMODE(prom.stat().st_mode) & 0o044  # node_exporter must read it
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(),
                           capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr


def test_unwritable_metrics_path_is_a_clear_error(tmp_path):
    r = cli("list", "--metrics-file", str(tmp_path / "no" / "such" / "dir.prom"))
    assert r.exit_code == 1 and "cannot write metrics file" in r.output


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed")
def test_promtool_accepts_list_metrics(tmp_path):
    make(Spec())
    prom = tmp_path / "m.prom"
    assert cli("list", "--metrics-file", str(prom)).exit_code == 0
    p = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_largest_posix_objects_are_named_by_escaped_path_and_no_more(tmp_path):
    """shmjanitor_posix_largest_bytes names at most LARGEST POSIX objects, the largest
    by bytes held; a name with a newline and a byte that is not UTF-8 is written
    escaped, and promtool accepts the file."""
    import os

    from shmjanitor.metrics import LARGEST

    for i in range(LARGEST + 3):  # i + 1 pages each: with "big", the 4 smallest are left out
        with open(f"/dev/shm/obj{i:02d}", "wb") as f:
            f.write(b"x" * 4096 * (i + 1))
    odd = os.fsencode("/dev/shm/big\nname") + b"\xff"
    with open(odd, "wb") as f:
        f.write(b"y" * 4096 * 50)
    prom = tmp_path / "posix.prom"
    r = cli("list", "-M", "--metrics-file", str(prom))
    assert r.exit_code == 0, r.output
    named = {dict(k[1])["path"]: v for k, v in samples(prom).items()
             if k[0] == "shmjanitor_posix_largest_bytes"}  # fmt: skip
    assert len(named) == LARGEST
    assert named["/dev/shm/big\\nname\\xff"] == 4096 * 50
    assert named[f"/dev/shm/obj{LARGEST + 2:02d}"] == 4096 * (LARGEST + 3)
    assert "/dev/shm/obj03" not in named and "/dev/shm/obj04" in named  # big + 9
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(),
                           capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
