"""Opening a large profile in `rsprof view`: goal under 2 s at 1 million samples.

Records `cpu_split --threads 2 --seconds 4` at 999 Hz with `rsprof run`, then
grows a copy of that real profile to about 1,000,000 samples by replicating its
`cpu_counts` (and `heap_counts`) rows over later intervals, keeping the schema,
stacks and symbols; the recording's sample count and end time are updated to
match. "Opening" is what happens before the first frame is on screen:
`open_readonly` + `ProfileLoader(conn, live=False).load()` + the first
`screen.render` at 160x48. Each run is a fresh process (nothing cached in
process); the baseline is `rsprof top cpu --json -n 20` over the same file.

    .venv/bin/python bench/view_open.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TARGETS, build_targets, fmt_ratio, median, rsprof_cmd, rsprof_env

GOAL_SAMPLES = 1_000_000
GOAL_OPEN_S = 2.0

OPEN = """
import sys, time
from pathlib import Path
from rsprof.storage.profile_file import open_readonly
from rsprof.tui.loader import ProfileLoader
from rsprof.tui.screen import render
from rsprof.tui.state import ViewState
t0 = time.perf_counter()
conn = open_readonly(Path(sys.argv[1]))
t1 = time.perf_counter()
snap = ProfileLoader(conn, live=False).load()
t2 = time.perf_counter()
lines = render(snap, ViewState(), 160, 48)
t3 = time.perf_counter()
assert len(lines) == 48
print(f"{t3 - t0:.4f} {t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f}"
      f" {snap.samples} {len(snap.cpu_rows)} {snap.intervals}")
"""


def record_base(tmp: Path) -> Path:
    db = tmp / "base.db"
    subprocess.run(rsprof_cmd("run", "-q", "--cpu-freq", "999", "-o", str(db), "--",
                              str(TARGETS / "cpu_split"), "--threads", "2", "--seconds", "4"),
                   env=rsprof_env(tmp / "rec-cache"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return db


def grow(base: Path, big: Path, goal: int) -> dict[str, int]:
    """Copy `base` to `big` and replicate its counts over later intervals until the
    profile holds at least `goal` samples."""
    shutil.copyfile(base, big)
    conn = sqlite3.connect(big)
    try:
        (recordings,) = conn.execute("SELECT COUNT(*) FROM recordings").fetchone()
        if recordings != 1:
            sys.exit(f"bench: expected one recording in {base}, found {recordings}")
        rid, start, interval_s = conn.execute(
            "SELECT id, start_time, interval_s FROM recordings").fetchone()
        span_row = conn.execute("SELECT MAX(interval) FROM (SELECT interval FROM cpu_counts"
                                " UNION ALL SELECT interval FROM heap_counts)").fetchone()
        base_samples = conn.execute("SELECT SUM(samples) FROM cpu_counts").fetchone()[0] or 0
        if span_row[0] is None or base_samples <= 0:
            sys.exit(f"bench: {base} holds no CPU samples")
        # heap_counts may hold one interval more than cpu_counts (the last commit):
        # each copy takes the whole span, so every copy ends like the recording did
        span = int(span_row[0]) + 1
        copies = -(-goal // base_samples)  # the original counts as the first copy
        with conn:
            for k in range(1, copies):
                conn.execute("INSERT INTO cpu_counts (recording_id, interval, tid, stack_id,"
                             " samples) SELECT recording_id, interval + ?, tid, stack_id, samples"
                             " FROM cpu_counts WHERE interval < ?", (k * span, span))
                conn.execute("INSERT INTO heap_counts (recording_id, interval, stack_id, allocs,"
                             " alloc_bytes, frees, free_bytes, live_bytes) SELECT recording_id,"
                             " interval + ?, stack_id, allocs, alloc_bytes, frees, free_bytes,"
                             " live_bytes FROM heap_counts WHERE interval < ?", (k * span, span))
            samples = conn.execute("SELECT SUM(samples) FROM cpu_counts").fetchone()[0]
            intervals = copies * span
            end_time = float(start) + intervals * float(interval_s)
            conn.execute("UPDATE recordings SET samples = ?, end_time = ? WHERE id = ?",
                         (samples, end_time, rid))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'samples'", (str(samples),))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'end_time'", (repr(end_time),))
        stats = {
            "samples": samples,
            "cpu_counts rows": conn.execute("SELECT COUNT(*) FROM cpu_counts").fetchone()[0],
            "heap_counts rows": conn.execute("SELECT COUNT(*) FROM heap_counts").fetchone()[0],
            "distinct stacks": conn.execute(
                "SELECT COUNT(DISTINCT stack_id) FROM cpu_counts").fetchone()[0],
            "intervals": intervals,
            "base samples": base_samples,
            "copies": copies,
        }
    finally:
        conn.close()
    return stats


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=rsprof_env(), check=True, capture_output=True,
                         text=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=GOAL_SAMPLES)
    args = parser.parse_args()
    build_targets()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        big = tmp / "big.db"
        stats = grow(record_base(tmp), big, args.samples)
        size_mb = big.stat().st_size / 1e6
        view_proc: list[float] = []
        view_in: list[float] = []
        phases: list[tuple[float, float, float]] = []
        top_proc: list[float] = []
        view_out = ""
        top_samples = 0
        for _ in range(args.reps):
            t, view_out = timed([sys.executable, "-c", OPEN, str(big)])
            fields = view_out.split()
            view_proc.append(t)
            view_in.append(float(fields[0]))
            phases.append((float(fields[1]), float(fields[2]), float(fields[3])))
            t, out = timed(rsprof_cmd("top", "cpu", str(big), "--json", "-n", "20"))
            top_proc.append(t)
            top_samples = int(json.loads(out)["summary"]["samples"])
    snap_samples, snap_rows, snap_intervals = (int(f) for f in view_out.split()[4:7])
    print(f"profile: {size_mb:.1f} MB, {stats['samples']} samples"
          f" ({stats['base samples']} recorded x {stats['copies']}),"
          f" {stats['cpu_counts rows']} cpu_counts rows, {stats['heap_counts rows']}"
          f" heap_counts rows, {stats['distinct stacks']} distinct stacks,"
          f" {stats['intervals']} intervals; {args.reps} runs each, medians")
    print(f"check: view snapshot {snap_samples} samples, {snap_rows} functions,"
          f" {snap_intervals} intervals; top cpu summary {top_samples} samples")
    base = median(top_proc)
    view = median(view_proc)
    rows = [
        ("rsprof top cpu --json (process)", base),
        ("view open (process)", view),
        ("view open (in-process, no start)", median(view_in)),
        ("  open_readonly", median([p[0] for p in phases])),
        ("  ProfileLoader.load()", median([p[1] for p in phases])),
        ("  render 160x48", median([p[2] for p in phases])),
    ]
    print(f"{'step':<34}{'median s':>10}{'vs top':>10}")
    for name, value in rows:
        print(f"{name:<34}{value:>10.3f}{fmt_ratio(value, base):>10}")
    verdict = "PASS" if view < GOAL_OPEN_S else "FAIL"
    print(f"goal: open < {GOAL_OPEN_S:.0f} s at {args.samples} samples:"
          f" {view:.3f} s (process) {verdict}")


if __name__ == "__main__":
    main()
