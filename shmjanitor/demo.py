"""The seed's shared-memory demo, ported to Python, with switches that leak on purpose.

    python -m shmjanitor.demo server [--path DIR] [--leak no-rmid|crash] 1 2 3 4
    python -m shmjanitor.demo client [--path DIR] [--stay SECONDS]
    python -m shmjanitor.demo child  [--leak] 1 2 3 4

server: makes the keyed segment (ftok(DIR, 'x')), fills `struct Memory` (status +
four ints), sets FILLED and sleeps a second at a time until a client sets TAKEN, then
detaches and removes it. client: waits for FILLED, prints the four numbers, sets TAKEN.
child: passes four ints to a forked child over an IPC_PRIVATE segment.

The seed's slips are fixed: the numbers come from argv[1..4], not argv[0..3],
data[3] is no longer lost to a second assignment of data[2], and FILLED is no longer
0, the value of a fresh segment's memory (a racing client read zeros as "filled").

The leaks shmjanitor exists for, each a switch:
  server --leak no-rmid   exits after TAKEN without IPC_RMID          -> orphan
  server --leak crash     SIGKILLs itself while waiting for a client  -> orphan
  child --leak            skips IPC_RMID after the child is done      -> orphan
  client --stay SECONDS   stays attached after TAKEN                   -> attached
These are deliberate: run them inside `unshare --ipc` (or accept that they leak).
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import time

import sysv_ipc

# The seed has NOT_READY -1, FILLED 0: but a new segment is all zeros, so a client that
# attaches before the server's first write read FILLED and printed 0 0 0 0. Here fresh
# memory reads NOT_READY.
NOT_READY, FILLED, TAKEN = 0, 1, 2
MEMORY = struct.Struct("i4i")  # struct Memory { int status; int data[4]; }
DATA = struct.Struct("4i")  # the child example's four ints


def key_for(path: str) -> int:
    return sysv_ipc.ftok(path, ord("x"), silence_warning=True)


def _status(shm: sysv_ipc.SharedMemory) -> int:
    return int(MEMORY.unpack(shm.read(MEMORY.size))[0])


def _set_status(shm: sysv_ipc.SharedMemory, status: int) -> None:
    shm.write(struct.pack("i", status), 0)


def server(numbers: list[int], path: str, leak: str) -> int:
    shm = sysv_ipc.SharedMemory(
        key_for(path), sysv_ipc.IPC_CREAT, mode=0o666, size=MEMORY.size, init_character=b"\0"
    )
    shm.write(MEMORY.pack(NOT_READY, *numbers))
    _set_status(shm, FILLED)
    print(f"server: key=0x{shm.key & 0xFFFFFFFF:08x} id={shm.id} filled, waiting", flush=True)
    if leak == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # dies attached: the kernel detaches, nobody removes
    while _status(shm) != TAKEN:
        time.sleep(1)
    shm.detach()
    if leak == "no-rmid":
        print(f"server: data taken, leaving id={shm.id} behind", flush=True)
        return 0
    shm.remove()
    print("server: data taken, segment removed", flush=True)
    return 0


def client(path: str, stay: float) -> int:
    while True:  # the server must run first; wait for it as a patient user would
        try:
            shm = sysv_ipc.SharedMemory(key_for(path), 0)
            break
        except sysv_ipc.ExistentialError:
            time.sleep(0.05)
    while _status(shm) != FILLED:
        time.sleep(0.01)
    data = MEMORY.unpack(shm.read(MEMORY.size))[1:]
    print(" ".join(str(n) for n in data), flush=True)
    _set_status(shm, TAKEN)
    if stay:
        time.sleep(stay)
    shm.detach()
    return 0


def child(numbers: list[int], leak: bool) -> int:
    shm = sysv_ipc.SharedMemory(
        sysv_ipc.IPC_PRIVATE,
        sysv_ipc.IPC_CREX,
        mode=0o666,
        size=DATA.size,
        init_character=b"\0",
    )
    shm.write(DATA.pack(*numbers))
    pid = os.fork()
    if pid == 0:
        print(" ".join(str(n) for n in DATA.unpack(shm.read(DATA.size))), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    shm.detach()
    if leak:
        print(f"child: leaving id={shm.id} behind", flush=True)
    else:
        shm.remove()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shmjanitor.demo",
        description="The seed's shared-memory demo; its switches leak segments on purpose.",
    )
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("server", help="make, fill and (unless leaking) remove a keyed segment")
    p.add_argument("numbers", type=int, nargs=4)
    p.add_argument("--path", default=".", help="path for ftok (default: .)")
    p.add_argument("--leak", choices=["none", "no-rmid", "crash"], default="none")
    p = sub.add_parser("client", help="read the server's four numbers")
    p.add_argument("--path", default=".", help="path for ftok (default: .)")
    p.add_argument("--stay", type=float, default=0.0, help="stay attached this many seconds")
    p = sub.add_parser("child", help="pass four ints to a forked child")
    p.add_argument("numbers", type=int, nargs=4)
    p.add_argument("--leak", action="store_true", help="skip IPC_RMID")
    args = parser.parse_args(argv)
    if args.role == "server":
        return server(args.numbers, args.path, args.leak)
    if args.role == "client":
        return client(args.path, args.stay)
    return child(args.numbers, args.leak)


if __name__ == "__main__":
    sys.exit(main())
