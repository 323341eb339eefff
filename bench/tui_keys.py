"""Key response of the TUI with 10,000 rows, against the same with 100 rows.

The real prompt_toolkit Application runs on a pipe input and a 160x48 dummy
output; for each key the time from writing it to the end of the next redraw
is measured (`after_render`). Keys: j, k, G, g, s (re-sort), 2 / 1 (switch
view), c (chart), h / l (pan). Goal: every key answers within 100 ms with
10,000 rows.

    .venv/bin/python bench/tui_keys.py [--reps 5]
"""

from __future__ import annotations

import argparse
import threading
import time

from common import print_reproduce
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from rsprof.tui.app import TuiApp
from rsprof.tui.snapshot import RECORDING, CpuRow, MemRow, Snapshot

KEYS = ["j", "k", "G", "g", "s", "s", "s", "2", "1", "c", "c", "h", "l", "j"]
GOAL_S = 0.100


class BigOutput(DummyOutput):
    def get_size(self) -> Size:
        return Size(rows=48, columns=160)


def snapshot(rows: int, intervals: int = 600) -> Snapshot:
    cpu = tuple(CpuRow(key=f"f{i}", function=f"crate::module::function_{i:05d}",
                       location=f"src/module_{i % 97}.rs:{i % 1000}", samples=rows - i,
                       total_pct=100.0 * (rows - i) / rows, live_pct=(i * 7) % 100 / 10,
                       series={k: float((i + k) % 13) for k in range(0, intervals, 7)})
                for i in range(rows))
    mem = tuple(MemRow(key=f"m{i}", function=f"crate::alloc_site_{i:05d}",
                       location=f"src/alloc_{i % 31}.rs:{i}", live_bytes=(i * 4099) % 10**7,
                       alloc_bytes=(i * 65537) % 10**9, allocs=i * 3,
                       series={k: float(i * k) for k in range(0, intervals, 11)})
                for i in range(rows))
    mem = tuple(sorted(mem, key=lambda r: (-r.live_bytes, -r.alloc_bytes, r.function)))
    return Snapshot(state=RECORDING, process_name="bench", pid=1, elapsed_s=600.0,
                    samples=rows * 10, interval_s=1.0, intervals=intervals, dropped=0, lost=0,
                    cpu_rows=cpu, mem_rows=mem, has_heap=True, version=1)


def key_times(rows: int) -> list[float]:
    rendered = threading.Event()
    times: list[float] = []
    with create_pipe_input() as pipe:
        tui = TuiApp(snapshot(rows), live=True, input=pipe, output=BigOutput(),
                     refresh_s=3600)
        tui.app.after_render += lambda _: rendered.set()
        runner = threading.Thread(target=tui.run, daemon=True)
        runner.start()
        if not rendered.wait(10):
            raise SystemExit("the TUI did not draw")
        for key in KEYS:
            rendered.clear()
            started = time.perf_counter()
            pipe.send_text(key)
            if not rendered.wait(10):
                raise SystemExit(f"no redraw after {key!r}")
            times.append(time.perf_counter() - started)
        pipe.send_text("q")
        runner.join(10)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print_reproduce()
    small: list[float] = []
    big: list[float] = []
    for _ in range(args.reps):
        small += key_times(100)
        big += key_times(10_000)
    small.sort()
    big.sort()

    def q(values: list[float], frac: float) -> float:
        return values[min(len(values) - 1, int(frac * len(values)))]

    print(f"{len(KEYS)} keys x {args.reps} runs, 160x48; key -> redraw done, seconds")
    print(f"{'rows':>8}{'median':>10}{'p90':>10}{'max':>10}")
    for label, values in (("100", small), ("10,000", big)):
        print(f"{label:>8}{q(values, 0.5):>10.4f}{q(values, 0.9):>10.4f}{values[-1]:>10.4f}")
    ratio = q(big, 0.5) / q(small, 0.5) if q(small, 0.5) else float("inf")
    print(f"median 10,000 rows vs 100 rows: {ratio:.2f}x")
    verdict = "PASS" if big[-1] < GOAL_S else "FAIL"
    print(f"goal: every key < {GOAL_S * 1000:.0f} ms with 10,000 rows: max "
          f"{big[-1] * 1000:.1f} ms {verdict}")


if __name__ == "__main__":
    main()
