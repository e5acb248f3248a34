"""The parser, fed text: every field visible, one comment per field."""

from __future__ import annotations

from pathlib import Path

import pytest

from shmjanitor import scan
from shmjanitor.errors import CorruptTable, NoSysvIpc

HEADER16 = (
    "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid"
    "      atime      dtime      ctime                   rss                  swap"
)
HEADER14 = (
    "       key      shmid perms       size  cpid  lpid nattch   uid   gid  cuid  cgid"
    "      atime      dtime      ctime"
)


def row(*, key=1234, shmid=7, perms="600", size=4096, cpid=100, lpid=0, nattch=0, uid=1000,
        gid=1000, cuid=1000, cgid=1000, atime=0, dtime=0, ctime=1700000000,
        rss: object = 4096, swap: object = 0) -> str:  # fmt: skip
    fields = [
        key,  # key, printed by the kernel as a signed int ("%10d")
        shmid,  # shmid
        perms,  # perms, octal ("%4o"), with SHM_DEST 1000 / SHM_LOCKED 2000
        size,  # size in bytes
        cpid,  # creator pid
        lpid,  # last shmat/shmdt pid
        nattch,  # attach count
        uid, gid, cuid, cgid,  # owner and creator ids
        atime, dtime, ctime,  # epoch seconds, 0 = never
        rss, swap,  # bytes; absent on old kernels
    ]  # fmt: skip
    return " ".join(str(f) for f in fields if f is not None)


def test_sixteen_columns():
    text = "\n".join([HEADER16, row(), row(shmid=8, key=0, nattch=2, atime=1700000100,
                                           dtime=1700000050, lpid=101)]) + "\n"  # fmt: skip
    a, b = scan.parse(text)
    assert a == scan.Segment(1234, 7, 0o600, 4096, 100, 0, 0, 1000, 1000, 1000, 1000,
                             None, None, 1700000000, 4096, 0)  # fmt: skip
    assert (b.key, b.id, b.nattch, b.lpid, b.atime, b.dtime) == (0, 8, 2, 101, 1700000100,
                                                                  1700000050)  # fmt: skip
    assert b.last_used == 1700000100


def test_fourteen_columns_have_no_rss_or_swap():
    text = HEADER14 + "\n" + row(rss=None, swap=None) + "\n"
    (s,) = scan.parse(text)
    assert s.rss is None and s.swap is None and s.size == 4096 and s.ctime == 1700000000


def test_negative_key_is_reported_unsigned():
    # ftok-style keys with the top bit set come out negative from "%10d"
    (s,) = scan.parse(HEADER16 + "\n" + row(key=0x88000001 - 2**32) + "\n")
    assert s.key == 0x88000001 == 2281701377
    assert f"0x{s.key:08x}" == "0x88000001"


def test_mode_is_octal_with_dest_and_locked():
    (d, lk, p) = scan.parse("\n".join([HEADER16, row(perms="1666", nattch=1),
                                        row(perms="2640"), row(perms=" 644")]))  # fmt: skip
    assert d.dest and not d.locked and d.perms == 0o666 and d.mode == 0o1666
    assert lk.locked and not lk.dest and lk.perms == 0o640
    assert p.perms == 0o644 and not p.dest


def test_columns_are_found_by_header_name_not_position():
    header = "shmid key size perms cpid lpid nattch uid gid cuid cgid atime dtime ctime"
    (s,) = scan.parse(header + "\n5 -1 100 1600 9 0 1 0 0 0 0 0 0 1\n")
    assert (s.id, s.key, s.size, s.mode, s.cpid) == (5, 0xFFFFFFFF, 100, 0o1600, 9)


def test_empty_table_is_no_segments():
    assert scan.parse(HEADER16 + "\n") == []


@pytest.mark.parametrize(
    "bad,says",
    [
        (row() + " 99", "17 fields where the header names 16"),
        (row(rss=None, swap=None), "14 fields"),
        (row(size="4k"), "not a number"),
        (row(perms="9z9"), "not a number"),
    ],
)
def test_malformed_line_is_an_error_naming_it(bad, says):
    with pytest.raises(CorruptTable, match="line 3") as e:
        scan.parse("\n".join([HEADER16, row(), bad, row(shmid=9)]))
    assert says in str(e.value)


def test_a_column_of_one_value_is_each_rows_value_and_one_that_varies_is_read_row_by_row():
    """A column that is one text all the way down is read once (sysvtable._ints); one
    whose first and last fields agree but not the others is still read row by row
    (fails when the middle ones are not compared)."""
    rows = [row(shmid=1, size=4096, perms="600", cpid=7), row(shmid=2, size=8192, perms="1600",
            cpid=7), row(shmid=3, size=4096, perms="600", cpid=7)]  # fmt: skip
    segs = scan.parse("\n".join([HEADER16, *rows]))
    assert [s.size for s in segs] == [4096, 8192, 4096]
    assert [s.mode for s in segs] == [0o600, 0o1600, 0o600]
    assert [s.id for s in segs] == [1, 2, 3] and [s.cpid for s in segs] == [7, 7, 7]
    assert segs[0].ctime is segs[2].ctime  # one int for a column of one value


@pytest.mark.parametrize("bad", ["4k", "1e3", "0x10", "--1"])
def test_a_bad_field_is_found_whether_its_column_has_one_value_or_many(bad):
    for rows, line in (([row(size=bad)] * 3, 2), ([row(), row(size=bad), row()], 3),
                       ([row(perms="608")] * 2, 2)):  # fmt: skip
        with pytest.raises(CorruptTable, match=f"line {line}: a field is not a number"):
            scan.parse("\n".join([HEADER16, *rows]))


def test_missing_header_column_is_an_error():
    with pytest.raises(CorruptTable, match="lacks column.*nattch"):
        scan.parse(HEADER16.replace("nattch", "natch") + "\n" + row())
    with pytest.raises(CorruptTable, match="empty"):
        scan.parse("")


def test_read_missing_file_says_no_sysv_ipc(tmp_path: Path):
    with pytest.raises(NoSysvIpc, match="no System V IPC"):
        scan.read(tmp_path / "shm")


def test_read_real_table_matches_kernel():
    from segments import Spec, make

    m = make(Spec(size=5000, key=0x7ABCDEF0, mode=0o640), Spec(size=1))
    segs = {s.id: s for s in scan.read()}
    assert set(segs) == set(m.ids)
    a, b = segs[m.ids[0]], segs[m.ids[1]]
    assert (a.key, a.size, a.perms, a.cpid, a.nattch) == (0x7ABCDEF0, 5000, 0o640, m.pid, 0)
    assert (b.key, b.size, b.cpid) == (0, 1, m.pid)


@pytest.mark.parametrize("bad", [b"\xff\xfe", "\u0661\u0662".encode()])  # Arabic-Indic 12
def test_read_refuses_bytes_the_kernel_never_prints(tmp_path: Path, bad: bytes):
    # Not UTF-8 at all, or digits that int() would take: either is not the kernel's table.
    shm = tmp_path / "shm"
    shm.write_bytes((HEADER16 + "\n" + row() + "\n").encode() + bad + b" " + row().encode())
    with pytest.raises(CorruptTable, match=r"line 3: byte 0x.. is not ASCII"):
        scan.read(shm)
