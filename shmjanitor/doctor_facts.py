"""The facts `shmjanitor doctor` judges, read once (doctor.py's checks are pure).

Files of the system (logind.conf and its drop-ins, the units, /etc/shmjanitor.toml, the
state directory, the metrics file) are read below `root`, as `systemctl --root` reads
them; the kernel's facts (sysctls, /proc, /dev/shm, the IPC tables) are this IPC
namespace's. Nothing here judges: a fact that cannot be read is None or absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from shmjanitor.doctor import (
    Facts,
    Limit,
    MetricsFile,
    Owned,
    Proc,
    option_value,
    reap_command,
    unit_values,
)

# Where systemd looks for units, in its order (systemd.unit(5)): /etc over /run over
# the vendor's directories.
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system",
             "lib/systemd/system")  # fmt: skip


def under(root: Path, path: str) -> Path:
    """`path` (absolute, as the system names it) inside `root`."""
    return root / path.lstrip("/")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def config_files(root: Path, main: str, dropin_dir: str, dirs: Sequence[str]
                 ) -> list[tuple[str, str]]:  # fmt: skip
    """A systemd configuration file and its drop-ins in the order systemd applies them
    (systemd.unit(5), logind.conf(5)): the main file from the first of `dirs` that has
    it, then every *.conf of `dropin_dir` in those directories, sorted by file name
    whatever the directory, a name in an earlier directory hiding the same name in a
    later one (/etc over /run over /usr/local/lib over /usr/lib)."""
    out = []
    for d in dirs:
        text = _read(under(root, f"{d}/{main}"))
        if text is not None:
            out.append((f"/{d}/{main}", text))
            break
    dropins: dict[str, str] = {}
    for d in dirs:
        try:
            names = os.listdir(under(root, f"{d}/{dropin_dir}"))
        except OSError:
            continue
        for n in names:
            if n.endswith(".conf") and n not in dropins:
                dropins[n] = f"/{d}/{dropin_dir}/{n}"
    for n in sorted(dropins):
        text = _read(under(root, dropins[n]))
        if text is not None:
            out.append((dropins[n], text))
    return out


LOGIND_DIRS = ("etc/systemd", "run/systemd", "usr/local/lib/systemd", "usr/lib/systemd")


def read_procs(proc: str = "/proc") -> tuple[Proc, ...]:
    out = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/status", "rb") as fh:
                status = fh.read()
            uid = int(status.split(b"\nUid:", 1)[1].split()[0])
            comm = Path(proc, name, "comm").read_text(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # gone since the listing, or hidden
        try:
            loginuid: Optional[int] = int(Path(proc, name, "loginuid").read_text())
        except (OSError, ValueError):
            loginuid = None
        out.append(Proc(int(name), uid, loginuid, comm))
    return tuple(out)


def read_objects() -> tuple[
    tuple[Owned, ...], tuple[int, ...], dict[str, list[Any]], Optional[str]
]:
    """Every object of every registered kind; the ids of segments nobody is attached to;
    the objects by kind; and what could not be read."""
    from shmjanitor import kinds
    from shmjanitor.errors import JanitorError

    owned: list[Owned] = []
    by_kind: dict[str, list[Any]] = {}
    errors = []
    for name in kinds.names():
        try:
            objs = kinds.of(name).read()
        except JanitorError as e:
            errors.append(str(e))
            continue
        by_kind[name] = objs
        owned += [Owned(name, o.id, o.uid) for o in objs]
    detached = tuple(o.id for o in by_kind.get("shm", ()) if o.nattch == 0)
    return tuple(owned), detached, by_kind, "; ".join(errors) or None


def read_limits(by_kind: Mapping[str, list[Any]], mqueue: Optional[str]) -> tuple[Limit, ...]:
    """Every IPC limit with its use: the kinds' sysctls, /dev/shm, fs.mqueue."""
    from shmjanitor import kinds, limits, scan

    out = []
    if "shm" in by_kind:
        usage = limits.measure(by_kind["shm"], scan.read_limits())
        out.append(Limit("limit_shmmni", "SysV segments (kernel.shmmni)", usage.shmmni,
                         usage.segments))  # fmt: skip
        if not limits.unlimited(usage.shmall):
            out.append(Limit("limit_shmall", "SysV shared memory pages (kernel.shmall)",
                             usage.shmall, usage.pages))  # fmt: skip
    if "sem" in by_kind:
        sem = kinds.of("sem").limits()
        sets = by_kind["sem"]
        out.append(Limit("limit_semmni", "SysV semaphore sets (kernel.sem SEMMNI)",
                         sem.get("semmni"), len(sets)))  # fmt: skip
        out.append(Limit("limit_semmns", "SysV semaphores (kernel.sem SEMMNS)",
                         sem.get("semmns"), sum(s.nsems for s in sets)))  # fmt: skip
    if "msg" in by_kind:
        out.append(Limit("limit_msgmni", "SysV message queues (kernel.msgmni)",
                         kinds.of("msg").limits().get("msgmni"), len(by_kind["msg"])))  # fmt: skip
    try:
        st = os.statvfs("/dev/shm")
        out.append(Limit("limit_dev_shm_bytes", "/dev/shm bytes", st.f_blocks * st.f_frsize,
                         (st.f_blocks - st.f_bfree) * st.f_frsize, "bytes"))  # fmt: skip
        if st.f_files:
            out.append(Limit("limit_dev_shm_inodes", "/dev/shm files (inodes)", st.f_files,
                             st.f_files - st.f_ffree))  # fmt: skip
    except OSError:
        pass
    if mqueue is not None:
        from shmjanitor.sysvtable import sysctl_value

        try:
            queues: Optional[int] = sum(1 for e in os.scandir(mqueue) if e.is_file())
        except OSError:
            queues = None
        # queues_max counts every queue of this IPC namespace (ipc/mqueue.c,
        # mq_queues_count), which its mqueue mount lists.
        out.append(Limit("limit_mqueue_queues", f"POSIX message queues (fs.mqueue."
                         f"queues_max; {mqueue})", sysctl_value("queues_max",
                         Path("/proc/sys/fs/mqueue")), queues))  # fmt: skip
    return tuple(out)


def mqueue_mount(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Where an mqueue file system is mounted: /dev/mqueue if it is one, else the latest
    mqueue mount (None: none, and no POSIX queue can be counted)."""
    found = []
    try:
        with open(mountinfo) as fh:
            for line in fh:
                head, _, tail = line.partition(" - ")
                if tail.split()[:1] == ["mqueue"]:
                    found.append(head.split()[4])
    except (OSError, IndexError):
        return None
    return "/dev/mqueue" if "/dev/mqueue" in found else (found[-1] if found else None)


def proc_options(mountinfo: str = "/proc/self/mountinfo", mount_point: str = "/proc") -> str:
    """The super options of the mount on top at /proc (where hidepid= and gid= are)."""
    options = ""
    try:
        with open(mountinfo) as fh:
            for line in fh:
                head, sep, tail = line.partition(" - ")
                if sep and head.split()[4:5] == [mount_point] and len(tail.split()) > 2:
                    options = tail.split()[2]
    except OSError:
        pass
    return options


def mem_total(meminfo: str = "/proc/meminfo") -> Optional[int]:
    text = _read(Path(meminfo)) or ""
    m = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def systemctl_show(units: Sequence[str]) -> Optional[dict[str, dict[str, str]]]:
    """`systemctl show` of `units`: {unit: {property: value}}; None when it fails."""
    props = "Id,LoadState,UnitFileState,ActiveState,Result,ExecMainStatus,ExecMainExitTimestamp"
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "show", "-p", props, *units], capture_output=True,
                              text=True, timeout=15)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    out: dict[str, dict[str, str]] = {}
    for block in done.stdout.split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if "Id" in values:
            out[values["Id"]] = values
    return out


def metrics_path(service_files: Sequence[tuple[str, str]],
                 env_files: Sequence[tuple[str, str]] = ()) -> Optional[str]:  # fmt: skip
    """The --metrics-file the unit's reap is given, on its command line as systemd
    builds it (doctor.reap_command: ExecStart= and $SHMJANITOR_REAP_ARGS)."""
    return option_value(reap_command(service_files, env_files), "--metrics-file")


def environment_files(root: Path, service: Sequence[tuple[str, str]]
                      ) -> Iterator[tuple[str, str]]:  # fmt: skip
    """The unit's EnvironmentFile= files below `root`, in order, with their text; one
    prefixed "-" that is missing is skipped, as systemd skips it (so is one unreadable
    here: doctor then judges without it)."""
    for value, _ in unit_values(service, "Service", "EnvironmentFile"):
        path = value.lstrip("-")
        file = under(root, path)
        if path and file.is_file():  # never a fifo's open, which would wait forever
            text = _read(file)
            if text is not None:
                yield path, text


def read_metrics(root: Path, path: Optional[str], now: float) -> Optional[MetricsFile]:
    if path is None:
        return None
    file = under(root, path)
    try:
        age: Optional[float] = now - file.stat().st_mtime
    except OSError:
        return MetricsFile(path, None)
    return MetricsFile(path, age, _read(file) or "")


def gather(root: Path = Path("/"), config_path: Optional[Path] = None,
           reap_metrics: Optional[str] = None, now: Optional[float] = None) -> Facts:  # fmt: skip
    """Read every fact the checks judge. Files of the system are read below `root`;
    systemctl is asked only when `root` is / and systemd runs (sd_booted(3): the
    directory /run/systemd/system exists)."""
    import time

    from shmjanitor import config, paths, quarantine
    from shmjanitor.errors import JanitorError
    from shmjanitor.sysvtable import sysctl_value

    now = time.time() if now is None else now
    objects, detached, by_kind, objects_error = read_objects()
    login_defs = under(root, "etc/login.defs")
    sys_uid_max = config.sys_uid_max(login_defs)
    timer = next((d for d in UNIT_DIRS if under(root, f"{d}/shmjanitor.timer").is_file()), None)
    service = config_files(root, "shmjanitor.service", "shmjanitor.service.d", UNIT_DIRS)
    if root != Path("/"):
        systemd, why = None, f"--root {root}: systemd is not asked about another root"
    elif not Path("/run/systemd/system").is_dir():
        systemd, why = None, "systemd is not running here (no /run/systemd/system)"
    else:
        systemd = systemctl_show(["shmjanitor.timer", "shmjanitor.service"])
        why = "systemctl show failed"
    env_files = tuple(environment_files(root, service))
    cfg_path = config_path or under(root, "etc/shmjanitor.toml")
    cfg, cfg_error = config.Config(), None
    try:
        if config_path is not None or cfg_path.exists() or cfg_path.is_symlink():
            cfg = config.load(cfg_path)
    except JanitorError as e:
        cfg_error = str(e)
    state = under(root, str(cfg.state_dir)) if cfg.state_dir else (
        under(root, str(paths.default_state_dir()))
    )  # fmt: skip
    store = quarantine.Store(state, cfg)
    logind = config_files(root, "logind.conf", "logind.conf.d", LOGIND_DIRS)
    daemon = ("usr/lib/systemd/systemd-logind", "lib/systemd/systemd-logind")
    return Facts(
        now=now,
        root=str(root).rstrip("/") + "/",
        logind_present=bool(logind) or any(under(root, p).exists() for p in daemon),
        logind_files=tuple(logind),
        uid_min=config.uid_min(login_defs),
        uid_max=config.uid_max(login_defs),
        sys_uid_max=sys_uid_max,
        objects=objects,
        objects_error=objects_error,
        procs=read_procs(),
        shm_rmid_forced=sysctl_value("shm_rmid_forced"),
        detached_segments=detached,
        limits=read_limits(by_kind, mqueue_mount()),
        dev_shm_size=_fs_size("/dev/shm"),
        mem_total=mem_total(),
        timer_unit=f"/{timer}/shmjanitor.timer" if timer else None,
        timer_text=(_read(under(root, f"{timer}/shmjanitor.timer")) or "") if timer else "",
        timer_enabled=os.path.lexists(
            under(root, "etc/systemd/system/timers.target.wants/shmjanitor.timer")),
        service_files=tuple(service),
        systemd=systemd,
        systemd_why=why,
        metrics=read_metrics(root, reap_metrics or metrics_path(service, env_files), now),
        config_path=str(cfg_path) if cfg_path.exists() else f"{cfg_path} (absent: defaults)",
        config_error=cfg_error,
        state_dir=str(state),
        state_usage=store.usage() if store.dir.is_dir() else None,
        budget=cfg.quarantine_budget_bytes,
        proc_options=proc_options(),
        history=history_check(state),
        history_aside=tuple(sorted(p.name for p in state.glob("history.sqlite3.corrupt-*"))),
        all_namespaces=cfg.all_namespaces,
        env_files=env_files,
    )  # fmt: skip


def history_check(state: Path) -> Optional[str]:
    """SQLite's PRAGMA quick_check of the history store, opened read-only (doctor
    changes nothing in it: history.read_only_uri); None when there is none. A file
    SQLite cannot open as a database answers with its error."""
    import sqlite3

    from shmjanitor.history import read_only_uri

    path = state / "history.sqlite3"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(read_only_uri(path), uri=True, timeout=5)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        return str(e)
    return "; ".join(str(r[0]) for r in rows) or "no answer"


def _fs_size(path: str) -> Optional[int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize
