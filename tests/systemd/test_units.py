"""The shipped units: systemd accepts them, they are hardened, and nothing in them blinds
the janitor. Also shmjanitor.units (render, install). Fast: no container."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from shmjanitor import units
from shmjanitor.errors import JanitorError

REPO = Path(__file__).resolve().parents[2]
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def directives(text: str, section: str) -> dict[str, list[str]]:
    """Key -> values in one [section] of a unit file (no continuation lines used here)."""
    out: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def fake_exec(tmp_path: Path) -> str:
    """An executable to point ExecStart= at (verify insists that it exists)."""
    exe = tmp_path / "bin" / "shmjanitor"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture
def rendered(tmp_path: Path, fake_exec: str) -> Path:
    dest = tmp_path / "units"
    dest.mkdir()
    units.install_units(dest, fake_exec)
    return dest


def service_text() -> str:
    return units.unit_texts()["shmjanitor.service"]


def timer_text() -> str:
    return units.unit_texts()["shmjanitor.timer"]


# -- systemd's own checks -----------------------------------------------------------


@needs_analyze
def test_systemd_analyze_verify_is_silent(rendered: Path) -> None:
    # An unknown key or section only warns (exit 0): the output must be empty.
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no",
         str(rendered / "shmjanitor.service"), str(rendered / "shmjanitor.timer")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path, rendered: Path) -> None:
    # Guards the test above: verify does report an unknown directive on this systemd.
    bad = tmp_path / "shmjanitor.service"
    bad.write_text((rendered / "shmjanitor.service").read_text() + "ProtectSytem=strict\n")
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True
    )
    assert "ProtectSytem" in r.stdout + r.stderr


def exposure(unit: Path) -> float:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout)
    assert m, f"no exposure figure in:\n{r.stdout}{r.stderr}"
    return float(m.group(1))


@needs_analyze
def test_security_exposure_at_most_2(rendered: Path) -> None:
    score = exposure(rendered / "shmjanitor.service")
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


@needs_analyze
def test_exposure_parser_sees_a_bare_unit(tmp_path: Path, fake_exec: str) -> None:
    # Guards the parser: an unhardened unit scores high, so 'low' above means something.
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nType=oneshot\nExecStart={fake_exec}\n")
    assert exposure(bare) > 9.0


# -- what the units say ---------------------------------------------------------------


def test_no_option_that_blinds_the_janitor() -> None:
    svc = directives(service_text(), "Service")

    def truthy(key: str) -> bool:
        return any(v.lower() in ("yes", "true", "1", "on") for v in svc.get(key, []))

    # Each of these hides the segments, their owners or their creators.
    for key in ("PrivateIPC", "PrivateUsers", "PrivatePIDs"):
        assert not truthy(key), key
    assert svc.get("ProcSubset", ["all"])[-1] != "pid"
    assert svc.get("ProtectProc", ["default"])[-1] in ("default",)
    # RemoveIPC= would be pointless for root; if it ever applied it would delete segments.
    assert "RemoveIPC" not in svc
    for key in ("User", "DynamicUser"):
        assert key not in svc, "the program keeps its lock and quarantine only as root"


def test_capabilities_are_exactly_what_reaping_needs() -> None:
    svc = directives(service_text(), "Service")
    caps = " ".join(svc["CapabilityBoundingSet"]).split()
    # CAP_SYS_PTRACE: to see every process through a /proc mounted with hidepid;
    # CAP_DAC_READ_SEARCH and CAP_LEASE: to open another user's 0600 POSIX object and
    # take the write lease on it (tests/test_posix_adversary.py runs a reap with them).
    assert sorted(caps) == ["CAP_DAC_READ_SEARCH", "CAP_IPC_OWNER", "CAP_LEASE",
                            "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]  # fmt: skip
    assert svc["NoNewPrivileges"] == ["yes"]


def test_service_shape() -> None:
    text = service_text()
    unit = directives(text, "Unit")
    svc = directives(text, "Service")
    assert unit["Documentation"]
    assert svc["Type"] == ["oneshot"]
    # The path is rewritten at install; the variable carries a drop-in's extra flags.
    assert svc["ExecStart"] == ["/usr/local/bin/shmjanitor reap $SHMJANITOR_REAP_ARGS"]
    assert int(svc["Nice"][0]) >= 10
    assert svc["IOSchedulingClass"] == ["idle"]
    assert svc["StateDirectory"] == ["shmjanitor"]
    assert svc["ProtectSystem"] == ["strict"]
    # The program's lock is in /run/shmjanitor: that directory, not all of /run, is
    # writable, and it outlives a run so a lock held by a run by hand stays valid.
    assert "ReadWritePaths" not in svc
    assert svc["RuntimeDirectory"] == ["shmjanitor"]
    assert svc["RuntimeDirectoryMode"] == ["0700"]
    assert svc["RuntimeDirectoryPreserve"] == ["yes"]
    assert "[Install]" not in text  # the timer starts it, never boot


def test_timer_is_monotonic_and_spread() -> None:
    text = timer_text()
    timer = directives(text, "Timer")
    for key in ("OnBootSec", "OnUnitInactiveSec", "RandomizedDelaySec"):
        assert timer.get(key), key
    # Segments do not survive a reboot: calendar time and catch-up buy nothing.
    assert "OnCalendar" not in timer and "Persistent" not in timer
    assert directives(text, "Install")["WantedBy"] == ["timers.target"]


def test_repo_systemd_dir_is_the_shipped_units() -> None:
    # systemd/ at the top of the repo is for people; the package copy is what installs.
    for name in units.UNIT_NAMES:
        assert (REPO / "systemd" / name).read_text() == units.unit_texts()[name], name


# -- render_units / install_units -----------------------------------------------------


def test_render_rewrites_exec_start_only() -> None:
    shipped = units.unit_texts()
    out = units.render_units("/opt/shmjanitor/bin/shmjanitor")
    assert set(out) == set(units.UNIT_NAMES)
    assert out["shmjanitor.timer"] == shipped["shmjanitor.timer"]
    svc = directives(out["shmjanitor.service"], "Service")
    assert svc["ExecStart"] == ["/opt/shmjanitor/bin/shmjanitor reap $SHMJANITOR_REAP_ARGS"]
    before = [ln for ln in shipped["shmjanitor.service"].splitlines() if "ExecStart=" not in ln]
    after = [ln for ln in out["shmjanitor.service"].splitlines() if "ExecStart=" not in ln]
    assert before == after


@pytest.mark.parametrize(
    "path, words",
    [
        ("shmjanitor", "absolute"),
        ("bin/shmjanitor", "absolute"),
        ("/opt/my tools/bin/shmjanitor", "space"),
        ("/opt/100%/bin/shmjanitor", "%"),
        ("/root/.local/bin/shmjanitor", "ProtectHome"),
        ("/home/alice/venv/bin/shmjanitor", "ProtectHome"),
    ],
)
def test_render_refuses_paths_the_service_cannot_run(path: str, words: str) -> None:
    with pytest.raises(units.UnitsError, match=re.escape(words)):
        units.render_units(path)


def test_units_error_is_a_janitor_error() -> None:
    # So the CLI turns it into one line and exit code 2, never a traceback.
    assert issubclass(units.UnitsError, JanitorError)


def test_install_writes_both_units(tmp_path: Path, fake_exec: str) -> None:
    dest = tmp_path / "system"
    dest.mkdir()
    paths = units.install_units(dest, fake_exec)
    assert paths == [dest / "shmjanitor.service", dest / "shmjanitor.timer"]
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert f"ExecStart={fake_exec} reap $SHMJANITOR_REAP_ARGS\n" in paths[0].read_text()
    assert sorted(os.listdir(dest)) == ["shmjanitor.service", "shmjanitor.timer"]  # no temp
    # Again, over the old files: same result.
    assert units.install_units(dest, fake_exec) == paths


def test_install_needs_an_existing_dest(tmp_path: Path, fake_exec: str) -> None:
    with pytest.raises(units.UnitsError, match="--dest"):
        units.install_units(tmp_path / "nope", fake_exec)


def test_install_needs_a_real_executable(tmp_path: Path) -> None:
    with pytest.raises(units.UnitsError, match="not an executable"):
        units.install_units(tmp_path, str(tmp_path / "missing" / "shmjanitor"))


def test_install_says_what_to_do_when_dest_is_not_writable(
    tmp_path: Path, fake_exec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes anywhere, so the refusal is simulated where the write would fail.
    def denied(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(units.tempfile, "mkstemp", denied)
    with pytest.raises(units.UnitsError, match=r"run as root \(sudo\) or pass --dest"):
        units.install_units(tmp_path, fake_exec)


def test_find_exec_path_prefers_the_running_script(fake_exec: str) -> None:
    assert units.find_exec_path(fake_exec) == fake_exec


def test_find_exec_path_gives_an_absolute_path(
    fake_exec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(fake_exec).parent.parent)
    assert units.find_exec_path("bin/shmjanitor") == fake_exec


# -- shmjanitor-watch.service (issue 15 item 5): off unless asked, hardened as the reaper


def test_the_watch_unit_is_written_only_when_asked(tmp_path: Path, fake_exec: str) -> None:
    dest = tmp_path / "system"
    dest.mkdir()
    units.install_units(dest, fake_exec)
    assert units.WATCH not in os.listdir(dest)
    paths = units.install_units(dest, fake_exec, watch=True)
    assert dest / units.WATCH in paths
    svc = directives((dest / units.WATCH).read_text(), "Service")
    assert svc["ExecStart"] == [f"{fake_exec} watch $SHMJANITOR_WATCH_ARGS"]
    assert svc["Type"] == ["simple"] and svc["Nice"] == ["19"]
    assert "RuntimeDirectory" not in svc  # it takes no lock
    assert (REPO / "systemd" / units.WATCH).read_text() == units.unit_texts((units.WATCH,))[
        units.WATCH
    ]


def test_the_watch_unit_keeps_every_hardening_line_of_the_reaper() -> None:
    texts = units.unit_texts((*units.UNIT_NAMES, units.WATCH))
    reaper = directives(texts["shmjanitor.service"], "Service")
    watch = directives(texts[units.WATCH], "Service")
    # What differs on purpose: how it runs, its capabilities (fewer: it removes and
    # locks nothing), its memory bound, and the runtime directory of the reaper's lock.
    own = {"Type", "ExecStart", "TimeoutStartSec", "Restart", "RestartSec", "MemoryMax",
           "CapabilityBoundingSet"}  # fmt: skip
    for name, values in reaper.items():
        if name in own or name.startswith("RuntimeDirectory"):
            continue
        assert watch.get(name) == values, name
    caps = set(watch["CapabilityBoundingSet"][0].split())
    assert caps < set(reaper["CapabilityBoundingSet"][0].split())
    assert not caps & {"CAP_SYS_ADMIN", "CAP_LEASE"}
