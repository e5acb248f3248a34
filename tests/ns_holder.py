"""The long-lived process of a test namespace (tests/test_ns_reap.py): run as root in
a fresh IPC namespace with its own /dev/shm (and /dev/mqueue when mounted), it makes
one object in each state of every kind, prints what it made as one JSON line, and
stays (keeping its attached, held and idle objects so).

    attached  a segment it stays attached to; a /dev/shm file it keeps open
    idle      a segment it made and never attached (its creator lives)
    orphan    a segment and a queue made by ipcmk (exited), a set whose last operator
              exited; a /dev/shm file, a
              sem.NAME file and a queue whose names carry the pid of an exited process
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time

import sysv_ipc


def ipcmk(*args: str) -> int:
    out = subprocess.run(["ipcmk", *args], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])  # "Shared memory id: 3"


def main() -> None:
    tag = sys.argv[1]
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    made: dict[str, object] = {"pid": os.getpid(), "ipc": os.stat("/proc/self/ns/ipc").st_ino}
    attached = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=4096)
    attached.attach()
    idle = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=8192)
    made["shm"] = {"attached": attached.id, "idle": idle.id, "orphan": ipcmk("-M", "12288")}
    # operated on by a process that exited: its last operator (sempid) is dead (a set
    # nobody ever operated on, as ipcmk -S makes, is "unknown" while its user lives)
    op = ("import sysv_ipc; s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, initial_value=1); "
          "s.acquire(); print(s.id)")  # fmt: skip
    sem = int(subprocess.run([sys.executable, "-c", op], capture_output=True, text=True,
                             check=True).stdout)  # fmt: skip
    made["sem"] = {"orphan": sem}
    made["msg"] = {"orphan": ipcmk("-Q")}
    held = os.open(f"/dev/shm/held-{tag}", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(held, b"held")
    orphan_shm = f"torch_{dead}_1_{tag}"
    with open(f"/dev/shm/{orphan_shm}", "wb") as f:
        f.write(f"data of {tag}".encode())
    orphan_sem = f"sem.loky-{dead}-{tag}"
    with open(f"/dev/shm/{orphan_sem}", "wb") as f:
        f.write(bytes(32))
    made["posix"] = {"held": f"/dev/shm/held-{tag}", "orphans": [f"/dev/shm/{orphan_shm}",
                                                                 f"/dev/shm/{orphan_sem}"]}  # fmt: skip
    if os.path.ismount("/dev/mqueue"):
        libc = ctypes.CDLL(None, use_errno=True)
        name = f"torch_{dead}_2_{tag}"
        # a small queue: RLIMIT_MSGQUEUE (800 KiB a user) holds ten of the default size
        attr = (ctypes.c_long * 8)(0, 1, 64, 0)  # struct mq_attr: flags, maxmsg, msgsize
        fd = libc.mq_open(f"/{name}".encode(), os.O_CREAT | os.O_RDWR, 0o644, attr)
        assert fd >= 0, os.strerror(ctypes.get_errno())
        os.close(fd)
        made["posix"]["orphans"].append(f"/dev/mqueue/{name}")  # type: ignore[index]
    print(json.dumps(made), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
