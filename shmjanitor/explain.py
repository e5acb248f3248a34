"""`shmjanitor explain OBJECT`: one object, and everything shmjanitor knows of it.

The kernel's facts (as `list --json` shows them), every process that uses it now, the
parties whose life decides its state with their evidence, each rule in the order the
survey (classify.py) and reap (policy.py) ask them with its answer, what reap would do,
and the command that removes it anyway when reap would not. Nothing is written: the
survey is read-only (no clock record), and no lock is taken.

Who uses it now, per kind:

* a segment: the processes that map it. nattch only counts attaches; the kernel names
  the attached processes nowhere but in their maps. A System V segment is a file of the
  kernel's internal shm mount, named "SYSV<key, 8 hex digits>" and with the shmid as
  its inode number (ipc/shm.c, newseg: `sprintf(name, "SYSV%08x", key)`,
  `file_inode(file)->i_ino = shp->shm_perm.id`). It is matched by that name and inode,
  not by (st_dev, st_ino) as holders.py matches POSIX files: the internal mount's device
  cannot be stat'ed from any path (it is learned only from a process that maps a
  segment, which is what we look for), while the name and inode are on every line.
  That mount is one for the whole machine, so the same id may be another IPC
  namespace's segment: a process counts only when its /proc/PID/ns/ipc is ours. Its
  device field must also be an unnamed one (major 0), as every internal mount's is;
* a POSIX object: its holders, from the survey's one holders pass (fd or mapping);
* a message queue: the tasks blocked in msgrcv/msgsnd on it (waiters.py's sweep);
* a semaphore set: the kernel counts its waiters (GETNCNT, GETZCNT) and names none.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional, TextIO

from shmjanitor import holders, kinds, liveness, policy, procs, reaping, rules, survey
from shmjanitor.accounts import owner_name
from shmjanitor.classify import Verdict, party_rule
from shmjanitor.config import Config
from shmjanitor.errors import JanitorError
from shmjanitor.model import State
from shmjanitor.text import printable


class NotFound(JanitorError):
    """The object named does not exist (now, in this IPC namespace)."""

    exit_code = 1


class User(NamedTuple):
    """A process that uses the object now."""

    pid: int
    how: str  # "attached", "fd 5", "mapped", "blocked in msgrcv"
    uid: Optional[int]  # its effective uid (the owner of /proc/PID)
    command: Optional[str]  # /proc/PID/cmdline, quoted as a shell would (raw text)
    unit: Optional[str]  # the last part of its cgroup: a systemd unit, a container scope


class Row(NamedTuple):
    """One rule as asked of the object: `applies` says whether its condition holds (a
    party's row is named by what was found of it, so it holds); `decides` marks the
    rule that decided the state, and the policy rule that keeps it; `said` its
    evidence (None: it does not hold and has nothing to say)."""

    stage: str  # "state" (classify.py) or "policy" (policy.py)
    rule: str  # its code (rules.py)
    applies: bool
    said: Optional[str]
    decides: bool = False


class Explanation(NamedTuple):
    verdict: Verdict
    users: list[User]
    unreadable: list[str]  # who could not be read, so may use it unseen
    waiting: Optional[str]  # a set's waiters, counted by the kernel (sem only)
    parties: list[dict[str, Any]]
    rows: list[Row]
    reap: dict[str, Any]  # action, rule, reason
    remove_anyway: Optional[str]  # the command that removes it anyway, when reap keeps it
    made_by: Optional[dict[str, Any]] = None  # history.MadeBy.as_json(), plus "said"


# --- finding the object ------------------------------------------------------------


def find(named: reaping.Named, state_dir: Optional[Path] = None, ns: Any = None) -> Verdict:
    """The object named, as a survey of its kind sees it now. NotFound when absent.
    `ns`: the namespace a sweep's child looks in (explain --namespace)."""
    if named.path is not None:
        kind = posix_kind(named.path)
        sv = survey.take(state_dir=state_dir, kinds=[kind], ns=ns)
        for v in sv.verdicts:
            if v.obj.path == named.path:
                return v
        raise NotFound(f"no POSIX object at {printable(named.path)}")
    sv = survey.take(state_dir=state_dir, kinds=[named.kind], ns=ns)
    noun = kinds.of(named.kind).NOUN
    for v in sv.verdicts:
        if (v.obj.key if named.by_key else v.obj.id) == named.value:
            return v
    if named.by_key:
        raise NotFound(f"no {noun} with key 0x{named.value:08x}")
    raise NotFound(f"no {noun} with id {named.value}")


def posix_kind(path: str) -> str:
    """The POSIX kind a path names: /dev/mqueue/NAME a queue, /dev/shm/sem.NAME a
    semaphore, /dev/shm/NAME shared memory. Anything else is no object of ours."""
    from shmjanitor import posixfs

    d, _, name = path.rpartition("/")
    if d == posixfs.MQUEUE_DIR and name:
        return "posix-mqueue"
    if d == posixfs.SHM_DIR and name:
        return "posix-sem" if name.startswith(posixfs.SEM_PREFIX) else "posix-shm"
    raise NotFound(
        f"{printable(path)} is not a POSIX object's path (/dev/shm/NAME or /dev/mqueue/NAME)"
    )


# --- who uses it now ---------------------------------------------------------------


def shm_attached(shmid: int, key: int, proc: str = "/proc") -> tuple[list[int], list[str]]:
    """(the pids of our IPC namespace that map segment `shmid`, clauses naming those
    whose maps we may not read): one pass over /proc (see the module docstring)."""
    name = b"/SYSV%08x" % key
    ino = b"%d" % shmid
    ours = _ipc_ns("self", proc)
    found: list[int] = []
    closed: list[str] = []
    try:
        listing = os.listdir(proc)
    except OSError as e:
        return [], [f"{proc}: {e.strerror}"]
    for pid in listing:
        if not pid.isdigit():
            continue
        try:
            maps = holders.read_maps(f"{proc}/{pid}/maps")
            if not maps:  # a kernel thread, or a leader that exited: its threads' maps
                maps = _thread_maps(f"{proc}/{pid}")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited: it detached everything
        except OSError as e:
            closed.append(f"pid {pid} ({printable(_comm(f'{proc}/{pid}') or '?')}) "
                          f"{e.strerror or e}")  # fmt: skip
            continue
        if name in maps and _maps_segment(maps, name, ino):
            ns = _ipc_ns(pid, proc)
            if ns is None or ours is None or ns == ours:
                found.append(int(pid))
    return sorted(found), closed


def _maps_segment(maps: bytes, name: bytes, ino: bytes) -> bool:
    """Does a maps text show the segment named `name` with inode `ino`? A line:
    "start-end perms offset maj:min inode   /SYSV0000abcd (deleted)"."""
    at = maps.find(name)
    while at >= 0:
        start = maps.rfind(b"\n", 0, at) + 1
        end = maps.find(b"\n", at)
        end = len(maps) if end < 0 else end
        parts = maps[start:end].split(None, 5)
        if (len(parts) == 6 and parts[4] == ino and parts[5].split()[0] == name
                and parts[3].startswith(b"00:")):  # fmt: skip
            return True
        at = maps.find(name, end)
    return False


def _thread_maps(base: str) -> bytes:
    for tid in os.listdir(f"{base}/task"):
        try:
            maps = holders.read_maps(f"{base}/task/{tid}/maps")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if maps:
            return maps
    return b""


def _ipc_ns(pid: str, proc: str) -> Optional[str]:
    try:
        return os.readlink(f"{proc}/{pid}/ns/ipc")
    except OSError:
        return None


def _comm(base: str) -> Optional[str]:
    try:
        with open(f"{base}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="surrogateescape")
    except OSError:
        return None


def process(pid: int, how: str, proc: str = "/proc") -> User:
    """What /proc says of a process now: its euid, command line and cgroup's last part."""
    base = f"{proc}/{pid}"
    try:
        uid: Optional[int] = os.stat(base).st_uid
    except OSError:
        uid = None
    return User(pid, how, uid, command_line(base), unit(base))


def command_line(base: str) -> Optional[str]:
    """/proc/PID/cmdline as a shell would quote it (raw: the output escapes it);
    "[comm]" for a process without one (a kernel thread, a zombie), as ps shows it."""
    try:
        with open(f"{base}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        raw = b""
    args = [a.decode(errors="surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]
    if raw:
        return " ".join(shlex.quote(a) for a in args)
    comm = _comm(base)
    return None if comm is None else f"[{comm}]"


def unit(base: str) -> Optional[str]:
    """The last part of its cgroup v2 path ("session-3.scope", "cron.service",
    "docker-0123abcd.scope"): the systemd unit or container it runs in; None when it
    is in the root cgroup or /proc/PID/cgroup cannot be read (v1 only: the name=systemd
    hierarchy's line)."""
    try:
        with open(f"{base}/cgroup", "rb") as f:
            lines = f.read().decode(errors="surrogateescape").splitlines()
    except OSError:
        return None
    paths = {h: p for h, _, p in (ln.partition(":")[2].partition(":") for ln in lines)}
    path = paths.get("") or paths.get("name=systemd") or ""
    last = path.rstrip("/").rpartition("/")[2]
    return last or None


def _users_now(v: Verdict) -> tuple[list[User], list[str], Optional[str]]:
    """(processes using it now, who could not be read, a set's counted waiters)."""
    o: Any = v.obj
    kind = o.kind
    if kind == "shm":
        pids, closed = shm_attached(o.id, o.key)
        return [process(pid, "attached") for pid in pids], closed, None
    if kind == "msg":
        users = [process(b.pid, f"blocked in {b.call}" + (f" (thread {b.tid})" if b.tid != b.pid
                                                          else "")) for b in o.blocked]  # fmt: skip
        why = kinds.of(kind).unknowable(o)
        return users, [why] if why else [], None
    if kind == "sem":
        waiting = None
        if o.semncnt is not None and o.semzcnt is not None and o.waiters:
            waiting = kinds.of(kind).in_use(o, lambda _pid: None)
        why = kinds.of(kind).unknowable(o)
        return [], [why] if why else [], waiting
    # POSIX: the survey's holders pass
    return [process(h.pid, h.how) for h in o.holders], list(o.blocked), None


# --- the parties and the rules -----------------------------------------------------


def _parties(v: Verdict, state_dir: Optional[Path]) -> tuple[list[dict[str, Any]], list[Row]]:
    """Each party judged as the survey judges it (looked up again now), as JSON and as
    state rows."""
    o = v.obj
    ps = kinds.kind_of(o).parties(o)
    clock = liveness.observe(state_dir, False)
    facts = procs.look_up([p.pid for p in ps], clock.btime or None)
    uids = {p.uid for p in ps if p.uid is not None}
    users: Mapping[int, procs.User] = procs.users(uids) if uids else {}
    out: list[dict[str, Any]] = []
    rows: list[Row] = []
    for p in ps:
        c, clause = liveness.judge_party(p, facts, users, clock)
        code = party_rule(p, c, facts, users)
        doc: dict[str, Any] = {
            "role": p.role, "field": p.field, "pid": p.pid, "uid": p.uid, "since": p.since,
            "alive": c.alive, "name": c.name, "evidence": clause, "rule": code,
        }  # fmt: skip
        if c.alive and p.pid > 0:
            doc["process"] = process(p.pid, p.field)._asdict()
        out.append(doc)
        rows.append(Row("state", code, True, clause))
    return out, rows


def explain(v: Verdict, cfg: Config, caller: policy.Caller,
            state_dir: Optional[Path] = None) -> Explanation:  # fmt: skip
    """Everything about one object (module docstring)."""
    o = v.obj
    k = kinds.kind_of(o)
    users, unreadable, waiting = _users_now(v)
    parties, party_rows = _parties(v, state_dir)

    def name_of(pid: int) -> Optional[str]:
        return None

    removing = k.removing(o)
    in_use = k.in_use(o, name_of)
    unknowable = k.unknowable(o)
    rows = [
        Row("state", rules.REMOVING, removing is not None, removing),
        Row("state", k.IN_USE_RULE, in_use is not None, in_use),
        *party_rows,
        Row("state", rules.EVIDENCE_UNREADABLE, unknowable is not None, unknowable),
    ]
    if v.state in (State.ORPHAN, State.UNKNOWN) and v.rule not in {r.rule for r in rows}:
        rows.append(Row("state", v.rule, True, v.reason))  # never-used: no party to ask
    rows += [Row("policy", code, why is not None, why) for code, why in
             policy.verdicts(v, cfg, caller)]  # fmt: skip
    d = policy.decide(v, cfg, caller)
    if d is None:
        reap = {
            "action": "not-considered",
            "rule": v.rule,
            "reason": f"reap considers only orphans; this one is {v.state.value}: {v.reason}",
        }
    elif d.remove:
        reap = {"action": "would-remove", "rule": d.rule, "reason": d.reason}
    else:
        reap = {"action": "kept", "rule": d.rule, "reason": d.reason}
    anyway = None if d is not None and d.remove else remove_command(v, caller)
    rows = _mark(rows, "state", v.rule)
    if d is not None and not d.remove:
        rows = _mark(rows, "policy", d.rule)
    return Explanation(v, users, unreadable, waiting, parties, rows, reap, anyway,
                       _made_by(o, cfg, state_dir))  # fmt: skip


def _made_by(o: Any, cfg: Config, state_dir: Optional[Path]) -> Optional[dict[str, Any]]:
    """Who made it, as the history store recorded them while they lived (read-only)."""
    from shmjanitor import history, paths

    where = state_dir or cfg.state_dir or paths.default_state_dir()
    m = history.look_up(o, Path(where))
    return None if m is None else {**m.as_json(), "said": m.said(history.now())}


def _mark(rows: list[Row], stage: str, rule: str) -> list[Row]:
    """`rows` with the first of `stage` whose code is `rule` marked as deciding."""
    for i, r in enumerate(rows):
        if r.stage == stage and r.rule == rule:
            return [*rows[:i], r._replace(decides=True), *rows[i + 1 :]]
    return rows


def shell_word(path: str) -> str:
    """`path` as one word a shell gives back byte for byte: shlex's quoting when it is
    printable text, else bash's $'...' with every other byte as \\xHH (a name may hold a
    newline, an escape sequence or bytes that are no UTF-8: the command must name that
    very file, never the escaped text of it, which may be another file's name)."""
    if path.isprintable() and path.isascii():
        return shlex.quote(path)
    out = []
    for b in os.fsencode(path):
        c = chr(b)
        out.append(c if 0x20 <= b < 0x7F and c not in "\\'" else f"\\x{b:02x}")
    return "$'" + "".join(out) + "'"


def remove_command(v: Verdict, caller: policy.Caller) -> str:
    """The `shmjanitor rm` command that removes it anyway: --force when rm would refuse
    it as in use (reaping._IN_USE), "sudo" when only root may."""
    o: Any = v.obj
    flag = {"shm": "-m", "sem": "-s", "msg": "-q"}.get(o.kind)
    what = f"{flag} {o.id}" if flag else shell_word(o.path)
    force = " --force" if v.state in reaping._IN_USE else ""
    sudo = "sudo " if reaping.not_yours(o, caller) is not None else ""
    ns = v.ns
    where = ""
    if ns is not None and not ns.own:  # its namespace, by a process in it or its file
        where = f" --namespace {ns.pid}" if ns.pid else " --namespace NSFILE"
    return f"{sudo}shmjanitor rm{where} {what}{force}"


# --- output ------------------------------------------------------------------------


def to_json(e: Explanation) -> dict[str, Any]:
    """The document `explain --json` prints (README: "explain")."""
    from shmjanitor import render, shapes

    v = e.verdict
    o: Any = v.obj
    k = kinds.kind_of(o)
    if o.kind == "shm":
        facts = render.segment_json(v)
    elif hasattr(o, "path"):
        facts = shapes.posix_json(k, v)
    else:
        facts = shapes.facts_json(k, v)
    facts.pop("rule", None)
    return {
        "kind": o.kind, "id": o.id, "key": o.key,
        **({"path": o.path} if hasattr(o, "path") else {}),
        "state": v.state.value, "reason": v.reason, "rule": v.rule,
        "facts": facts,
        "users": [{**u._asdict(), "user": None if u.uid is None else owner_name(u.uid)}
                  for u in e.users],
        "unreadable": e.unreadable,
        "waiting": e.waiting,
        "parties": e.parties,
        "made_by": e.made_by,  # who made it, from the history store (issue 15, item 3)
        "rules": [r._asdict() for r in e.rows],
        "reap": e.reap,
        "remove_anyway": e.remove_anyway,
    }  # fmt: skip


def write(e: Explanation, out: TextIO, bold: bool = False) -> None:
    """The human form: a heading per part, aligned "name  value" lines; `bold` headings
    on a terminal. Every text from outside is escaped (text.printable)."""
    doc = to_json(e)
    v = e.verdict
    o: Any = v.obj

    def head(text: str) -> None:
        out.write(f"\033[1m{text}\033[0m\n" if bold else f"{text}\n")

    def pairs(items: Sequence[tuple[str, object]]) -> None:
        width = max((len(k) for k, _ in items), default=0)
        for k, val in items:
            out.write(f"  {k.ljust(width)}  {'-' if val is None else printable(str(val))}\n")

    noun = kinds.kind_of(o).NOUN
    what = printable(o.path) if hasattr(o, "path") else f"{o.id} (key 0x{o.key:08x})"
    head(f"{noun} {what}")
    pairs([("state", v.state.value), ("rule", v.rule), ("reason", v.reason)])
    head("kernel facts")
    pairs([(k, _value(k, val)) for k, val in doc["facts"].items()
           if k not in ("state", "reason", "creator", "last_user", "holders")])  # fmt: skip
    head("in use now")
    if e.waiting:
        pairs([("waiting", e.waiting + " (the kernel counts waiters, it names none)")])
    if not e.users and not e.waiting:
        out.write("  nobody seen\n")
    pairs([(f"pid {u.pid}", f"{u.how}, {'-' if u.uid is None else owner_name(u.uid)}, "
             f"{u.command or '-'}{'' if u.unit is None else f', {u.unit}'}")
            for u in e.users] + [("not readable", why) for why in e.unreadable])  # fmt: skip
    head("parties")
    pairs([(f"{p['role']} ({p['field']})", f"{p['rule']}: {p['evidence']}") for p in e.parties]
          + [("made by", "- (never seen alive)" if e.made_by is None
                           else e.made_by["said"])])  # fmt: skip
    head("rules, in order")
    pairs([(f"{r.stage} {r.rule}", ("yes" if r.applies else "no")
            + (", decides" if r.decides else "")
            + ("" if r.said is None else f": {r.said}")) for r in e.rows])  # fmt: skip
    head("reap")
    pairs([("would", e.reap["action"]), ("rule", e.reap["rule"]), ("why", e.reap["reason"])])
    if e.remove_anyway:
        pairs([("remove anyway", e.remove_anyway)])


def _value(key: str, val: object) -> object:
    if key in ("perms", "mode") and isinstance(val, int):
        return f"{val:03o}"
    if isinstance(val, (dict, list)):
        import json

        return json.dumps(val, separators=(",", ":"))
    return val
