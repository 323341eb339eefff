"""The recording loop: drain perf rings, symbolize what is new, commit each interval."""

from __future__ import annotations

import select
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from rsprof import _ring, _unwind
from rsprof.duration import format_duration
from rsprof.errors import ProfileError
from rsprof.recording.code_map import CodeMap
from rsprof.recording.perf_session import PerfSession
from rsprof.recording.process import ProcessInfo, is_alive, thread_name
from rsprof.storage.writer import ProfileWriter, RecordingInfo
from rsprof.symbols.elf import read_elf_identity
from rsprof.symbols.resolver import Symbolizer


@dataclass(frozen=True, slots=True)
class RecordOptions:
    output: Path
    duration_s: float | None = None
    interval_s: float = 1.0
    cpu_freq: int = 99
    append: bool = False
    quiet: bool = True
    cache_dir: Path | None = None


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
    """Tell the decoder where code is, which keeps no frame pointers, and its bytes."""
    decoder.set_code_ranges(code.ranges(symbolizer.mappings))


def _build_id_of(pid: int) -> str | None:
    try:
        return read_elf_identity(f"/proc/{pid}/exe").build_id
    except (OSError, ValueError):
        return None


class Recorder:
    """Records one process into one profile file until it exits, time runs out or a signal."""

    def __init__(self, target: ProcessInfo, options: RecordOptions,
                 status: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.options = options
        self.status = status if status is not None else sys.stderr
        self.clock = clock
        self._stop_reason: str | None = None
        self.code_map = CodeMap(target.pid)

    def request_stop(self, reason: str = "interrupted") -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop("interrupted")

    def run(self) -> RecordResult:
        opts = self.options
        pid = self.target.pid
        session = PerfSession(pid, opts.cpu_freq)
        session.open()
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

    def _record(self, session: PerfSession, writer: ProfileWriter) -> RecordResult:
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
            cpu_source="perf", cpu_freq=opts.cpu_freq, interval_s=opts.interval_s,
            start_time=start_wall,
        ))
        stacks = _unwind.StackTable()
        decoder = _ring.PerfDecoder(stacks, pid, start_ns, interval_ns)
        _set_code_ranges(decoder, self.code_map, symbolizer)
        for tid in session.attached_tids:
            writer.set_thread_name(tid, thread_name(pid, tid) or str(tid))
        for warning in symbolizer.warnings:
            self.status.write(f"rsprof: warning: {warning}\n")
        warned = len(symbolizer.warnings)

        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        poller = select.poll()
        for fd in session.poll_fds():
            poller.register(fd, select.POLLIN)
        next_flush = start + opts.interval_s
        reason = "interrupted"
        try:
            while True:
                now = self.clock()
                timeout = max(0.0, min(next_flush - now, 0.25))
                poller.poll(timeout * 1000)
                session.drain(decoder)
                now = self.clock()
                if self._stop_reason is not None:
                    reason = self._stop_reason
                    break
                if not is_alive(pid):
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
                    self._progress(now - start, decoder, writer)
                    for warning in symbolizer.warnings[warned:]:
                        self.status.write(f"rsprof: warning: {warning}\n")
                    warned = len(symbolizer.warnings)
            session.drain(decoder)
            self._flush(decoder, stacks, symbolizer, writer)
        finally:
            symbolizer.close()
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
        elapsed = self.clock() - start
        writer.finalize(time.time(), reason)
        c = writer.counters
        result = RecordResult(
            output=opts.output, end_reason=reason, elapsed_s=elapsed, samples=c.samples,
            lost_records=c.lost_records, truncated_stacks=c.truncated_stacks,
            unresolved_addresses=c.unresolved_addresses, threads=len(writer.thread_names()),
        )
        self._summary(result)
        return result

    def _flush(self, decoder: _ring.PerfDecoder, stacks: _unwind.StackTable,
               symbolizer: Symbolizer, writer: ProfileWriter) -> None:
        pid = self.target.pid
        for kind, ev_pid, tid, _t, name in decoder.take_events():
            if ev_pid != pid:
                continue
            if kind == "comm":
                writer.set_thread_name(tid, name)
            elif kind == "fork" and tid not in writer.thread_names():
                writer.set_thread_name(tid, thread_name(pid, tid) or str(tid))
        new_stacks = stacks.take_new()
        wanted = {a for _, frames in new_stacks for a in frames if not writer.known_address(a)}
        if wanted:
            resolved = symbolizer.resolve(wanted)
            unknown = [a for a, r in resolved.items() if r.module == "[unknown]"]
            if unknown and is_alive(pid):
                symbolizer.refresh_maps()
                _set_code_ranges(decoder, self.code_map, symbolizer)
                resolved.update(symbolizer.resolve(unknown))
            writer.add_addresses(resolved)
        writer.add_stacks(new_stacks)
        counts = decoder.take_counts()
        for _iv, tid, _sid, _n in counts:
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
        writer.commit()

    def _progress(self, elapsed: float, decoder: _ring.PerfDecoder,
                  writer: ProfileWriter) -> None:
        line = (f"rsprof: pid {self.target.pid} ({self.target.name}) "
                f"{format_duration(elapsed)}  samples {decoder.samples}"
                f"  threads {len(writer.thread_names())}")
        if decoder.lost:
            line += f"  lost {decoder.lost}"
        self.status.write(line + "\n")
        self.status.flush()

    def _summary(self, r: RecordResult) -> None:
        if r.end_reason == "exited":
            self.status.write(
                f"rsprof: process {self.target.pid} exited after {r.elapsed_s:.1f}s\n")
        self.status.write(
            f"rsprof: wrote {r.output}: {r.samples} samples over {r.elapsed_s:.1f}s "
            f"from {r.threads} threads (lost {r.lost_records}, truncated {r.truncated_stacks}, "
            f"unresolved addresses {r.unresolved_addresses})\n")
        self.status.flush()
