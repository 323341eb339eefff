"""Symbolization speed: rsprof cold and warm vs binutils `addr2line -f -i -C`.

Records the example for a few seconds at 999 Hz, takes every distinct
address in its main binary, then resolves them all (function, file:line and
inlined frames) with addr2line and with rsprof, each as a fresh process timed
from its start to its exit, so both pay their own start-up. Cold = an empty
rsprof cache (the C DWARF reader); warm = after the SymCache that the cold run
starts building in the background is on disk (the script waits for it, and
checks that the warm run answered from it and the cold run did not).

    .venv/bin/python bench/symbolize.py [--reps 5] [--binary PATH]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    EXAMPLE,
    ROOT,
    build_targets,
    fmt_ratio,
    median,
    print_reproduce,
    require,
    rsprof_cmd,
    rsprof_env,
)

RESOLVE = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
from rsprof.symbols.resolver import resolve_file_addresses
addrs = [int(a, 16) for a in open(sys.argv[2]).read().split()]
out = resolve_file_addresses(sys.argv[1], addrs, Path(sys.argv[3]))
frames = sum(len(v) for v in out.values())
warm = "rsprof.symbols.dwarf" in sys.modules  # only the SymCache path imports it
print(f"{time.perf_counter() - t0:.4f} {frames} {'warm' if warm else 'cold'}")
"""


def record_addresses(tmp: Path, binary: Path) -> list[int]:
    target = subprocess.Popen([str(binary), "--threads", "4"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        db = tmp / "example.db"
        subprocess.run(rsprof_cmd("-p", str(target.pid), "-q", "-d", "4s", "--cpu-freq", "999",
                                  "-o", str(db)), env=rsprof_env(tmp / "rec-cache"), check=True,
                       stderr=subprocess.DEVNULL)
    finally:
        target.kill()
        target.wait()
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT DISTINCT a.rel_address FROM addresses a JOIN modules m"
                        " ON m.id = a.module_id WHERE m.path = ?", (str(binary),)).fetchall()
    conn.close()
    return sorted(r[0] for r in rows)


def wait_for_symcache(cache: Path, timeout: float = 120.0) -> None:
    """Until the background SymCache build the cold run started has written its file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(cache.glob("*.symcache")) and not list(cache.glob("*.building")):
            return
        time.sleep(0.05)
    sys.exit(f"bench: no SymCache in {cache} after {timeout:.0f} s")


def resolved(out: str, expect: str) -> tuple[float, int]:
    """(in-process seconds, frames) of a RESOLVE run that must have been `expect`."""
    seconds, frames, how = out.split()
    if how != expect:
        sys.exit(f"bench: a {expect} run was {how}")
    return float(seconds), int(frames)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--binary", type=Path, default=EXAMPLE)
    args = parser.parse_args()
    require("addr2line")
    print_reproduce()
    build_targets()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        addrs = record_addresses(tmp, args.binary)
        if not addrs:
            sys.exit("bench: the recording holds no addresses of the binary")
        addr_file = tmp / "addrs.txt"
        addr_file.write_text("\n".join(f"{a:x}" for a in addrs))
        a2l, cold, warm, cold_inproc, warm_inproc = [], [], [], [], []
        a2l_lines = 0
        for rep in range(args.reps):
            t, out = timed(["addr2line", "-f", "-i", "-C", "-e", str(args.binary),
                            *[f"0x{a:x}" for a in addrs]])
            a2l.append(t)
            a2l_lines = out.count("\n") // 2
            cache = tmp / f"cache-{rep}"
            cmd = [sys.executable, "-c", RESOLVE, str(args.binary), str(addr_file), str(cache)]
            t, out = timed(cmd, rsprof_env())
            cold.append(t)
            t_in, frames = resolved(out, "cold")
            cold_inproc.append(t_in)
            wait_for_symcache(cache)
            t, out = timed(cmd, rsprof_env())
            warm.append(t)
            t_in, warm_frames = resolved(out, "warm")
            warm_inproc.append(t_in)
            if warm_frames != frames:
                sys.exit(f"bench: warm run gave {warm_frames} frames, cold {frames}")
    size_mb = args.binary.stat().st_size / 1e6
    print(f"binary: {args.binary.name} ({size_mb:.1f} MB), {len(addrs)} distinct addresses,"
          f" {args.reps} runs each, medians")
    print(f"frames: addr2line {a2l_lines}, rsprof {frames} (inlined frames included)")
    binary = args.binary.relative_to(ROOT) if args.binary.is_relative_to(ROOT) else args.binary
    print(f"timed: addr2line -f -i -C -e {binary} 0x... ({len(addrs)} addresses), and"
          " python -c 'resolve_file_addresses(BINARY, ADDRESSES, CACHE)' (bench/symbolize.py"
          " RESOLVE); cold: CACHE empty, warm: CACHE holding the SymCache")
    base = median(a2l)
    print(f"{'resolver':<34}{'median s':>10}{'vs addr2line':>15}")
    print(f"{'addr2line -f -i -C (process)':<34}{base:>10.3f}{'1.000x':>15}")
    print(f"{'rsprof cold (process)':<34}{median(cold):>10.3f}"
          f"{fmt_ratio(median(cold), base):>15}")
    print(f"{'rsprof warm (process)':<34}{median(warm):>10.3f}"
          f"{fmt_ratio(median(warm), base):>15}")
    print(f"{'rsprof cold (in-process, no start)':<34}{median(cold_inproc):>10.3f}"
          f"{fmt_ratio(median(cold_inproc), base):>15}")
    print(f"{'rsprof warm (in-process, no start)':<34}{median(warm_inproc):>10.3f}"
          f"{fmt_ratio(median(warm_inproc), base):>15}")


if __name__ == "__main__":
    main()
