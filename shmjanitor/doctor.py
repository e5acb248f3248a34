"""`shmjanitor doctor`: what on this machine puts IPC objects at risk, and the janitor's
own health, each finding with a severity and what to do about it.

Two halves. Here the checks, pure: each takes the `Facts` and returns its findings,
and says in them the evidence it used; and the output (table, plain, JSON). The
readers, thin, are doctor_facts.py: they read files, /proc and systemctl into `Facts`
and judge nothing.

Severity: ok, warning, error. The exit code is the worst severity found: 0, 1, 2.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import IO, NamedTuple, Optional

from shmjanitor.durations import format_age, format_size
from shmjanitor.text import printable

WARN_PERCENT = 80.0  # a limit used above this is a warning
ERROR_PERCENT = 95.0  # and above this an error: the next program may get ENOSPC
NO_LOGINUID = 4294967295  # (uid_t)-1: /proc/PID/loginuid of a process nobody logged in
TIMER_PERIOD = 3600 + 15 * 60  # the shipped timer: OnUnitInactiveSec=1h, RandomizedDelaySec=15min


class Severity(IntEnum):
    OK = 0
    WARNING = 1
    ERROR = 2

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Finding:
    """One check's verdict: what it found (with the evidence) and what to do."""

    check: str
    severity: Severity
    found: str
    todo: str = ""


# --- facts -----------------------------------------------------------------------------


class Owned(NamedTuple):
    """An IPC object and its owner (any kind of the registry)."""

    kind: str
    id: int
    uid: int


class Proc(NamedTuple):
    pid: int
    uid: int  # real uid
    loginuid: Optional[int]  # None: unreadable (no audit support)
    comm: str


class Limit(NamedTuple):
    """One limit and its use, named as `ipcs -l`/`lsipc -g` or the sysctl name it."""

    check: str  # limit_shmmni, ...
    what: str  # "SysV segments (kernel.shmmni)"
    limit: Optional[int]  # None: unreadable; an "unlimited" one is left out
    used: Optional[int]
    unit: str = ""  # "bytes": shown as sizes


class MetricsFile(NamedTuple):
    path: str
    age: Optional[float]  # seconds since its mtime; None: missing
    text: str = ""


@dataclass(frozen=True)
class Facts:
    """Everything the checks judge, read once. None where a fact could not be read."""

    now: float
    root: str = "/"
    logind_present: bool = True
    logind_files: tuple[tuple[str, str], ...] = ()  # (path, text), systemd's order
    uid_min: int = 1000
    uid_max: int = 60000
    sys_uid_max: int = 999  # logind's boundary: a uid above it is a user's (SYS_UID_MAX)
    objects: tuple[Owned, ...] = ()
    objects_error: Optional[str] = None
    procs: tuple[Proc, ...] = ()
    shm_rmid_forced: Optional[int] = None
    detached_segments: tuple[int, ...] = ()  # ids of segments with nattch 0
    limits: tuple[Limit, ...] = ()
    dev_shm_size: Optional[int] = None
    mem_total: Optional[int] = None
    timer_unit: Optional[str] = None  # the installed timer's path and text
    timer_text: str = ""
    timer_enabled: bool = False
    service_files: tuple[tuple[str, str], ...] = ()  # unit, then drop-ins
    systemd: Optional[Mapping[str, Mapping[str, str]]] = None  # systemctl show, per unit
    systemd_why: str = "systemd is not running here (no /run/systemd/system)"
    metrics: Optional[MetricsFile] = None
    config_path: str = ""
    config_error: Optional[str] = None
    state_dir: str = ""
    state_usage: Optional[int] = None  # bytes of the quarantine; None: no quarantine yet
    budget: int = 0
    proc_options: str = ""  # the super options of the /proc mount
    history: Optional[str] = None  # PRAGMA quick_check's answer; None: no store yet
    history_aside: tuple[str, ...] = ()  # corrupt stores set aside (their file names)
    all_namespaces: bool = False  # the config's all_namespaces
    env_files: tuple[tuple[str, str], ...] = ()  # the unit's EnvironmentFile=s: (path, text)


# --- pure helpers ----------------------------------------------------------------------

_TRUE = {"1", "yes", "y", "true", "t", "on"}
_FALSE = {"0", "no", "n", "false", "f", "off"}


def unit_values(files: Iterable[tuple[str, str]], section: str, key: str
                ) -> list[tuple[str, str]]:  # fmt: skip
    """Every `key=` of `section`, in order, as (value, "path:line"): systemd's unit-file
    syntax (comments start with # or ;, sections in brackets)."""
    found = []
    for path, text in files:
        current = None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                continue
            name, sep, value = line.partition("=")
            if sep and current == section and name.strip() == key:
                found.append((value.strip(), f"{path}:{n}"))
    return found


def remove_ipc(files: Iterable[tuple[str, str]]) -> tuple[bool, str]:
    """logind's RemoveIPC= and where it was set: the last valid assignment wins; an
    empty one resets to the default, yes (logind.conf(5)); an invalid one is ignored,
    as logind ignores it with a warning."""
    value, source = True, "the default: no file sets it"
    for text, where in unit_values(files, "Login", "RemoveIPC"):
        if text == "":
            value, source = True, f"the default: reset at {where}"
        elif text.lower() in _TRUE | _FALSE:
            value, source = text.lower() in _TRUE, where
    return value, source


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SPAN_UNITS = {
    "": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "ms": 0.001, "msec": 0.001,
    "us": 1e-6, "usec": 1e-6, "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
    "days": 86400, "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip


def timespan(text: str) -> Optional[float]:
    """A systemd time span ("1h", "15min", "1h 30min", "90") in seconds, else None."""
    total, pos, text = 0.0, 0, text.strip().lower()
    for m in _SPAN.finditer(text):
        if text[pos : m.start()].strip() or m.group(2) not in _SPAN_UNITS:
            return None
        total += float(m.group(1)) * _SPAN_UNITS[m.group(2)]
        pos = m.end()
    return total if text and not text[pos:].strip() else None


def timer_period(timer_text: str) -> float:
    """How long between two runs at most: the timer's OnUnitInactiveSec= (or
    OnUnitActiveSec=) plus its RandomizedDelaySec=; the shipped timer's without one."""
    files = [("timer", timer_text)]
    every = [timespan(v) for k in ("OnUnitInactiveSec", "OnUnitActiveSec")
             for v, _ in unit_values(files, "Timer", k)]  # fmt: skip
    delay = [timespan(v) for v, _ in unit_values(files, "Timer", "RandomizedDelaySec")]
    period = next((s for s in reversed(every) if s), None)
    if period is None:
        return TIMER_PERIOD
    return period + next((s for s in reversed(delay) if s is not None), 0.0)


def percent(used: int, limit: int) -> float:
    return 100.0 * used / limit if limit else (100.0 if used else 0.0)


def by_use(pct: float) -> Severity:
    if pct > ERROR_PERCENT:
        return Severity.ERROR
    return Severity.WARNING if pct > WARN_PERCENT else Severity.OK


def _list(items: Sequence[str], most: int = 6) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


# --- the checks (pure) -----------------------------------------------------------------


def check_logind(f: Facts) -> list[Finding]:
    """RemoveIPC=yes removes a user's IPC objects when their last login session ends,
    even while a daemon running as that uid uses them (systemd#2039, #4532). logind
    spares system accounts (uid <= SYS_UID_MAX, 999) and root; the objects at risk are
    those of other uids that run processes outside a login session of their own."""
    name = "logind_remove_ipc"
    if not f.logind_present:
        return [Finding(name, Severity.OK, "systemd-logind is not installed: nothing "
                        "removes IPC objects at logout")]  # fmt: skip
    on, source = remove_ipc(f.logind_files)
    if not on:
        return [Finding(name, Severity.OK, f"RemoveIPC=no ({source}): logind leaves IPC "
                        "objects alone at logout; leaks stay until shmjanitor reaps them")]  # fmt: skip
    # A process is in a login session of its own when its loginuid (set by pam_loginuid
    # at login, inherited by its children) is its uid; a daemon's is unset (started by
    # init) or another user's (started by an admin with sudo or su).
    daemons: dict[int, Proc] = {}
    for p in f.procs:
        if p.loginuid is not None and p.loginuid != p.uid:
            daemons.setdefault(p.uid, p)
    at_risk: dict[int, list[str]] = {}
    for o in f.objects:
        if o.uid <= f.sys_uid_max or o.uid == 65534:
            continue  # logind never removes a system account's objects, nor nobody's
        if o.uid in daemons or not f.uid_min <= o.uid <= f.uid_max:
            at_risk.setdefault(o.uid, []).append(f"{o.kind} {o.id}")
    base = f"RemoveIPC=yes ({source})"
    if not at_risk:
        return [Finding(name, Severity.OK, f"{base}; none of the {len(f.objects)} IPC "
                        "objects belongs to a uid above SYS_UID_MAX "
                        f"({f.sys_uid_max}) that runs a daemon (a process whose loginuid "
                        "is not its uid)")]  # fmt: skip
    parts = []
    for uid, objs in sorted(at_risk.items()):
        d = daemons.get(uid)
        who = (
            f"pid {d.pid} ({d.comm}) runs outside a login session of its own (loginuid "
            f"{'unset' if d.loginuid == NO_LOGINUID else d.loginuid})"
            if d
            else f"a system account for login.defs (UID_MIN {f.uid_min}, UID_MAX "
            f"{f.uid_max}) but a user for logind (above {f.sys_uid_max})"
        )
        parts.append(f"uid {uid}: {_list(objs)}; {who}")
    return [Finding(
        name, Severity.WARNING,
        f"{base}: logind removes these objects when their owner's last session ends, "
        "while the daemons that use them still run: " + "; ".join(parts),
        "set RemoveIPC=no in /etc/systemd/logind.conf.d/ipc.conf ([Login] section) and "
        "restart systemd-logind, or run those daemons as system accounts",
    )]  # fmt: skip


def check_rmid_forced(f: Facts) -> list[Finding]:
    """kernel.shm_rmid_forced=1 makes the kernel destroy a segment as soon as nobody is
    attached and its creator has exited (ipc/shm.c, shm_destroy_orphaned/exit_shm):
    orphan segments cannot outlive their creator, and neither can a segment made to be
    attached later (ipcmk). Semaphore sets and queues are not affected."""
    name = "shm_rmid_forced"
    n = len(f.detached_segments)
    if f.shm_rmid_forced is None:
        return [Finding(name, Severity.OK, "kernel.shm_rmid_forced cannot be read")]
    if f.shm_rmid_forced:
        return [Finding(name, Severity.OK, "kernel.shm_rmid_forced=1: the kernel destroys a "
                        f"segment once its creator exits with nobody attached; {n} "
                        "segment(s) here have nobody attached and go when their creator "
                        "exits; programs that leave a segment to attach later lose it",
                        "set kernel.shm_rmid_forced=0 if a program here relies on "
                        "segments outliving their creator")]  # fmt: skip
    return [Finding(name, Severity.OK, "kernel.shm_rmid_forced=0: segments outlive their "
                    f"creator; {n} segment(s) here have nobody attached and stay until "
                    "removed (shmjanitor reap removes the orphans)")]  # fmt: skip


def check_limits(f: Facts) -> list[Finding]:
    """Every limit with its use: above 80% a warning, above 95% an error (the next
    shmget/semget/msgget/mq_open or write to /dev/shm fails with ENOSPC)."""
    out = []
    if f.objects_error is not None:
        out.append(Finding("ipc_tables", Severity.ERROR, f.objects_error,
                           "shmjanitor cannot judge or reap what it cannot read"))  # fmt: skip
    for lim in f.limits:
        if lim.limit is None or lim.used is None:
            out.append(Finding(lim.check, Severity.OK, f"{lim.what}: cannot be read"))
            continue
        pct = percent(lim.used, lim.limit)
        show = format_size if lim.unit == "bytes" else str
        sev = by_use(pct)
        found = f"{lim.what}: {show(lim.used)} used of {show(lim.limit)} ({pct:.1f}%)"
        todo = "" if sev is Severity.OK else (
            "remove what leaked (shmjanitor list, reap) or raise the limit"
        )  # fmt: skip
        out.append(Finding(lim.check, sev, found, todo))
    return out


def check_dev_shm_size(f: Facts) -> list[Finding]:
    """/dev/shm is a tmpfs: its size is a limit, not a reservation. Larger than RAM, it
    lets files fill memory and swap, and the OOM killer rather than ENOSPC stops the
    writer (the default is half of RAM)."""
    name = "dev_shm_size"
    if f.dev_shm_size is None or not f.mem_total:
        return [Finding(name, Severity.OK, "/dev/shm or MemTotal cannot be read")]
    ratio = f.dev_shm_size / f.mem_total
    found = (f"/dev/shm may hold {format_size(f.dev_shm_size)}, {100 * ratio:.0f}% of RAM "
             f"({format_size(f.mem_total)})")  # fmt: skip
    if ratio > 1:
        return [Finding(name, Severity.WARNING, found + ": files there can exhaust memory",
                        "mount /dev/shm with a size= below RAM (size=50% is the default)")]  # fmt: skip
    return [Finding(name, Severity.OK, found)]


def check_timer(f: Facts) -> list[Finding]:
    name = "timer"
    if f.timer_unit is None:
        return [Finding(name, Severity.WARNING, "shmjanitor.timer is not installed in "
                        f"{f.root}etc/systemd/system: nothing reaps leaks here",
                        "run shmjanitor install-units as root")]  # fmt: skip
    state = (f.systemd or {}).get("shmjanitor.timer", {})
    enabled = state.get("UnitFileState", "enabled" if f.timer_enabled else "disabled")
    evidence = (f"systemctl: UnitFileState={enabled}" if state
                else "timers.target.wants/shmjanitor.timer "
                + ("exists" if f.timer_enabled else "is missing"))  # fmt: skip
    if enabled != "enabled":
        return [Finding(name, Severity.WARNING, f"shmjanitor.timer is installed "
                        f"({f.timer_unit}) but not enabled ({evidence})",
                        "systemctl enable --now shmjanitor.timer")]  # fmt: skip
    return [Finding(name, Severity.OK, f"shmjanitor.timer is installed ({f.timer_unit}) "
                    f"and enabled ({evidence})")]  # fmt: skip


def check_last_run(f: Facts) -> list[Finding]:
    """The last run of shmjanitor.service as systemd saw it: exit 1 (the job not done in
    full) is a warning, anything else but 0 (a bad config: exit 2, a bug) an error."""
    name = "last_run"
    if f.systemd is None:
        return [Finding(name, Severity.OK, f"not known: {f.systemd_why}")]
    svc = f.systemd.get("shmjanitor.service", {})
    when = svc.get("ExecMainExitTimestamp", "")
    if svc.get("LoadState") != "loaded" or not when or when == "n/a":
        return [Finding(name, Severity.OK, "shmjanitor.service has not run since boot")]
    result, status = svc.get("Result", "?"), svc.get("ExecMainStatus", "?")
    found = f"shmjanitor.service last ran at {when}: Result={result}, exit status {status}"
    if result == "success" and status == "0":
        return [Finding(name, Severity.OK, found)]
    sev = Severity.WARNING if status == "1" else Severity.ERROR
    return [Finding(name, sev, found, "journalctl -u shmjanitor.service says why")]


def check_metrics(f: Facts) -> list[Finding]:
    """The reap's metrics file is written at every run: older than two timer periods
    means runs are missing; shmjanitor_last_run_success 0 means the last one failed."""
    name = "metrics_fresh"
    m = f.metrics
    if m is None:
        return [Finding(name, Severity.OK, "no metrics file: neither --reap-metrics-file nor "
                        "a drop-in of shmjanitor.service names one")]  # fmt: skip
    if m.age is None:
        return [Finding(name, Severity.WARNING, f"{m.path} does not exist",
                        "check that the timer runs and that the service may write there "
                        "(ReadWritePaths=)")]  # fmt: skip
    period = timer_period(f.timer_text)
    found = (f"{m.path} was written {format_age(int(m.age))} ago; the timer runs at least "
             f"every {format_age(int(period))}")  # fmt: skip
    if m.age > 2 * period:
        return [Finding(name, Severity.WARNING, found + ": runs are missing",
                        "systemctl status shmjanitor.timer shmjanitor.service")]  # fmt: skip
    if re.search(r"^shmjanitor_last_run_success 0(\.0)?$", m.text, re.MULTILINE):
        return [Finding(name, Severity.WARNING, found + ", and says the last run failed "
                        "(shmjanitor_last_run_success 0)",
                        "journalctl -u shmjanitor.service says why")]  # fmt: skip
    return [Finding(name, Severity.OK, found)]


def check_config(f: Facts) -> list[Finding]:
    if f.config_error is not None:
        return [Finding("config", Severity.ERROR, f.config_error,
                        "fix the file: every reap exits 2 and removes nothing until then")]  # fmt: skip
    return [Finding("config", Severity.OK, f"{f.config_path} is valid")]


def check_state_dir(f: Facts) -> list[Finding]:
    """The quarantine against quarantine_budget_bytes: when it is full, objects are kept
    rather than removed without a copy."""
    name = "state_dir"
    if f.config_error is not None:
        return [Finding(name, Severity.OK, "not checked: the config is not valid")]
    if f.state_usage is None:
        return [Finding(name, Severity.OK, f"{f.state_dir}: no quarantine yet")]
    pct = percent(f.state_usage, f.budget)
    sev = by_use(pct)
    found = (f"{f.state_dir}: the quarantine takes {format_size(f.state_usage)} of its "
             f"budget of {format_size(f.budget)} ({pct:.1f}%)")  # fmt: skip
    todo = "" if sev is Severity.OK else (
        "shmjanitor quarantine purge --older-than 3d, or raise quarantine_budget_bytes"
    )  # fmt: skip
    return [Finding(name, sev, found, todo)]


def check_history(f: Facts) -> list[Finding]:
    """The history store (history.sqlite3 in the state directory): SQLite's own
    quick_check, and the corrupt stores earlier runs set aside. A damaged store never
    stops list or reap (they set it aside and start a new one), but who made a leak is
    then forgotten."""
    name = "history"
    store = f"{f.state_dir}/history.sqlite3"
    aside = f"; {len(f.history_aside)} damaged store(s) set aside: " \
            f"{', '.join(f.history_aside[:3])}" if f.history_aside else ""  # fmt: skip
    if f.history is None and not f.history_aside:
        return [Finding(name, Severity.OK, f"{store}: no history yet")]
    if f.history is not None and f.history != "ok":
        return [Finding(name, Severity.WARNING, f"{store}: SQLite's quick_check says "
                        f"{f.history!r}{aside}", "nothing: the next list or reap sets it "
                        "aside and starts a new one; look at the disk if it recurs")]  # fmt: skip
    if f.history_aside:
        now = "no history since" if f.history is None else "healthy"
        return [Finding(name, Severity.WARNING, f"{store}: {now}{aside}",
                        "remove the set-aside files once looked at; look at the disk if "
                        "it recurs")]  # fmt: skip
    return [Finding(name, Severity.OK, f"{store} is healthy (quick_check ok)")]


def check_hidepid(f: Facts) -> list[Finding]:
    """/proc mounted with hidepid hides other users' processes unless the reader has
    CAP_SYS_PTRACE or is in the mount's gid= group; the janitor then sees their objects
    as "unknown" and never reaps them. The shipped unit keeps CAP_SYS_PTRACE."""
    name = "proc_hidepid"
    opts = dict(o.partition("=")[::2] for o in f.proc_options.split(",") if o)
    hidepid = opts.get("hidepid", "off")
    if hidepid in ("0", "off"):
        return [Finding(name, Severity.OK, "/proc is mounted without hidepid")]
    base = f"/proc is mounted with hidepid={hidepid}"
    if not f.service_files:
        return [Finding(name, Severity.OK, base + "; shmjanitor.service is not installed "
                        "(run by hand, it needs CAP_SYS_PTRACE to see every process)")]  # fmt: skip
    ptrace = has_ptrace(f.service_files)
    groups = {v for value, _ in unit_values(f.service_files, "Service", "SupplementaryGroups")
              for v in value.split()}  # fmt: skip
    protect = [v for v, _ in unit_values(f.service_files, "Service", "ProtectProc")]
    missing = []
    if not ptrace and opts.get("gid") not in groups:
        missing.append("CapabilityBoundingSet= lacks CAP_SYS_PTRACE")
    if protect and protect[-1] not in ("default", ""):
        missing.append(f"ProtectProc={protect[-1]}")
    units = ", ".join(path for path, _ in f.service_files)
    if missing:
        return [Finding(name, Severity.WARNING, f"{base}, and shmjanitor.service ({units}) "
                        f"has {' and '.join(missing)}: it cannot see other users' "
                        "processes, so their objects stay unknown and are never reaped",
                        "keep CAP_SYS_PTRACE and ProtectProc=default in the unit, as "
                        "install-units writes it")]  # fmt: skip
    return [Finding(name, Severity.OK, f"{base}; shmjanitor.service ({units}) keeps what "
                    "sees through it (CAP_SYS_PTRACE, ProtectProc=default)")]  # fmt: skip


_NAMESPACE_TYPES = frozenset({"cgroup", "ipc", "net", "mnt", "pid", "user", "uts", "time"})


def namespaces_allowed(service_files: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The namespace types RestrictNamespaces= leaves the service, as systemd reads the
    lines (src/core/load-fragment.c, config_parse_restrict_namespaces): yes none, no all,
    an empty assignment back to unrestricted; a first list allows its types alone (a "~"
    list all but its types), a later one adds them to what is allowed (a "~" list takes
    them away): the unit's `yes` and the drop-in's `ipc` leave ipc. Types are matched as
    written (lower case), and a line naming one systemd does not know is ignored whole,
    as systemd ignores it ("Failed to parse namespace type string")."""
    allowed: Optional[frozenset[str]] = None  # None: never restricted
    for value, _ in unit_values(service_files, "Service", "RestrictNamespaces"):
        if not value:
            allowed = None
        elif value.lower() in _TRUE:
            allowed = frozenset()
        elif value.lower() in _FALSE:
            allowed = _NAMESPACE_TYPES
        else:
            invert = value.startswith("~")
            types = set((value[1:] if invert else value).split())
            if not types <= _NAMESPACE_TYPES:
                continue
            if allowed is None:
                allowed = _NAMESPACE_TYPES - types if invert else frozenset(types)
            else:
                allowed = allowed - types if invert else allowed | types
    return _NAMESPACE_TYPES if allowed is None else allowed


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: systemd would refuse the line too
        return text.split()


def reap_args_env(service_files: Sequence[tuple[str, str]],
                  env_files: Sequence[tuple[str, str]] = ()) -> Optional[str]:  # fmt: skip
    """SHMJANITOR_REAP_ARGS as the service gets it (systemd.exec(5)): Environment= lines
    in order, an empty one clearing them all; then EnvironmentFile= files (`env_files`:
    their text, read by doctor_facts), which win; UnsetEnvironment= takes it away."""
    name = "SHMJANITOR_REAP_ARGS"
    found: Optional[str] = None
    for value, _ in unit_values(service_files, "Service", "Environment"):
        if not value:
            found = None
        for item in _words(value):
            key, sep, text = item.partition("=")
            if sep and key == name:
                found = text
    for _, text in env_files:
        for line in text.splitlines():
            line = line.strip()
            if line and line[0] not in "#;":
                key, sep, rest = line.partition("=")
                if sep and key.strip() == name:
                    words = _words(rest)
                    found = " ".join(words) if words else ""
    for value, _ in unit_values(service_files, "Service", "UnsetEnvironment"):
        if name in value.split():
            found = None
    return found


# reap's short options that take a value: in a cluster ("-vc FILE"), what follows one is
# its value, not more flags.
_VALUED_SHORT = "cu"


def asks_every_namespace(words: Sequence[str]) -> list[str]:
    """The words of a reap command line that ask for other namespaces than ours: -A,
    --all-namespaces, --namespace[=...], or a cluster of short flags with A ("-qA") before
    any that takes a value. A word after "--" is an argument, not an option."""
    found = []
    for w in words:
        if w == "--":
            break
        if w in ("--all-namespaces", "--namespace") or w.startswith("--namespace="):
            found.append(w)
        elif w.startswith("-") and not w.startswith("--"):
            for letter in w[1:]:
                if letter == "A":
                    found.append(w)
                    break
                if letter in _VALUED_SHORT:
                    break
    return found


def reap_command(service_files: Sequence[tuple[str, str]],
                 env_files: Sequence[tuple[str, str]] = ()) -> list[str]:  # fmt: skip
    """The words the service's ExecStart= lines run (an empty ExecStart= clears those
    before it: a drop-in's override), $SHMJANITOR_REAP_ARGS and ${...} replaced by their
    words, as systemd splits an unquoted variable."""
    lines: list[str] = []
    for value, _ in unit_values(service_files, "Service", "ExecStart"):
        lines = [] if not value else [*lines, value]
    env = reap_args_env(service_files, env_files) or ""
    words: list[str] = []
    for line in lines:
        for w in _words(line.lstrip("@-:+!")):
            if w in ("$SHMJANITOR_REAP_ARGS", "${SHMJANITOR_REAP_ARGS}"):
                words.extend(env.split())
            else:
                words.append(w)
    return words


def option_value(words: Sequence[str], option: str) -> Optional[str]:
    """What the last `option` among a command line's `words` is given ("--metrics-file F"
    or "--metrics-file=F"; click keeps the last of a repeated option)."""
    found = None
    for i, w in enumerate(words):
        if w == "--":
            break
        if w == option and i + 1 < len(words):
            found = words[i + 1]
        elif w.startswith(option + "="):
            found = w[len(option) + 1 :]
    return found


def check_namespaces(f: Facts) -> list[Finding]:
    """Whether the timer's reap may enter the IPC namespaces it is asked to sweep: with
    all_namespaces (or -A on its command line) and the unit's RestrictNamespaces=yes
    alone, systemd's seccomp filter refuses every setns(2): each other namespace is a
    note, never read nor reaped, and the run still exits 0."""
    name = "all_namespaces"
    if not f.service_files:
        return [Finding(name, Severity.OK, "shmjanitor.service is not installed")]
    asked = asks_every_namespace(reap_command(f.service_files, f.env_files))
    if not f.all_namespaces and not asked:
        return [Finding(name, Severity.OK, "the timer's reap works in its own IPC namespace "
                        "(all_namespaces is off, and its command line has no -A)")]  # fmt: skip
    why = (f"the service's reap is given {' '.join(asked)}" if asked
           else f"all_namespaces = true in {f.config_path}")  # fmt: skip
    units = ", ".join(path for path, _ in f.service_files)
    if "ipc" not in namespaces_allowed(f.service_files):
        return [Finding(name, Severity.WARNING, f"{why}, but shmjanitor.service ({units}) "
                        "has RestrictNamespaces= without ipc: its setns(2) into any other "
                        "IPC namespace is refused, so containers' objects are never read "
                        "nor reaped (each run says so in a note and exits 0)",
                        "shmjanitor install-units --all-namespaces (the drop-in "
                        "RestrictNamespaces=ipc), then systemctl daemon-reload")]  # fmt: skip
    return [Finding(name, Severity.OK, f"{why}, and shmjanitor.service ({units}) may "
                    "enter IPC namespaces (RestrictNamespaces= allows ipc)")]  # fmt: skip


def has_ptrace(service_files: Sequence[tuple[str, str]]) -> bool:
    """Whether CapabilityBoundingSet= leaves CAP_SYS_PTRACE (systemd.exec(5): lines
    merge; a first plain list restricts to it, later ones add; "~" lists remove; an
    empty assignment empties the set)."""
    has, restricted = True, False
    for value, _ in unit_values(service_files, "Service", "CapabilityBoundingSet"):
        listed = "CAP_SYS_PTRACE" in value.lstrip("~").split()
        if not value:
            has, restricted = False, True
        elif value.startswith("~"):
            has = has and not listed
        else:
            has = listed or (has and restricted)
            restricted = True
    return has


CHECKS = (check_logind, check_rmid_forced, check_limits, check_dev_shm_size, check_timer,
          check_last_run, check_metrics, check_config, check_state_dir, check_history,
          check_hidepid, check_namespaces)  # fmt: skip


def diagnose(f: Facts) -> list[Finding]:
    return [finding for check in CHECKS for finding in check(f)]


def exit_code(findings: Iterable[Finding]) -> int:
    return int(max((x.severity for x in findings), default=Severity.OK))


# --- output ----------------------------------------------------------------------------


def to_json(findings: Sequence[Finding]) -> str:
    """{"findings": [{check, severity, found, todo}], "summary": {ok, warning, error},
    "exit_code": n}."""
    counts = {s.word: sum(1 for x in findings if x.severity is s) for s in Severity}
    docs = [{"check": x.check, "severity": x.severity.word, "found": x.found,
             "todo": x.todo or None} for x in findings]  # fmt: skip
    return json.dumps({"findings": docs, "summary": counts,
                       "exit_code": exit_code(findings)}) + "\n"  # fmt: skip


def plain(findings: Sequence[Finding], out: IO[str]) -> None:
    """CHECK SEVERITY FINDING: one word each but the last (the sentence, then "; do:"
    and what to do), for grep and awk."""
    width = max([len("CHECK"), *(len(x.check) for x in findings)])
    out.write(f"{'CHECK':<{width}} {'SEVERITY':<8} FINDING\n")
    for x in findings:
        text = printable(x.found + (f"; do: {x.todo}" if x.todo else ""))
        out.write(f"{x.check:<{width}} {x.severity.word:<8} {text}\n")


_COLOUR = {Severity.OK: "32", Severity.WARNING: "33", Severity.ERROR: "31;1"}


def table(findings: Sequence[Finding], out: IO[str], width: int, color: bool) -> None:
    """For a terminal: the finding wrapped beside its check, what to do below it."""
    name_w = max([len("CHECK"), *(len(x.check) for x in findings)])
    indent = name_w + 10
    text_w = max(30, width - indent)

    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    out.write(paint(f"{'CHECK':<{name_w}} {'SEVERITY':<8} FINDING", "1") + "\n")
    for x in findings:
        lines = textwrap.wrap(printable(x.found), text_w, break_on_hyphens=False)
        if x.todo:
            lines += textwrap.wrap("→ " + printable(x.todo), text_w, break_on_hyphens=False)
        sev = paint(f"{x.severity.word:<8}", _COLOUR[x.severity])
        out.write(f"{x.check:<{name_w}} {sev} {lines[0] if lines else ''}\n")
        for line in lines[1:]:
            out.write(" " * indent + line + "\n")
    worst = Severity(exit_code(findings))
    counts = ", ".join(f"{sum(1 for x in findings if x.severity is s)} {s.word}"
                       for s in Severity)  # fmt: skip
    out.write(f"\n{len(findings)} checks: {counts} (exit {int(worst)})\n")
