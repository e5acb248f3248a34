"""Reading the kernel's /proc/sysvipc/{shm,sem,msg} tables: the parts every kind shares.

The kernel prints one header line naming the columns, then one line per object, every
field a number (ipc/shm.c, ipc/sem.c, ipc/msg.c: sysvipc_*_proc_show). Facts relied on:

* `key` is printed with "%10d", i.e. as a signed int: keys >= 0x80000000 come out
  negative. Kinds keep the unsigned 32-bit value (`unsigned_key`), as ipcs shows it.
* `perms` is the mode in octal ("%4o"); every other field is decimal.
* times are epoch seconds, 0 meaning "never".

Never guesses: a row with the wrong number of fields or a non-number is an error, because
a reaper acting on a half-understood table could remove the wrong object.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Callable, Optional, TypeVar

from shmjanitor.errors import CorruptTable, NoSysvIpc

PROC_SYSVIPC = Path("/proc/sysvipc")
CHUNK = 4096  # rows converted at a time: 32,000 rows' split fields at once cost memory


def read_text(path: Path) -> str:
    """The table's text; NoSysvIpc when it does not exist, CorruptTable when it cannot be
    read or holds anything but ASCII (the kernel prints only a header and numbers, and
    int() would accept some other digits, Arabic-Indic ones say)."""
    try:
        data = _read(path)
    except FileNotFoundError:
        raise NoSysvIpc(
            f"{path} does not exist: this kernel has no System V IPC (or this is not Linux)"
        ) from None
    except OSError as e:
        raise CorruptTable(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CorruptTable(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} is not ASCII, as the kernel's "
            "table always is"
        ) from None


def _read(path: Path) -> bytes:
    """The file's bytes, with plain reads: Path.read_bytes stats it twice, seeks twice
    and wraps it in a buffered file, and a sweep's child reads three tables in each
    namespace (an empty sem or msg table: 14 -> 9 us)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 16)  # a /proc table: a page at most a read
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def header(lines: Sequence[str], source: str, required: Sequence[str]) -> dict[str, int]:
    """Column name -> index, or CorruptTable when a required column is missing."""
    if not lines:
        raise CorruptTable(f"{source}: empty, not even a header line")
    index = {name: i for i, name in enumerate(lines[0].split())}
    missing = [name for name in required if name not in index]
    if missing:
        raise CorruptTable(f"{source}: header lacks column(s) {', '.join(missing)}")
    return index


def chunks(lines: Sequence[str], source: str, width: int) -> Iterator[tuple[int, list[list[str]]]]:
    """(line offset, rows of split fields), CHUNK rows at a time, each row checked to
    have `width` fields (CorruptTable names the first that has not)."""
    body = lines[1:]
    for start in range(0, len(body), CHUNK):
        rows = [line.split() for line in body[start : start + CHUNK]]
        if any(n != width for n in map(len, rows)):
            at, bad = next((k, r) for k, r in enumerate(rows) if len(r) != width)
            raise CorruptTable(
                f"{source}, line {start + at + 2}: {len(bad)} fields where the header names "
                f"{width}: {body[start + at].strip()!r}"
            )
        yield start, rows


T = TypeVar("T")
Column = Callable[[str], list[int]]  # a column's numbers by name, in table order


def parse(text: str, source: str, required: Sequence[str],
          convert: Callable[[Column, list[int], dict[str, int]], Iterable[T]]) -> list[T]:  # fmt: skip
    """A whole table as a kind's records, or CorruptTable naming the first bad line. Pure.

    `convert(column, modes, index)` makes one chunk's records from its columns (each a
    list of ints, `column("key")`), its modes (`perms` read in octal) and the header's
    index (to ask whether an optional column is there). Column by column rather than
    row by row: a column is the fields of every row at once (zip), made ints in one
    pass, which costs a third of a dozen index look-ups per row. A few thousand rows at
    a time: the split fields of 32,000 rows would be 500,000 strings at once.
    """
    lines = text.splitlines()
    index = header(lines, source, required)
    width = len(lines[0].split())
    i_perms = index["perms"]
    out: list[T] = []
    for _start, rows in chunks(lines, source, width):
        fields = list(zip(*rows))  # column by column
        try:
            numbers = list(map(_ints, fields))
            modes = _ints(fields[i_perms], 8)
        except ValueError:
            raise not_a_number(lines, source) from None

        def column(name: str, numbers: list[list[int]] = numbers) -> list[int]:
            return numbers[index[name]]

        out.extend(convert(column, modes, index))
    return out


def _ints(texts: Sequence[str], base: int = 10) -> list[int]:
    """A column's numbers (ValueError for a field that is not one). A column that is
    one text all the way down (a leak's segments: one owner, size, creator, second) is
    one int() for every row, and one int object: 100 segments of a leak, 160 -> 40 us;
    the comparison of its first and last fields is all a column of many values pays."""
    first = texts[0]
    if first == texts[-1] and texts.count(first) == len(texts):
        return [int(first, base)] * len(texts)
    if base == 10:
        return list(map(int, texts))
    return [int(t, base) for t in texts]


def not_a_number(lines: Sequence[str], source: str) -> CorruptTable:
    """The error for the first line with a field that is not a number (perms in octal)."""
    i_perms = lines[0].split().index("perms")
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        try:
            [int(f) for f in fields]
            if fields:
                int(fields[i_perms], 8)
        except ValueError:
            return CorruptTable(
                f"{source}, line {lineno}: a field is not a number: {line.strip()!r}"
            )
    raise AssertionError("called for a table whose numbers all parse")


def unsigned_key(key: int) -> int:
    return key & 0xFFFFFFFF


def sysctl_value(name: str, root: Path = Path("/proc/sys/kernel")) -> Optional[int]:
    """The one number of /proc/sys/kernel/<name>; None when unreadable or not one."""
    values = read_sysctl(name, root)
    return values[0] if len(values) == 1 else None


def read_sysctl(name: str, root: Path = Path("/proc/sys/kernel")) -> list[int]:
    """The numbers of /proc/sys/kernel/<name> (per IPC namespace); [] when unreadable."""
    try:
        return [int(x) for x in (root / name).read_text().split()]
    except (OSError, ValueError):
        return []
