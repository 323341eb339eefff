"""CFI unwinding of a release build without frame pointers: rsprof beside `perf record
--call-graph dwarf`.

The targets are tests/targets built as a default `cargo build --release` is (no frame
pointers, line tables only: tests/targets/target/nofp, what `make build` and the
`targets_nofp` test fixture build), so only unwinding with `.eh_frame` finds callers.

(i) Recording cost: `two_callers` with 4 busy threads, recorded for --seconds at
    --freq Hz by rsprof (`rsprof -p`, default `--unwind auto` and `--stack-size`) and
    then by `perf record -e cpu-clock --call-graph dwarf` (perf's default 8192-byte
    stack copy, or --perf-stack), one after the other on the same process. Per
    profiler: samples, lost samples (rsprof's must be 0: the profile's meta
    `lost_records`; perf's from `perf report --stats`), its CPU per 1,000 samples,
    the stack bytes asked per sample, and the file's bytes per sample. rsprof's CPU
    is the profile's meta `rsprof_cpu_s` (getrusage of its whole process: start-up,
    unwinding, symbolization, writing); perf record's is the getrusage of the child.
    perf record only copies the stacks: it unwinds and symbolizes later, in `perf
    report`/`perf script`, so the CPU of `perf script` on the file is given too.
(ii) Target slowdown at --overhead-freq Hz: `fixed_work` (a fixed amount of work on
    --threads threads, timed by itself), unprofiled vs `rsprof --unwind fp` vs
    `rsprof --unwind dwarf` (and `perf record --call-graph dwarf`), interleaved,
    medians of --reps runs, in points of slowdown over unprofiled.

    .venv/bin/python bench/cpu_unwind.py [--reps 3] [--seconds 10] [--freq 999]
        [--overhead-freq 99] [--rounds 400000] [--threads 2] [--parts cost,overhead]
        [--modes fp,dwarf,perf] [--perf-stack 8192]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, median, print_reproduce, require, rsprof_cmd, rsprof_env

TARGETS_DIR = ROOT / "tests" / "targets"
NOFP = TARGETS_DIR / "target" / "nofp" / "release"
# As tests/conftest.py NOFP_BUILD_ENV and the Makefile: RUSTFLAGS replaces the
# force-frame-pointers of tests/targets/.cargo/config.toml.
NOFP_ENV = {"RUSTFLAGS": "-C force-frame-pointers=no",
            "CARGO_PROFILE_RELEASE_DEBUG": "line-tables-only"}
OVERHEAD_MODES = ("fp", "dwarf", "perf")


def build_nofp() -> None:
    subprocess.run(["cargo", "build", "--release", "--offline", "--quiet", "--target-dir",
                    str(TARGETS_DIR / "target" / "nofp")], cwd=TARGETS_DIR,
                   env={**os.environ, **NOFP_ENV}, check=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def meta(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


def start_target(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"bench: {args[0]} printed {line!r}, not ready")
    return proc


# (i) -----------------------------------------------------------------------------

class Cost:
    """One profiler's figures for one run."""

    def __init__(self, samples: int, lost: int, cpu_s: float, stack_bytes: int,
                 file_bytes: int, later_cpu_s: float | None = None) -> None:
        self.samples = samples
        self.lost = lost
        self.cpu_s = cpu_s
        self.stack_bytes = stack_bytes
        self.file_bytes = file_bytes
        self.later_cpu_s = later_cpu_s  # perf script's unwinding and symbolizing

    def per_k(self, cpu: float) -> float:
        return 1000 * cpu / self.samples if self.samples else float("nan")


def rsprof_cost(pid: int, seconds: float, freq: int, tmp: Path, rep: int) -> Cost:
    db = tmp / f"unwind{rep}.db"
    subprocess.run(rsprof_cmd("-p", str(pid), "-q", "-d", f"{seconds}s", "--cpu-freq",
                              str(freq), "-o", str(db)),
                   env=rsprof_env(tmp / "cache"), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=seconds + 120)
    m = meta(db)
    if m.get("unwind") in (None, "fp"):
        raise SystemExit(f"bench: rsprof recorded with unwind={m.get('unwind')!r}, not CFI")
    return Cost(int(m["samples"]), int(m["lost_records"]), float(m["rsprof_cpu_s"]),
                int(m["stack_bytes"]), db.stat().st_size)


def perf_stats(data: Path) -> tuple[int, int]:
    """(samples, lost samples) of a perf.data, from `perf report --stats`: the
    event's SAMPLE and LOST_SAMPLES counts, plus the samples PERF_RECORD_LOST
    records say were dropped (when that perf prints them)."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stats"], capture_output=True,
                         text=True, check=True).stdout
    samples = lost = 0
    section = out.split("cpu-clock stats:", 1)[-1]
    if m := re.search(r"SAMPLE events:\s+(\d+)", section):
        samples = int(m.group(1))
    if m := re.search(r"LOST_SAMPLES events:\s+(\d+)", section):
        lost += int(m.group(1))
    if m := re.search(r"LOST samples:\s+(\d+)", out):
        lost += int(m.group(1))
    elif re.search(r"\bLOST events:\s+[1-9]", out):
        lost = max(lost, 1)  # records of lost samples, their count not printed
    return samples, lost


def perf_cost(pid: int, seconds: float, freq: int, stack: int, tmp: Path, rep: int) -> Cost:
    data = tmp / f"perf{rep}.data"
    before = children_cpu()
    proc = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq),
                           "--call-graph", f"dwarf,{stack}", "-p", str(pid), "-o", str(data),
                           "--", "sleep", str(seconds)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=seconds + 120)
    cpu = children_cpu() - before  # perf record and its `sleep`
    if proc.returncode != 0 or not data.exists():
        raise SystemExit(f"bench: perf record failed: {proc.stderr.strip()[-300:]}")
    samples, lost = perf_stats(data)
    before = children_cpu()
    subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    later = children_cpu() - before
    return Cost(samples, lost, cpu, stack, data.stat().st_size, later)


def part_cost(args: argparse.Namespace, tmp: Path) -> bool:
    """(i); False when rsprof lost samples."""
    runs: dict[str, list[Cost]] = {"rsprof": [], "perf": []}
    for rep in range(args.reps):
        target = start_target(str(NOFP / "two_callers"), "--threads", "4", "--seconds",
                              str(2 * args.seconds + 120))
        try:
            time.sleep(0.5)
            runs["rsprof"].append(rsprof_cost(target.pid, args.seconds, args.freq, tmp, rep))
            runs["perf"].append(perf_cost(target.pid, args.seconds, args.freq,
                                          args.perf_stack, tmp, rep))
        finally:
            target.kill()
            target.wait()
    print(f"(i) target: two_callers without frame pointers, 4 busy threads, {args.freq} Hz,"
          f" {args.seconds:g} s runs, {args.reps} runs each, medians")
    print(f"{'profiler':<30}{'samples':>9}{'lost':>6}{'CPU s/1k samples':>18}"
          f"{'stack B/sample':>16}{'file B/sample':>15}")
    ok = True
    labels = {"rsprof": "rsprof -p (--unwind auto)", "perf": "perf record --call-graph dwarf"}
    for name, costs in runs.items():
        samples = median([c.samples for c in costs])
        lost = max(c.lost for c in costs)
        per_k = median([c.per_k(c.cpu_s) for c in costs])
        file_per = median([c.file_bytes / c.samples if c.samples else 0.0 for c in costs])
        print(f"{labels[name]:<30}{samples:>9.0f}{lost:>6}{per_k:>18.3f}"
              f"{costs[0].stack_bytes:>16}{file_per:>15.0f}")
        if name == "perf":
            later = median([c.per_k(c.later_cpu_s or 0.0) for c in costs])
            print(f"{'  + perf script (unwinds)':<30}{'':>9}{'':>6}{later:>18.3f}")
        if name == "rsprof" and lost:
            ok = False
    rs = median([c.per_k(c.cpu_s) for c in runs["rsprof"]])
    pf = median([c.per_k(c.cpu_s + (c.later_cpu_s or 0.0)) for c in runs["perf"]])
    ratio = f"{rs / pf:.2f}x" if pf else "n/a"
    print(f"rsprof CPU per sample vs perf record + perf script: {ratio}")
    print(f"rsprof lost samples: {'0 (ok)' if ok else 'NOT 0 (must be 0)'}")
    return ok


# (ii) ----------------------------------------------------------------------------

def run_fixed_work(mode: str, freq: int, rounds: int, threads: int, perf_stack: int,
                   tmp: Path) -> tuple[float, float]:
    """(seconds the work took, the target's CPU seconds: user and system, so the
    kernel's sampling and stack copies in its threads count too)."""
    target = start_target(str(NOFP / "fixed_work"), "--threads", str(threads), "--rounds",
                          str(rounds), "--delay", "3")
    assert target.stdout is not None
    profiler = None
    if mode == "perf":
        profiler = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq), "--call-graph",
             f"dwarf,{perf_stack}", "-p", str(target.pid), "-o", str(tmp / "over.data")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif mode in ("fp", "dwarf"):
        db = tmp / "over.db"
        db.unlink(missing_ok=True)
        profiler = subprocess.Popen(
            rsprof_cmd("-p", str(target.pid), "-q", "--cpu-freq", str(freq), "--unwind", mode,
                       "-o", str(db)),
            env=rsprof_env(tmp / "cache"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    line = target.stdout.readline()
    _, status, usage = os.wait4(target.pid, 0)
    target.returncode = os.waitstatus_to_exitcode(status)
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)
    if not line.startswith("elapsed "):
        raise SystemExit(f"bench: fixed_work did not report its time: {line!r}")
    return float(line.split()[1]), usage.ru_utime + usage.ru_stime


def part_overhead(args: argparse.Namespace, tmp: Path) -> None:
    modes = ["none", *(m for m in args.modes.split(",") if m in OVERHEAD_MODES)]
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode in modes:
            times[mode].append(run_fixed_work(mode, args.overhead_freq, args.rounds,
                                              args.threads, args.perf_stack, tmp))
    base_wall = median([t[0] for t in times["none"]])
    base_cpu = median([t[1] for t in times["none"]])
    print(f"(ii) target: fixed_work without frame pointers, {args.threads} threads, "
          f"{args.rounds} rounds, {args.overhead_freq} Hz, {args.reps} runs each, medians")
    print(f"{'configuration':<38}{'work s':>9}{'slowdown':>10}{'target CPU s':>14}"
          f"{'slowdown':>10}")
    labels = {"none": "unprofiled", "fp": "rsprof --unwind fp",
              "dwarf": "rsprof --unwind dwarf",
              "perf": f"perf record --call-graph dwarf,{args.perf_stack}"}
    for mode in modes:
        wall = median([t[0] for t in times[mode]])
        cpu = median([t[1] for t in times[mode]])
        print(f"{labels[mode]:<38}{wall:>9.3f}{_points(wall, base_wall):>10}{cpu:>14.3f}"
              f"{_points(cpu, base_cpu):>10}")
    print("slowdown: points over unprofiled (the work's own time, and the CPU time its "
          "threads used, which a busy machine disturbs less)")


def _points(value: float, base: float) -> str:
    return f"{100 * (value / base - 1):+.1f}%" if base else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--freq", type=int, default=999)
    parser.add_argument("--perf-stack", type=int, default=8192,
                        help="perf's stack copy per sample (its default: 8192)")
    parser.add_argument("--overhead-freq", type=int, default=99)
    parser.add_argument("--rounds", type=int, default=400000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="cost,overhead",
                        help="cost: (i) recording cost; overhead: (ii) target slowdown")
    parser.add_argument("--modes", default=",".join(OVERHEAD_MODES),
                        help="(ii)'s configurations beside unprofiled: fp, dwarf, perf")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "cost" in parts or "perf" in args.modes.split(","):
        require("perf")
    print_reproduce()
    build_nofp()
    ok = True
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if "cost" in parts:
            ok = part_cost(args, tmp)
            print()
        if "overhead" in parts:
            part_overhead(args, tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
