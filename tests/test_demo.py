"""The seed's programs, ported: they work, and their leak switches leak as documented."""

from __future__ import annotations

import subprocess
import sys
import time

from segments import list_json, rows

DEMO = [sys.executable, "-m", "shmjanitor.demo"]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=30, **kw)


def test_server_and_client_exchange_four_numbers_and_clean_up(tmp_path):
    server = subprocess.Popen([*DEMO, "server", "--path", str(tmp_path), "1", "2", "3", "4"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    client = run("client", "--path", str(tmp_path))
    assert client.stdout == "1 2 3 4\n"  # data[3] survives: the seed's slip is fixed
    assert server.wait(timeout=10) == 0
    assert rows() == {}


def test_child_example_passes_numbers_and_cleans_up():
    r = run("child", "5", "6", "7", "8")
    assert r.stdout == "5 6 7 8\n" and rows() == {}


def test_child_leak_leaves_an_orphan():
    r = run("child", "--leak", "5", "6", "7", "8")
    (shmid,) = rows()
    assert f"id={shmid}" in r.stdout
    assert list_json()[shmid]["state"] == "orphan"


def test_server_without_rmid_leaves_an_orphan(tmp_path):
    server = subprocess.Popen([*DEMO, "server", "--path", str(tmp_path), "--leak", "no-rmid",
                               "1", "2", "3", "4"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert run("client", "--path", str(tmp_path)).stdout == "1 2 3 4\n"
    assert server.wait(timeout=10) == 0
    (seg,) = list_json().values()
    assert seg["state"] == "orphan" and seg["size"] == 20


def test_crashing_server_leaves_an_orphan(tmp_path):
    r = run("server", "--path", str(tmp_path), "--leak", "crash", "1", "2", "3", "4")
    assert r.returncode == -9
    (seg,) = list_json().values()
    assert seg["state"] == "orphan"


def test_waiting_server_is_idle_and_staying_client_is_attached(tmp_path):
    server = subprocess.Popen([*DEMO, "server", "--path", str(tmp_path), "1", "2", "3", "4"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None and "waiting" in server.stdout.readline()
        (seg,) = list_json().values()
        assert seg["state"] == "attached"  # the server stays attached while it waits
        client = subprocess.Popen([*DEMO, "client", "--path", str(tmp_path), "--stay", "30"],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert client.stdout is not None and client.stdout.readline() == "1 2 3 4\n"
        assert server.wait(timeout=10) == 0
        (seg,) = list_json().values()
        # The server removed it, but the client is still attached: IPC_RMID is pending.
        assert seg["state"] == "removing" and seg["nattch"] == 1
        client.kill()
        client.wait()
        deadline = time.time() + 5
        while rows() and time.time() < deadline:
            time.sleep(0.05)
        assert rows() == {}
    finally:
        server.kill()
