"""rsprof's own CPU while recording a 4-thread target at 99 Hz, beside `perf record`.

Starts the example (4 busy workers), records it for --seconds with rsprof and
then with perf record, and reads each profiler's CPU time from /proc in the
steady state (after a warm-up, so start-up and symbol loading are excluded)
and in total (everything, start-up included). Medians of --reps runs.

    .venv/bin/python bench/rsprof_cpu.py [--reps 3] [--seconds 12]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    EXAMPLE,
    build_targets,
    fmt_ratio,
    median,
    print_reproduce,
    proc_cpu_seconds,
    require,
    rsprof_cmd,
    rsprof_env,
)

WARMUP_S = 3.0


def measure(cmd: list[str], seconds: float, env: dict[str, str] | None) -> tuple[float, float]:
    """(steady-state % of one core, total % of one core over the whole run)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(WARMUP_S)
    cpu_a, t_a = proc_cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds - WARMUP_S)
    cpu_b, t_b = proc_cpu_seconds(proc.pid), time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    total_cpu = cpu_b  # as read just before stopping; finalization excluded
    return 100 * (cpu_b - cpu_a) / (t_b - t_a), 100 * total_cpu / (t_b - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--freq", type=int, default=99)
    args = parser.parse_args()
    require("perf")
    print_reproduce()
    build_targets()
    results: dict[str, list[tuple[float, float]]] = {"perf": [], "rsprof": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for rep in range(args.reps):
            target = subprocess.Popen([str(EXAMPLE), "--threads", "4"],
                                      stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                pid = str(target.pid)
                results["rsprof"].append(measure(
                    rsprof_cmd("-p", pid, "-q", "--cpu-freq", str(args.freq), "-o",
                               str(tmp / f"r{rep}.db")),
                    args.seconds, rsprof_env(tmp / "cache")))
                results["perf"].append(measure(
                    ["perf", "record", "-e", "cpu-clock", "-F", str(args.freq), "-g", "-p", pid,
                     "-o", str(tmp / f"p{rep}.data")], args.seconds, None))
            finally:
                target.kill()
                target.wait()
    print(f"target: rsprof-example, 4 busy threads, {args.freq} Hz, {args.seconds:.0f} s runs,"
          f" {args.reps} runs each, medians")
    print(f"{'profiler':<16}{'steady % core':>15}{'vs perf':>9}{'total % core':>14}"
          f"{'vs perf':>9}")
    p_steady = median([r[0] for r in results["perf"]])
    p_total = median([r[1] for r in results["perf"]])
    for name in ("perf", "rsprof"):
        steady = median([r[0] for r in results[name]])
        total = median([r[1] for r in results[name]])
        label = "perf record" if name == "perf" else "rsprof"
        print(f"{label:<16}{steady:>15.2f}{fmt_ratio(steady, p_steady):>9}{total:>14.2f}"
              f"{fmt_ratio(total, p_total):>9}")
    if not p_steady:
        print("(perf used no CPU that /proc could see in the steady state: n/a)")


if __name__ == "__main__":
    main()
