"""The one parser of System V keys and segment ids, for flags, arguments and the config.

A key is 32 bits (key_t is an int). People meet it in three spellings: `ipcs` and
`lsipc` print it as 0x%08x, /proc/sysvipc/shm prints it as a signed decimal ("%10d",
so 0xffffffff is -1), and programs write it in decimal or hex. All three are accepted;
anything that is not exactly one 32-bit value is refused with a message naming the
input, never wrapped or truncated (`ipcrm` passes keys through strtoul(3) and truncates
whatever it gets, so `-4294967297` silently becomes 0xffffffff there).

Forms (a sign may lead either):
  1234, -1          decimal; a negative one is the kernel's signed spelling
  0x1234abcd, -0x1  hexadecimal, as ipcs prints it (and strtoul reads "-0x1" too)
The value must lie in [-2^31, 2^32); it is returned as the unsigned 32-bit key.
A decimal with a leading zero ("010") is refused: ipcrm reads it as octal, Python and
most people as decimal, and a key that names what to delete must not mean two things.
"""

from __future__ import annotations

import re
from typing import Union

IPC_PRIVATE = 0
KEY_MIN = -(1 << 31)  # the most negative key the kernel prints
KEY_END = 1 << 32  # one past the largest unsigned key
ID_MAX = (1 << 31) - 1  # shmid is a non-negative int (ipc_buildid)

_KEY = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0|[1-9][0-9]*))")
_ID = re.compile(r"0|[1-9][0-9]*")
_RANGE = "a key is 32 bits: -2147483648 to 4294967295, or 0x0 to 0xffffffff"


def parse_key(value: Union[str, int], *, private_ok: bool = False, noun: str = "segment") -> int:
    """The unsigned 32-bit key that `value` spells; ValueError naming it otherwise.

    `private_ok` allows 0 (IPC_PRIVATE). Where a key names one segment to act on it is
    refused: every segment made with IPC_PRIVATE has key 0, so it names none of them.
    """
    if isinstance(value, bool):  # bool is an int in Python; a key is never true/false
        raise ValueError(f"{value!r} is not a key")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _KEY.fullmatch(value)
        if m is None:
            raise ValueError(_malformed(value))
        sign, hex_digits, dec_digits = m.groups()
        n = int(hex_digits, 16) if hex_digits is not None else int(dec_digits)
        n = -n if sign == "-" else n
    else:
        raise ValueError(f"{value!r} is not a key")
    if not KEY_MIN <= n < KEY_END:
        raise ValueError(f"{value!r} is out of range: {_RANGE}")
    key = n & 0xFFFFFFFF
    if key == IPC_PRIVATE and not private_ok:
        raise ValueError(
            f"{value!r} is IPC_PRIVATE (key 0), which every private {noun} shares: "
            f"name the {noun} by its id"
        )
    return key


def segment_key(text: str) -> int:
    """A key that names segments (`rm --key`): IPC_PRIVATE refused."""
    return parse_key(text)


def parse_id(text: str, noun: str = "segment") -> int:
    """An id (shmid, semid, msqid) as ipcs prints it: decimal, 0 to 2^31-1."""
    if _ID.fullmatch(text) is None or int(text) > ID_MAX:
        raise ValueError(
            f"{text!r} is not a {noun} id: an id is a decimal number from 0 to {ID_MAX}, "
            "as ipcs and `shmjanitor list` print it (use --key for a key)"
        )
    return int(text)


def _malformed(text: str) -> str:
    if re.fullmatch(r"[+-]?0[0-9]+", text):
        return (
            f"{text!r} has a leading 0, which ipcrm reads as octal: write the key in "
            "decimal without it, or as 0x hex"
        )
    return f"{text!r} is not a key: write it in decimal (1234, -1) or hex (0x1234abcd)"
