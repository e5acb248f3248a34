"""`shmjanitor limits` against `ipcs -l`, `ipcs -u` and `lsipc -g` on the same namespace.

Each test runs in its own IPC namespace (conftest.py), whose kernel.shm* sysctls are its
own: the tests raise and lower them there and the machine's stay as they were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sysv_ipc
from conftest import HOST_IPC_NS
from segments import Spec, cli, make

from shmjanitor import limits, scan

PAGE = limits.PAGE_SIZE
SYSCTL = Path("/proc/sys/kernel")


def set_sysctl(**values: int) -> None:
    # Written only in the test's private IPC namespace: these sysctls belong to it.
    assert os.readlink("/proc/self/ns/ipc") != HOST_IPC_NS
    for name, value in values.items():
        try:
            (SYSCTL / name).write_text(str(value))
        except PermissionError:
            pytest.skip(f"cannot write kernel.{name} in this IPC namespace")
        assert int((SYSCTL / name).read_text()) == value


def ipcs(flag: str) -> dict[str, int]:
    """`ipcs -m -l` / `ipcs -m -u` as {label: number}: "max number of segments = 4096",
    "pages allocated 3"."""
    out = subprocess.run(["ipcs", "-m", flag], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.fullmatch(r"\s*([a-z][a-z ()]*?)\s*=?\s*(\d+)\s*", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found


def lsipc() -> dict[str, dict[str, str]]:
    out = subprocess.run(
        ["lsipc", "--global", "--shmems", "--bytes", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {r["resource"]: r for r in json.loads(out)["ipclimits"]}


def ours() -> dict[str, dict]:  # type: ignore[type-arg]
    r = cli("limits", "--json")
    assert r.exit_code == 0, r.output
    return {row["resource"]: row for row in json.loads(r.stdout)["limits"]}


def ours_plain() -> dict[str, list[str]]:
    r = cli("limits", "--format", "plain", "--bytes")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["RESOURCE", "LIMIT", "USED", "USE%", "DESCRIPTION"]
    return {line.split()[0]: line.split()[:4] for line in lines[1:]}


def write_pages(shmid: int, pages: int) -> None:
    """Make `pages` pages of the segment resident, as a program that used it would."""
    seg = sysv_ipc.attach(shmid)
    try:
        for p in range(pages):
            seg.write(b"x", offset=p * PAGE)
    finally:
        seg.detach()


need_tools = pytest.mark.skipif(
    not (shutil.which("ipcs") and shutil.which("lsipc")), reason="needs ipcs and lsipc"
)

SCENARIOS = {
    "defaults": {},  # shmall and shmmax at ULONG_MAX - 2^24: unlimited
    "lowered": {"shmmni": 10, "shmall": 40, "shmmax": 1 << 20},
    "raised": {"shmmni": 32768, "shmall": 1 << 40, "shmmax": 1 << 44},
    "just-below-unlimited": {
        "shmall": limits.UNLIMITED_FROM - 1,
        "shmmax": limits.UNLIMITED_FROM - 1,
    },  # fmt: skip
}


@need_tools
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("sizes", [(PAGE, 3 * PAGE), (5000, 4096, 1)], ids=["whole", "partial"])
def test_limits_match_ipcs_and_lsipc(scenario, sizes):
    set_sysctl(**SCENARIOS[scenario])
    ids = make(*[Spec(size=n) for n in sizes]).ids
    write_pages(ids[0], 1)
    ours_, plain, ipcs_l, ipcs_u, ls = ours(), ours_plain(), ipcs("-l"), ipcs("-u"), lsipc()
    shmmni, shmall, shmmax = (int((SYSCTL / n).read_text()) for n in ("shmmni", "shmall", "shmmax"))

    # Every limit: the kernel's number, which lsipc prints raw (-b) and ipcs in its units.
    assert ours_["SHMMNI"]["limit"] == shmmni == ipcs_l["max number of segments"]
    assert ours_["SHMMNI"]["limit"] == int(ls["SHMMNI"]["limit"])
    assert ours_["SHMALL"]["limit"] == shmall == int(ls["SHMALL"]["limit"])
    if shmall * PAGE < 1 << 64:  # else ipcs's own multiplication overflows
        assert ipcs_l["max total shared memory (kbytes)"] == shmall * PAGE // 1024
    assert ours_["SHMMAX"]["limit"] == shmmax == int(ls["SHMMAX"]["limit"])
    assert ipcs_l["max seg size (kbytes)"] == shmmax // 1024
    assert ours_["SHMMIN"]["limit"] == 1 == ipcs_l["min seg size (bytes)"]
    assert ls["SHMMIN"]["limit"] == "1"

    # Every use: segments and pages as the kernel counts them (ipcs -u reads SHM_INFO).
    assert ours_["SHMMNI"]["used"] == len(sizes) == ipcs_u["segments allocated"]
    assert ours_["SHMMNI"]["used"] == int(ls["SHMMNI"]["used"])
    assert ours_["SHMALL"]["used"] == ipcs_u["pages allocated"]
    assert ours_["SHMALL"]["used"] == sum(-(-n // PAGE) for n in sizes)
    # lsipc divides the total by the page size: the same only for whole pages.
    assert int(ls["SHMALL"]["used"]) == sum(sizes) // PAGE
    assert ours_["RSS"]["used"] == ipcs_u["pages resident"] == 1
    assert ours_["SWAP"]["used"] == ipcs_u["pages swapped"]
    for name in ("SHMMAX", "SHMMIN"):
        assert ours_[name]["used"] is None and ls[name]["used"] == "-" == plain[name][2]

    # USE% as lsipc prints it ("%2.2f%%"), except where the limit means none.
    assert plain["SHMMNI"][3] == ls["SHMMNI"]["use%"]
    for name in ("SHMMNI", "SHMALL"):
        row = ours_[name]
        expect_unlimited = row["limit"] >= limits.UNLIMITED_FROM
        assert row["unlimited"] is expect_unlimited
        assert plain[name][1] == ("unlimited" if expect_unlimited else str(row["limit"]))
        if expect_unlimited:
            assert row["use_percent"] is None and plain[name][3] == "-"
        else:
            pct = f"{100 * row['used'] / row['limit']:.2f}%"
            assert plain[name][3] == pct and f"{row['use_percent']:.2f}%" == pct
            if sizes[0] % PAGE == 0 or name == "SHMMNI":
                assert pct == ls[name]["use%"]
    assert ours_["SHMMAX"]["unlimited"] is (scenario == "defaults")


def test_unlimited_starts_at_the_kernel_default():
    kernel_default = (1 << 64) - 1 - (1 << 24)  # include/uapi/linux/shm.h on 64-bit
    if limits.ULONG_MAX == (1 << 64) - 1:
        assert kernel_default == limits.UNLIMITED_FROM
    assert limits.unlimited(limits.UNLIMITED_FROM)
    assert limits.unlimited(limits.ULONG_MAX)
    assert not limits.unlimited(limits.UNLIMITED_FROM - 1)
    assert not limits.unlimited(None)


def test_measure_counts_pages_as_the_kernel_does():
    text = (
        "key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime rss swap\n"
        "1 0 600 1 10 0 0 0 0 0 0 0 0 100 4096 0\n"  # 1 byte: one page
        "2 1 600 4096 10 0 0 0 0 0 0 0 0 100 0 8192\n"  # exactly one page
        "3 2 600 4097 10 0 0 0 0 0 0 0 0 100 8192 0\n"  # just over: two
    )
    u = limits.measure(scan.parse(text), scan.Limits(5, 8, 1 << 20), page_size=4096)
    assert (u.segments, u.pages, u.resident, u.swapped) == (3, 4, 3, 2)
    by = {r.resource: r for r in limits.rows(u)}
    assert by["SHMALL"].use_percent == 50.0 and by["SHMMNI"].use_percent == 60.0
    assert limits.cells(by["SHMMAX"], exact_bytes=False)[:4] == ("SHMMAX", "1M", "-", "-")


def test_old_kernel_without_rss_says_so():
    text = "key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime\n"
    text += "1 0 600 1 10 0 0 0 0 0 0 0 0 100\n"
    u = limits.measure(scan.parse(text), scan.Limits(None, None, None), page_size=4096)
    assert u.resident is None and u.swapped is None
    cells = [limits.cells(r, False) for r in limits.rows(u)]
    assert all(c[1] == "-" and c[3] == "-" for c in cells if c[0] != "SHMMIN")


def test_every_format_has_the_same_rows(monkeypatch):
    make(Spec())
    doc = json.loads(cli("limits", "--json").stdout)
    names = [r["resource"] for r in doc["limits"]]
    assert names == ["SHMMNI", "SHMALL", "SHMMAX", "SHMMIN", "RSS", "SWAP"]
    for fmt in ("plain", "table"):
        monkeypatch.delenv("NO_COLOR", raising=False)
        r = cli("limits", "--format", fmt)
        assert r.exit_code == 0, r.output
        lines = r.stdout.splitlines()
        assert [line.split()[0] for line in lines[1:]] == names
        assert ("\x1b[1m" in lines[0]) is (fmt == "table")
        assert all(len(line.split()) >= 5 for line in lines)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in cli("limits", "--format", "table").stdout


def test_list_footer_says_unlimited():
    make(Spec())
    r = cli("list", "--format", "table")
    assert r.exit_code == 0, r.output
    assert "pages of unlimited (kernel.shmall)" in r.stdout
    assert str(limits.UNLIMITED_FROM) not in r.stdout
    set_sysctl(shmall=1000)
    assert "1 pages of 1000 (kernel.shmall)" in cli("list", "--format", "table").stdout
