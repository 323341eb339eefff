"""The unwind table file and its publication (csrc/rsprof_shm.h, "The unwind table"):
the layout numbers _ring exports, a file packed by hand byte for byte, the pure-Python
packer/reader of rsprof.shm_reference, and ShmRing.publish_unwind read back through
rsprof.shm_reference."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator

import pytest

from rsprof import _ring, _unwind
from rsprof import shm_reference as ref

# (start, kind, cfa_off, bp_off, ra_off): a function at 0x1000 (push rbp; mov rbp, rsp),
# a PLT, the end of coverage, and an outermost frame.
ROWS: list[ref.UnwindRow] = [
    (0x1000, _ring.UNWIND_SP, 8, _ring.UNWIND_BP_SAME, -8),
    (0x1001, _ring.UNWIND_SP, 16, -16, -8),
    (0x1004, _ring.UNWIND_BP, 16, -16, -8),
    (0x1040, _ring.UNWIND_NONE, 0, _ring.UNWIND_BP_SAME, 0),
    (0x2000, _ring.UNWIND_PLT11, 8, _ring.UNWIND_BP_SAME, -8),
    (0x2010, _ring.UNWIND_PLT10, 8, _ring.UNWIND_BP_SAME, -8),
    (0x3000, _ring.UNWIND_OUTERMOST, 8, _ring.UNWIND_BP_SAME, -8),
    (0x3010, _ring.UNWIND_UNSUPPORTED, 0, _ring.UNWIND_BP_SAME, 0),
    (0x7FFF_FFFF_F000, _ring.UNWIND_NONE, 0, _ring.UNWIND_BP_SAME, 0),
]


def hand_packed(rows: list[ref.UnwindRow]) -> bytes:
    """The file as rsprof_shm.h spells it, without any of the module's structs."""
    out = bytearray()
    out += (0x31574E55464F5250).to_bytes(8, "little")  # "PROFUNW1"
    out += (6).to_bytes(4, "little")                      # RSPROF_SHM_VERSION
    out += (16).to_bytes(4, "little")                     # row_bytes
    out += len(rows).to_bytes(8, "little")                # n_rows
    out += bytes(8)                                       # reserved
    for start, kind, cfa_off, bp_off, ra_off in rows:
        out += start.to_bytes(8, "little")
        out += cfa_off.to_bytes(4, "little", signed=True)
        out += bp_off.to_bytes(2, "little", signed=True)
        out += ra_off.to_bytes(1, "little", signed=True)
        out += kind.to_bytes(1, "little")
    return bytes(out)


def test_layout_numbers() -> None:
    assert int.from_bytes(b"PROFUNW1", "little") == _ring.UNWIND_MAGIC
    assert _ring.UNWIND_FILE_HEADER_BYTES == 32 == ref.UNWIND_FILE_HEADER.size
    assert _ring.UNWIND_ROW_BYTES == 16 == ref.UNWIND_ROW.size
    assert _ring.UNWIND_NAME_BYTES == 64
    assert _ring.SHM_VERSION == ref.VERSION == 6
    assert ref.HEADER_SIZE == 200
    assert _ring.UNWIND_BP_SAME == -32768
    kinds = [_ring.UNWIND_NONE, _ring.UNWIND_SP, _ring.UNWIND_BP, _ring.UNWIND_PLT11,
             _ring.UNWIND_PLT10, _ring.UNWIND_OUTERMOST, _ring.UNWIND_UNSUPPORTED]
    assert kinds == list(range(7))


def test_kind_names_are_those_of_cfi_rows() -> None:
    """shm_reference.UNWIND_KINDS maps every kind name _unwind.CfiTable.rows() gives
    (the values are the same in C: rsprof_cfi.c asserts RSPROF_CFI_* == RSPROF_UNWIND_*)."""
    names: dict[int, str] = vars(_unwind)["_KIND_NAMES"]  # value -> name, as rows() gives
    assert set(ref.UNWIND_KINDS) == set(names.values())
    for value, name in names.items():
        assert ref.UNWIND_KINDS[name] == value


def test_packer_writes_the_hand_packed_file() -> None:
    data = ref.pack_unwind_file(ROWS)
    assert data == hand_packed(ROWS)
    assert len(data) == _ring.UNWIND_FILE_HEADER_BYTES + _ring.UNWIND_ROW_BYTES * len(ROWS)
    # bp_off None is "unchanged", as CfiTable.rows() gives it
    as_cfi = [(s, k, c, None if b == _ring.UNWIND_BP_SAME else b, r) for s, k, c, b, r in ROWS]
    assert ref.pack_unwind_file(as_cfi) == data
    assert ref.unpack_unwind_file(data) == ROWS
    assert ref.unpack_unwind_file(data + bytes(8)) == ROWS  # longer than its rows: fine


def test_real_cfi_rows_fit_the_row_layout() -> None:
    """Rows of a real object (this Python's own _unwind extension) survive the trip
    through the file: every field fits its width."""
    from rsprof.recording.unwind_info import read_unwind_sections

    with open(_unwind.__file__, "rb") as fh:
        sections = read_unwind_sections(fh.read())
    assert sections is not None
    table = _unwind.CfiTable(sections.eh_frame, sections.eh_frame_vaddr, sections.debug_frame)
    rows = [(s, ref.UNWIND_KINDS[k], c, _ring.UNWIND_BP_SAME if b is None else b, r)
            for s, k, c, b, r in table.rows()]
    assert len(rows) > 100
    assert ref.unpack_unwind_file(hand_packed(rows)) == rows


@pytest.mark.parametrize("bad", ["magic", "version", "row_bytes", "no_rows", "past_end",
                                 "order", "short"])
def test_reader_refuses_what_the_shim_refuses(bad: str) -> None:
    data = bytearray(hand_packed(ROWS))
    if bad == "magic":
        data[0] ^= 1
    elif bad == "version":
        struct.pack_into("<I", data, 8, 5)
    elif bad == "row_bytes":
        struct.pack_into("<I", data, 12, 24)
    elif bad == "no_rows":
        struct.pack_into("<Q", data, 16, 0)
    elif bad == "past_end":
        struct.pack_into("<Q", data, 16, len(ROWS) + 1)
    elif bad == "order":
        struct.pack_into("<Q", data, 32 + 16 * 2, ROWS[1][0])  # equal to the row before
    else:
        data = data[:24]
    with pytest.raises(ref.RegionError):
        ref.unpack_unwind_file(bytes(data))


def test_packer_refuses_rows_out_of_order() -> None:
    with pytest.raises(ValueError):
        ref.pack_unwind_file([ROWS[1], ROWS[0]])


# -- publish_unwind --------------------------------------------------------------------------


@pytest.fixture
def region() -> Iterator[tuple[int, _ring.ShmRing]]:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        length = _ring.init_region(fd, 4096, 77, _ring.STATE_RECORDING)
        ring = _ring.ShmRing(fd, length)
        yield fd, ring
        ring.close()
    finally:
        os.close(fd)


def read_back(fd: int) -> ref.ShmReader:
    return ref.ShmReader.from_buffer(bytearray(os.pread(fd, ref.HEADER_BYTES + 4096, 0)))


def test_publish_writes_the_name_then_bumps_the_generation(
        region: tuple[int, _ring.ShmRing]) -> None:
    fd, ring = region
    assert ring.unwind_generation == 0
    assert read_back(fd).header()["unwind_generation"] == 0 and read_back(fd).unwind_name == ""
    assert ring.publish_unwind("rsprof-unwind-1234-abcdef") == 1
    reader = read_back(fd)
    assert reader.header()["unwind_generation"] == 1 == ring.unwind_generation
    assert reader.unwind_name == "rsprof-unwind-1234-abcdef"
    raw = os.pread(fd, ref.HEADER_SIZE, 0)
    assert struct.unpack_from("<Q", raw, 128)[0] == 1  # offsets of rsprof_shm.h
    assert raw[136:136 + 26] == b"rsprof-unwind-1234-abcdef\0"
    # A shorter name leaves nothing of the longer one behind.
    assert ring.publish_unwind("t") == 2
    raw = os.pread(fd, ref.HEADER_SIZE, 0)
    assert raw[136:200] == b"t" + bytes(63)
    assert read_back(fd).unwind_name == "t" and read_back(fd).header()["unwind_generation"] == 2
    longest = "n" * (_ring.UNWIND_NAME_BYTES - 1)
    assert ring.publish_unwind(longest) == 3
    assert read_back(fd).unwind_name == longest
    assert os.pread(fd, 1, 199) == b"\0"  # always NUL-terminated


def test_publish_keeps_every_other_header_field(region: tuple[int, _ring.ShmRing]) -> None:
    fd, ring = region
    before = read_back(fd).header()
    ring.publish_unwind("x")
    after = read_back(fd).header()
    assert after.pop("unwind_generation") == 1
    before.pop("unwind_generation")
    assert after == before


@pytest.mark.parametrize("name", ["", "a/b", "/x", ".", "..", "nul\0inside",
                                  "n" * 64, "é" * 32])
def test_publish_refuses_bad_names(region: tuple[int, _ring.ShmRing], name: str) -> None:
    fd, ring = region
    with pytest.raises(ValueError):
        ring.publish_unwind(name)
    with pytest.raises(ref.RegionError):
        read_back(fd).publish_unwind(name)
    assert ring.unwind_generation == 0


def test_reference_publish_is_the_same(region: tuple[int, _ring.ShmRing]) -> None:
    """shm_reference.ShmReader.publish_unwind writes the same bytes as _ring's."""
    fd, ring = region
    ring.publish_unwind("abc")
    ring.publish_unwind("abc")
    by_ring = os.pread(fd, ref.HEADER_SIZE, 0)
    buf = bytearray(os.pread(fd, ref.HEADER_BYTES + 4096, 0))
    struct.pack_into("<Q", buf, 128, 1)
    buf[136:200] = b"longer-name".ljust(64, b"\0")
    reader = ref.ShmReader.from_buffer(buf)
    assert reader.publish_unwind("abc") == 2
    assert bytes(buf[:ref.HEADER_SIZE]) == by_ring
