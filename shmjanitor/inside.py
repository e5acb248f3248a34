"""Run a job inside another IPC namespace (issue 14): in a child process that enters it,
so that this process never changes namespace halfway through a job.

/proc/sysvipc/* and every System V call (IPC_STAT, IPC_SET, IPC_RMID, shmget) act on
the caller's IPC namespace, so the child setns(2)s into the namespace and then runs the
same code a run inside it would: survey, lock (named by the namespace it is in: one per
namespace), re-check, copy, remove. Its PID namespace stays ours: the kernel prints
cpid, lpid, sempid, lspid and lrpid in the PID namespace of the reader
(ipc/util.c, sysvipc_proc_open takes task_active_pid_ns(current); IPC_STAT uses
pid_vnr), and setns into an IPC namespace changes no PID namespace, so every pid a
child reads is one of our /proc (tests/test_namespaces.py checks it). The namespace's
POSIX directories are opened inside the container's root (namespaces.open_in_root) and
handed to posixfs as fds. The child sends its answer back pickled, through a pipe.
"""

from __future__ import annotations

import os
import pickle
import select
import sys
import traceback
from typing import Any, Callable, Optional, TypeVar

from shmjanitor import namespaces, posixfs
from shmjanitor.errors import JanitorError
from shmjanitor.namespaces import MQUEUE, SHM, Place

T = TypeVar("T")


class Vanished(Exception):
    """The namespace ended (its last process exited) before we could enter it: its
    objects went with it."""


class Unreachable(Exception):
    """The namespace could not be entered (setns refused): its objects are not read."""


class Died(JanitorError):
    """The child died without an answer (SIGKILL, the OOM killer): what it did there is
    not known here; a reap's quarantine run is settled by the next run in that
    namespace, as any killed run's."""

    exit_code = 1


def _dir(place: Place, rel: str, dev: Optional[int], proc: str) -> Optional[str]:
    """The place's directory `rel` as a path of an fd of ours, if it is still the one
    the sweep found (same device); None: none to read (said by the sweep)."""
    if dev is None:
        return None
    for pid in place.pids:
        try:
            fd = namespaces.open_in_root(f"{proc}/{pid}/root", rel)
        except OSError:
            continue
        if os.fstat(fd).st_dev == dev:
            return f"/proc/self/fd/{fd}"
        os.close(fd)
    return None


def run(place: Place, job: Callable[[], T], stop: Any = None, proc: str = "/proc") -> T:
    """job() inside `place`: here for our own namespace, else in a child that entered
    it. Raises Vanished when no process of it is left (and no place.nsfile holds it), the
    child's JanitorError as it was raised, RuntimeError for anything else.

    `stop` (remove.Stop): a signal we get while the child works is passed on to it, so
    that it stops as a run stops (its own handlers are ours: it was forked from us)."""
    if place.ns.own:
        return job()
    fd = namespaces.enter(place.pids, place.ns.ipc, proc)
    if fd is None and place.nsfile is not None:
        try:
            fd = namespaces.open_nsfile(place.nsfile)
        except OSError:
            fd = None  # unmounted since: as ended
        if fd is not None and os.fstat(fd).st_ino != place.ns.ipc:
            os.close(fd)
            fd = None
    if fd is None:
        raise Vanished(place.ns.said())
    try:
        return _in_child(place, fd, job, stop, proc)
    finally:
        os.close(fd)


def _in_child(place: Place, fd: int, job: Callable[[], T], stop: Any, proc: str) -> T:
    r, w = os.pipe()
    sys.stdout.flush()  # what is buffered would be written twice, by both of us
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        code = 0
        try:
            answer: tuple[str, Any]
            try:
                namespaces.setns(fd)
            except OSError as e:
                answer = ("unreachable", f"{place.ns.said()} not read: {e.strerror}")
            else:
                try:
                    namespaces.working = place.ns
                    posixfs.reach(_dir(place, SHM, place.shm, proc),
                                  _dir(place, MQUEUE, place.mqueue, proc))  # fmt: skip
                    answer = ("ok", job())
                except JanitorError as e:
                    answer = ("janitor", e)
                except BaseException:
                    answer = ("bug", traceback.format_exc())
            try:
                data = pickle.dumps(answer)
            except Exception:
                data = pickle.dumps(("bug", traceback.format_exc()))
            with os.fdopen(w, "wb") as f:
                f.write(data)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    told = False
    try:
        while True:
            ready, _, _ = select.select([r], [], [], 0.2)
            if not ready:
                if stop is not None and stop.signum is not None and not told:
                    os.kill(pid, stop.signum)  # stop it as we stop
                    told = True
                continue
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        status = _reap_child(pid)
    if not chunks:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")  # fmt: skip
        raise Died(f"the run inside {place.ns.said()} died without an answer ({how})")
    what, value = pickle.loads(b"".join(chunks))
    if what == "ok":
        return value  # type: ignore[no-any-return]
    if what == "janitor":
        raise value
    if what == "unreachable":
        raise Unreachable(value)
    raise RuntimeError(f"in {place.ns.said()}: {value}")


def _reap_child(pid: int) -> int:
    """Its wait status (0 when it was already reaped elsewhere)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


__all__ = ["Vanished", "run"]
