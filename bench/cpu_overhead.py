"""Target slowdown while sampled: unprofiled vs `perf record` vs rsprof (perf events, and
the shim's SIGPROF self-sampler with the shim preloaded), same frequency.

The target (tests/targets fixed_work) does a fixed amount of CPU work on
2 threads and reports how long the work took. Each configuration runs
--reps times, interleaved; medians are compared.

    .venv/bin/python bench/cpu_overhead.py [--reps 7] [--rounds 400000] [--freqs 99,999]
        [--modes none,shim,perf,rsprof,self]
"""

from __future__ import annotations

import argparse
import os
import signal
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

MODES = ("none", "shim", "perf", "rsprof", "self")


def run_once(mode: str, freq: int, rounds: int, threads: int, tmp: Path) -> float:
    env = dict(os.environ)
    if mode in ("self", "shim"):
        env["LD_PRELOAD"] = str(shim_path())  # the shim in the target: self-sampling
    target = subprocess.Popen([str(TARGETS / "fixed_work"), "--threads", str(threads),
                               "--rounds", str(rounds), "--delay", "3"],
                              stdout=subprocess.PIPE, text=True, env=env)
    assert target.stdout is not None
    target.stdout.readline()  # ready
    profiler = None
    if mode == "perf":
        profiler = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", str(freq), "-g", "-p",
             str(target.pid), "-o", str(tmp / "perf.data")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif mode in ("rsprof", "self"):
        db = tmp / "bench.db"
        db.unlink(missing_ok=True)
        source = "self" if mode == "self" else "perf"
        profiler = subprocess.Popen(
            rsprof_cmd("-p", str(target.pid), "-q", "--cpu-freq", str(freq), "--cpu-source",
                       source, "-o", str(db)),
            env=rsprof_env(tmp / "cache"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    line = target.stdout.readline()
    target.wait()
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)
    if not line.startswith("elapsed "):
        raise SystemExit(f"target did not report its time: {line!r}")
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=400000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--freqs", default="99,999")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="configurations to run (none, the baseline, always runs)")
    args = parser.parse_args()
    modes = ["none", *(m for m in args.modes.split(",") if m in MODES and m != "none")]
    require("perf")
    print_reproduce()
    build_targets()
    freqs = [int(f) for f in args.freqs.split(",")]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.reps):
            for freq in freqs:
                for mode in modes:
                    key = (mode, 0 if mode in ("none", "shim") else freq)
                    if mode in ("none", "shim") and freq != freqs[0]:
                        continue
                    times.setdefault(key, []).append(
                        run_once(mode, freq, args.rounds, args.threads, tmp))
    base = median(times[("none", 0)])
    print(f"target: fixed_work, {args.threads} threads, {args.rounds} rounds, "
          f"{args.reps} runs each, medians")
    print(f"{'configuration':<22}{'median s':>10}{'vs unprofiled':>16}")
    print(f"{'unprofiled':<22}{base:>10.3f}{'1.000x':>16}")
    if "shim" in modes:
        shim = median(times[("shim", 0)])
        print(f"{'shim preloaded, idle':<22}{shim:>10.3f}{fmt_ratio(shim, base):>16}")
    labels = {"perf": "perf record", "rsprof": "rsprof", "self": "rsprof self"}
    for freq in freqs:
        for mode in (m for m in ("perf", "rsprof", "self") if m in modes):
            value = median(times[(mode, freq)])
            label = f"{labels[mode]} {freq} Hz"
            print(f"{label:<22}{value:>10.3f}{fmt_ratio(value, base):>16}")


if __name__ == "__main__":
    main()
