"""The recording loop: drain perf rings, symbolize what is new, commit each interval."""

from __future__ import annotations

import os
import resource
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from rsprof import _ring, _unwind
from rsprof.duration import format_duration
from rsprof.errors import PermissionDenied, ProfileError, UsageError
from rsprof.recording.code_map import CodeMap
from rsprof.recording.heap_region import Region
from rsprof.recording.heap_unwind import UnwindTableFile
from rsprof.recording.own_allocator import record_finding
from rsprof.recording.perf_session import FP_STACK_BYTES, NullPerfSession, PerfSession
from rsprof.recording.process import (
    ProcessInfo,
    catches_signal,
    describe_exit,
    is_alive,
    process_identity,
    thread_name,
)
from rsprof.report.heap import human_bytes
from rsprof.report.profile_summary import partial_text
from rsprof.storage.writer import HEAP_ROWS_CHUNK, ProfileWriter, RecordingInfo
from rsprof.symbols.elf import read_elf_identity
from rsprof.symbols.model import ResolvedAddress
from rsprof.symbols.resolver import Symbolizer

STACK_CHUNK = 8192  # new stacks symbolized and stored at a time
# Per-stack heap rows (heap_sites, heap_counts) cost the reader ~2.7 us each. A program
# that changes more stacks than this per second (binary-trees: 131 k every second) gets
# its rows every few intervals instead of every one, so that writing them never takes
# more than a fraction of a core (docs/schema.md: heap_counts).
HEAP_ROWS_PER_S = 50_000
HEAP_BATCH_MAX = 65_536  # changed sites set aside at an interval boundary, at most


@dataclass(frozen=True, slots=True)
class RecordOptions:
    output: Path
    duration_s: float | None = None
    interval_s: float = 1.0
    cpu_freq: int = 99
    cpu_source: str = "auto"  # "auto" (perf, else self-sampling), "perf" or "self"
    unwind: str = "auto"  # "auto" (CFI, else frame pointers), "dwarf" (CFI only) or "fp"
    stack_bytes: int = 16384  # user stack copied per CPU sample for CFI unwinding
    append: bool = False
    progress: bool = True  # a progress line on status every interval (not under the TUI)
    cache_dir: Path | None = None
    handle_signals: bool = True  # SIGINT/SIGTERM stop it (main thread only)


@dataclass(frozen=True, slots=True)
class RecordResult:
    output: Path
    end_reason: str  # "duration" | "exited" | "interrupted"
    elapsed_s: float
    samples: int
    lost_records: int
    truncated_stacks: int
    unresolved_addresses: int
    threads: int


def _set_code_ranges(decoder: _ring.PerfDecoder, code: CodeMap, symbolizer: Symbolizer) -> None:
    """Tell the decoder where code is, which keeps no frame pointers, and its bytes;
    and its unwinder every module's unwind sections (built into rules lazily)."""
    decoder.set_code_ranges(code.ranges(symbolizer.mappings))
    if decoder.unwinder is not None:
        decoder.unwinder.set_modules(code.unwind_modules(symbolizer.mappings))


def _set_code_facts(decoder: _ring.PerfDecoder, code: CodeMap, symbolizer: Symbolizer) -> None:
    """Function bounds and call slots: what recovered return addresses are checked
    against (docs/attribution.md)."""
    decoder.set_code_facts(*code.facts(symbolizer.mappings))


def _build_id_of(pid: int) -> str | None:
    try:
        return read_elf_identity(f"/proc/{pid}/exe").build_id
    except (OSError, ValueError):
        return None


class Recorder:
    """Records one process into one profile file until it exits, time runs out or a signal."""

    def __init__(self, target: ProcessInfo, options: RecordOptions,
                 status: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 heap: Region | None = None,
                 child: subprocess.Popen[bytes] | None = None) -> None:
        self.target = target
        self.options = options
        self.heap = heap
        self.child = child
        self.heap_decoder: _ring.HeapDecoder | None = None
        self.status = status if status is not None else sys.stderr
        self.clock = clock
        self._stop_reason: str | None = None
        self.exit_code: int | None = None
        self.cpu_source = "perf"
        self.own_cpu_s = 0.0
        self.own_max_rss_kb = 0
        self._start_ns = 0
        self._interval_ns = 1
        # Heap records carry no time: each drain's changes are filed under the interval
        # of the middle of the span since the previous drain (docs/architecture.md).
        self._heap_drained_ns = 0  # when the previous drain read the ring
        self._heap_interval = 0  # the interval the decoder's pending changes belong to
        self._heap_batches: list[tuple[int, list[_ring.SiteTotals]]] = []  # for _flush
        self._heap_rows_next_ns = 0  # per-stack rows may be written again from then on
        self.code_map = CodeMap(target.pid, target.executable)
        # Stack bytes copied per CPU sample for CFI unwinding (0: frame pointers only).
        self._stack_bytes = options.stack_bytes if options.unwind != "fp" else 0
        self.started = threading.Event()  # set once the profile holds the recording
        self.heap_not_seen = ""  # why the heap shim saw nothing (own_allocator.py)
        # Never silently partial: the shim's `dropped` counter when we attached (-p:
        # drops of earlier sessions are not this recording's), and the last drain that
        # found no new drop: (monotonic ns, records decoded by then). The first drain
        # that finds one makes the profile partial from that earlier moment on.
        self._dropped_base = 0
        self._waits_base = 0
        self._no_drop_seen = (0, 0)
        self._start_offset_s = 0.0  # this recording's start, from the profile's start
        self.heap_partial: tuple[float, int, int] | None = None  # (from_s, after, dropped)
        self.heap_shim_stopped = False  # the shim gave up (STOPPED): nothing more is counted
        self._detail_done: set[tuple[str, str | None]] = set()  # modules whose detail is stored
        # The CFI rules the shim walks heap stacks with (heap_unwind.py); None: not yet.
        self.unwind_table: UnwindTableFile | None = None

    def _alive(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        return is_alive(self.target.pid)

    def _drain_heap(self) -> int:
        if self.heap is None or self.heap_decoder is None:
            return 0
        now_ns = time.monotonic_ns()
        # The records this drain finds were committed since the previous drain read the
        # ring: file them under the interval of that span's middle. When that interval is
        # a new one, what the decoder holds so far belongs to the old one: set it aside
        # (the next flush writes it, after the stacks it refers to).
        middle = (self._heap_drained_ns + now_ns) // 2
        interval = max(self._heap_interval, (middle - self._start_ns) // self._interval_ns)
        if interval != self._heap_interval:
            pending = self.heap_decoder.pending_sites
            if 0 < pending <= HEAP_BATCH_MAX and now_ns >= self._heap_rows_next_ns:
                self._heap_batches.append((self._heap_interval,
                                           self.heap_decoder.take_changed()))
            self._heap_interval = interval
        self._heap_drained_ns = now_ns
        drained = self.heap.ring.drain(self.heap_decoder)
        if self.heap_partial is None:
            h = self.heap_decoder
            checked_ns = time.monotonic_ns()
            stopped = self.heap.ring.state == _ring.STATE_STOPPED
            self.heap_shim_stopped |= stopped
            if int(self.heap.ring.counters()["dropped"]) > self._dropped_base or stopped:
                since_ns, after = self._no_drop_seen
                self.heap_partial = ((since_ns - self._start_ns) / 1e9 + self._start_offset_s,
                                     after, 0)
            else:
                self._no_drop_seen = (checked_ns, h.alloc_records + h.free_records)
        return drained

    def request_stop(self, reason: str = "interrupted") -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop("interrupted")

    def _open_cpu_source(self) -> PerfSession | NullPerfSession:
        """perf events when possible; the shim's SIGPROF self-sampler when perf is not
        permitted (or --cpu-source self) and the target has the shim."""
        opts = self.options
        pid = self.target.pid
        if opts.cpu_source in ("perf", "auto"):
            session = PerfSession(pid, opts.cpu_freq, stack_bytes=self._stack_bytes
                                  or FP_STACK_BYTES)
            try:
                session.open(allow_gone=self.child is not None)
                self.cpu_source = "perf"
                return session
            except PermissionDenied as exc:
                if opts.cpu_source == "perf" or self.heap is None:
                    raise
                self.status.write(f"rsprof: {exc}; sampling CPU with the shim's "
                                  "self-sampler instead\n")
        if self.heap is None:
            raise UsageError(
                f"--cpu-source self needs rsprof's shim in process {pid} (start it with "
                "`rsprof run`, LD_PRELOAD=librsprof_shim.so, or the rsprof-trace crate)")
        self.cpu_source = "self"
        return NullPerfSession()

    def run(self) -> RecordResult:
        opts = self.options
        session = self._open_cpu_source()
        try:
            writer = ProfileWriter(opts.output, append=opts.append)
        except BaseException:
            session.close()
            raise
        try:
            return self._record(session, writer)
        except sqlite3.Error as exc:
            # Disk full, file removed, ...: what was committed stays readable.
            writer.close_abruptly()
            raise ProfileError(f"cannot write {opts.output}: {exc}") from None
        except BaseException:
            writer.close_abruptly()
            raise
        finally:
            session.close()

    def _record(self, session: PerfSession | NullPerfSession,
                writer: ProfileWriter) -> RecordResult:
        opts = self.options
        pid = self.target.pid
        interval_ns = int(opts.interval_s * 1e9)
        start_ns = time.monotonic_ns()
        start_wall = time.time()
        start = self.clock()
        symbolizer = Symbolizer(pid, opts.cache_dir, preload=True)
        writer.begin_recording(RecordingInfo(
            pid=pid, process_name=self.target.name, cmdline=self.target.cmdline,
            executable=self.target.executable, build_id=_build_id_of(self.target.pid),
            cpu_source=self.cpu_source, cpu_freq=opts.cpu_freq, interval_s=opts.interval_s,
            start_time=start_wall, heap_source=self.heap_source, unwind=opts.unwind,
            stack_bytes=self._stack_bytes,
        ))
        stacks = _unwind.StackTable()
        decoder = _ring.PerfDecoder(stacks, pid, start_ns, interval_ns)
        if opts.unwind != "fp":
            decoder.set_unwinder(_unwind.Unwinder(), _unwind.UNWIND_AUTO if opts.unwind == "auto"
                                 else _unwind.UNWIND_DWARF)
        _set_code_ranges(decoder, self.code_map, symbolizer)
        if self.heap is not None:
            # Before the shim records (attach) and before `rsprof run`'s program
            # leaves its start gate: the first allocations recorded unwind with it.
            self._publish_unwind_table(decoder)
            writer.set_meta({"heap_unwind": self.unwind_table.method
                             if self.unwind_table is not None else "fp"})
            self.heap_decoder = _ring.HeapDecoder(stacks)
            self_hz = opts.cpu_freq if self.cpu_source == "self" else 0
            self.heap.ring.attach(os.getpid(), self_hz, self._stack_bytes if self_hz else 0)
            self._wake_sampler()
            if self.child is None:  # -p: what earlier sessions dropped is not ours
                shim = self.heap.ring.counters()
                self._dropped_base, self._waits_base = int(shim["dropped"]), int(shim["waits"])
            writer.set_meta_once({"heap_partial_from_s": "", "heap_partial_after_records": "",
                                  "heap_shim_stopped": ""})
        else:
            writer.set_meta({"heap_unwind": ""})
        # Who records, so that a reader of the file can tell a recording in progress
        # from one whose rsprof died (docs/schema.md: recorder_process).
        writer.set_meta({"recorder_process": process_identity(os.getpid())})
        writer.commit()
        self._start_ns = self._heap_drained_ns = start_ns
        self._no_drop_seen = (start_ns, 0)
        self._start_offset_s = start_wall - writer.profile_start_time
        self._interval_ns = interval_ns
        if self.heap_decoder is not None and self.cpu_source == "self":
            self.heap_decoder.cpu = decoder  # SAMPLE records count as CPU samples
        if self.heap is not None:
            # `rsprof run`: the program waited in its start-up while we read its maps.
            self.heap.ring.open_start_gate()
        _set_code_facts(decoder, self.code_map, symbolizer)  # before the first drain
        for tid in session.attached_tids:
            writer.set_thread_name(tid, thread_name(pid, tid) or str(tid))
        for warning in symbolizer.warnings:
            self.status.write(f"rsprof: warning: {warning}\n")
        warned = len(symbolizer.warnings)

        if opts.handle_signals:
            old_int = signal.signal(signal.SIGINT, self._on_signal)
            old_term = signal.signal(signal.SIGTERM, self._on_signal)
        self.started.set()  # begin_recording committed: a live display can read it
        poller = select.poll()
        for fd in session.poll_fds():
            poller.register(fd, select.POLLIN)
        next_flush = start + opts.interval_s
        reason = "interrupted"
        # With the heap ring attached the target may be waiting for space: drain
        # every 2 ms while records arrive fast (64 KiB or more per drain); backing
        # off to 20 ms while they trickle (self-samples, a quiet heap), in which
        # time even 400 MB/s of records fit in the 8 MiB ring.
        max_sleep = 0.002 if self.heap is not None else 0.25
        next_alive_check = start
        heap_busy = False
        try:
            while True:
                now = self.clock()
                timeout = max(0.0, min(next_flush - now, max_sleep))
                if not heap_busy:
                    poller.poll(timeout * 1000)
                session.drain(decoder)
                # While the target produces heap records fast, drain without sleeping.
                drained = self._drain_heap()
                heap_busy = drained >= 256 * 1024
                if self.heap is not None:
                    max_sleep = 0.002 if drained >= 64 * 1024 else min(max_sleep * 2, 0.02)
                now = self.clock()
                if self._stop_reason is not None:
                    reason = self._stop_reason
                    break
                if now >= next_alive_check:
                    next_alive_check = now + 0.05
                    if not self._alive():
                        reason = "exited"
                        break
                if opts.duration_s is not None and now - start >= opts.duration_s:
                    reason = "duration"
                    break
                if now >= next_flush:
                    self._flush(decoder, stacks, symbolizer, writer)
                    next_flush += opts.interval_s
                    if next_flush < now:
                        next_flush = now + opts.interval_s
                    if opts.progress:
                        self._progress(now - start, decoder, writer)
                    for warning in symbolizer.warnings[warned:]:
                        self.status.write(f"rsprof: warning: {warning}\n")
                    warned = len(symbolizer.warnings)
            session.drain(decoder)
            # Whatever the target committed before it exited or we stopped.
            while self._drain_heap():
                pass
            if self.heap is not None and reason != "exited":
                self.heap.ring.detach()
                while self._drain_heap():  # records reserved before the detach
                    pass
            self._flush(decoder, stacks, symbolizer, writer, final=True)
            for warning in symbolizer.warnings[warned:]:  # a program that ran < 1 interval
                self.status.write(f"rsprof: warning: {warning}\n")
        finally:
            if self.heap is not None and self.heap_decoder is not None:
                self.heap.ring.detach()
            if self.unwind_table is not None:
                self.unwind_table.close()  # the shim's mappings stay valid
            symbolizer.close()
            if opts.handle_signals:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)
        elapsed = self.clock() - start
        if self.child is not None and self.child.poll() is not None:
            self.exit_code = self.child.returncode
            writer.set_exit_code(self.exit_code)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.own_cpu_s = usage.ru_utime + usage.ru_stime
        self.own_max_rss_kb = usage.ru_maxrss
        writer.set_meta({"rsprof_cpu_s": round(self.own_cpu_s, 3),
                         "rsprof_max_rss_kb": self.own_max_rss_kb})
        self.heap_not_seen = record_finding(writer, self.target.name)
        writer.finalize(time.time(), reason)
        c = writer.counters
        result = RecordResult(
            output=opts.output, end_reason=reason, elapsed_s=elapsed, samples=c.samples,
            lost_records=c.lost_records, truncated_stacks=c.truncated_stacks,
            unresolved_addresses=c.unresolved_addresses, threads=len(writer.thread_names()),
        )
        self._summary(result)
        return result

    def _publish_unwind_table(self, decoder: _ring.PerfDecoder) -> None:
        """Heap stacks: give the shim the CFI rules of every module the decoder's
        unwinder was given (a new file when they changed). Nothing with --unwind fp
        (no unwinder): the shim walks frame pointers. A failure is a warning."""
        if self.heap is None or decoder.unwinder is None:
            return
        if self.unwind_table is None:
            self.unwind_table = UnwindTableFile(
                self.heap, lambda text: self.status.write(f"rsprof: warning: {text}\n"))
        self.unwind_table.refresh(decoder.unwinder)

    def _wake_sampler(self) -> None:
        """Self-sampling: ask the shim to arm the threads it has not armed yet.

        Hooks arm timers when they run; a process that does not allocate after we
        attached (or an rsprof-trace build with `cpu` only) needs this signal. Sent
        only while SIGPROF is caught and the shim said its handler is installed."""
        if self.heap is None or self.cpu_source != "self" or not self.heap.ring.sampler_ready:
            return
        if catches_signal(self.target.pid, signal.SIGPROF):
            self.heap.ring.wake_sampler(self.target.pid)

    def _flush(self, decoder: _ring.PerfDecoder, stacks: _unwind.StackTable,
               symbolizer: Symbolizer, writer: ProfileWriter, final: bool = False) -> None:
        self._wake_sampler()
        pid = self.target.pid
        for kind, ev_pid, tid, _t, name in decoder.take_events():
            if ev_pid != pid:
                continue
            if kind == "comm":
                writer.set_thread_name(tid, name)
            elif kind == "fork" and tid not in writer.thread_names():
                writer.set_thread_name(tid, thread_name(pid, tid) or str(tid))
        self._store_new_stacks(decoder, stacks, symbolizer, writer)
        if self.heap is not None and self.heap_decoder is not None:
            self._write_heap_sites(
                writer, final, lambda: self._store_new_stacks(decoder, stacks, symbolizer,
                                                              writer))
            for tid, name in self.heap_decoder.take_threads():
                writer.set_thread_name(tid, name)
            self._heap_counters(writer)
            # Self-sampled CPU stacks the drains above interned.
            self._store_new_stacks(decoder, stacks, symbolizer, writer)
        counts = decoder.take_counts()
        for _iv, tid, _sid, _n, _ns in counts:
            if tid not in writer.thread_names():
                writer.set_thread_name(tid, thread_name(pid, tid) or str(tid))
        writer.add_cpu_counts(counts)
        c = writer.counters
        c.samples = decoder.samples
        c.lost_records = decoder.lost
        c.truncated_stacks = decoder.truncated
        c.malformed_records = decoder.malformed
        c.throttle_events = decoder.throttled
        c.other_process_samples = decoder.other_process_samples
        c.broken_stacks = decoder.broken_chains
        c.scanned_stacks = decoder.scanned_stacks
        c.cfi_stacks = decoder.cfi_stacks
        writer.commit()

    def _store_new_stacks(self, decoder: _ring.PerfDecoder, stacks: _unwind.StackTable,
                          symbolizer: Symbolizer, writer: ProfileWriter) -> None:
        """Symbolize and store every stack interned so far.

        In chunks: rsprof's memory stays bounded however many stacks an interval
        brings (binary-trees: 131 k at once), and the heap ring is drained between
        chunks, so a long flush does not keep a program waiting for space (a drain may
        intern more stacks: the loop ends only when none is left)."""
        pid = self.target.pid
        while new_stacks := stacks.take_new(STACK_CHUNK):
            wanted = writer.unknown_addresses(new_stacks)
            if wanted:
                resolved = symbolizer.resolve(wanted)
                unknown = [a for a, r in resolved.items() if r.module == "[unknown]"]
                if unknown and is_alive(pid):
                    symbolizer.refresh_maps()
                    _set_code_ranges(decoder, self.code_map, symbolizer)
                    self._publish_unwind_table(decoder)  # a new file if modules changed
                    _set_code_facts(decoder, self.code_map, symbolizer)
                    resolved.update(symbolizer.resolve(unknown))
                writer.add_addresses(resolved)
                self._store_module_details(resolved, symbolizer, writer)
            writer.add_stacks(new_stacks)
            del new_stacks
            self._drain_heap()

    def _store_module_details(self, resolved: dict[int, ResolvedAddress],
                              symbolizer: Symbolizer, writer: ProfileWriter) -> None:
        """The detail each module with stored addresses can give, once per module: what
        `top` and the TUI say the profile lacks (rsprof/report/detail_notes.py)."""
        new = {(r.module, r.build_id) for r in resolved.values()} - self._detail_done
        for module, build_id in new:
            self._detail_done.add((module, build_id))
            detail = symbolizer.module_detail(module, build_id)
            if detail is not None:
                writer.set_module_detail(module, build_id, detail.symbols, detail.functions,
                                         detail.cfi)

    def _write_heap_sites(self, writer: ProfileWriter, final: bool,
                          store_stacks: Callable[[], None]) -> None:
        """The per-stack totals that changed, one row each: batches set aside at interval
        boundaries, then what changed since, unless rows were written so recently that
        HEAP_ROWS_PER_S says wait (then they stay pending, and are filed later)."""
        assert self.heap_decoder is not None
        rows = 0
        for interval, changed in self._heap_batches:  # oldest first
            writer.add_heap_sites(interval, changed)
            rows += len(changed)
        self._heap_batches.clear()
        if final or time.monotonic_ns() >= self._heap_rows_next_ns:
            # In chunks, draining the ring between them: never more than one chunk of
            # rows in memory, and the program does not wait for a long write.
            todo = self.heap_decoder.pending_sites
            while todo > 0:
                chunk = self.heap_decoder.take_changed(min(todo, HEAP_ROWS_CHUNK))
                if not chunk:
                    break
                todo -= len(chunk)
                store_stacks()  # the drain after the previous chunk may have made some
                writer.add_heap_sites(self._heap_interval, chunk)
                rows += len(chunk)
                del chunk
                if not final:
                    self._drain_heap()
        if rows:
            self._heap_rows_next_ns = time.monotonic_ns() + rows * 1_000_000_000 // HEAP_ROWS_PER_S

    def _heap_counters(self, writer: ProfileWriter) -> None:
        assert self.heap is not None and self.heap_decoder is not None
        h = self.heap_decoder
        shim = self.heap.ring.counters()
        c = writer.counters
        c.heap_allocs = h.alloc_records
        c.heap_frees = h.free_records
        c.heap_unknown_frees = h.unknown_frees
        c.heap_unknown_stacks = h.unknown_stack_allocs
        c.heap_replaced_live = h.replaced_live
        c.heap_malformed = h.malformed + self.heap.ring.malformed
        c.heap_dropped = max(0, int(shim["dropped"]) - self._dropped_base)
        c.heap_raw_stacks = int(shim["raw_stacks"])
        c.heap_truncated_stacks = int(shim["truncated"])
        c.heap_waits = max(0, int(shim["waits"]) - self._waits_base)
        if self.heap_partial is not None:
            from_s, after, _ = self.heap_partial
            self.heap_partial = (from_s, after, c.heap_dropped)
            writer.set_meta_once({"heap_partial_from_s": round(from_s, 3),
                                  "heap_partial_after_records": after})
        # STOPPED: the shim took us for gone (an older shim's timeout, or a region
        # without a reader pid); from then on it neither records nor counts.
        self.heap_shim_stopped |= self.heap.ring.state == _ring.STATE_STOPPED
        if self.heap_shim_stopped:
            writer.set_meta({"heap_shim_stopped": 1})

    def _progress(self, elapsed: float, decoder: _ring.PerfDecoder,
                  writer: ProfileWriter) -> None:
        line = (f"rsprof: pid {self.target.pid} ({self.target.name}) "
                f"{format_duration(elapsed)}  samples {decoder.samples}"
                f"  threads {len(writer.thread_names())}")
        if decoder.lost:
            line += f"  lost {decoder.lost}"
        if self.heap_decoder is not None:
            h = self.heap_decoder
            line += (f"  allocs {h.alloc_records}  frees {h.free_records}"
                     f"  live {human_bytes(h.total_live_bytes)}")
        self.status.write(line + "\n")
        self.status.flush()

    @property
    def heap_source(self) -> str | None:
        if self.heap is None:
            return None
        return "preload" if self.child is not None else "shim"

    def _unwind_text(self) -> str:
        if self.options.unwind == "fp":
            return "frame-pointer unwinding"
        return f"{self.options.unwind} unwinding, {self._stack_bytes:,} bytes of stack"

    def _summary(self, r: RecordResult) -> None:
        if r.end_reason == "exited":
            how = describe_exit(self.exit_code) if self.exit_code is not None else "exited"
            self.status.write(
                f"rsprof: process {self.target.pid} {how} after {r.elapsed_s:.1f}s\n")
        heap = ""
        if self.heap_decoder is not None:
            h = self.heap_decoder
            heap = (f", {h.alloc_records} allocations and {h.free_records} frees"
                    f" ({human_bytes(h.total_live_bytes)} live at the end)")
        self.status.write(
            f"rsprof: wrote {r.output}: {r.samples} samples over {r.elapsed_s:.1f}s "
            f"({self._unwind_text()}) from {r.threads} threads{heap} (lost {r.lost_records}, "
            f"truncated {r.truncated_stacks}, unresolved addresses {r.unresolved_addresses}); "
            f"rsprof used {self.own_cpu_s:.2f}s CPU, {self.own_max_rss_kb // 1024} MB\n")
        if self.heap_not_seen:
            self.status.write(f"rsprof: warning: heap not seen: {self.heap_not_seen}\n")
        if self.heap_partial is not None:
            text = partial_text(*self.heap_partial, stopped=self.heap_shim_stopped)
            self.status.write(f"rsprof: warning: {text}\n")
        self.status.flush()
