"""The one-file binary (packaging/rsprof.spec): built once per session with PyInstaller
into a temporary directory, then run from outside the checkout with a minimal
environment (no venv, no PYTHONPATH), the way a user who downloaded it runs it."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rsprof import __version__
from rsprof._ring import SHM_VERSION
from tests.conftest import ROOT, Target
from tests.integration.tmux_pane import Pane

pytestmark = pytest.mark.integration

SPEC = ROOT / "packaging" / "rsprof.spec"
LEAK_BYTES = 100 * 4096  # heap_exact::leak_known: 100 blocks of 4 KiB never freed


def _unavailable(reason: str) -> None:
    """Skip, except under CI, where the binary is part of what is tested."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _have_pyinstaller() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import PyInstaller"], capture_output=True)
    if probe.returncode == 0:
        return True
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                              "pyinstaller>=6.0"], capture_output=True, text=True, timeout=300)
    return install.returncode == 0


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build dist/rsprof into a temporary directory (not the checkout's dist/)."""
    if not _have_pyinstaller():
        _unavailable("PyInstaller is not installed and `pip install pyinstaller` failed")
    out = tmp_path_factory.mktemp("pyinstaller")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
         "--distpath", str(out / "dist"), "--workpath", str(out / "work"), str(SPEC)],
        cwd=out, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pyinstaller failed:\n{result.stdout}\n{result.stderr}"
    exe = out / "dist" / "rsprof"
    assert exe.is_file() and os.access(exe, os.X_OK)
    sys.stderr.write(f"\n[test_binary] built {exe} ({exe.stat().st_size / 1e6:.1f} MB) "
                     f"in {time.monotonic() - started:.1f}s\n")
    return exe


@pytest.fixture(scope="session")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory (and HOME) outside the checkout."""
    work = tmp_path_factory.mktemp("binary-run")
    assert ROOT not in work.parents
    return work


def _env(home: Path) -> list[str]:
    return ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}"]


@pytest.fixture
def run_binary(binary: Path, outside: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the binary in `outside` with only PATH and HOME set; it must exit 0 and
    print no traceback."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*_env(outside), str(binary), *args], cwd=outside,
                                capture_output=True, text=True, timeout=timeout)
        what = f"rsprof {shlex.join(args)}"
        assert "Traceback" not in result.stderr, f"{what}:\n{result.stderr}"
        assert result.returncode == 0, (f"{what} exited {result.returncode}:\n"
                                        f"{result.stdout}\n{result.stderr}")
        return result

    return run


def test_version(run_binary: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    lines = run_binary("--version").stdout.splitlines()
    assert lines[0] == f"rsprof {__version__}"
    assert f"shim shared-memory layout {SHM_VERSION}" in lines
    assert any(line.startswith("python 3.") for line in lines), lines
    try:
        built = importlib.import_module("rsprof._build_info")
    except ImportError:  # an in-place build older than setup.py's build info
        assert any(line.startswith("cython ") for line in lines), lines
    else:
        assert f"cython {built.CYTHON_VERSION}" in lines


def test_run_records_the_heap_exactly(
        run_binary: Callable[..., subprocess.CompletedProcess[str]], targets: Path,
        outside: Path) -> None:
    # `rsprof run` preloads the shim from the unpacked bundle; the program gets the
    # user's environment, not the bootloader's LD_LIBRARY_PATH.
    result = run_binary("run", "-q", "-o", "b.db", "--", str(targets / "heap_exact"))
    assert "exited with code 0" in result.stderr, result.stderr
    doc = json.loads(run_binary("top", "heap", "b.db", "--json").stdout)
    first = doc["sites"][0]
    assert first["function"] == "heap_exact::leak_known", doc["sites"][:3]
    assert first["live_bytes"] == LEAK_BYTES


def test_run_gives_the_program_the_users_environment(
        run_binary: Callable[..., subprocess.CompletedProcess[str]], binary: Path,
        outside: Path) -> None:
    # The bootloader's LD_LIBRARY_PATH (the unpacked bundle) and _PYI_* variables stay
    # with rsprof; the user's LD_LIBRARY_PATH comes back.
    result = subprocess.run([*_env(outside), "LD_LIBRARY_PATH=/opt/user/lib", str(binary),
                             "run", "-q", "-o", "env.db", "--", "/usr/bin/env"],
                            cwd=outside, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert env["LD_LIBRARY_PATH"] == "/opt/user/lib"
    assert not [name for name in env if name.startswith(("_PYI", "_MEIPASS"))], env
    assert "LD_LIBRARY_PATH_ORIG" not in env
    # The preloaded shim is a copy that outlives rsprof's unpacked bundle.
    preload = Path(env["LD_PRELOAD"])
    assert preload.is_relative_to(outside / ".cache" / "rsprof" / "shim"), preload
    assert preload.is_file()

    result = subprocess.run([*_env(outside), str(binary), "run", "-q", "-o", "env2.db", "--",
                             "/usr/bin/env"], cwd=outside, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "LD_LIBRARY_PATH" not in result.stdout  # the user had none


@pytest.fixture
def tmux() -> Iterator[Callable[[str], Pane]]:
    if shutil.which("tmux") is None:
        _unavailable("tmux is not installed")
    panes: list[Pane] = []

    def start(command: str) -> Pane:
        panes.append(Pane(command, 100, 30, timeout=30.0))
        return panes[-1]

    yield start
    for pane in panes:
        pane.close()


def test_record_report_and_view(
        run_binary: Callable[..., subprocess.CompletedProcess[str]], binary: Path,
        outside: Path, targets: Path, start_target: Callable[..., Target],
        tmux: Callable[[str], Pane]) -> None:
    target = start_target(targets / "cpu_split", "--threads", "1", "--seconds", "30")
    run_binary("-p", str(target.pid), "-q", "-d", "2s", "-o", "a.db")
    assert target.proc.poll() is None  # recording ended; the program runs on

    top = run_binary("top", "cpu", "a.db").stdout
    assert "cpu_split::work_fifty" in top, top

    count = run_binary("query", "a.db", "SELECT COUNT(*) FROM cpu_samples").stdout
    assert int(count.split()[-1]) > 0, count

    for out in ("a.svg", "a.pb.gz", "a.speedscope.json", "a.folded"):  # every exporter bundled
        run_binary("export", "a.db", "-o", out)
        assert (outside / out).stat().st_size > 0
    assert "cpu_split::work_fifty" in (outside / "a.folded").read_text()

    env = shlex.join([*_env(outside), "TERM=xterm-256color"])
    pane = tmux(f"cd {shlex.quote(str(outside))} && {env} {shlex.quote(str(binary))} "
                "view a.db; echo EXIT=$?; sleep 60")
    pane.wait_for("VIEW")
    pane.wait_for("cpu_split::work_fifty")  # the saved profile's hottest function
    pane.keys("q")
    screen = pane.wait_for("EXIT=")
    assert "EXIT=0" in screen, screen
    assert "Traceback" not in screen, screen
