"""Options shared by several commands, declared once so their help and checks agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from rsprof.duration import parse_duration
from rsprof.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

MIN_FREQ, MAX_FREQ = 1, 10000
CPU_SOURCES = ("auto", "perf", "self")
UNWIND_MODES = ("auto", "fp", "dwarf")
DEFAULT_STACK_BYTES = 16384
MAX_STACK_BYTES = 61440  # a perf sample must fit in 64 KiB with its call chain


def sampling_options(f: F) -> F:
    """-i/--interval, --cpu-freq, --cpu-source, --unwind and --stack-size, for every
    command that records."""
    f = click.option("--stack-size", "stack_bytes", default=DEFAULT_STACK_BYTES,
                     show_default=True, type=int, metavar="BYTES",
                     help="Bytes of each sampled thread's stack copied for --unwind dwarf/auto "
                          f"(a multiple of 8, at most {MAX_STACK_BYTES}); deeper stacks are "
                          "cut there, or continued by frame pointers where they exist.")(f)
    f = click.option("--unwind", type=click.Choice(UNWIND_MODES), default="auto",
                     show_default=True,
                     help="How CPU stacks are walked: dwarf (the CFI of .eh_frame/.debug_frame, "
                          "for release builds without frame pointers), fp (frame pointers "
                          "only: cheaper, leaf-only where there are none), auto (CFI where a "
                          "module has it, frame pointers where it does not).")(f)
    f = click.option("--cpu-source", type=click.Choice(CPU_SOURCES), default="auto",
                     show_default=True,
                     help="perf events, or the shim's SIGPROF self-sampler (needs the shim "
                          "in the target); auto uses perf and falls back to self-sampling "
                          "when perf is not permitted.")(f)
    f = click.option("--cpu-freq", default=99, show_default=True, type=int,
                     help=f"CPU sampling frequency in Hz ({MIN_FREQ}..{MAX_FREQ}).")(f)
    return click.option("-i", "--interval", default="1s", show_default=True,
                        metavar="DURATION", help="Aggregation and commit interval.")(f)


def parse_sampling(duration: str | None, interval: str, cpu_freq: int,
                   stack_bytes: int = DEFAULT_STACK_BYTES) -> tuple[float | None, float]:
    """(duration in s or None, interval in s); usage errors for bad values."""
    if not MIN_FREQ <= cpu_freq <= MAX_FREQ:
        raise UsageError(f"--cpu-freq must be between {MIN_FREQ} and {MAX_FREQ} Hz")
    if not 8 <= stack_bytes <= MAX_STACK_BYTES or stack_bytes % 8:
        raise UsageError(f"--stack-size must be a multiple of 8 between 8 and "
                         f"{MAX_STACK_BYTES} bytes")
    duration_s = parse_duration(duration, "duration") if duration is not None else None
    return duration_s, parse_duration(interval, "interval")


def report_options(noun: str, charged: str) -> Callable[[F], F]:
    """PROFILE, -n, --include-internal, --json and --csv, for the `top` reports."""

    def decorate(f: F) -> F:
        f = click.option("--csv", "as_csv", is_flag=True, help="Write CSV.")(f)
        f = click.option("--json", "as_json", is_flag=True, help="Write JSON.")(f)
        f = click.option("--include-internal", is_flag=True,
                         help=f"Charge {charged} to the true leaf, even in std, dependencies "
                              "or libc.")(f)
        f = click.option("-n", "--limit", default=20, show_default=True,
                         type=click.IntRange(min=1), help=f"Number of {noun} to show.")(f)
        return click.argument("profile", required=False,
                              type=click.Path(dir_okay=False, path_type=Path))(f)

    return decorate


def selection_options(f: F) -> F:
    """--since, --until and --thread: the part of a profile a report or export covers."""
    f = click.option("--thread", "threads", multiple=True, metavar="NAME|TID",
                     help="Only these threads (name or tid; repeat for more). CPU only: heap "
                          "records carry no thread.")(f)
    f = click.option("--until", metavar="DURATION",
                     help="Only intervals starting before this time from the profile's start "
                          "(e.g. 30s).")(f)
    return click.option("--since", metavar="DURATION",
                        help="Only intervals starting at or after this time from the profile's "
                             "start (e.g. 10s).")(f)
