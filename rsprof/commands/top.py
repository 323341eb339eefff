"""`rsprof top cpu`: the functions that used the most CPU in a profile."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rsprof.attribution import RSPROF_FUNCTION
from rsprof.commands.options import report_options, selection_options
from rsprof.commands.profile_arg import resolve_profile
from rsprof.report.cpu import build_cpu_report
from rsprof.report.detail_notes import detail_note_lines
from rsprof.report.heap import build_heap_report, human_bytes
from rsprof.report.render import Cell, render_csv, render_json, render_table
from rsprof.report.selection import parse_selection
from rsprof.report.tables import (
    CPU_CSV_HEADERS,
    HEAP_CSV_HEADERS,
    cpu_csv_rows,
    cpu_document,
    heap_csv_rows,
    heap_document,
)
from rsprof.storage.profile_file import open_readonly


@click.group("top")
def top_group() -> None:
    """Report the top functions of a profile (newest in the current directory by default)."""


@top_group.command("cpu")
@report_options("functions", "samples")
@selection_options
@click.option("--threshold", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Hide functions below this % (of the sort column).")
@click.option("--sort", "sort_by", type=click.Choice(["self", "total"]), default="self",
              show_default=True, help="Order by self or total (inclusive) share.")
def top_cpu(profile: Path | None, limit: int, threshold: float, sort_by: str,
            include_internal: bool, as_json: bool, as_csv: bool, since: str | None,
            until: str | None, threads: tuple[str, ...]) -> None:
    """Functions by self CPU %, with total (inclusive) % and file:line.

    Samples are charged to the innermost frame of the user's own code (not the
    Rust standard library, registry dependencies, libc or rsprof); time spent in
    rsprof's own hooks is one row, [rsprof]; see docs/attribution.md.
    """
    path = resolve_profile(profile)
    selection = parse_selection(since, until, threads)
    conn = open_readonly(path)
    try:
        report = build_cpu_report(conn, include_internal=include_internal, selection=selection)
        notes = detail_note_lines(conn)  # the detail the profile lacks, and how to get it
    finally:
        conn.close()
    if sort_by == "total":
        ranked = sorted(report.rows,
                        key=lambda r: (-r.total_samples, -r.self_samples, r.function))
        rows = [r for r in ranked if r.total_percent >= threshold][:limit]
    else:
        rows = [r for r in report.rows if r.self_samples and r.self_percent >= threshold][:limit]
    s = report.summary
    out = sys.stdout
    if as_json:
        render_json(out, {**cpu_document(path, report, rows, include_internal, selection),
                          "notes": notes})
        return
    headers = ["self%", "total%", "samples", "function", "location"]
    table: list[list[Cell]] = [
        [r.self_percent, r.total_percent, r.self_samples, r.function, r.location] for r in rows]
    if as_csv:
        render_csv(out, CPU_CSV_HEADERS, cpu_csv_rows(rows))
        return
    c = s.counters
    estimated = (" (estimated from the rate: recorded without sample periods)"
                 if report.ns_estimated else "")
    out.write(
        f"{path}: {s.process_name} (pid {s.pid}), {s.duration_s:.1f}s, "
        f"{report.total_samples} samples at {s.cpu_freq} Hz ({s.cpu_source}, "
        f"{s.unwind_text()}), {report.total_ns / 1e9:.2f}s of CPU{estimated}\n"
        f"lost records {c['lost_records']}, truncated stacks {c['truncated_stacks']}, "
        f"broken stacks {c['broken_stacks']}, unresolved addresses "
        f"{c['unresolved_addresses']}\n")
    # rsprof's code runs inside the program only with its shim (heap hooks, sampler).
    if report.rsprof_samples or s.cpu_source == "self" or c.get("heap_allocs", 0):
        out.write(
            f"rsprof's own overhead {report.rsprof_percent:.1f} % ({report.rsprof_samples}"
            f" samples in its hooks and sampler inside the program"
            f"{f', row {RSPROF_FUNCTION}' if report.rsprof_samples else ''})\n")
    if not selection.everything:
        out.write(f"selection: {selection.describe()}\n")
    if c["malformed_records"] or c["other_process_samples"]:
        out.write(f"malformed records {c['malformed_records']}, samples of child processes "
                  f"{c['other_process_samples']} (not stored)\n")
    for note in notes:
        out.write(f"note: {note}\n")
    out.write("\n")
    render_table(out, headers, table, right_align=[True, True, True, False, False])


@top_group.command("heap")
@report_options("call sites", "allocations")
@selection_options
def top_heap(profile: Path | None, limit: int, include_internal: bool, as_json: bool,
             as_csv: bool, since: str | None, until: str | None,
             threads: tuple[str, ...]) -> None:
    """Allocation sites by live bytes: live, total allocated, allocs, frees, file:line.

    Live bytes are exact: every allocation and free of the recording is
    counted. Frees of blocks allocated before recording began are counted
    apart (unknown frees), never charged to a site.
    """
    path = resolve_profile(profile)
    selection = parse_selection(since, until, threads)
    conn = open_readonly(path)
    try:
        report = build_heap_report(conn, include_internal=include_internal, selection=selection)
        notes = detail_note_lines(conn)
    finally:
        conn.close()
    rows = report.rows[:limit]
    s = report.summary
    c = s.counters
    out = sys.stdout
    if as_json:
        render_json(out, {**heap_document(path, report, rows, include_internal, selection),
                          "notes": notes})
        return
    if as_csv:  # rows only: the warning goes to stderr (JSON has it in its summary)
        if s.heap_partial:
            click.echo(f"rsprof: warning: {s.heap_partial}", err=True)
        render_csv(out, HEAP_CSV_HEADERS, heap_csv_rows(rows))
        return
    out.write(
        f"{path}: {s.process_name} (pid {s.pid}), {s.duration_s:.1f}s, "
        f"live {human_bytes(report.live_bytes)} of {human_bytes(report.alloc_bytes)} allocated"
        f" in {report.allocs} allocations, {report.frees} frees\n"
        f"dropped {c['heap_dropped']}, unknown frees (allocated before recording) "
        f"{c['heap_unknown_frees']}, unknown stacks {c['heap_unknown_stacks']}, "
        f"malformed {c['heap_malformed']}\n")
    if s.heap_not_seen:
        out.write(f"warning: heap not seen: {s.heap_not_seen}\n")
    if s.heap_partial:
        out.write(f"warning: {s.heap_partial}\n")
    if not selection.everything:
        out.write(f"selection: {selection.describe()} (live: at its end)\n")
    for note in notes:
        out.write(f"note: {note}\n")
    out.write("\n")
    table: list[list[Cell]] = [
        [human_bytes(r.live_bytes), human_bytes(r.alloc_bytes), r.allocs, r.frees, r.function,
         r.location] for r in rows]
    render_table(out, ["live", "allocated", "allocs", "frees", "function", "location"], table,
                 right_align=[True, True, True, True, False, False])
