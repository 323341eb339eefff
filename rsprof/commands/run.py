"""`rsprof run -- CMD`: launch a program with the heap shim preloaded; CPU + heap."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import click

from rsprof.commands.options import parse_sampling, sampling_options
from rsprof.commands.record import default_output
from rsprof.errors import RsprofError, UsageError
from rsprof.recording.heap_region import Region, create_region, remove_stale_regions
from rsprof.recording.process import ProcessInfo, exit_status
from rsprof.recording.recorder import Recorder, RecordOptions
from rsprof.shim import child_env, shim_path
from rsprof.tui.live import LiveSession, display_available

SHM_ENV = "RSPROF_SHM"


def _wait_until_held(region: Region, child: subprocess.Popen[bytes],
                     timeout: float = 2.0) -> None:
    """Wait until the shim has claimed the region: the program then waits at the start
    gate, every library it was linked with mapped, until the recorder has read its maps
    (so a program that exits within milliseconds is still symbolized). A program that
    never loads the shim (statically linked) is not waited for longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        if region.ring.pid != 0:
            return
        time.sleep(0.0005)


@click.command("run", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.option("-o", "--output", metavar="FILE",
              help="Profile file (default: rsprof-<program>-<time>.db here).")
@click.option("-d", "--duration", metavar="DURATION",
              help="Stop recording after this long; the program keeps running.")
@sampling_options
@click.option("-q", "--quiet", is_flag=True,
              help="No live display: a progress line a second on stderr (also when stdin or "
                   "stdout is not a terminal). Under the display the program's stdout and "
                   "stderr go to FILE.log.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(output: str | None, duration: str | None, interval: str, cpu_freq: int,
                cpu_source: str, unwind: str, stack_bytes: int, quiet: bool,
                command: tuple[str, ...]) -> int:
    """Run COMMAND with the heap shim preloaded and record CPU and heap until it exits.

    \b
      rsprof run -o heap.db -- ./target/release/your_app --its-args
    Every allocation and free is recorded exactly (LD_PRELOAD of rsprof's
    shim); CPU is sampled with perf events. The program's exit ends the
    recording; rsprof then exits with the program's status (its exit code, or
    128+N if signal N killed it, as `time` and `perf record` do; rsprof's own
    errors exit 1, or 2 for usage). Programs it exec()s are not recorded. On a
    terminal the live display runs (q stops recording; the program keeps
    running, and rsprof exits 0) and the program's output goes to FILE.log.
    """
    duration_s, interval_s = parse_sampling(duration, interval, cpu_freq, stack_bytes)
    program = shutil.which(command[0])
    if program is None:
        raise UsageError(f"cannot run {command[0]!r}: no such program")
    out = Path(output) if output else default_output(os.path.basename(program))
    if out.exists():
        raise UsageError(f"{out} already exists")
    shim = str(shim_path())
    remove_stale_regions()
    self_sampled = cpu_source == "self"
    region = create_region(self_sample_hz=cpu_freq if self_sampled else 0, hold_at_start=True,
                           sampler_stack_bytes=stack_bytes if self_sampled and unwind != "fp"
                           else 0)
    env = child_env(os.environ)  # a one-file rsprof's LD_LIBRARY_PATH is not the program's
    env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env[SHM_ENV] = region.name
    live = display_available(quiet)
    log = None
    try:
        if live:  # the program must not draw over the display
            log_path = out.with_name(out.name + ".log")
            log = open(log_path, "wb")  # noqa: SIM115 (closed below)
        try:
            child = subprocess.Popen([program, *command[1:]], env=env, stdout=log,
                                     stderr=log)
        except OSError as exc:
            raise RsprofError(f"cannot run {command[0]}: {exc.strerror}") from None
        _wait_until_held(region, child)
        target = ProcessInfo(child.pid, os.path.basename(program)[:15], " ".join(command),
                             program)
        options = RecordOptions(output=out, duration_s=duration_s, interval_s=interval_s,
                                cpu_freq=cpu_freq, cpu_source=cpu_source, unwind=unwind,
                                stack_bytes=stack_bytes, progress=not live,
                                handle_signals=not live)
        # If recording stops first (-d, a signal, q), the program runs on unrecorded.
        recorder = Recorder(target, options, heap=region, child=child)
        if live:
            LiveSession(recorder).run()
            click.echo(f"rsprof: the program's output is in {log_path}", err=True)
        else:
            recorder.run()
    finally:
        region.ring.open_start_gate()  # never leave the program waiting (bounded anyway)
        if log is not None:
            log.close()
        region.unlink()
    if child.poll() is None:
        return 0  # recording stopped first (-d, a signal, q): the program runs on
    return exit_status(child.returncode)
