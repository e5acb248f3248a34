"""The reap policy's system-account rule: UID_MIN..UID_MAX, and who decides (owner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_real_root
from segments import Spec, cli, make, make_given_to, rows

from shmjanitor import config, policy
from shmjanitor.classify import Creator, State, Verdict
from shmjanitor.config import Config
from shmjanitor.render import owner_name
from shmjanitor.scan import Segment

ROOT = policy.Caller(euid=0, cap_sys_admin=True, uid_min=1000, uid_max=60000)


def orphan(uid: int, cuid: int) -> Verdict:
    seg = Segment(key=0, id=1, mode=0o600, size=4096, cpid=9, lpid=0, nattch=0, uid=uid,
                  gid=uid, cuid=cuid, cgid=cuid, atime=None, dtime=None, ctime=1, rss=0,
                  swap=0)  # fmt: skip
    return Verdict(seg, State.ORPHAN, "creator 9 exited", Creator(9, False, None), 7200)


@pytest.mark.parametrize(
    "uid, cuid, kept_because",
    [
        (1000, 1000, None),  # an ordinary user's own leak
        (1000, 0, None),  # root made it for the user (restore, a setuid helper): theirs
        (65534, 65534, "system account {n65534} (uid 65534 > UID_MAX 60000)"),  # nobody
        (60001, 1000, "system account {n60001} (uid 60001 > UID_MAX 60000)"),
        (0, 1000, "system account root (uid 0 < UID_MIN 1000)"),  # given to root
        (1000, 999, "created by system account {n999} (uid 999 < UID_MIN 1000)"),  # a daemon's
        (1000, 65534, "created by system account {n65534} (uid 65534 > UID_MAX 60000)"),
    ],
)
def test_system_accounts_are_below_uid_min_or_above_uid_max(uid, cuid, kept_because):
    d = policy.decide(orphan(uid, cuid), Config(min_age=0), ROOT)
    assert d is not None
    if kept_because is None:
        assert d.remove, d.reason
    else:
        name = {f"n{u}": owner_name(u) for u in (999, 60001, 65534)}
        why = kept_because.format_map(name)
        assert not d.remove and d.reason == f"{why}; --include-system to reap"
    # --include-system lets every one of them go.
    assert policy.decide(orphan(uid, cuid), Config(min_age=0, include_system=True), ROOT).remove


def test_uid_range_comes_from_login_defs(tmp_path: Path):
    defs = tmp_path / "login.defs"
    defs.write_text("# UID_MAX 1\nUID_MIN\t\t 500\nUID_MAX   59999\n")
    assert (config.uid_min(defs), config.uid_max(defs)) == (500, 59999)
    defs.write_text("MAIL_DIR /var/mail\n")
    assert (config.uid_min(defs), config.uid_max(defs)) == (1000, 60000)  # logind's defaults
    assert config.uid_max(tmp_path / "absent") == 60000


def reap_json() -> dict[int, dict]:  # type: ignore[type-arg]
    r = cli("reap", "--min-age", "0", "--no-quarantine", "--json")
    assert r.exit_code == 0, r.output
    return {x["id"]: x for x in json.loads(r.stdout)["results"]}


def test_nobodys_orphan_is_kept_as_a_system_accounts():
    needs_real_root()
    if not config.uid_max() < 65534:
        pytest.skip("this machine's UID_MAX counts nobody as an ordinary user")
    (shmid,) = make(Spec(), uid=65534).ids
    got = reap_json()[shmid]
    assert got["action"] == "kept"
    assert f"system account {owner_name(65534)} (uid 65534" in got["reason"]
    assert f"> UID_MAX {config.uid_max()}" in got["reason"]
    assert set(rows()) == {shmid}


def test_a_segment_root_made_for_a_user_is_the_users_orphan():
    needs_real_root()
    (shmid,) = make_given_to(1000, Spec()).ids  # as `shmjanitor restore` run by root does
    (row,) = rows().values()
    header = Path("/proc/sysvipc/shm").read_text().split()
    assert (row[header.index("uid")], row[header.index("cuid")]) == ("1000", "0")
    got = reap_json()[shmid]
    assert got["action"] == "removed", got
    assert rows() == {}
