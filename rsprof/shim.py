"""Where the heap shim (librsprof_shim.so, built by setup.py) lives."""

from __future__ import annotations

import sys
from pathlib import Path

from rsprof.errors import RsprofError

SHIM_NAME = "librsprof_shim.so"


def _candidates() -> list[Path]:
    found = [Path(__file__).resolve().parent / SHIM_NAME]
    bundle = getattr(sys, "_MEIPASS", None)  # a PyInstaller one-file build
    if isinstance(bundle, str):
        found.append(Path(bundle) / "rsprof" / SHIM_NAME)
    return found


def shim_path() -> Path:
    """The heap shim shared library to LD_PRELOAD into a target."""
    candidates = _candidates()
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in candidates)
    raise RsprofError(f"the heap shim {SHIM_NAME} is missing (looked in {where}); "
                      "rebuild rsprof: pip install -e . or python setup.py build_ext --inplace")
