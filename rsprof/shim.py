"""Where the heap shim (librsprof_shim.so, built by setup.py) lives, and the
environment a program launched with it gets."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
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
            if getattr(sys, "frozen", False):
                return lasting_copy(path)
            return path
    where = ", ".join(str(p) for p in candidates)
    raise RsprofError(f"the heap shim {SHIM_NAME} is missing (looked in {where}); "
                      "rebuild rsprof: pip install -e . or python setup.py build_ext --inplace")


def lasting_copy(shim: Path, cache_dir: Path | None = None) -> Path:
    """A copy of a one-file rsprof's shim that outlives rsprof.

    The bundle's own copy is deleted when rsprof exits, but the program may run on
    (-d, q) and the programs it execs inherit LD_PRELOAD: they would get a loader
    error. So preload a copy in `cache_dir` (default: ~/.cache/rsprof/shim), named
    by its content; the bundle's copy if it cannot be written.
    """
    import hashlib

    from rsprof.symbols.cache import atomic_write, default_cache_dir

    try:
        data = shim.read_bytes()
    except OSError:
        return shim
    if cache_dir is None:
        try:
            cache_dir = default_cache_dir().parent / "shim"
        except (RuntimeError, KeyError):  # no HOME, no passwd entry
            return shim
    target = cache_dir / hashlib.sha256(data).hexdigest()[:16] / SHIM_NAME
    try:
        if target.read_bytes() == data:
            return target
    except OSError:
        pass
    if not atomic_write(target, data):
        return shim
    with contextlib.suppress(OSError):
        target.chmod(0o755)
    return target


# What a PyInstaller one-file rsprof's bootloader adds to its own environment: the
# bundle's directory prepended to LD_LIBRARY_PATH (the user's value, if any, saved in
# LD_LIBRARY_PATH_ORIG), and the variables its parent and child processes talk with.
_LIBRARY_PATH = "LD_LIBRARY_PATH"
_LIBRARY_PATH_ORIG = "LD_LIBRARY_PATH_ORIG"
_BOOTLOADER_PREFIXES = ("_PYI_", "_MEIPASS")


def child_env(base: Mapping[str, str], frozen: bool | None = None) -> dict[str, str]:
    """The environment for a program rsprof launches: `base` as the user had it.

    In a one-file build (`frozen`, default: `sys.frozen`) LD_LIBRARY_PATH is the
    user's again (LD_LIBRARY_PATH_ORIG), or unset if they had none, so the program
    does not load the libraries bundled with rsprof; the bootloader's own variables go.
    """
    env = dict(base)
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    if not frozen:
        return env
    original = env.pop(_LIBRARY_PATH_ORIG, None)
    if original is not None:
        env[_LIBRARY_PATH] = original
    else:
        env.pop(_LIBRARY_PATH, None)
    for name in [n for n in env if n.startswith(_BOOTLOADER_PREFIXES)]:
        del env[name]
    return env
