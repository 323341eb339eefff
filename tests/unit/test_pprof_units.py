"""The pprof exporter and its wire encoder on hand-built stacks.

Decoded with the protobuf package against tests/data/profile.proto (compiled
by the helper of the integration test); the wire encoder alone is checked
against byte vectors from the protobuf encoding documentation.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rsprof.export.pprof import NO_STACK, encode_profile, write_pprof
from rsprof.export.protobuf_wire import Message, varint
from rsprof.export.stacks import (
    CPU,
    CPU_VALUES,
    HEAP,
    HEAP_VALUES,
    FrameInfo,
    Location,
    Mapping,
    StackSet,
    WeightedStack,
)
from rsprof.report.profile_summary import ProfileSummary
from rsprof.report.selection import Selection
from tests.integration.test_export_pprof import compile_profile_proto

EXE = "/opt/app/bin/app"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
BIAS = 0x5555_5555_0000
HIGH = 0xFFFF_FFFF_FF60_0000  # a kernel-half address: stored negative in SQLite


@pytest.fixture(scope="module")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_profile_proto(tmp_path_factory.mktemp("pb2"))


# --- the wire encoder -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "encoded"), [
    (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (150, "9601"), (300, "ac02"),
    (2**63 - 1, "ffffffffffffffff7f"),
    (2**64 - 1, "ffffffffffffffffff01"),
    (-1, "ffffffffffffffffff01"),  # int64 -1: ten bytes, as protobuf writes it
    (-2**63, "80808080808080808001"),
])
def test_varint(value: int, encoded: str) -> None:
    assert varint(value).hex() == encoded


def test_varint_out_of_range() -> None:
    with pytest.raises(ValueError):
        varint(2**64)
    with pytest.raises(ValueError):
        varint(-2**63 - 1)


def test_fields() -> None:
    # The documentation's examples: field 1 = 150; field 2 = "testing";
    # field 3 = embedded {1: 150}; field 4 packed [3, 270, 86942].
    assert Message().uint64(1, 150).to_bytes().hex() == "089601"
    assert Message().string(2, "testing").to_bytes().hex() == "120774657374696e67"
    assert Message().message(3, Message().uint64(1, 150)).to_bytes().hex() == "1a03089601"
    assert Message().packed(4, [3, 270, 86942]).to_bytes().hex() == "2206038e029ea705"
    # proto3 defaults are not written; empty embedded messages and repeated strings are.
    assert Message().uint64(1, 0).flag(2, False).string(3, "").packed(4, []).to_bytes() == b""
    assert Message().message(3, Message()).to_bytes().hex() == "1a00"
    assert Message().string(6, "", always=True).to_bytes().hex() == "3200"
    assert Message().flag(7, True).to_bytes().hex() == "3801"
    assert Message().uint64(536870911, 1).to_bytes().hex() == "f8ffffff0f01"
    with pytest.raises(ValueError):
        Message().uint64(0, 1)


def test_wire_decodes_with_protobuf(pb2: ModuleType) -> None:
    label = Message().int64(1, 5).int64(3, -7)
    sample = (Message().packed(1, [1, 2**64 - 1]).packed(2, [0, -1, 2**63 - 1])
              .message(3, label))
    decoded = pb2.Sample()
    decoded.ParseFromString(sample.to_bytes())
    assert list(decoded.location_id) == [1, 2**64 - 1]
    assert list(decoded.value) == [0, -1, 2**63 - 1]
    assert decoded.label[0].key == 5 and decoded.label[0].num == -7


# --- the exporter -----------------------------------------------------------------------


def _summary() -> ProfileSummary:
    return ProfileSummary(pid=4242, process_name="app", cmdline=f"{EXE} --fast",
                          start_time=1_700_000_000.25, end_time=1_700_000_002.75,
                          duration_s=2.5, cpu_freq=499, cpu_source="perf",
                          end_reason="duration", counters={})


def _locations() -> dict[int, Location]:
    def frame(function: str, file: str | None, line: int | None,
              module: str = EXE) -> FrameInfo:
        return FrameInfo(function, file, line, module)

    return {
        # The sampled address: two functions inlined into app::work.
        10: Location(10, BIAS + 0x1234, 0x1234, EXE, "ab" * 20, (
            frame("core::iter::range::Step::forward_unchecked", "/rustc/range.rs", 213),
            frame("core::iter::range::<impl Iterator>::next", "/rustc/range.rs", 857),
            frame("app::work", "src/main.rs", 12))),
        11: Location(11, BIAS + 0x2000, 0x2000, EXE, "ab" * 20, (
            frame("app::main", "src/main.rs", 30),)),
        # libc without line info; loaded high (negative as stored).
        12: Location(12, HIGH + 0x99 - 2**64, 0x99, LIBC, "cd" * 20, (
            frame("__libc_start_main", None, None, LIBC),)),
        # An address no symbol covered.
        13: Location(13, BIAS + 0x3000, 0x3000, EXE, "ab" * 20, (
            frame("app+0x3000", None, None),)),
    }


def cpu_set() -> StackSet:
    stacks = [
        WeightedStack((10, 11, 12), [7, 7 * 2_004_008], "worker-1"),
        WeightedStack((10, 11, 12), [3, 3 * 2_004_008], "worker-2"),
        WeightedStack((13, 11, 12), [1, 2_004_008], "4711"),
        WeightedStack((), [2, 2 * 2_004_008], "worker-1"),  # no stack
    ]
    sset = StackSet(CPU, CPU_VALUES, stacks, _locations(), _summary(), Selection(),
                    period_ns=2_004_008)
    sset.totals = [13, 13 * 2_004_008]
    return sset


def heap_set() -> StackSet:
    stacks = [WeightedStack((10, 11, 12), [100, 409_600, 100, 409_600]),
              WeightedStack((11, 12), [5, 50, 0, 0])]
    return StackSet(HEAP, HEAP_VALUES, stacks, _locations(), _summary(), Selection(since_s=1.0))


def decode(pb2: ModuleType, sset: StackSet) -> Any:
    buf = io.BytesIO()
    write_pprof(sset, buf)
    profile = pb2.Profile()
    profile.ParseFromString(gzip.decompress(buf.getvalue()))
    return profile


def _names(p: Any, location: Any) -> list[tuple[str, str, int]]:
    functions = {f.id: f for f in p.function}
    s = p.string_table
    return [(s[functions[ln.function_id].name], s[functions[ln.function_id].filename], ln.line)
            for ln in location.line]


def test_inlined_frames_are_lines_innermost_first(pb2: ModuleType) -> None:
    p = decode(pb2, cpu_set())
    locations = {loc.id: loc for loc in p.location}
    leaf = locations[p.sample[1].location_id[0]]  # samples[0] is the one without a stack
    assert _names(p, leaf) == [
        ("core::iter::range::Step::forward_unchecked", "/rustc/range.rs", 213),
        ("core::iter::range::<impl Iterator>::next", "/rustc/range.rs", 857),
        ("app::work", "src/main.rs", 12),
    ]
    assert leaf.address == BIAS + 0x1234
    # Leaf first, caller last, in every sample.
    for sample in p.sample:
        names = [_names(p, locations[i])[-1][0] for i in sample.location_id]
        assert names in (["app::work", "app::main", "__libc_start_main"],
                         ["app+0x3000", "app::main", "__libc_start_main"], [NO_STACK])


def test_cpu_profile_fields(pb2: ModuleType) -> None:
    p = decode(pb2, cpu_set())
    s = list(p.string_table)
    assert s[0] == ""
    assert len(s) == len(set(s))
    assert [(s[v.type], s[v.unit]) for v in p.sample_type] == list(CPU_VALUES)
    assert s[p.default_sample_type] == "cpu"
    assert (s[p.period_type.type], s[p.period_type.unit], p.period) == (
        "cpu", "nanoseconds", 2_004_008)
    assert p.time_nanos == 1_700_000_000_250_000_000
    assert p.duration_nanos == 2_500_000_000
    assert [s[c] for c in p.comment] == [f"rsprof cpu profile of pid 4242: {EXE} --fast"]
    assert [list(x.value) for x in p.sample] == [
        [2, 2 * 2_004_008], [7, 7 * 2_004_008], [3, 3 * 2_004_008], [1, 2_004_008]]
    threads = [[(s[lb.key], s[lb.str]) for lb in x.label] for x in p.sample]
    assert threads == [[("thread", "worker-1")], [("thread", "worker-1")],
                       [("thread", "worker-2")], [("thread", "4711")]]
    # One function per (name, file); no system names (rsprof keeps no mangled names,
    # and pprof takes a system_name equal to the name for one it could not demangle,
    # and shortens it: every `<T as Display>::fmt` became `::fmt`); ids resolve.
    assert len({(f.name, f.filename) for f in p.function}) == len(p.function) == 7
    assert all(f.system_name == 0 and f.start_line == 0 for f in p.function)
    assert sorted(loc.id for loc in p.location) == list(range(1, 6))


def test_mappings(pb2: ModuleType) -> None:
    p = decode(pb2, cpu_set())
    s = p.string_table
    assert [s[m.filename] for m in p.mapping] == [EXE, LIBC]  # the executable first
    exe, libc = p.mapping
    assert (exe.id, s[exe.build_id], exe.memory_start, exe.memory_limit, exe.file_offset) == (
        1, "ab" * 20, BIAS, BIAS + 0x3001, 0)
    assert exe.has_functions and exe.has_filenames and exe.has_line_numbers
    assert exe.has_inline_frames
    assert (libc.id, s[libc.build_id], libc.memory_start, libc.memory_limit) == (
        2, "cd" * 20, HIGH, HIGH + 0x9A)
    assert libc.has_functions and not libc.has_filenames and not libc.has_line_numbers
    by_address = {loc.address: loc for loc in p.location}
    assert by_address[HIGH + 0x99].mapping_id == 2  # stored negative, written unsigned
    no_stack = [loc for loc in p.location if loc.mapping_id == 0]
    assert len(no_stack) == 1 and _names(p, no_stack[0]) == [(NO_STACK, "", 0)]


def test_recorded_mappings_are_written_as_they_were(pb2: ModuleType) -> None:
    """Locations that carry their mapping (start, end, file offset, as recorded from
    /proc/PID/maps) get exactly that mapping: one per (module, mapping)."""
    sset = cpu_set()
    exe_map = Mapping(BIAS + 0x1140, BIAS + 0x9000, 0x140)
    libc_map = Mapping(HIGH, HIGH + 0x1000, 0x26000)
    sset.locations = {lid: replace(loc, mapping=libc_map if loc.module == LIBC else exe_map)
                      for lid, loc in sset.locations.items()}
    p = decode(pb2, sset)
    s = p.string_table
    assert [(s[m.filename], m.memory_start, m.memory_limit, m.file_offset) for m in p.mapping] == [
        (EXE, BIAS + 0x1140, BIAS + 0x9000, 0x140), (LIBC, HIGH, HIGH + 0x1000, 0x26000)]
    for loc in p.location:
        if loc.mapping_id:
            m = p.mapping[loc.mapping_id - 1]
            assert m.memory_start <= loc.address < m.memory_limit


def test_cpu_time_is_each_samples_own_and_an_estimate_says_so(pb2: ModuleType) -> None:
    """The cpu values are what the samples stand for (here 4 ms each for one thread,
    1 ms for another); period is their mean. A profile without periods says its
    nanoseconds are an estimate."""
    sset = cpu_set()
    sset.stacks = [WeightedStack((10, 11, 12), [3, 12_000_000], "worker-1"),
                   WeightedStack((10, 11, 12), [2, 2_000_000], "worker-2")]
    sset.totals = [5, 14_000_000]
    p = decode(pb2, sset)
    assert sorted(list(x.value) for x in p.sample) == [[2, 2_000_000], [3, 12_000_000]]
    assert p.period == 2_800_000
    assert not any("estimated" in p.string_table[c] for c in p.comment)
    sset.cpu_estimated = True
    p = decode(pb2, sset)
    assert any("estimated" in p.string_table[c] for c in p.comment)


def test_heap_profile_fields(pb2: ModuleType) -> None:
    p = decode(pb2, heap_set())
    s = p.string_table
    assert [(s[v.type], s[v.unit]) for v in p.sample_type] == list(HEAP_VALUES)
    assert s[p.default_sample_type] == "inuse_space"
    assert (s[p.period_type.type], s[p.period_type.unit], p.period) == ("space", "bytes", 1)
    assert all(not x.label for x in p.sample)
    assert sorted(list(x.value) for x in p.sample) == [[5, 50, 0, 0], [100, 409_600, 100, 409_600]]
    assert [s[c] for c in p.comment][1:] == ["selection: 1s..end"]
    assert "[no stack]" not in s


def test_output_is_deterministic() -> None:
    one, two = io.BytesIO(), io.BytesIO()
    write_pprof(cpu_set(), one)
    shuffled = cpu_set()
    shuffled.stacks.reverse()
    shuffled.locations = dict(reversed(shuffled.locations.items()))
    write_pprof(shuffled, two)
    assert one.getvalue() == two.getvalue()
    assert one.getvalue()[:2] == b"\x1f\x8b" and one.getvalue()[4:8] == b"\0\0\0\0"
    assert gzip.decompress(one.getvalue()) == encode_profile(cpu_set())


def test_written_to_a_named_file_carries_no_name(tmp_path: Path) -> None:
    path = tmp_path / "profile.pb.gz"
    with path.open("wb") as f:
        write_pprof(cpu_set(), f)
    buf = io.BytesIO()
    write_pprof(cpu_set(), buf)
    assert path.read_bytes() == buf.getvalue()


def test_empty_profile(pb2: ModuleType) -> None:
    sset = StackSet(CPU, CPU_VALUES, [], {}, _summary(), Selection(), period_ns=2_004_008)
    p = decode(pb2, sset)
    assert p.string_table[0] == ""
    assert not p.sample and not p.location and not p.mapping and not p.function
