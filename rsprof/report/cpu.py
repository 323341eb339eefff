"""The CPU report behind `rsprof top cpu`: self and total (inclusive) share per function."""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from rsprof.attribution import RSPROF_FUNCTION, is_rsprof_code
from rsprof.report.profile_summary import ProfileSummary, format_location, read_summary
from rsprof.report.selection import Selection, selected_cpu_counts
from rsprof.storage.writer import decompress_ids


@dataclass(frozen=True, slots=True)
class CpuRow:
    function: str
    module: str
    file: str | None
    line: int | None
    self_samples: int
    total_samples: int
    self_percent: float
    total_percent: float
    self_ns: int = 0  # nanoseconds of CPU its self samples stand for

    @property
    def location(self) -> str:
        return format_location(self.file, self.line)


@dataclass(slots=True)
class CpuReport:
    summary: ProfileSummary
    total_samples: int
    rows: list[CpuRow] = field(default_factory=list)
    total_ns: int = 0            # nanoseconds of CPU the samples stand for
    ns_estimated: bool = False   # some of it from samples / frequency (an older profile)
    # Samples spent in rsprof's own code in the target (its heap hooks and
    # self-sampler), charged to the pseudo-function [rsprof] (docs/attribution.md).
    rsprof_samples: int = 0

    @property
    def rsprof_percent(self) -> float:
        return 100.0 * self.rsprof_samples / self.total_samples if self.total_samples else 0.0


FunctionKey = tuple[str, str]  # (function, module path)


def _logical_frames(conn: sqlite3.Connection) -> dict[int, list[tuple[FunctionKey, int]]]:
    """address id -> [(function key, frame id)], innermost first."""
    out: dict[int, list[tuple[FunctionKey, int]]] = defaultdict(list)
    rows = conn.execute(
        "SELECT af.address_id, f.id, f.function, m.path FROM address_frames af"
        " JOIN frames f ON f.id = af.frame_id JOIN modules m ON m.id = f.module_id"
        " ORDER BY af.address_id, af.depth"
    )
    for address_id, frame_id, function, module in rows:
        out[address_id].append(((function, module), frame_id))
    return out


def build_cpu_report(conn: sqlite3.Connection, include_internal: bool = False,
                     selection: Selection | None = None) -> CpuReport:
    """Self and total samples per function, over the selected intervals and threads.

    rsprof's own frames are never rows: a sample of rsprof's own time (charged to
    `[rsprof]` in both modes) counts for `[rsprof]` (self and total) and, in total,
    for the program's frames above rsprof's code (what rsprof's first frame called,
    e.g. libc, is part of `[rsprof]`); in any other stack rsprof's pass-through frames
    are left out."""
    summary = read_summary(conn)
    charged_column = "leaf_frame_id" if include_internal else "user_frame_id"
    frames_info: dict[int, tuple[str, str, str | None, int | None]] = {
        fid: (function, module, file, line)
        for fid, function, module, file, line in conn.execute(
            "SELECT f.id, f.function, m.path, f.file, f.line FROM frames f"
            " JOIN modules m ON m.id = f.module_id")
    }
    logical = _logical_frames(conn)
    # rsprof's own frames (the shim, rsprof-trace): never rows (docs/attribution.md).
    hidden = {
        fid for fid, (function, module, file, _line) in frames_info.items()
        if is_rsprof_code(function, file, module)}
    counts_sql, params = selected_cpu_counts(conn, selection or Selection())
    stack_samples: dict[int, int] = {}
    stack_ns: dict[int, int] = {}
    ns_estimated = False
    for sid, samples, ns, estimated in conn.execute(
            f"SELECT stack_id, SUM(samples), SUM(ns), MAX(estimated) FROM ({counts_sql})"
            " GROUP BY stack_id", params):
        stack_samples[sid], stack_ns[sid] = samples, ns
        ns_estimated = ns_estimated or bool(estimated)
    total = sum(stack_samples.values())
    self_ns: Counter[FunctionKey] = Counter()
    self_counts: Counter[FunctionKey] = Counter()
    total_counts: Counter[FunctionKey] = Counter()
    line_counts: dict[FunctionKey, Counter[tuple[str | None, int | None]]] = defaultdict(Counter)
    rsprof_samples = 0
    for stack_id, blob, charged, user in conn.execute(
            f"SELECT id, address_ids, {charged_column}, user_frame_id FROM stacks"):
        n = stack_samples.get(stack_id, 0)
        if not n:
            continue
        own = frames_info[user][0] == RSPROF_FUNCTION
        if own:
            rsprof_samples += n
        function, module, file, line = frames_info[charged]
        key = (function, module)
        self_counts[key] += n
        self_ns[key] += stack_ns[stack_id]
        line_counts[key][(file, line)] += n
        seen: set[FunctionKey] = {key} if own else set()
        if seen:
            total_counts[key] += n
        below_rsprof = bool(seen)  # the frames under rsprof's first are its own
        for address_id in decompress_ids(blob):
            for fkey, frame_id in logical.get(address_id, ()):
                if frame_id in hidden:
                    below_rsprof = False
                    continue
                if below_rsprof:
                    continue
                if fkey not in seen:
                    seen.add(fkey)
                    total_counts[fkey] += n
                    if fkey not in line_counts:
                        f_info = frames_info[frame_id]
                        line_counts[fkey][(f_info[2], f_info[3])] += 0
    report = CpuReport(summary=summary, total_samples=total, rsprof_samples=rsprof_samples,
                       total_ns=sum(stack_ns.values()), ns_estimated=ns_estimated)
    for key in set(self_counts) | set(total_counts):
        lines = line_counts.get(key)
        file, line = lines.most_common(1)[0][0] if lines else (None, None)
        s, t = self_counts.get(key, 0), total_counts.get(key, 0)
        report.rows.append(CpuRow(
            function=key[0], module=key[1], file=file, line=line,
            self_samples=s, total_samples=max(t, s),
            self_percent=100.0 * s / total if total else 0.0,
            total_percent=100.0 * max(t, s) / total if total else 0.0,
            self_ns=self_ns.get(key, 0),
        ))
    report.rows.sort(key=lambda r: (-r.self_samples, -r.total_samples, r.function))
    return report
