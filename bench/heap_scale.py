"""Heap tracking at the shape of real programs: a binary-trees allocation storm.

Target: tests/targets binary_trees (recursive tree builds, every node its own 16-byte
Box from a distinct call stack: depth 16 gives 131,071 stacks; 100 iterations give
13.1 M allocations, all freed, plus 25 leaked 48-byte blocks at `leak_known`). Each
configuration (unprofiled, heaptrack when installed, `rsprof run`) runs --reps
times, interleaved, with 1 and 2 allocating threads; medians. For rsprof it reports
records dropped and writer waits (from the profile), rsprof's own CPU and peak RSS
(its getrusage, in the profile's meta), and whether every count is exact: the
nodes allocated and freed at `binary_trees::create`, and the leak.

With --nofp the table is for binary_trees built as a default release build is (no
frame pointers, line tables only: tests/targets/target/nofp, as the `targets_nofp`
test fixture and the Makefile build it), where rsprof's shim must unwind heap stacks
with the CFI rules rsprof publishes for it ("exact" also needs every node charged to
`create`, i.e. whole stacks); the frame-pointer build runs in the same pass (every
configuration, interleaved with the no-FP runs), its slowdown is printed beside each
row, and the ratio no-FP slowdown / FP slowdown of `rsprof run` (goal: at most 2x).

    .venv/bin/python bench/heap_scale.py [--reps 3] [--depth 16] [--iterations 100] [--nofp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from common import (
    ROOT,
    TARGETS,
    build_targets,
    fmt_ratio,
    median,
    print_reproduce,
    rsprof_cmd,
    rsprof_env,
)

TARGETS_DIR = ROOT / "tests" / "targets"
NOFP = TARGETS_DIR / "target" / "nofp" / "release"
# As tests/conftest.py NOFP_BUILD_ENV and the Makefile: RUSTFLAGS replaces the
# force-frame-pointers of tests/targets/.cargo/config.toml.
NOFP_ENV = {"RUSTFLAGS": "-C force-frame-pointers=no",
            "CARGO_PROFILE_RELEASE_DEBUG": "line-tables-only"}
BUILD_DIRS = {"fp": TARGETS, "nofp": NOFP}


def build_nofp() -> None:
    subprocess.run(["cargo", "build", "--release", "--offline", "--quiet", "--target-dir",
                    str(TARGETS_DIR / "target" / "nofp")], cwd=TARGETS_DIR,
                   env={**os.environ, **NOFP_ENV}, check=True)


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


Results = dict[tuple[str, str], list[dict[str, float]]]  # (build, mode) -> runs


def print_rows(threads: int, results: Results, modes: list[str], builds: list[str]) -> list[str]:
    """Print the table rows of one thread count; return the no-FP summary line, if any."""
    nofp = "nofp" in builds
    main_build = builds[0]

    def t(build: str, mode: str) -> float:
        return median([r["elapsed"] for r in results[(build, mode)]])

    def slowdown(build: str, mode: str) -> float:
        return t(build, mode) / t(build, "none")

    def all_exact(build: str) -> str:
        return "yes" if all(r["exact"] for r in results[(build, "rsprof")]) else "NO"

    for mode in modes:
        rows = results[(main_build, mode)]
        line = (f"{threads:<8}{mode if mode != 'none' else 'unprofiled':<14}"
                f"{t(main_build, mode):>10.3f}"
                f"{fmt_ratio(t(main_build, mode), t(main_build, 'none')):>15}")
        if mode == "rsprof":
            line += (f"{max(r['dropped'] for r in rows):>9.0f}"
                     f"{median([r['waits'] for r in rows]):>8.0f}"
                     f"{median([r['cpu'] for r in rows]):>10.2f} s"
                     f"{max(r['rss_mb'] for r in rows):>9.0f} MB"
                     f"{all_exact(main_build):>7}")
        elif nofp:
            line += " " * (9 + 8 + 12 + 12 + 7)
        if nofp:
            line += (f"{t('fp', mode):>12.3f}{fmt_ratio(t('fp', mode), t('fp', 'none')):>14}"
                     f"{all_exact('fp') if mode == 'rsprof' else '':>10}")
            if mode != "none":
                line += f"{slowdown('nofp', mode) / slowdown('fp', mode):>9.2f}x"
        print(line, flush=True)
    if not nofp:
        return []
    ratio = slowdown("nofp", "rsprof") / slowdown("fp", "rsprof")
    return [f"rsprof run slowdown, {threads} thread(s): no-FP"
            f" {slowdown('nofp', 'rsprof'):.2f}x (exact: {all_exact('nofp')}),"
            f" FP {slowdown('fp', 'rsprof'):.2f}x (exact: {all_exact('fp')});"
            f" no-FP / FP = {ratio:.2f} (goal: at most 2): {'met' if ratio <= 2 else 'NOT met'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nofp", action="store_true",
                        help="the table for the build without frame pointers, with the"
                             " frame-pointer build's slowdown beside it")
    args = parser.parse_args()
    print_reproduce()
    build_targets()
    builds = ["fp"]
    if args.nofp:
        build_nofp()
        builds = ["nofp", "fp"]
    modes = ["none", *(["heaptrack"] if shutil.which("heaptrack") else []), "rsprof"]
    if "heaptrack" not in modes:
        print("heaptrack is not installed: its column is left out")
    stacks = 2 ** (args.depth + 1) - 1
    what = " built without frame pointers (tests/targets/target/nofp)" if args.nofp else ""
    print(f"target: binary_trees{what} --depth {args.depth} --iterations {args.iterations}"
          f" ({stacks:,} distinct allocation stacks), {args.reps} runs each, medians")
    header = (f"{'threads':<8}{'configuration':<14}{'median s':>10}{'vs unprofiled':>15}"
              f"{'dropped':>9}{'waits':>8}{'rsprof CPU':>12}{'rsprof RSS':>12}{'exact':>7}")
    if args.nofp:
        header += f"{'FP build s':>12}{'FP vs unprof':>14}{'FP exact':>10}{'no-FP/FP':>10}"
    print(header)
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for threads in args.threads:
            results: Results = {(b, m): [] for b in builds for m in modes}
            for rep in range(args.reps):
                for build in builds:
                    target = [str(BUILD_DIRS[build] / "binary_trees"), "--depth",
                              str(args.depth), "--iterations", str(args.iterations),
                              "--threads", str(threads)]
                    for mode in modes:
                        results[(build, mode)].append(
                            run(mode, target, tmp, f"{build}-{mode}-{threads}-{rep}"))

            summary += print_rows(threads, results, modes, builds)
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
