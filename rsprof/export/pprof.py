"""Export a `StackSet` as a pprof profile (gzipped profile.proto).

The format read by `go tool pprof`, Pyroscope, Parca and most profile
viewers (schema: github.com/google/pprof, proto/profile.proto). Encoded with
rsprof's own wire encoder (`protobuf_wire`); no protobuf runtime needed.

What goes where:
  - sample_type: the StackSet's value types; default_sample_type "cpu" for
    CPU profiles and "inuse_space" for heap profiles.
  - Sample: one per WeightedStack, location ids leaf first, its values, and
    for CPU a string label "thread" (the thread's name, or its tid). CPU
    nanoseconds are what the samples stand for, each its own period (a
    self-sampler signal at the kernel tick stands for several timer
    intervals); a profile recorded without periods gets samples * 1e9 / Hz and
    a comment that says it is an estimate.
  - Location: one per sampled address, with the address as unsigned 64-bit
    and one Line per frame of its chain, innermost (inlined) first and the
    real function last, as pprof expects.
  - Function: one per distinct (function, file). `name` is rsprof's demangled
    name; `system_name` is left empty (the profile keeps no mangled names): a
    system_name equal to the name makes pprof take it for a mangled one it
    cannot demangle and shorten it, so every `<T as Display>::fmt` became
    `::fmt`, one function.
  - Mapping: one per executable mapping that holds a sampled address, as
    /proc/PID/maps had it (memory_start, memory_limit, file_offset, the file
    and its build id; per recording with `--append`); mapping[0] is the main
    executable. So `go tool pprof -symbolize=local:force` re-symbolizes the
    same functions from the file. Symbols are already resolved, so
    has_functions etc. tell pprof not to symbolize again. A profile recorded
    before mappings were stored gets one per module and load bias instead
    (memory_start = address - rel_address, file_offset 0, memory_limit just
    past the highest sampled address).

The output is deterministic: the same StackSet gives the same bytes (the
gzip header carries no time stamp or file name).
"""

from __future__ import annotations

import gzip
import math
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

from rsprof.export.protobuf_wire import Message, varint
from rsprof.export.stacks import CPU, FrameInfo, Location, StackSet, WeightedStack

_U64 = 0xFFFF_FFFF_FFFF_FFFF
NO_STACK = "[no stack]"

# Unresolved frames are named "module+0xoffset" (see stacks._locations and
# docs/schema.md, frames.resolved = 0).
_UNRESOLVED = re.compile(r"\+0x[0-9a-fA-F]+$")

# Field numbers of profile.proto.
_PROFILE_SAMPLE_TYPE, _PROFILE_SAMPLE, _PROFILE_MAPPING, _PROFILE_LOCATION = 1, 2, 3, 4
_PROFILE_FUNCTION, _PROFILE_STRING_TABLE = 5, 6
_PROFILE_TIME_NANOS, _PROFILE_DURATION_NANOS, _PROFILE_PERIOD_TYPE = 9, 10, 11
_PROFILE_PERIOD, _PROFILE_COMMENT, _PROFILE_DEFAULT_SAMPLE_TYPE = 12, 13, 14
_VALUE_TYPE_TYPE, _VALUE_TYPE_UNIT = 1, 2
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE, _SAMPLE_LABEL = 1, 2, 3
_LABEL_KEY, _LABEL_STR = 1, 2
_MAPPING_ID, _MAPPING_START, _MAPPING_LIMIT, _MAPPING_OFFSET = 1, 2, 3, 4
_MAPPING_FILENAME, _MAPPING_BUILD_ID = 5, 6
_MAPPING_HAS_FUNCTIONS, _MAPPING_HAS_FILENAMES = 7, 8
_MAPPING_HAS_LINE_NUMBERS, _MAPPING_HAS_INLINE_FRAMES = 9, 10
_LOCATION_ID, _LOCATION_MAPPING_ID, _LOCATION_ADDRESS, _LOCATION_LINE = 1, 2, 3, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_FUNCTION_ID, _FUNCTION_NAME, _FUNCTION_SYSTEM_NAME, _FUNCTION_FILENAME = 1, 2, 3, 4

DEFAULT_SAMPLE_TYPE = {CPU: "cpu"}  # anything else (heap): "inuse_space"


class _Strings:
    """The string table: index 0 is "" as the format requires."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.table)
            self.table.append(text)
        return i


@dataclass(slots=True)
class _Mapping:
    module: str
    build_id: str
    bias: int               # memory_start (no stored mapping: the load bias)
    limit: int = 0          # memory_limit of a stored mapping (0: none stored)
    file_offset: int = 0
    low: int = _U64
    high: int = 0
    has_functions: bool = False
    has_filenames: bool = False
    has_line_numbers: bool = False
    id: int = 0


def _unsigned(address: int) -> int:
    return address & _U64


def _resolved(frame: FrameInfo) -> bool:
    return bool(frame.file) or not _UNRESOLVED.search(frame.function)


def _is_main(module: str, sset: StackSet) -> bool:
    argv0 = sset.summary.cmdline.split(" ", 1)[0] if sset.summary.cmdline else ""
    if argv0 and module == argv0:
        return True
    name = sset.summary.process_name
    # comm is the executable's name cut to 15 characters.
    return bool(name) and name != "?" and os.path.basename(module)[:15] == name[:15]


def _mappings(sset: StackSet, locations: list[Location]) -> dict[int, _Mapping]:
    """Location id (rsprof's) -> its mapping, ids assigned (main executable first)."""
    by_key: dict[tuple[str, str, int, int, int], _Mapping] = {}
    of_location: dict[int, _Mapping] = {}
    for loc in locations:
        address = _unsigned(loc.address)
        if loc.mapping is not None:  # as /proc/PID/maps had it
            key = (loc.module, loc.build_id, loc.mapping.start, loc.mapping.end,
                   loc.mapping.file_offset)
        else:  # an older profile: the load bias
            key = (loc.module, loc.build_id, (address - loc.rel_address) & _U64, 0, 0)
        m = by_key.get(key)
        if m is None:
            m = by_key[key] = _Mapping(*key)
        m.low = min(m.low, address)
        m.high = max(m.high, address)
        m.has_functions |= any(_resolved(f) for f in loc.frames)
        m.has_filenames |= any(bool(f.file) for f in loc.frames)
        m.has_line_numbers |= any(bool(f.line) for f in loc.frames)
        of_location[loc.id] = m
    ordered = sorted(by_key.values(),
                     key=lambda m: (not _is_main(m.module, sset), m.module, m.bias, m.build_id))
    for i, m in enumerate(ordered, 1):
        m.id = i
    return of_location


def _nanoseconds(unix_time: float) -> int:
    # Whole seconds apart: start_time * 1e9 would round to a multiple of 256 ns.
    seconds = math.floor(unix_time)
    return seconds * 1_000_000_000 + round((unix_time - seconds) * 1e9)


def _sort_key(ws: WeightedStack) -> tuple[tuple[int, ...], str, list[int]]:
    return ws.locations, ws.thread, ws.values


def encode_profile(sset: StackSet) -> bytes:
    """The (uncompressed) profile.proto message of `sset`."""
    strings = _Strings()
    profile = Message()

    for type_, unit in sset.value_types:
        profile.message(_PROFILE_SAMPLE_TYPE, Message()
                        .int64(_VALUE_TYPE_TYPE, strings(type_))
                        .int64(_VALUE_TYPE_UNIT, strings(unit)))

    locations = [sset.locations[i] for i in sorted(sset.locations)]
    pprof_id = {loc.id: i for i, loc in enumerate(locations, 1)}
    mapping_of = _mappings(sset, locations)
    stacks = sorted(sset.stacks, key=_sort_key)

    functions: dict[tuple[str, str], int] = {}
    function_msgs: list[Message] = []

    def function_id(name: str, file: str) -> int:
        fid = functions.get((name, file))
        if fid is None:
            fid = functions[(name, file)] = len(functions) + 1
            # No system_name: rsprof keeps no mangled names (see the module doc).
            function_msgs.append(Message()
                                 .uint64(_FUNCTION_ID, fid)
                                 .int64(_FUNCTION_NAME, strings(name))
                                 .int64(_FUNCTION_FILENAME, strings(file)))
        return fid

    location_msgs: list[Message] = []
    for loc in locations:
        msg = (Message()
               .uint64(_LOCATION_ID, pprof_id[loc.id])
               .uint64(_LOCATION_MAPPING_ID, mapping_of[loc.id].id)
               .uint64(_LOCATION_ADDRESS, _unsigned(loc.address)))
        for frame in loc.frames:  # innermost (inlined) first; the last is the caller
            msg.message(_LOCATION_LINE, Message()
                        .uint64(_LINE_FUNCTION_ID, function_id(frame.function, frame.file or ""))
                        .int64(_LINE_LINE, frame.line or 0))
        location_msgs.append(msg)

    # Samples whose stack was lost or never symbolized still count, at "[no stack]".
    no_stack_id = 0
    if any(not ws.locations for ws in stacks):
        no_stack_id = len(locations) + 1
        location_msgs.append(Message()
                             .uint64(_LOCATION_ID, no_stack_id)
                             .message(_LOCATION_LINE, Message()
                                      .uint64(_LINE_FUNCTION_ID, function_id(NO_STACK, ""))))

    # Each stack's packed location ids, joined from the ids' encodings (the bulk of
    # the work for a big profile).
    encoded_id = {rsprof_id: varint(i) for rsprof_id, i in pprof_id.items()}
    no_stack = varint(no_stack_id)
    thread_key = strings("thread") if sset.kind == CPU else 0
    for ws in stacks:
        ids = b"".join([encoded_id[i] for i in ws.locations]) or no_stack
        sample = Message().blob(_SAMPLE_LOCATION_ID, ids).packed(_SAMPLE_VALUE, ws.values)
        if thread_key and ws.thread:
            sample.message(_SAMPLE_LABEL, Message()
                           .int64(_LABEL_KEY, thread_key)
                           .int64(_LABEL_STR, strings(ws.thread)))
        profile.message(_PROFILE_SAMPLE, sample)

    for m in sorted({m.id: m for m in mapping_of.values()}.values(), key=lambda m: m.id):
        if m.limit:
            start, limit = m.bias, m.limit
        else:
            start, limit = (m.bias if m.bias <= m.low else 0), min(m.high + 1, _U64)
        profile.message(_PROFILE_MAPPING, Message()
                        .uint64(_MAPPING_ID, m.id)
                        .uint64(_MAPPING_START, start)
                        .uint64(_MAPPING_LIMIT, limit)
                        .uint64(_MAPPING_OFFSET, m.file_offset)
                        .int64(_MAPPING_FILENAME, strings(m.module))
                        .int64(_MAPPING_BUILD_ID, strings(m.build_id))
                        .flag(_MAPPING_HAS_FUNCTIONS, m.has_functions)
                        .flag(_MAPPING_HAS_FILENAMES, m.has_filenames)
                        .flag(_MAPPING_HAS_LINE_NUMBERS, m.has_line_numbers)
                        # rsprof expands inline chains whenever it has the debug info.
                        .flag(_MAPPING_HAS_INLINE_FRAMES, m.has_filenames))
    for msg in location_msgs:
        profile.message(_PROFILE_LOCATION, msg)
    for msg in function_msgs:
        profile.message(_PROFILE_FUNCTION, msg)

    summary = sset.summary
    profile.int64(_PROFILE_TIME_NANOS, _nanoseconds(summary.start_time))
    profile.int64(_PROFILE_DURATION_NANOS, round(summary.duration_s * 1e9))
    if sset.kind == CPU:
        # The mean CPU time a sample stands for (the nominal 1e9 / Hz without samples).
        samples, ns = sset.totals[:2] if len(sset.totals) >= 2 else (0, 0)
        period_type = ("cpu", "nanoseconds")
        period = round(ns / samples) if samples else sset.period_ns
    else:
        period_type, period = ("space", "bytes"), 1  # exact: every allocation counted
    profile.message(_PROFILE_PERIOD_TYPE, Message()
                    .int64(_VALUE_TYPE_TYPE, strings(period_type[0]))
                    .int64(_VALUE_TYPE_UNIT, strings(period_type[1])))
    profile.int64(_PROFILE_PERIOD, period)
    comments = [f"rsprof {sset.kind} profile of pid {summary.pid}: "
                f"{summary.cmdline or summary.process_name}"]
    if not sset.selection.everything:
        comments.append(f"selection: {sset.selection.describe()}")
    if sset.kind != CPU and summary.heap_partial:  # never silently partial
        comments.append(summary.heap_partial)
    if sset.kind == CPU and sset.cpu_estimated:
        comments.append("cpu nanoseconds estimated as samples * 1e9 / rate: recorded without "
                        "sample periods (wrong where the sampler could not keep the rate)")
    profile.packed(_PROFILE_COMMENT, [strings(c) for c in comments])
    default = DEFAULT_SAMPLE_TYPE.get(sset.kind, "inuse_space")
    if any(t == default for t, _ in sset.value_types):
        profile.int64(_PROFILE_DEFAULT_SAMPLE_TYPE, strings(default))

    # Last, once every string has its index.
    for text in strings.table:
        profile.string(_PROFILE_STRING_TABLE, text, always=True)
    return profile.to_bytes()


def write_pprof(sset: StackSet, out: BinaryIO) -> None:
    """Write `sset` to `out` as a gzipped profile.proto (mtime 0: reproducible)."""
    out.write(gzip.compress(encode_profile(sset), compresslevel=6, mtime=0))
