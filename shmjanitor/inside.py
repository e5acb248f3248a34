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

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional, TypeVar, Union

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


def _dir_fd(place: Place, rel: str, dev: Optional[int], proc: str) -> Optional[int]:
    """An fd of the place's directory `rel`, if it is still the one the sweep found
    (same device); None: none to read (said by the sweep)."""
    if dev is None:
        return None
    for pid in place.pids:
        try:
            fd = namespaces.open_in_root(f"{proc}/{pid}/root", rel)
        except OSError:
            continue
        if os.fstat(fd).st_dev == dev:
            return fd
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
    fd = _handle(place, proc)
    if fd is None:
        raise Vanished(place.ns.said())
    try:
        return _in_child(place, fd, job, stop, proc)
    finally:
        os.close(fd)


def _handle(place: Place, proc: str) -> Optional[int]:
    """An fd of the place's namespace (through a process in it, else its nsfile); None
    when it ended."""
    fd = namespaces.enter(place.pids, place.ns.ipc, proc)
    if fd is None and place.nsfile is not None:
        try:
            fd = namespaces.open_nsfile(place.nsfile)
        except OSError:
            fd = None  # unmounted since: as ended
        if fd is not None and os.fstat(fd).st_ino != place.ns.ipc:
            os.close(fd)
            fd = None
    return fd


def _in_child(place: Place, fd: int, job: Callable[[], T], stop: Any, proc: str) -> T:
    r, w = os.pipe()
    sys.stdout.flush()  # what is buffered would be written twice, by both of us
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        code = 0
        try:
            data = _dumps(_answer(place, fd, lambda _place: job(), proc))
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
            try:
                ready, _, _ = select.select([r], [], [], 0.2)
                chunk = os.read(r, 1 << 20) if ready else None
            except BaseException:  # a signal handler of ours raised (restore's)
                # The child is doing the work: it is told and says what it did (undone,
                # or done too far to undo); we wait for its answer, not for nothing.
                if not told:
                    os.kill(pid, signal.SIGTERM)
                    told = True
                continue
            if chunk is None:
                if stop is not None and stop.signum is not None and not told:
                    os.kill(pid, stop.signum)  # stop it as we stop
                    told = True
                continue
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
    if what == "interrupted":
        raise value  # as it was raised in the child (restore's _Interrupted: undone)
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


# --- every place of a sweep at once (list -A) --------------------------------------------

WORKERS = 2  # children at most that share a sweep's places (list -A)
_FRAME = struct.Struct("=IQ")  # an answer's place (its index) and length, before it


def run_all(places: Sequence[Place], job: Callable[[Place], T], proc: str = "/proc",
            workers: Optional[int] = None,
            each: Optional[Callable[[list[tuple[int, Any]]], None]] = None,
            ) -> list[Union[T, Exception]]:  # fmt: skip
    """job(place) for every place, in order: each answer, or the exception run() would
    raise for that place (Vanished, Unreachable, JanitorError, Died, RuntimeError) in its
    stead. `job` only reads (a survey): its children are killed if we stop waiting.
    `each`: called here with the (index, answer) that have come, as they come (several
    at once when they come faster than `each` takes them), while the children work on.

    The places of other namespaces are shared among a few children (`workers`, at most
    WORKERS and the CPUs), each entering its places one after another with setns(2) and
    running the whole job inside each, rather than a child per place: a fork copies this
    process's page tables and then every page either side writes (copy-on-write), a few
    milliseconds each, which a machine of 100 containers multiplies. This process never
    changes namespace; our own place's job runs here while the children work."""
    results: list[Any] = [_UNSET] * len(places)
    handles: list[tuple[int, Place, int]] = []  # (index, place, fd of its namespace)
    children: list[list[int]] = []  # [pid, read end of its pipe (-1: closed)]
    try:
        for i, place in enumerate(places):
            if place.ns.own:
                continue
            fd = _handle(place, proc)
            if fd is None:
                results[i] = Vanished(place.ns.said())
            else:
                handles.append((i, place, fd))
        n = min(workers or WORKERS, os.cpu_count() or 1, len(handles))
        # a queue of places when it takes one write (see _taken); else fixed shares
        queue = os.pipe() if n > 1 and len(handles) * _TAKE.size <= select.PIPE_BUF else None
        try:
            for k in range(n):
                share = handles if queue is not None else handles[k::n]
                children.append(_worker(share, job, proc, queue))
            if queue is not None:  # every child waits for it: none starts first alone
                os.write(queue[1], b"".join(map(_TAKE.pack, range(len(handles)))))
        finally:
            for end in queue or ():
                os.close(end)  # the children's own: at its end, every place taken
    finally:
        for _, _, fd in handles:
            os.close(fd)
    try:
        for i, place in enumerate(places):
            if place.ns.own:
                results[i] = job(place)
                if each is not None:
                    each([(i, results[i])])
        _collect(children, places, results, each)
    finally:
        for pid, r in children:
            if r >= 0:  # we stop waiting before it is done: it was only reading
                os.close(r)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap_child(pid)
    for i, got in enumerate(results):
        if got is _UNSET:
            results[i] = Died(f"the run inside {places[i].ns.said()} died without an answer")
    return results


_UNSET = object()


_TAKE = struct.Struct("=I")  # a place of a sweep's queue: its position among the handles


def _taken(share: Sequence[tuple[int, Place, int]], queue: Optional[tuple[int, int]]
           ) -> Iterator[tuple[int, Place, int]]:  # fmt: skip
    """In a child: the places it answers, one by one: all of `share`, or those it
    takes from `queue` (a pipe the parent fills with every place's position in `share`
    once the children exist, in one write of at most PIPE_BUF bytes; each read of a
    place's 4 bytes is one child's alone). So a child that shares its CPU with the
    parent (unpickling and judging the answers as they come) takes fewer places than
    one that has a CPU of its own, rather than the same number, and the last word: at
    100 namespaces on 2 CPUs one child was done in 35-40 ms and the other in 55-80."""
    if queue is None:
        yield from share
        return
    os.close(queue[1])  # the parent's alone: its end is the end of the places
    while True:
        taken = os.read(queue[0], _TAKE.size)
        if len(taken) < _TAKE.size:  # empty and the parent's end closed: all taken
            return
        yield share[_TAKE.unpack(taken)[0]]


def _worker(share: Sequence[tuple[int, Place, int]], job: Callable[[Place], Any],
            proc: str, queue: Optional[tuple[int, int]] = None) -> list[int]:  # fmt: skip
    """A child that answers the places of `share` one after another (those it takes
    from `queue`, when given: _taken): [its pid, the read end of its pipe]."""
    r, w = os.pipe()
    sys.stdout.flush()  # what is buffered would be written twice, by both of us
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            with os.fdopen(w, "wb") as out:
                for index, place, fd in _taken(share, queue):
                    data = _dumps(_answer(place, fd, job, proc))
                    out.write(_FRAME.pack(index, len(data)))
                    out.write(data)
                    out.flush()  # the parent unpickles it while we read the next one
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    return [pid, r]


def _answer(place: Place, fd: int, job: Callable[[Place], Any], proc: str) -> tuple[str, Any]:
    """In a child: enter the place's namespace (fd), and run the job there; the answer
    as the parent takes it (_outcome). The child may have been in another place's
    namespace before, never ours: it is always a child of ours that enters."""
    try:
        namespaces.setns(fd)
    except OSError as e:
        return ("unreachable", f"{place.ns.said()} not read: {e.strerror}")
    dirs = (_dir_fd(place, SHM, place.shm, proc), _dir_fd(place, MQUEUE, place.mqueue, proc))
    try:
        namespaces.working = place.ns
        shm, mqueue = (None if d is None else f"/proc/self/fd/{d}" for d in dirs)
        posixfs.reach(shm, mqueue)
        return ("ok", job(place))
    except JanitorError as e:
        return ("janitor", e)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or hasattr(e, "signum"):
            return ("interrupted", e)  # a signal stopped it: the parent says so
        return ("bug", traceback.format_exc())
    finally:
        posixfs.reach(None, None)  # the next place's directories are its own
        for d in dirs:
            if d is not None:
                os.close(d)


def _dumps(answer: tuple[str, Any]) -> bytes:
    try:
        return pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps(("bug", traceback.format_exc()))


def _collect(children: list[list[int]], places: Sequence[Place], results: list[Any],
             each: Optional[Callable[[list[tuple[int, Any]]], None]]) -> None:  # fmt: skip
    """Read the workers' answers as they come, until each has closed its pipe."""
    buffers = {r: bytearray() for _, r in children}
    while buffers:
        ready, _, _ = select.select(list(buffers), [], [])
        came: list[tuple[int, Any]] = []
        for r in ready:
            chunk = os.read(r, 1 << 20)
            buf = buffers[r]
            if not chunk:
                del buffers[r]
                os.close(r)
                for child in children:
                    if child[1] == r:
                        child[1] = -1
                continue
            buf += chunk
            while len(buf) >= _FRAME.size:
                index, size = _FRAME.unpack_from(buf)
                if len(buf) < _FRAME.size + size:
                    break
                answer = pickle.loads(buf[_FRAME.size : _FRAME.size + size])
                del buf[: _FRAME.size + size]
                results[index] = _outcome(places[index], answer)
                came.append((index, results[index]))
        if each is not None and came:
            each(came)


def _outcome(place: Place, answer: tuple[str, Any]) -> Any:
    what, value = answer
    if what == "ok":
        return value
    if what == "janitor":
        return value
    if what == "unreachable":
        return Unreachable(value)
    return RuntimeError(f"in {place.ns.said()}: {value}")


__all__ = ["Unreachable", "Vanished", "run", "run_all"]
