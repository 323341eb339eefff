"""Run every rsprof benchmark in turn (the figures in docs/benchmarks.md).

    .venv/bin/python bench/run_all.py        # or: make bench
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["cpu_overhead.py", "cpu_unwind.py", "symbolize.py", "rsprof_cpu.py",
           "heap_overhead.py", "heap_scale.py", "view_open.py", "tui_keys.py"]


def main() -> int:
    status = 0
    for script in SCRIPTS:
        print(f"== bench/{script}", flush=True)
        status |= subprocess.run([sys.executable, str(HERE / script)], cwd=HERE).returncode
        print(flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
