"""Ansible connection plugin: run tasks inside a running container with nsenter(1).

Used by tests/systemd/test_ansible.py to apply the role to a systemd-nspawn container
from the host, the way a control node applies it to a lab machine over ssh: the
container needs only python3, and every command runs in all of its namespaces (its
mounts, its PID 1 systemd, its IPC), so `systemctl` talks to the container's systemd.
ansible-core ships no such plugin (community.docker's nsenter goes the other way).

The host is named by the PID, as the controller sees it, of the container's init:

    [lab]
    box ansible_host=12345 ansible_connection=nsenter

Put this directory on the plugin path: ANSIBLE_CONNECTION_PLUGINS=<this directory>.
"""

from __future__ import annotations

import subprocess

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
    name: nsenter
    short_description: run tasks in the namespaces of a running container
    description:
        - Runs every command with nsenter --target PID --all, under a clean environment.
    author: shmjanitor
    extends_documentation_fragment:
        - connection_pipelining
    options:
      remote_addr:
        description: PID (in the controller's PID namespace) of the container's init.
        default: inventory_hostname
        vars:
          - name: inventory_hostname
          - name: ansible_host
"""

# The container's processes must not inherit the controller's environment (PIP_* and
# proxies of the host would leak in); ansible passes a module's own variables itself.
CLEAN_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
)


class Connection(ConnectionBase):
    transport = "nsenter"
    has_pipelining = True
    default_user = "root"

    def _nsenter(self, argv: list[str]) -> list[str]:
        pid = str(self._play_context.remote_addr)
        if not pid.isdigit():
            raise AnsibleError(f"nsenter: ansible_host must be a PID, not {pid!r}")
        return ["nsenter", f"--target={pid}", "--all", "env", "-i", *CLEAN_ENV, *argv]

    def _connect(self) -> Connection:
        self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):  # type: ignore[no-untyped-def]
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        p = subprocess.run(
            self._nsenter(["/bin/sh", "-c", cmd]), input=in_data, capture_output=True
        )
        return p.returncode, p.stdout, p.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as src:
            p = subprocess.run(
                self._nsenter(["/bin/sh", "-c", 'cat > "$1"', "sh", out_path]),
                stdin=src, capture_output=True,
            )  # fmt: skip
        if p.returncode != 0:
            raise AnsibleError(
                f"nsenter: cannot write {out_path}: {p.stderr.decode(errors='replace')}"
            )

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as dst:
            p = subprocess.run(self._nsenter(["cat", in_path]), stdout=dst, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise AnsibleError(
                f"nsenter: cannot read {in_path}: {p.stderr.decode(errors='replace')}"
            )

    def close(self) -> None:
        self._connected = False
