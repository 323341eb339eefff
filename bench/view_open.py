"""Opening a large profile in `rsprof view`: goal under 2 s at 1 million samples.

Records `cpu_split --threads 2 --seconds 4` at 999 Hz with `rsprof run`, then
builds two profiles of about 1,000,000 samples from copies of that real
profile, keeping its schema, stacks and symbols; each recording's sample count
and end time are updated to match:

- "easy": the recorded `cpu_counts` (and `heap_counts`) rows replicated over
  later intervals: ~20 distinct stacks charged to 4 functions.
- "wide": 2,000 new stacks charged to 500 new functions (`wide::function_0000`
  ... in the file and module of the real profile's busiest frame, 4 lines per
  function, so 2,000 new frames), each stack a copy of a real stack's
  `address_ids` and `depth`, and about 400,000 new `cpu_counts` rows over 500
  intervals: per interval, the samples fall on (stack, thread) by Zipf weights
  (1/rank over the stacks, seeded). The recorded rows are kept.

The loader's cost grows with the distinct (interval, charged frame) pairs, a
few thousand in "easy" and about 300,000 in "wide". "Open" is the real
`rsprof view FILE` on a 160x48 pseudo-terminal, timed from the start of its
process (interpreter, CLI and TUI imports included) until its first frame is on
the screen (the header, the busiest function and the footer); then `q` quits it.
The baseline, in the same run, is the process `rsprof top cpu --json -n 20`
over the same file. Each run is a fresh process. The in-process steps
(`open_readonly`, `ProfileLoader(conn, live=False).load()`, the first
`screen.render`) are timed apart, after the imports, to show where the time goes.

    .venv/bin/python bench/view_open.py [--reps 5] [--shapes easy,wide]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    TARGETS,
    build_targets,
    first_frame_seconds,
    fmt_ratio,
    median,
    print_reproduce,
    rsprof_cmd,
    rsprof_env,
)

GOAL_SAMPLES = 1_000_000
GOAL_OPEN_S = 2.0
SHAPES = ("easy", "wide")
# the wide shape
WIDE_FUNCTIONS = 500
WIDE_LINES = 4  # frames (lines) per function, one stack each
WIDE_INTERVALS = 500
WIDE_ZIPF = 1.0
WIDE_SEED = 1

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
print(snap.cpu_rows[0].function if snap.cpu_rows else "")
"""


def record_base(tmp: Path) -> Path:
    db = tmp / "base.db"
    subprocess.run(rsprof_cmd("run", "-q", "--cpu-freq", "999", "-o", str(db), "--",
                              str(TARGETS / "cpu_split"), "--threads", "2", "--seconds", "4"),
                   env=rsprof_env(tmp / "rec-cache"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return db


def _open_copy(base: Path, dest: Path) -> tuple[sqlite3.Connection, int, float, float, int, int]:
    """Copy `base` to `dest`; its connection, recording, start, interval length,
    interval span (heap_counts may hold one interval more than cpu_counts: the last
    commit) and CPU samples."""
    shutil.copyfile(base, dest)
    conn = sqlite3.connect(dest)
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
    return conn, rid, float(start), float(interval_s), int(span_row[0]) + 1, base_samples


def _set_totals(conn: sqlite3.Connection, rid: int, start: float, interval_s: float,
                intervals: int) -> int:
    """Make the recording's sample count and end time match its counts."""
    samples = conn.execute("SELECT SUM(samples) FROM cpu_counts").fetchone()[0]
    end_time = start + intervals * interval_s
    conn.execute("UPDATE recordings SET samples = ?, end_time = ? WHERE id = ?",
                 (samples, end_time, rid))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'samples'", (str(samples),))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'end_time'", (repr(end_time),))
    return int(samples)


def _stats(conn: sqlite3.Connection, samples: int, intervals: int, how: str) -> dict[str, Any]:
    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    return {
        "how": how,
        "samples": samples,
        "cpu_counts rows": one("SELECT COUNT(*) FROM cpu_counts"),
        "heap_counts rows": one("SELECT COUNT(*) FROM heap_counts"),
        "distinct stacks": one("SELECT COUNT(DISTINCT stack_id) FROM cpu_counts"),
        "charged functions": one(
            "SELECT COUNT(DISTINCT f.function || char(0) || f.module_id) FROM frames f"
            " WHERE f.id IN (SELECT s.user_frame_id FROM stacks s"
            " WHERE s.id IN (SELECT DISTINCT stack_id FROM cpu_counts))"),
        "interval-frame pairs": one(
            "SELECT COUNT(*) FROM (SELECT 1 FROM cpu_counts c JOIN stacks s"
            " ON s.id = c.stack_id GROUP BY c.interval, s.user_frame_id)"),
        "intervals": intervals,
    }


def grow(base: Path, big: Path, goal: int) -> dict[str, Any]:
    """The "easy" shape: copy `base` to `big` and replicate its counts over later
    intervals until the profile holds at least `goal` samples."""
    conn, rid, start, interval_s, span, base_samples = _open_copy(base, big)
    try:
        # each copy takes the whole span, so every copy ends like the recording did
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
            intervals = copies * span
            samples = _set_totals(conn, rid, start, interval_s, intervals)
        return _stats(conn, samples, intervals, f"{base_samples} recorded x {copies}")
    finally:
        conn.close()


def widen(base: Path, wide: Path, goal: int) -> dict[str, Any]:
    """The "wide" shape: copy `base` to `wide` and add WIDE_FUNCTIONS x WIDE_LINES
    new frames, a stack charged to each, and Zipf-weighted counts of those stacks
    over WIDE_INTERVALS intervals, to `goal` samples in all."""
    conn, rid, start, interval_s, span, base_samples = _open_copy(base, wide)
    try:
        # real stacks with CPU samples, busiest first: the first names the module
        # and file of the new frames, all of them lend their addresses
        real = conn.execute(
            "SELECT s.id, s.depth, s.address_ids, s.user_frame_id FROM stacks s"
            " JOIN (SELECT stack_id, SUM(samples) AS n FROM cpu_counts GROUP BY stack_id) c"
            " ON c.stack_id = s.id ORDER BY c.n DESC, s.id").fetchall()
        tids = [t for (t,) in conn.execute("SELECT DISTINCT tid FROM cpu_counts ORDER BY tid")]
        module_id, file, line = conn.execute(
            "SELECT module_id, file, COALESCE(line, 1) FROM frames WHERE id = ?",
            (real[0][3],)).fetchone()
        frame_id = conn.execute("SELECT MAX(id) FROM frames").fetchone()[0] + 1
        stack_id = conn.execute("SELECT MAX(id) FROM stacks").fetchone()[0] + 1
        n_stacks = WIDE_FUNCTIONS * WIDE_LINES
        frames, stacks = [], []
        for k in range(n_stacks):
            function, nth_line = divmod(k, WIDE_LINES)
            frames.append((frame_id + k, f"wide::function_{function:04d}", file,
                           line + 10 * nth_line, module_id, 0, 1))
            _, depth, blob, _ = real[k % len(real)]
            stacks.append((stack_id + k, rid, depth, blob, frame_id + k, frame_id + k))
        # Zipf weights by rank, the ranks shuffled over the stacks (so over functions
        # and lines); a sample's thread is uniform
        rng = random.Random(WIDE_SEED)
        ranks = list(range(1, n_stacks + 1))
        rng.shuffle(ranks)
        cum = list(itertools.accumulate(1.0 / r ** WIDE_ZIPF for r in ranks))
        intervals = max(WIDE_INTERVALS, span)
        to_add = max(0, goal - base_samples)
        counts = []
        for interval in range(intervals):
            n = to_add // intervals + (interval < to_add % intervals)
            drawn = Counter(zip(rng.choices(range(n_stacks), cum_weights=cum, k=n),
                                rng.choices(tids, k=n), strict=True))
            counts.extend((rid, interval, tid, stack_id + k, c)
                          for (k, tid), c in sorted(drawn.items(), key=lambda kv: kv[0][::-1]))
        with conn:
            conn.executemany("INSERT INTO frames (id, function, file, line, module_id, internal,"
                             " resolved) VALUES (?, ?, ?, ?, ?, ?, ?)", frames)
            conn.executemany("INSERT INTO stacks (id, recording_id, depth, address_ids,"
                             " leaf_frame_id, user_frame_id) VALUES (?, ?, ?, ?, ?, ?)", stacks)
            conn.executemany("INSERT INTO cpu_counts (recording_id, interval, tid, stack_id,"
                             " samples) VALUES (?, ?, ?, ?, ?)", counts)
            samples = _set_totals(conn, rid, start, interval_s, intervals)
        return _stats(conn, samples, intervals,
                      f"{base_samples} recorded + {to_add} over {n_stacks} new stacks")
    finally:
        conn.close()


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=rsprof_env(), check=True, capture_output=True,
                         text=True).stdout
    return time.perf_counter() - t0, out


def measure(db: Path, reps: int) -> dict[str, Any]:
    """`reps` fresh-process opens of `db` in `rsprof view` and `rsprof top cpu` over it,
    interleaved, and the in-process steps of the open."""
    view_proc: list[float] = []
    view_in: list[float] = []
    phases: list[tuple[float, float, float]] = []
    top_proc: list[float] = []
    view_out = ""
    top_samples = 0
    _, view_out = timed([sys.executable, "-c", OPEN, str(db)])
    busiest = view_out.splitlines()[1][:20]  # as the table shows it (long names are cut)
    for _ in range(reps):
        t, _screen = first_frame_seconds(rsprof_cmd("view", str(db)), rsprof_env(),
                                         ["VIEW", busiest, "q quit"], cols=160, rows=48)
        view_proc.append(t)
        t, view_out = timed([sys.executable, "-c", OPEN, str(db)])
        fields = view_out.split()
        view_in.append(float(fields[0]))
        phases.append((float(fields[1]), float(fields[2]), float(fields[3])))
        t, out = timed(rsprof_cmd("top", "cpu", str(db), "--json", "-n", "20"))
        top_proc.append(t)
        top_samples = int(json.loads(out)["summary"]["samples"])
    snap_samples, snap_rows, snap_intervals = (int(f) for f in view_out.split()[4:7])
    return {
        "view": median(view_proc),
        "view in": median(view_in),
        "phases": [median([p[i] for p in phases]) for i in range(3)],
        "top": median(top_proc),
        "check": (snap_samples, snap_rows, snap_intervals, top_samples),
    }


def report(shape: str, db: Path, stats: dict[str, Any], result: dict[str, Any],
           reps: int) -> None:
    size_mb = db.stat().st_size / 1e6
    print(f"[{shape}] profile: {size_mb:.1f} MB, {stats['samples']} samples ({stats['how']}),"
          f" {stats['cpu_counts rows']} cpu_counts rows, {stats['heap_counts rows']}"
          f" heap_counts rows, {stats['distinct stacks']} distinct stacks,"
          f" {stats['charged functions']} charged functions, {stats['intervals']} intervals,"
          f" {stats['interval-frame pairs']} (interval, charged frame) pairs;"
          f" {reps} runs each, medians")
    snap_samples, snap_rows, snap_intervals, top_samples = result["check"]
    print(f"[{shape}] check: view snapshot {snap_samples} samples, {snap_rows} functions,"
          f" {snap_intervals} intervals; top cpu summary {top_samples} samples")
    base = result["top"]
    open_s, load_s, render_s = result["phases"]
    rows = [
        (f"rsprof top cpu {shape}.db --json -n 20 (process)", base),
        (f"rsprof view {shape}.db: first frame (process)", result["view"]),
        ("  in-process, after the imports:", result["view in"]),
        ("    open_readonly", open_s),
        ("    ProfileLoader.load()", load_s),
        ("    render 160x48", render_s),
    ]
    print(f"{'step':<46}{'median s':>10}{'vs top':>10}")
    for name, value in rows:
        print(f"{name:<46}{value:>10.3f}{fmt_ratio(value, base):>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=GOAL_SAMPLES)
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="comma-separated profile shapes to build and time"
                             f" (default and choices: {','.join(SHAPES)})")
    args = parser.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    if not shapes or any(s not in SHAPES for s in shapes):
        parser.error(f"--shapes: choose from {','.join(SHAPES)}")
    print_reproduce()
    build_targets()
    builders = {"easy": grow, "wide": widen}
    verdicts: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        base = record_base(tmp)
        for shape in shapes:
            db = tmp / f"{shape}.db"
            stats = builders[shape](base, db, args.samples)
            result = measure(db, args.reps)
            if verdicts:
                print()
            report(shape, db, stats, result, args.reps)
            verdicts.append((shape, result["view"]))
    print()
    for shape, view in verdicts:
        verdict = "PASS" if view < GOAL_OPEN_S else "FAIL"
        print(f"goal [{shape}]: open < {GOAL_OPEN_S:.0f} s at {args.samples} samples:"
              f" {view:.3f} s (process) {verdict}")


if __name__ == "__main__":
    main()
