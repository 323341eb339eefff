"""SAMPLE_REGS for real: the shim's SIGPROF self-sampler, asked for stack bytes
(header.sampler_stack_bytes), sends the interrupted registers and a copy of the
top of the interrupted thread's stack, for a CFI unwinder in the reader.

A Rust target (frame pointers on, tests/targets) runs with librsprof_shim.so
preloaded into a region made by rsprof.recording.heap_region; the region is big
enough to hold the whole run, so once the target exited the same bytes are read
by rsprof.shm_reference (a copy of them) and by _ring (the region itself)."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rsprof import _ring, _unwind
from rsprof import shm_reference as ref
from rsprof.recording.heap_region import SHM_DIR, Region, create_region
from rsprof.shim import shim_path
from tests.integration.test_sampler_stack import HANDLER, HANDLER_BUDGET, RUST_SIGSTKSZ
from tests.unit.test_sample_regs_records import counted, expected

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm")]

ASKED = 16384
HZ = 199
FIXED = 64  # the fixed part of a SAMPLE_REGS record


def procmap_query_works() -> bool:
    """The kernel answers PROCMAP_QUERY (Linux 6.11), which the shim uses to cut the
    copy at the end of the stack's mapping."""
    with open("/proc/self/maps", "rb") as fh:
        addr = int(fh.readline().split(b"-")[0], 16)
        query = bytearray(104)
        struct.pack_into("<QQQ", query, 0, 104, 0, addr)
        try:
            fcntl.ioctl(fh.fileno(), 0xC0686611, query, True)
        except OSError:
            return False
    vma_start: int = struct.unpack_from("<Q", query, 24)[0]
    return vma_start == addr


def preload_env(region: Region) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ref.ENV)}
    env["LD_PRELOAD"] = str(shim_path())
    env[ref.ENV] = region.name
    return env


def read_maps(pid: int) -> list[tuple[int, int]]:
    out = []
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            lo, hi = line.split()[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def raw_records(ring: bytes, tail: int, reserve: int) -> list[tuple[int, bytes]]:
    """(type, record bytes) of every committed record in ring bytes from tail."""
    out = []
    size_mask = len(ring) - 1
    doubled = ring + ring
    pos = tail
    while pos < reserve:
        word = struct.unpack_from("<Q", doubled, pos & size_mask)[0]
        if word == 0:
            break
        size = _ring.record_size(word)
        assert size >= 8 and size % 8 == 0, hex(word)
        at = pos & size_mask
        out.append((word >> _ring.REC_TYPE_SHIFT, doubled[at:at + size]))
        pos += size
    return out


Action = Callable[[Region, int], None]


@dataclass
class SampledRun:
    pid: int
    records: list[ref.Record]  # shm_reference's decoding
    raw: list[tuple[int, bytes]]  # the same records, undecoded
    reference_malformed: int
    heap: _ring.HeapDecoder  # _ring's decoding of the same bytes
    cpu: _ring.PerfDecoder
    table: _unwind.StackTable
    ring_malformed: int
    maps: list[tuple[int, int]]  # the target's mappings while it ran
    dropped: int

    def regs(self) -> list[ref.SampleRegsRecord]:
        return [r for r in self.records if isinstance(r, ref.SampleRegsRecord)]

    def plain(self) -> list[ref.SampleRecord]:
        return [r for r in self.records if isinstance(r, ref.SampleRecord)]

    def tid_of(self, name: str) -> int:
        return next(r.tid for r in self.records
                    if isinstance(r, ref.ThreadRecord) and r.name == name)


def run_sampled(binary: Path, *args: str, stack_bytes: int, ring_bytes: int = 32 << 20,
                during: list[tuple[float, Action]] | None = None) -> SampledRun:
    """Run `binary` under the shim with self-sampling at HZ and `stack_bytes`, read
    nothing while it runs (the ring holds it all), then decode what it wrote.
    `during`: (seconds after "ready", callable(region, pid)) done while it runs."""
    region = create_region(ring_bytes=ring_bytes, self_sample_hz=HZ,
                           sampler_stack_bytes=stack_bytes)
    proc = subprocess.Popen([str(binary), *args], env=preload_env(region),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready")
        start = time.monotonic()
        maps: list[tuple[int, int]] = []
        for at, action in sorted(during or [], key=lambda x: x[0]):
            time.sleep(max(0.0, start + at - time.monotonic()))
            if not maps:
                maps = read_maps(proc.pid)  # the worker threads run by now
            action(region, proc.pid)
        if not maps:
            time.sleep(0.4)
            maps = read_maps(proc.pid)
        assert proc.wait(timeout=60) == 0
        data = bytearray((SHM_DIR / region.name).read_bytes())
        reader = ref.ShmReader.from_buffer(bytearray(data))
        hdr = reader.header()
        assert hdr["reserve"] < ring_bytes, "the ring wrapped: make it bigger"
        ring = bytes(data[ref.HEADER_BYTES:ref.HEADER_BYTES + ring_bytes])
        raw = raw_records(ring, hdr["tail"], hdr["reserve"])
        records = reader.drain()
        table = _unwind.StackTable()
        heap = _ring.HeapDecoder(table)
        cpu = _ring.PerfDecoder(table, proc.pid, 0, 1 << 62)
        heap.cpu = cpu
        region.ring.drain(heap)
        return SampledRun(proc.pid, records, raw, reader.counters.malformed, heap, cpu, table,
                          region.ring.malformed, maps, hdr["dropped"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        region.ring.detach()
        region.ring.close()
        region.unlink()


@pytest.fixture(scope="module")
def regs_run(targets: Path) -> SampledRun:
    return run_sampled(targets / "cpu_split", "--seconds", "1.5", "--threads", "1",
                       stack_bytes=ASKED)


def test_sample_regs_carry_the_registers_and_the_stack(regs_run: SampledRun) -> None:
    regs = regs_run.regs()
    assert len(regs) >= 30, Counter(type(r).__name__ for r in regs_run.records)
    assert regs_run.plain() == []  # every sample carries the copy
    assert regs_run.reference_malformed == 0 and regs_run.dropped == 0
    worker = regs_run.tid_of("split-0")
    tids = Counter(r.tid for r in regs)
    assert set(tids) <= {worker, regs_run.pid}, tids
    assert tids[worker] >= 0.9 * len(regs), tids  # the worker burns the CPU
    chained = 0
    for r in regs:
        assert r.frames and r.frames[0] == r.ip, r
        assert 0 < len(r.stack) <= ASKED, (hex(r.sp), len(r.stack))
        if len(r.frames) < 2:
            continue
        assert r.sp <= r.fp, (hex(r.sp), hex(r.fp))
        # The copy is the stack: the frame records the handler walked are in it.
        chained += chain_in_copy(r) >= 1
    # Frame pointers are on: nearly every sample has its caller's frame in the copy.
    assert chained >= 0.8 * len(regs), (chained, len(regs))


def test_records_are_sized_for_what_was_asked(regs_run: SampledRun) -> None:
    sizes: Counter[int] = Counter()
    for rtype, rec in regs_run.raw:
        if rtype == _ring.REC_SAMPLE_REGS:
            depth, = struct.unpack_from("<I", rec, 12)
            stack_bytes, = struct.unpack_from("<Q", rec, 56)
            assert stack_bytes <= ASKED
            sizes[len(rec) - FIXED - 8 * depth] += 1
    assert list(sizes) == [ASKED], sizes


def test_the_copy_stops_at_the_end_of_the_stack_mapping(regs_run: SampledRun) -> None:
    """Never past the mapping that holds sp (the thread's stack), even where the
    mapping above it is readable (a Rust worker's stack mapping ends ~6 KiB above
    its sp, and here an anonymous mapping starts right there)."""
    exact = procmap_query_works()
    cut = 0
    for r in regs_run.regs():
        hi = next(hi for lo, hi in regs_run.maps if lo <= r.sp < hi)
        if exact:
            assert len(r.stack) == min(ASKED, hi - r.sp), (hex(r.sp), hex(hi), len(r.stack))
        else:  # without PROCMAP_QUERY only the first unreadable page stops it
            assert len(r.stack) <= ASKED
        cut += len(r.stack) < ASKED
    if exact:
        assert cut > 0  # the bound was exercised, not only the size asked


def test_ring_and_reference_read_the_same_samples(regs_run: SampledRun) -> None:
    regs = regs_run.regs()
    assert regs_run.heap.self_samples == len(regs)
    assert regs_run.heap.malformed == 0 and regs_run.ring_malformed == 0
    assert regs_run.cpu.samples == len(regs) and regs_run.cpu.malformed == 0
    assert counted(regs_run.cpu, regs_run.table) == expected(regs)


def chain_in_copy(r: ref.SampleRegsRecord) -> int:
    """Follow the frame-pointer chain through the copied bytes: each frame record
    (saved fp, return address) the handler walked is there, and the handler stores
    the return address as it read it. Returns how many frames were found so."""
    fp, found = r.fp, 0
    for k in range(1, len(r.frames)):
        off = fp - r.sp
        if off + 16 > len(r.stack):
            break
        saved_fp, ret = struct.unpack_from("<QQ", r.stack, off)
        assert ret == r.frames[k], (k, hex(ret), [hex(f) for f in r.frames])
        found += 1
        fp = saved_fp
    return found


class WrapSpy(ref.ShmReader):
    """A reference reader that notes the SAMPLE_REGS whose copied stack bytes
    straddle the end of the ring (written through two iovecs)."""

    wrapped: list[ref.SampleRegsRecord]
    _pos = 0

    def _read(self, pos: int, n: int) -> bytes:
        self._pos = pos - 8  # the record's position
        return super()._read(pos, n)

    def _decode(self, rtype: int, word: int, body: bytes) -> ref.Record | None:
        rec = super()._decode(rtype, word, body)
        if isinstance(rec, ref.SampleRegsRecord):
            area = (self._pos + FIXED + 8 * len(rec.frames)) & self.mask
            if area + len(rec.stack) > self.ring_size:
                self.wrapped.append(rec)
        return rec


def drain_until_exit(proc: subprocess.Popen[str], reader: ref.ShmReader) -> list[ref.Record]:
    """Every record the region holds by the time `proc` has exited, drained as it runs."""
    records: list[ref.Record] = []
    while proc.poll() is None:
        got = reader.drain()
        records.extend(got)
        if not got:
            time.sleep(0.002)
    records.extend(reader.drain())
    return records


def test_copies_that_wrap_the_ring_end_are_intact(targets: Path) -> None:
    """A ring of 64 KiB, drained while the target runs: records of ~16.5 KiB wrap its
    end all the time, and the copy then goes through two iovecs."""
    region = create_region(ring_bytes=1 << 16, self_sample_hz=HZ, sampler_stack_bytes=ASKED)
    reader = WrapSpy.open(region.name)
    assert isinstance(reader, WrapSpy)
    reader.wrapped = []
    proc = subprocess.Popen([str(targets / "cpu_split"), "--seconds", "1.5", "--threads", "1"],
                            env=preload_env(region), stdout=subprocess.PIPE, text=True)
    try:
        records = drain_until_exit(proc, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.close()
        region.ring.detach()
        region.ring.close()
        region.unlink()
    assert proc.returncode == 0
    regs = [r for r in records if isinstance(r, ref.SampleRegsRecord)]
    assert len(regs) >= 30 and reader.counters.malformed == 0
    assert reader.counters.bytes_consumed > 10 * (1 << 16)
    assert len(reader.wrapped) >= 3, len(reader.wrapped)
    deep = sum(chain_in_copy(r) >= 1 for r in reader.wrapped)
    assert deep >= 0.8 * len(reader.wrapped), (deep, len(reader.wrapped))
    assert sum(chain_in_copy(r) >= 1 for r in regs) >= 0.8 * len(regs)


def test_without_stack_bytes_plain_samples_come_as_before(targets: Path) -> None:
    run = run_sampled(targets / "cpu_split", "--seconds", "1", "--threads", "1",
                      stack_bytes=0)
    plain = run.plain()
    assert len(plain) >= 20 and run.regs() == []
    assert all(r.frames[0] != 0 and r.tid == run.tid_of("split-0") for r in plain)
    assert run.heap.self_samples == len(plain) and run.heap.malformed == 0
    assert counted(run.cpu, run.table) == expected(plain)


def test_the_reader_turns_the_copy_on_and_the_shim_clamps_it(targets: Path) -> None:
    """attach(..., sampler_stack_bytes) and the ShmRing property switch a running
    sampler; the shim clamps to SAMPLER_MAX_STACK_BYTES and rounds down to 8."""
    def attach(region: Region, pid: int) -> None:
        region.ring.attach(os.getpid(), HZ, _ring.SAMPLER_MAX_STACK_BYTES + 4001)

    def lower(region: Region, pid: int) -> None:
        region.ring.sampler_stack_bytes = 1005

    run = run_sampled(targets / "cpu_split", "--seconds", "2.4", "--threads", "1",
                      stack_bytes=0, ring_bytes=64 << 20,
                      during=[(0.6, attach), (1.4, lower)])
    phases: list[object] = []
    for rtype, rec in run.raw:
        if rtype == _ring.REC_SAMPLE:
            phase: object = "plain"
        elif rtype == _ring.REC_SAMPLE_REGS:
            depth, = struct.unpack_from("<I", rec, 12)
            phase = len(rec) - FIXED - 8 * depth
        else:
            continue
        if not phases or phases[-1] != phase:
            phases.append(phase)
    assert phases == ["plain", _ring.SAMPLER_MAX_STACK_BYTES, 1000], phases
    assert run.heap.malformed == 0 and run.heap.self_samples == len(run.plain()) + len(run.regs())
    assert all(len(r.stack) <= _ring.SAMPLER_MAX_STACK_BYTES for r in run.regs())


def test_the_copy_path_is_in_the_checked_handler() -> None:
    """test_sampler_stack.py's PLT check covers what on_sigprof reaches: the copy's
    functions are among them (so a libc call there would be caught)."""
    if shutil.which("objdump") is None or os.uname().machine != "x86_64":
        pytest.skip("objdump on x86-64 needed")
    from tests.integration.test_sampler_stack import reachable_from

    reached = reachable_from(shim_path(), HANDLER)
    assert {"rsprof__slot_reserve_nowait", "rsprof__slot_iov", "rsprof__slot_commit",
            "stack_map_end"} <= reached, sorted(reached)


# -- the handler's stack use with the largest copy ----------------------------------


@pytest.fixture
def drained_region() -> Iterator[tuple[Region, ref.ShmReader]]:
    region = create_region(ring_bytes=32 << 20, self_sample_hz=999,
                           sampler_stack_bytes=_ring.SAMPLER_MAX_STACK_BYTES)
    reader = ref.ShmReader.open(region.name)
    yield region, reader
    reader.close()
    region.ring.detach()
    region.ring.close()
    region.unlink()


def test_handler_stack_use_is_bounded_with_the_largest_copy(
        altstack_probe: Path, drained_region: tuple[Region, ref.ShmReader]) -> None:
    """test_sampler_stack.py's bound, with every sample copying 64 KiB of stack:
    the copy goes from the stack to the ring, never through the handler's stack."""
    region, reader = drained_region
    proc = subprocess.Popen([str(altstack_probe), "--seconds", "2", "--threads", "1"],
                            env=preload_env(region), stdout=subprocess.PIPE, text=True)
    try:
        records = drain_until_exit(proc, reader)
        assert proc.stdout is not None
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    regs = [r for r in records if isinstance(r, ref.SampleRegsRecord)]
    assert len(regs) >= 100, Counter(type(r).__name__ for r in records)
    assert not any(isinstance(r, ref.SampleRecord) for r in records)
    assert max(len(r.stack) for r in regs) > 4096  # copies bigger than the whole altstack
    rows = [dict(kv.split("=") for kv in line.split())
            for line in out.splitlines() if line.startswith("thread=")]
    assert len(rows) == 2, out
    for row in rows:
        size, minsig = int(row["size"]), int(row["minsigstksz"])
        baseline, deepest = int(row["baseline"]), int(row["deepest"])
        assert size == max(RUST_SIGSTKSZ, minsig)
        handler = deepest - baseline
        assert 0 < handler <= HANDLER_BUDGET, (
            f"the SIGPROF handler used {handler} bytes of the alternate stack beyond the "
            f"kernel's frame ({baseline} bytes here) with 64 KiB copies; budget "
            f"{HANDLER_BUDGET}: {row}")
    print(f"handler stack use with 64 KiB copies: "
          f"{[int(r['deepest']) - int(r['baseline']) for r in rows]}", file=sys.stderr)
