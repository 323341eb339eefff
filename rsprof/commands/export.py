"""`rsprof export PROFILE -o OUT`: a profile in formats other tools read."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

import click

from rsprof.commands.options import selection_options
from rsprof.commands.profile_arg import resolve_profile
from rsprof.errors import ProfileError, UsageError
from rsprof.export.flamegraph import write_flamegraph
from rsprof.export.folded import write_folded
from rsprof.export.pprof import write_pprof
from rsprof.export.speedscope import write_speedscope
from rsprof.export.stacks import CPU, HEAP, StackSet, load_cpu_stacks, load_heap_stacks
from rsprof.report.cpu import build_cpu_report
from rsprof.report.heap import build_heap_report
from rsprof.report.profile_summary import ProfileSummary
from rsprof.report.render import render_csv, render_json
from rsprof.report.selection import Selection, parse_selection
from rsprof.report.tables import (
    CPU_CSV_HEADERS,
    HEAP_CSV_HEADERS,
    cpu_csv_rows,
    cpu_document,
    heap_csv_rows,
    heap_document,
)
from rsprof.storage.profile_file import open_readonly

FORMATS = ("json", "csv", "folded", "svg", "pprof", "speedscope")
# By the end of OUT's name; the first match wins.
SUFFIXES = ((".speedscope.json", "speedscope"), (".json", "json"), (".csv", "csv"),
            (".folded", "folded"), (".collapsed", "folded"), (".txt", "folded"),
            (".svg", "svg"), (".pb.gz", "pprof"), (".pprof", "pprof"), (".pb", "pprof"))


def guess_format(out: str) -> str:
    name = out.lower()
    for suffix, fmt in SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise UsageError(f"cannot tell the format from {out!r}: give --format "
                     f"({', '.join(FORMATS)})")


def _value_index(sset: StackSet, live: bool, fmt: str = "") -> int:
    """What folded stacks, flame graphs and speedscope weigh: CPU samples (speedscope,
    which shows times: the nanoseconds of CPU they stand for); heap bytes allocated,
    or live bytes with --live."""
    if sset.kind == CPU:
        return sset.value_index("cpu" if fmt == "speedscope" else "samples")
    return sset.value_index("inuse_space" if live else "alloc_space")


def _warn_partial(summary: ProfileSummary) -> None:
    if summary.heap_partial:
        click.echo(f"rsprof: warning: {summary.heap_partial}", err=True)


def _write_text(out: str, produce: Callable[[TextIO], None]) -> None:
    """Write OUT whole or not at all (a temporary file renamed into place); `-` is stdout."""
    if out == "-":
        produce(sys.stdout)
        return
    with _replacing(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        produce(fh)


def _write_binary(out: str, produce: Callable[[BinaryIO], None]) -> None:
    if out == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write binary pprof data to a terminal; give -o FILE")
        produce(sys.stdout.buffer)
        return
    with _replacing(out) as tmp, open(tmp, "wb") as fh:
        produce(fh)


@contextmanager
def _replacing(out: str) -> Iterator[Path]:
    path = Path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise ProfileError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


@click.command("export")
@click.argument("profile", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, metavar="OUT",
              help="File to write (- for stdout); its name gives the format.")
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS),
              help="Format (default: from OUT: .json .csv .folded/.txt .svg "
                   ".pb.gz/.pprof .speedscope.json).")
@click.option("--kind", type=click.Choice([CPU, HEAP]), default=CPU, show_default=True,
              help="CPU samples or heap allocations (pprof of heap has every heap value).")
@click.option("--live", is_flag=True,
              help="Heap folded/svg/speedscope: weigh by live bytes, not bytes allocated.")
@click.option("-n", "--limit", type=click.IntRange(min=1),
              help="json/csv: at most this many rows (default: all).")
@click.option("--include-internal", is_flag=True,
              help="json/csv: charge to the true leaf, even in std, dependencies or libc.")
@selection_options
def export_command(profile: Path | None, out: str, fmt: str | None, kind: str, live: bool,
                   limit: int | None, include_internal: bool, since: str | None,
                   until: str | None, threads: tuple[str, ...]) -> None:
    """Write PROFILE (default: the newest here) as json, csv, folded stacks, an SVG
    flame graph, pprof, or speedscope JSON.

    \b
      rsprof export profile.db -o cpu.svg                 # interactive flame graph
      rsprof export profile.db -o heap.svg --kind heap --live
      rsprof export profile.db -o cpu.pb.gz               # go tool pprof, Pyroscope, Parca
      rsprof export profile.db -o cpu.speedscope.json     # speedscope.app
      rsprof export profile.db -o - -f folded | flamegraph.pl > cpu.svg
      rsprof export profile.db -o top.csv --since 10s --until 40s --thread worker-1

    json and csv hold the rows of `rsprof top cpu` / `rsprof top heap`; the
    other formats hold whole stacks (std and libc frames included).
    """
    fmt = fmt or guess_format(out)
    if live and kind != HEAP:
        raise UsageError("--live goes with --kind heap")
    # Options that a format would silently ignore are refused instead.
    if live and fmt not in ("folded", "svg", "speedscope"):
        raise UsageError(f"--live goes with folded, svg or speedscope, not {fmt}"
                         f" ({fmt} holds live and allocated bytes both)")
    if limit is not None and fmt not in ("json", "csv"):
        raise UsageError(f"-n/--limit goes with json or csv, not {fmt}"
                         " (whole stacks are never cut)")
    if include_internal and fmt not in ("json", "csv"):
        raise UsageError(f"--include-internal goes with json or csv, not {fmt}"
                         " (whole stacks keep every frame)")
    path = resolve_profile(profile)
    selection = parse_selection(since, until, threads)
    conn = open_readonly(path)
    try:
        if fmt in ("json", "csv"):
            _export_table(conn, path, out, fmt, kind, limit, include_internal, selection)
            return
        sset = (load_cpu_stacks if kind == CPU else load_heap_stacks)(conn, selection)
    finally:
        conn.close()
    index = _value_index(sset, live, fmt)
    title = f"{sset.summary.process_name} (pid {sset.summary.pid}) {kind}"
    if kind == HEAP and sset.summary.heap_partial:
        # Never silently partial: svg and speedscope say it in their title, pprof in a
        # comment; folded stacks cannot carry it: stderr says it for every format.
        from_s = sset.summary.heap_partial_from_s
        title += " [PARTIAL" + (f" from {from_s:.1f}s]" if from_s is not None else "]")
        _warn_partial(sset.summary)
    if fmt == "folded":
        _write_text(out, lambda fh: write_folded(sset, fh, index))
    elif fmt == "svg":
        _write_text(out, lambda fh: write_flamegraph(sset, fh, index, title))
    elif fmt == "speedscope":
        _write_text(out, lambda fh: write_speedscope(sset, fh, index, title))
    else:
        _write_binary(out, lambda fh: write_pprof(sset, fh))


def _export_table(conn: sqlite3.Connection, path: Path, out: str, fmt: str, kind: str,
                  limit: int | None, include_internal: bool, selection: Selection) -> None:
    """The rows of `top cpu` / `top heap` (all of them unless -n)."""
    if kind == CPU:
        cpu = build_cpu_report(conn, include_internal=include_internal, selection=selection)
        cpu_rows = [r for r in cpu.rows if r.self_samples or r.total_samples][:limit]
        if fmt == "json":
            doc = cpu_document(path, cpu, cpu_rows, include_internal, selection)
            _write_text(out, lambda fh: render_json(fh, doc))
        else:
            _write_text(out, lambda fh: render_csv(fh, CPU_CSV_HEADERS, cpu_csv_rows(cpu_rows)))
        return
    heap = build_heap_report(conn, include_internal=include_internal, selection=selection)
    heap_rows = heap.rows[:limit]
    _warn_partial(heap.summary)  # json also has it in its summary; csv cannot carry it
    if fmt == "json":
        hdoc = heap_document(path, heap, heap_rows, include_internal, selection)
        _write_text(out, lambda fh: render_json(fh, hdoc))
    else:
        _write_text(out, lambda fh: render_csv(fh, HEAP_CSV_HEADERS, heap_csv_rows(heap_rows)))
