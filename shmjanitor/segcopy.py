"""Copy a segment's bytes for the quarantine without making the kernel allocate any.

A leaked segment is often sparse: a program asks for 256 MiB (SHM_NORESERVE) and
writes a page. Reading it all through a mapping would make the kernel allocate every
page it reads (a shared mapping's read fault allocates, shmem_fault), so a user could
make root's janitor fill the machine's memory; for SHM_HUGETLB without free huge pages
the read faults with SIGBUS and kills the reaper. So only pages that exist are read:

* with CAP_SYS_ADMIN, through the segment's own file (/proc/self/map_files/A-B of our
  read-only attach): SEEK_DATA/SEEK_HOLE name the pages it holds, in memory or in swap
  (shmem counts a swapped page as data), and pread() of the file never allocates (a
  hole reads as zeros: shmem_file_read_iter uses SGP_READ);
* otherwise, mincore() of the attach: the pages in memory. It cannot see swapped-out
  pages, so when the mapping shows swap (Swap: in /proc/self/smaps) the segment is read
  whole through the mapping; without CAP_SYS_ADMIN the segment is the caller's own.
* on hugetlbfs (huge-page file) SEEK_DATA calls everything data, and huge pages are
  never swapped: mincore says exactly which exist.

Data is handed to `write` in chunks of at most CHUNK bytes, so no more than one chunk of
a copy is in our memory at once. All-zero chunks are not handed over: they are holes in
the copy as they were (or could as well be) in the segment.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Callable

from shmjanitor import kernel

CHUNK = 1 << 20
_PAGE = kernel.PAGE_SIZE

Extent = tuple[int, int]  # (offset, length) of stored bytes within the segment


@lru_cache(maxsize=4)
def _zeros(n: int) -> bytes:
    return bytes(n)


def _runs(present: bytes, page: int, size: int) -> Iterator[Extent]:
    """(offset, length) of each run of pages whose mincore byte has bit 0 set."""
    start = None
    for i, b in enumerate(present):
        if b & 1:
            if start is None:
                start = i
        elif start is not None:
            yield start * page, min(size, i * page) - start * page
            start = None
    if start is not None:
        yield start * page, size - start * page


def _seek_ranges(fd: int, size: int) -> Iterator[Extent]:
    """The data ranges of a file by SEEK_DATA/SEEK_HOLE (shmem counts swap as data)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data at or after pos
                return
            raise
        if start >= size:
            return
        end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        yield start, end - start
        pos = end


def _vma_swap_kb(addr: int) -> int:
    """Swap: of our mapping at `addr` in /proc/self/smaps (shmem swap of the segment)."""
    head = f"{addr:x}-"
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = line.startswith(head)
            elif inside and line.startswith("Swap:"):
                return int(line.split()[1])
    return 0


def _map_file(addr: int, length: int) -> int:
    """An fd on the segment's file through map_files, or -1 (needs CAP_SYS_ADMIN)."""
    try:
        return os.open(f"/proc/self/map_files/{addr:x}-{addr + length:x}",
                       os.O_RDONLY | os.O_CLOEXEC)  # fmt: skip
    except OSError:
        return -1


def _mapped_length(size: int, huge: int = 0) -> int:
    unit = huge or _PAGE
    return (size + unit - 1) // unit * unit


@contextlib.contextmanager
def attached(shmid: int) -> Iterator[int]:
    """A read-only attach of the segment; its address. Detached on the way out."""
    addr = kernel.shm_attach_ro(shmid)
    try:
        yield addr
    finally:
        kernel.shm_detach(addr)


def copy(addr: int, size: int, write: Callable[[bytes], None]) -> list[Extent]:
    """Hand the segment's existing, non-zero bytes to `write`; return their extents.

    `addr` is a read-only attach of the segment (`attached`). Raises OSError when the
    pages cannot be listed.
    """
    fd = _map_file(addr, _mapped_length(size))
    try:
        if fd >= 0:
            huge = os.fstat(fd).st_blksize
            if huge > _PAGE:  # hugetlbfs: SEEK_DATA says "all data"; mincore is exact
                ranges: list[Extent] = list(
                    _runs(kernel.resident_pages(addr, _mapped_length(size, huge)), _PAGE, size)
                )
            else:
                ranges = list(_seek_ranges(fd, size))

            def read(off: int, n: int) -> bytes:
                return os.pread(fd, n, off)
        else:
            present = kernel.resident_pages(addr, _mapped_length(size))
            # Swapped pages are invisible to mincore: then the segment is read whole.
            ranges = [(0, size)] if _vma_swap_kb(addr) else list(_runs(present, _PAGE, size))

            def read(off: int, n: int) -> bytes:
                return ctypes.string_at(addr + off, n)

        extents: list[Extent] = []
        for start, length in ranges:
            for off in range(start, start + length, CHUNK):
                n = min(CHUNK, start + length - off)
                data = read(off, n)
                if len(data) != n:
                    raise OSError(errno.EIO, f"short read of the segment at {off}")
                if data == _zeros(n):
                    continue
                write(data)
                if extents and sum(extents[-1]) == off:
                    extents[-1] = (extents[-1][0], extents[-1][1] + n)
                else:
                    extents.append((off, n))
        return extents
    finally:
        if fd >= 0:
            os.close(fd)
