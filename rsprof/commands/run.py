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
from rsprof.recording.heap_region import create_region, remove_stale_regions
from rsprof.recording.process import ProcessInfo
from rsprof.recording.recorder import Recorder, RecordOptions
from rsprof.shim import shim_path

SHM_ENV = "RSPROF_SHM"


def _wait_until_loaded(pid: int, library: str, child: subprocess.Popen[bytes],
                       timeout: float = 2.0) -> None:
    """Wait until the dynamic loader has mapped the shim (and so the initial libraries),
    so the first read of the maps sees them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with open(f"/proc/{pid}/maps") as fh:
                if library in fh.read():
                    return
        except OSError:
            return
        time.sleep(0.001)


@click.command("run", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.option("-o", "--output", metavar="FILE",
              help="Profile file (default: rsprof-<program>-<time>.db here).")
@click.option("-d", "--duration", metavar="DURATION",
              help="Stop recording after this long; the program keeps running.")
@sampling_options
@click.option("-q", "--quiet", is_flag=True, help="No interactive display.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(output: str | None, duration: str | None, interval: str, cpu_freq: int,
                cpu_source: str, quiet: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND with the heap shim preloaded and record CPU and heap until it exits.

    \b
      rsprof run -o heap.db -- ./target/release/your_app --its-args
    Every allocation and free is recorded exactly (LD_PRELOAD of rsprof's
    shim); CPU is sampled with perf events. The program's exit ends the
    recording and its exit code is reported. Programs it exec()s are not
    recorded.
    """
    duration_s, interval_s = parse_sampling(duration, interval, cpu_freq)
    program = shutil.which(command[0])
    if program is None:
        raise UsageError(f"cannot run {command[0]!r}: no such program")
    out = Path(output) if output else default_output(os.path.basename(program))
    if out.exists():
        raise UsageError(f"{out} already exists")
    shim = str(shim_path())
    remove_stale_regions()
    region = create_region(self_sample_hz=cpu_freq if cpu_source == "self" else 0)
    env = dict(os.environ)
    env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env[SHM_ENV] = region.name
    try:
        try:
            child = subprocess.Popen([program, *command[1:]], env=env)
        except OSError as exc:
            raise RsprofError(f"cannot run {command[0]}: {exc.strerror}") from None
        _wait_until_loaded(child.pid, shim, child)
        target = ProcessInfo(child.pid, os.path.basename(program)[:15], " ".join(command),
                             program)
        options = RecordOptions(output=out, duration_s=duration_s, interval_s=interval_s,
                                cpu_freq=cpu_freq, cpu_source=cpu_source, quiet=True)
        # If recording stops first (-d or a signal), the program runs on unrecorded.
        Recorder(target, options, heap=region, child=child).run()
    finally:
        region.unlink()
