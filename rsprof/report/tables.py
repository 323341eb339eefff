"""The rows of `rsprof top cpu` / `rsprof top heap` as JSON documents and CSV tables,
shared by `top --json/--csv` and `rsprof export --format json|csv`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsprof.report.cpu import CpuReport, CpuRow
from rsprof.report.heap import HeapReport, HeapRow
from rsprof.report.render import Cell
from rsprof.report.selection import Selection

CPU_CSV_HEADERS = ["self_percent", "total_percent", "self_samples", "total_samples",
                   "function", "file", "line", "module"]
HEAP_CSV_HEADERS = ["live_bytes", "peak_live_bytes", "alloc_bytes", "free_bytes", "allocs",
                    "frees", "function", "file", "line", "module"]


def _selection_doc(selection: Selection) -> dict[str, object]:
    return {"since_s": selection.since_s, "until_s": selection.until_s,
            "threads": list(selection.threads)}


def cpu_document(path: Path, report: CpuReport, rows: Sequence[CpuRow], include_internal: bool,
                 selection: Selection) -> dict[str, object]:
    return {
        "profile": str(path), "summary": report.summary.as_dict(),
        "selection": _selection_doc(selection), "total_samples": report.total_samples,
        # The CPU time the samples stand for (each its own period); estimated from
        # samples / frequency for a profile recorded without periods.
        "total_cpu_s": round(report.total_ns / 1e9, 6), "cpu_s_estimated": report.ns_estimated,
        "attribution": "leaf" if include_internal else "user",
        # rsprof's own time in the target (its heap hooks and sampler): the [rsprof] row
        "rsprof_samples": report.rsprof_samples,
        "rsprof_percent": round(report.rsprof_percent, 2),
        "functions": [{
            "function": r.function, "module": r.module, "file": r.file, "line": r.line,
            "self_samples": r.self_samples, "total_samples": r.total_samples,
            "self_percent": round(r.self_percent, 2), "self_cpu_s": round(r.self_ns / 1e9, 6),
            "total_percent": round(r.total_percent, 2),
        } for r in rows],
    }


def cpu_csv_rows(rows: Sequence[CpuRow]) -> list[list[Cell]]:
    return [[round(r.self_percent, 2), round(r.total_percent, 2), r.self_samples,
             r.total_samples, r.function, r.file, r.line, r.module] for r in rows]


def heap_document(path: Path, report: HeapReport, rows: Sequence[HeapRow],
                  include_internal: bool, selection: Selection) -> dict[str, object]:
    return {
        "profile": str(path), "summary": report.summary.as_dict(),
        "selection": _selection_doc(selection),
        "live_bytes": report.live_bytes, "alloc_bytes": report.alloc_bytes,
        "allocs": report.allocs, "frees": report.frees,
        "attribution": "leaf" if include_internal else "user",
        "sites": [{
            "function": r.function, "module": r.module, "file": r.file, "line": r.line,
            "live_bytes": r.live_bytes, "peak_live_bytes": r.peak_live_bytes,
            "alloc_bytes": r.alloc_bytes, "free_bytes": r.free_bytes,
            "allocs": r.allocs, "frees": r.frees, "stacks": r.sites,
        } for r in rows],
    }


def heap_csv_rows(rows: Sequence[HeapRow]) -> list[list[Cell]]:
    return [[r.live_bytes, r.peak_live_bytes, r.alloc_bytes, r.free_bytes, r.allocs, r.frees,
             r.function, r.file, r.line, r.module] for r in rows]
