"""Heap tracking cost: 10 M small alloc/free pairs, unprofiled vs heaptrack vs rsprof run.

Target: tests/targets alloc_bench (a shallow call chain, sizes 16..80 bytes,
single thread); it times its own loop and reports its peak RSS. Each
configuration runs --reps times, interleaved; medians. rsprof's own CPU time
and peak RSS come from the profile's meta (measured with getrusage by rsprof
itself, so the target's are not included).

    .venv/bin/python bench/heap_overhead.py [--reps 5] [--pairs 10000000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from common import (
    TARGETS,
    build_targets,
    fmt_ratio,
    median,
    print_reproduce,
    require,
    rsprof_cmd,
    rsprof_env,
)

from rsprof.shim import shim_path


def parse(out: str) -> tuple[float, int]:
    elapsed, rss = None, 0
    for line in out.splitlines():
        if line.startswith("elapsed "):
            elapsed = float(line.split()[1])
        elif line.startswith("maxrss_kb "):
            rss = int(line.split()[1])
    if elapsed is None:
        raise SystemExit(f"bench: the target did not report its time:\n{out}")
    return elapsed, rss


def run(mode: str, pairs: int, threads: int, tmp: Path,
        rep: int) -> tuple[float, int, float, int]:
    target = [str(TARGETS / "alloc_bench"), "--pairs", str(pairs), "--threads", str(threads)]
    cpu, mem = 0.0, 0
    if mode == "none":
        out = subprocess.run(target, capture_output=True, text=True, check=True).stdout
    elif mode == "idle":
        # The shim preloaded but no reader attached: what it costs when not recording.
        env = dict(os.environ, LD_PRELOAD=str(shim_path()))
        out = subprocess.run(target, capture_output=True, text=True, check=True,
                             env=env).stdout
    elif mode == "heaptrack":
        out = subprocess.run(["heaptrack", "-o", str(tmp / f"ht{rep}"), *target],
                             capture_output=True, text=True, check=True, cwd=tmp).stdout
    else:
        db = tmp / f"heap{rep}.db"
        res = subprocess.run(rsprof_cmd("run", "-q", "-o", str(db), "--", *target),
                             capture_output=True, text=True, env=rsprof_env(tmp / "cache"),
                             cwd=tmp)
        if res.returncode != 0:
            raise SystemExit(f"bench: rsprof run failed:\n{res.stderr}")
        out = res.stdout
        conn = sqlite3.connect(db)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        conn.close()
        cpu, mem = float(meta["rsprof_cpu_s"]), int(meta["rsprof_max_rss_kb"])
        if meta["heap_dropped"] != "0":
            raise SystemExit(f"bench: rsprof dropped {meta['heap_dropped']} records")
    elapsed, rss = parse(out)
    return elapsed, rss, cpu, mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=1,
                        help="split the pairs over this many threads")
    args = parser.parse_args()
    require("heaptrack")
    print_reproduce()
    build_targets()
    results: dict[str, list[tuple[float, int, float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for rep in range(args.reps):
            for mode in ("none", "idle", "heaptrack", "rsprof"):
                results.setdefault(mode, []).append(run(mode, args.pairs, args.threads, tmp, rep))
    base = median([r[0] for r in results["none"]])
    base_rss = median([r[1] for r in results["none"]])
    print(f"target: alloc_bench, {args.pairs} alloc/free pairs on {args.threads} thread(s),"
          f" {args.reps} runs each, medians")
    print(f"{'configuration':<16}{'median s':>10}{'vs unprofiled':>15}{'target RSS':>12}"
          f"{'extra RSS':>11}")
    for mode, label in (("none", "unprofiled"), ("idle", "shim, no reader"),
                        ("heaptrack", "heaptrack"), ("rsprof", "rsprof run")):
        t = median([r[0] for r in results[mode]])
        rss = median([r[1] for r in results[mode]])
        print(f"{label:<16}{t:>10.3f}{fmt_ratio(t, base):>15}{rss / 1024:>10.1f}MB"
              f"{(rss - base_rss) / 1024:>9.1f}MB")
    cpu = median([r[2] for r in results["rsprof"]])
    mem = median([r[3] for r in results["rsprof"]])
    print(f"rsprof itself: {cpu:.2f} s CPU, peak RSS {mem / 1024:.0f} MB")


if __name__ == "__main__":
    main()
