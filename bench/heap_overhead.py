"""Heap tracking cost: 10 M small alloc/free pairs, unprofiled vs heaptrack vs rsprof run.

Target: tests/targets alloc_bench (a shallow call chain, sizes 16..80 bytes,
single thread); it times its own loop and reports its peak RSS. Each
configuration runs --reps times, interleaved; medians. rsprof's own CPU time
and peak RSS come from the profile's meta (measured with getrusage by rsprof
itself, so the target's are not included).

With --nofp the table is for alloc_bench built as a default release build is (no
frame pointers, line tables only: tests/targets/target/nofp, as the `targets_nofp`
test fixture and the Makefile build it), where rsprof's shim must unwind heap stacks
with the CFI rules rsprof publishes for it; the frame-pointer build runs in the same
pass (every configuration, interleaved with the no-FP runs), its slowdown is printed
beside each row, and the ratio no-FP slowdown / FP slowdown of `rsprof run` (goal:
at most 2x).

    .venv/bin/python bench/heap_overhead.py [--reps 5] [--pairs 10000000] [--threads 1]
        [--nofp]
"""

from __future__ import annotations

import argparse
import os
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
    require,
    rsprof_cmd,
    rsprof_env,
)

from rsprof.shim import shim_path

TARGETS_DIR = ROOT / "tests" / "targets"
NOFP = TARGETS_DIR / "target" / "nofp" / "release"
# As tests/conftest.py NOFP_BUILD_ENV and the Makefile: RUSTFLAGS replaces the
# force-frame-pointers of tests/targets/.cargo/config.toml.
NOFP_ENV = {"RUSTFLAGS": "-C force-frame-pointers=no",
            "CARGO_PROFILE_RELEASE_DEBUG": "line-tables-only"}
BUILD_DIRS = {"fp": TARGETS, "nofp": NOFP}
MODES = (("none", "unprofiled"), ("idle", "shim, no reader"), ("heaptrack", "heaptrack"),
         ("rsprof", "rsprof run"))

# The target's seconds and RSS; rsprof's CPU and RSS, and the share of the pairs'
# allocations it charged to alloc_bench::make (whether its heap stacks were whole).
Result = tuple[float, int, float, int, float]


def build_nofp() -> None:
    subprocess.run(["cargo", "build", "--release", "--offline", "--quiet", "--target-dir",
                    str(TARGETS_DIR / "target" / "nofp")], cwd=TARGETS_DIR,
                   env={**os.environ, **NOFP_ENV}, check=True)


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


def run(mode: str, pairs: int, threads: int, tmp: Path, rep: int,
        build: str = "fp") -> Result:
    target = [str(BUILD_DIRS[build] / "alloc_bench"), "--pairs", str(pairs),
              "--threads", str(threads)]
    tag = f"{build}-{rep}"
    cpu, mem, share = 0.0, 0, 0.0
    if mode == "none":
        out = subprocess.run(target, capture_output=True, text=True, check=True).stdout
    elif mode == "idle":
        # The shim preloaded but no reader attached: what it costs when not recording.
        env = dict(os.environ, LD_PRELOAD=str(shim_path()))
        out = subprocess.run(target, capture_output=True, text=True, check=True,
                             env=env).stdout
    elif mode == "heaptrack":
        out = subprocess.run(["heaptrack", "-o", str(tmp / f"ht{tag}"), *target],
                             capture_output=True, text=True, check=True, cwd=tmp).stdout
    else:
        db = tmp / f"heap{tag}.db"
        res = subprocess.run(rsprof_cmd("run", "-q", "-o", str(db), "--", *target),
                             capture_output=True, text=True, env=rsprof_env(tmp / "cache"),
                             cwd=tmp)
        if res.returncode != 0:
            raise SystemExit(f"bench: rsprof run failed:\n{res.stderr}")
        out = res.stdout
        conn = sqlite3.connect(db)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        (made,) = conn.execute("SELECT SUM(total_allocs) FROM heap_samples"
                               " WHERE function = 'alloc_bench::make'").fetchone()
        conn.close()
        cpu, mem = float(meta["rsprof_cpu_s"]), int(meta["rsprof_max_rss_kb"])
        share = (made or 0) / (pairs // threads * threads)
        if meta["heap_dropped"] != "0":
            raise SystemExit(f"bench: rsprof dropped {meta['heap_dropped']} records")
    elapsed, rss = parse(out)
    return elapsed, rss, cpu, mem, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=1,
                        help="split the pairs over this many threads")
    parser.add_argument("--nofp", action="store_true",
                        help="the table for the build without frame pointers, with the"
                             " frame-pointer build's slowdown beside it")
    args = parser.parse_args()
    require("heaptrack")
    print_reproduce()
    build_targets()
    builds = ["fp"]
    if args.nofp:
        build_nofp()
        builds = ["nofp", "fp"]
    results: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for rep in range(args.reps):
            for build in builds:
                for mode, _label in MODES:
                    results.setdefault((build, mode), []).append(
                        run(mode, args.pairs, args.threads, tmp, rep, build))
    main_build = builds[0]

    def t(build: str, mode: str) -> float:
        return median([r[0] for r in results[(build, mode)]])

    def slowdown(build: str, mode: str) -> float:
        return t(build, mode) / t(build, "none")

    base_rss = median([r[1] for r in results[(main_build, "none")]])
    what = ("alloc_bench built without frame pointers (tests/targets/target/nofp)"
            if args.nofp else "alloc_bench")
    print(f"target: {what}, {args.pairs} alloc/free pairs on {args.threads} thread(s),"
          f" {args.reps} runs each, medians")
    header = (f"{'configuration':<16}{'median s':>10}{'vs unprofiled':>15}{'target RSS':>12}"
              f"{'extra RSS':>11}")
    if args.nofp:
        header += f"{'FP build s':>12}{'FP vs unprof':>14}{'no-FP/FP':>10}"
    print(header)
    for mode, label in MODES:
        elapsed = t(main_build, mode)
        rss = median([r[1] for r in results[(main_build, mode)]])
        line = (f"{label:<16}{elapsed:>10.3f}{fmt_ratio(elapsed, t(main_build, 'none')):>15}"
                f"{rss / 1024:>10.1f}MB{(rss - base_rss) / 1024:>9.1f}MB")
        if args.nofp:
            line += f"{t('fp', mode):>12.3f}{fmt_ratio(t('fp', mode), t('fp', 'none')):>14}"
            if mode != "none":
                line += f"{slowdown('nofp', mode) / slowdown('fp', mode):>9.2f}x"
        print(line)
    for build in builds:
        cpu = median([r[2] for r in results[(build, "rsprof")]])
        mem = median([r[3] for r in results[(build, "rsprof")]])
        name = {"fp": " (frame-pointer build)", "nofp": " (no-FP build)"}[build]
        share = median([r[4] for r in results[(build, "rsprof")]])
        print(f"rsprof itself{name if args.nofp else ''}: {cpu:.2f} s CPU,"
              f" peak RSS {mem / 1024:.0f} MB; allocations charged to alloc_bench::make:"
              f" {100 * share:.1f} %")
    if args.nofp:
        ratio = slowdown("nofp", "rsprof") / slowdown("fp", "rsprof")
        print(f"rsprof run slowdown: no-FP {slowdown('nofp', 'rsprof'):.2f}x,"
              f" FP {slowdown('fp', 'rsprof'):.2f}x; no-FP / FP = {ratio:.2f}"
              f" (goal: at most 2): {'met' if ratio <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
