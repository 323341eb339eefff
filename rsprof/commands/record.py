"""Recording a running process: the root `rsprof -p PID` / `rsprof -P NAME` form."""

from __future__ import annotations

import time
from pathlib import Path

from rsprof.commands.options import DEFAULT_STACK_BYTES, parse_sampling
from rsprof.errors import UsageError
from rsprof.recording.heap_region import find_region, remove_stale_regions
from rsprof.recording.process import find_by_name, process_info
from rsprof.recording.recorder import Recorder, RecordOptions
from rsprof.tui.live import LiveSession, display_available


def default_output(process_name: str, now: float | None = None) -> Path:
    """rsprof-<process>-<YYYYmmdd-HHMMSS>.db in the current directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in process_name) or "process"
    return Path(f"rsprof-{safe}-{stamp}.db")


def record_command(pid: int | None, name: str | None, output: str | None,
                   duration: str | None, interval: str, cpu_freq: int, cpu_source: str,
                   append: bool, quiet: bool, unwind: str = "auto",
                   stack_bytes: int = DEFAULT_STACK_BYTES) -> int:
    if pid is not None and name is not None:
        raise UsageError("give either -p PID or -P NAME, not both")
    duration_s, interval_s = parse_sampling(duration, interval, cpu_freq, stack_bytes)
    if pid is None:
        assert name is not None
        pid = find_by_name(name)
    target = process_info(pid)
    out = Path(output) if output else default_output(target.name)
    if append and not out.exists():
        raise UsageError(f"--append given but {out} does not exist")
    live = display_available(quiet)
    options = RecordOptions(output=out, duration_s=duration_s, interval_s=interval_s,
                            cpu_freq=cpu_freq, cpu_source=cpu_source, append=append,
                            unwind=unwind, stack_bytes=stack_bytes,
                            progress=not live, handle_signals=not live)
    remove_stale_regions()
    region = find_region(target.pid)  # the process loaded the shim: record its heap too
    try:
        recorder = Recorder(target, options, heap=region)
        if live:
            LiveSession(recorder).run()
        else:
            recorder.run()
    finally:
        if region is not None:
            region.ring.close()
    return 0
