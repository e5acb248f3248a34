"""Boot a throw-away Debian under a real systemd (systemd-nspawn) and run commands in it.

Used by the end-to-end tests of the systemd units; reusable for any test that needs a
real init system. Everything that touches System V segments happens inside the
container, which has its own IPC namespace: the host's segments are never seen.

    with Container.boot(binds_ro={"/src": project_dir}) as c:
        c.run("systemctl is-system-running")
        print(c.journal("shmjanitor.service"))

* The root file system is made by debootstrap once and cached as a tarball under
  CACHE_DIR (SHMJANITOR_TEST_CACHE, default /var/cache/shmjanitor-tests); every boot
  extracts a fresh copy, and teardown removes it.
* The host's PID 1 need not be systemd: `--register=no --keep-unit` keep nspawn away
  from machined and from creating a scope.
* Commands reach the container with `nsenter -t <container PID 1> -a`, under a clean
  environment (the host's variables, PIP_* in particular, must not leak in).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

CACHE_DIR = Path(os.environ.get("SHMJANITOR_TEST_CACHE", "/var/cache/shmjanitor-tests"))
SUITE = "bookworm"
MIRROR = os.environ.get("SHMJANITOR_TEST_MIRROR", "http://deb.debian.org/debian")
VARIANT = "minbase"
# ca-certificates: pip over HTTPS; util-linux: ipcmk, ipcrm, flock; procps: ps.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "util-linux",
    "procps",
    "ca-certificates",
)
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class NspawnUnavailable(Exception):
    """This host cannot boot a container; the message is the reason (tests skip with it)."""


def unavailable_reason() -> Optional[str]:
    """Why containers cannot be booted here, or None when they (probably) can."""
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root"
    try:
        uid_map = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        uid_map = []
    if uid_map[:3] != ["0", "0", "4294967295"]:
        return "booting a container needs real root, not root of a user namespace"
    for tool, pkg in (
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("tar", "tar"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {pkg}; see scripts/ci-deps)"
    if not rootfs_tarball().exists() and shutil.which("debootstrap") is None:
        return "debootstrap is not installed and no cached root exists (scripts/ci-deps)"
    return None


def rootfs_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """Where the cached root lives; the name changes when what goes into it changes."""
    recipe = "\n".join([SUITE, VARIANT, MIRROR, *PACKAGES])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return cache_dir / f"debian-{SUITE}-{digest}.tar"


def ensure_rootfs(cache_dir: Path = CACHE_DIR, log: Optional[Path] = None) -> Path:
    """The cached root tarball, made with debootstrap first if absent (a minute or two)."""
    tarball = rootfs_tarball(cache_dir)
    if tarball.exists():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others then reuse it
        if tarball.exists():
            return tarball
        build = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
        try:
            root = build / "root"
            with open(log or os.devnull, "ab") as out:
                r = subprocess.run(
                    [
                        "debootstrap",
                        f"--variant={VARIANT}",
                        "--include=" + ",".join(PACKAGES),
                        SUITE,
                        str(root),
                        MIRROR,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=1800,
                )
            if r.returncode != 0:
                raise NspawnUnavailable(
                    f"debootstrap {SUITE} failed (exit {r.returncode})"
                    + (f", see {log}" if log else "")
                )
            _prepare_root(root)
            partial = build / "root.tar"
            subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
            os.replace(partial, tarball)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return tarball


def _prepare_root(root: Path) -> None:
    """One-time tweaks to the fresh root before it is cached."""
    # Nothing in it should go to the network or wake up by itself during a test.
    wants = root / "etc/systemd/system/timers.target.wants"
    for timer in (
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
    ):
        (wants / timer).unlink(missing_ok=True)
    # A console getty would wait on a terminal the container does not have.
    (root / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _parent(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _descendants(pid: int) -> list[int]:
    """Children first, then theirs: nspawn's, or those of a prefix that forked it."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop(0))
        found += kids
        todo += kids
    return found


class Container:
    """A booted container. Use `Container.boot(...)` as a context manager."""

    def __init__(
        self, root: Path, proc: subprocess.Popen, leader: int, log: Path, name: str = ""
    ) -> None:
        self.root = root  # the container's / as seen from the host
        self.proc = proc  # what was started: systemd-nspawn, or the prefix that runs it
        self.leader = leader  # the container's PID 1, as a host pid
        self.log = log
        self.name = name  # --machine=
        self.boot_seconds = 0.0

    # -- life cycle --------------------------------------------------------------

    @classmethod
    def boot(
        cls,
        binds_ro: Optional[dict[str, str]] = None,
        name: Optional[str] = None,
        timeout: float = 120.0,
        workdir: Optional[Path] = None,
        prefix: Sequence[str] = (),
    ) -> Container:
        """Extract a fresh root, boot it, wait until systemd has finished starting up.

        `binds_ro` maps a path in the container to a host path, mounted read-only.
        `prefix` goes before systemd-nspawn's argv: a command that runs it elsewhere
        (tests/worlds.py's World.argv: in a sealed world), which may fork it.
        """
        reason = unavailable_reason()
        if reason:
            raise NspawnUnavailable(reason)
        tarball = ensure_rootfs()
        base = Path(tempfile.mkdtemp(prefix="shmjanitor-nspawn-", dir=workdir or "/var/tmp"))
        root = base / "root"
        log = base / "nspawn.log"
        name = name or f"shmjt-{os.getpid()}"
        start = time.monotonic()
        proc = None
        try:
            root.mkdir()
            subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
            args = [
                "systemd-nspawn",
                "--boot",
                "--register=no",  # no machined: the host's PID 1 need not be systemd
                "--keep-unit",  # ... nor create a scope unit for it
                "--console=passive",  # no terminal here
                "--quiet",
                f"--machine={name}",
                f"--directory={root}",
            ]
            for inside, host in (binds_ro or {}).items():
                args.append(f"--bind-ro={host}:{inside}")
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [*prefix, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            leader = cls._wait_for_leader(proc, log, timeout)
            c = cls(root, proc, leader, log, name)
            c._wait_until_booted(start + timeout)
            c.boot_seconds = time.monotonic() - start
            return c
        except BaseException:
            if proc is not None:
                _stop(proc, None)
            _remove_tree(base)
            raise

    @staticmethod
    def _wait_for_leader(proc: subprocess.Popen, log: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NspawnUnavailable(
                    f"systemd-nspawn exited ({proc.returncode}) before booting: "
                    + log.read_text(errors="replace").strip()[-2000:]
                )
            for kid in _descendants(proc.pid):
                # nspawn may fork helpers; the container's init is PID 1 in a new PID namespace.
                try:
                    status = Path(f"/proc/{kid}/status").read_text()
                except OSError:
                    continue
                nspid = next(
                    (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
                )
                if len(nspid) >= 2 and nspid[-1] == "1":
                    return kid
            time.sleep(0.05)
        raise NspawnUnavailable(f"systemd-nspawn started no container in {timeout:.0f}s")

    def _wait_until_booted(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NspawnUnavailable(
                    f"the container stopped while booting ({self.proc.returncode}): "
                    + self.log.read_text(errors="replace").strip()[-2000:]
                )
            r = self.run(["systemctl", "is-system-running"], check=False, timeout=30)
            last = r.stdout.strip()
            if last in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise NspawnUnavailable(f"the container did not finish booting (state {last!r})")

    def teardown(self) -> None:
        """Stop the container (politely, then by force) and remove its root. Idempotent."""
        _stop(self.proc, self.leader)
        _remove_tree(self.root.parent)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- inside ------------------------------------------------------------------

    def run(
        self,
        cmd: Union[str, list[str]],
        check: bool = True,
        env: Optional[dict[str, str]] = None,
        timeout: float = 300,
        user: Optional[str] = None,
    ) -> subprocess.CompletedProcess:
        """Run `cmd` (argv list, or a string for sh -c) in the container; text output.

        With `user`, runs as that user through runuser (a login-less su). With
        check=True a non-zero exit raises AssertionError carrying the output.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        full_env = {**CLEAN_ENV, **(env or {})}
        nsenter = [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in full_env.items()),
            *argv,
        ]
        r = subprocess.run(
            nsenter, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"in container: {shlex.join(argv)} exited {r.returncode}\n"
                f"--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
            )
        return r

    def journal(self, unit: Optional[str] = None, fmt: str = "cat") -> str:
        """The journal of this boot (of `unit` only, if given), message text only by default."""
        args = ["journalctl", "--no-pager", "-b", "-o", fmt]
        if unit:
            args += ["-u", unit]
        return self.run(args).stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create or replace a file inside the container (from the host side)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)


def _stop(proc: subprocess.Popen, leader: Optional[int], grace: float = 15.0) -> None:
    """SIGTERM makes nspawn shut the container down; then SIGKILL whatever is left.

    Killing nspawn alone would leave the container running as an orphan, so the
    container's PID 1 is killed too (that takes its whole PID namespace with it).
    """
    nspawn = _parent(leader) if leader is not None else None
    if proc.poll() is None:
        # A prefix (nsenter) passes no signal on: nspawn itself is told.
        with contextlib.suppress(ProcessLookupError):
            os.kill(nspawn or proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    if leader is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _remove_tree(base: Path) -> None:
    """Remove an extracted root, refusing to descend into anything still mounted."""
    prefix = str(base.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        mounted = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for mnt in sorted(mounted, reverse=True):
        subprocess.run(["umount", "--lazy", mnt], check=False)
    shutil.rmtree(base, ignore_errors=True)
