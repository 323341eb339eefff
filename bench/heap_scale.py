"""Heap tracking at the shape of real programs: a binary-trees allocation storm.

Target: tests/targets binary_trees (recursive tree builds, every node its own 16-byte
Box from a distinct call stack: depth 16 gives 131,071 stacks; 100 iterations give
13.1 M allocations, all freed, plus 25 leaked 48-byte blocks at `leak_known`). Each
configuration (unprofiled, heaptrack when installed, `rsprof run`) runs --reps
times, interleaved, with 1 and 2 allocating threads; medians. For rsprof it reports
records dropped and writer waits (from the profile), rsprof's own CPU and peak RSS
(its getrusage, in the profile's meta), and whether every count is exact: the
nodes allocated and freed at `binary_trees::create`, and the leak.

    .venv/bin/python bench/heap_scale.py [--reps 3] [--depth 16] [--iterations 100]
"""

from __future__ import annotations

import argparse
import shutil
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
    rsprof_cmd,
    rsprof_env,
)


def parse(out: str) -> tuple[float, int, int]:
    values = dict(line.split(None, 1) for line in out.splitlines() if " " in line)
    try:
        return float(values["elapsed"]), int(values["allocs"]), int(values.get("maxrss_kb", 0))
    except (KeyError, ValueError):
        raise SystemExit(f"bench: the target did not report its time:\n{out}") from None


def exact(db: Path, nodes: int) -> bool:
    conn = sqlite3.connect(db)
    try:
        create = conn.execute("SELECT SUM(total_allocs), SUM(total_frees), SUM(live_bytes)"
                              " FROM heap_samples WHERE function = 'binary_trees::create'"
                              ).fetchone()
        leak = conn.execute("SELECT SUM(total_allocs), SUM(live_bytes) FROM heap_samples"
                            " WHERE function = 'binary_trees::leak_known'").fetchone()
    finally:
        conn.close()
    return tuple(create) == (nodes, nodes, 0) and tuple(leak) == (25, 25 * 48)


def run(mode: str, target: list[str], tmp: Path, tag: str) -> dict[str, float]:
    if mode == "none":
        elapsed, nodes, _ = parse(subprocess.run(target, capture_output=True, text=True,
                                                 check=True).stdout)
        return {"elapsed": elapsed}
    if mode == "heaptrack":
        out = subprocess.run(["heaptrack", "-o", str(tmp / f"ht-{tag}"), *target],
                             capture_output=True, text=True, check=True, cwd=tmp).stdout
        return {"elapsed": parse(out)[0]}
    db = tmp / f"{tag}.db"
    res = subprocess.run(rsprof_cmd("run", "-q", "-o", str(db), "--", *target),
                         capture_output=True, text=True, env=rsprof_env(tmp / "cache"), cwd=tmp)
    if res.returncode != 0:
        raise SystemExit(f"bench: rsprof run failed:\n{res.stderr}")
    elapsed, nodes, _ = parse(res.stdout)
    conn = sqlite3.connect(db)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    return {"elapsed": elapsed, "dropped": float(meta["heap_dropped"]),
            "waits": float(meta["heap_waits"]), "cpu": float(meta["rsprof_cpu_s"]),
            "rss_mb": int(meta["rsprof_max_rss_kb"]) / 1024,
            "exact": float(exact(db, nodes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print_reproduce()
    build_targets()
    modes = ["none", *(["heaptrack"] if shutil.which("heaptrack") else []), "rsprof"]
    if "heaptrack" not in modes:
        print("heaptrack is not installed: its column is left out")
    stacks = 2 ** (args.depth + 1) - 1
    print(f"target: binary_trees --depth {args.depth} --iterations {args.iterations}"
          f" ({stacks:,} distinct allocation stacks), {args.reps} runs each, medians")
    print(f"{'threads':<8}{'configuration':<14}{'median s':>10}{'vs unprofiled':>15}"
          f"{'dropped':>9}{'waits':>8}{'rsprof CPU':>12}{'rsprof RSS':>12}{'exact':>7}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for threads in args.threads:
            target = [str(TARGETS / "binary_trees"), "--depth", str(args.depth),
                      "--iterations", str(args.iterations), "--threads", str(threads)]
            results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for rep in range(args.reps):
                for mode in modes:
                    results[mode].append(run(mode, target, tmp, f"{mode}-{threads}-{rep}"))
            base = median([r["elapsed"] for r in results["none"]])
            for mode in modes:
                rows = results[mode]
                t = median([r["elapsed"] for r in rows])
                line = f"{threads:<8}{mode if mode != 'none' else 'unprofiled':<14}{t:>10.3f}"
                line += f"{fmt_ratio(t, base):>15}"
                if mode == "rsprof":
                    line += (f"{max(r['dropped'] for r in rows):>9.0f}"
                             f"{median([r['waits'] for r in rows]):>8.0f}"
                             f"{median([r['cpu'] for r in rows]):>10.2f} s"
                             f"{max(r['rss_mb'] for r in rows):>9.0f} MB"
                             f"{'yes' if all(r['exact'] for r in rows) else 'NO':>7}")
                print(line)


if __name__ == "__main__":
    main()
