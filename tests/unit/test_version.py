"""`rsprof --version`: the version, the shim's shared-memory layout, Python and Cython."""

from __future__ import annotations

import importlib
import platform
import subprocess
import sys

import pytest

from rsprof import __version__
from rsprof._ring import SHM_VERSION
from rsprof.cli import main, version_lines
from tests.conftest import rsprof_env


def _build_info() -> object | None:
    try:
        return importlib.import_module("rsprof._build_info")
    except ImportError:
        return None


def test_lines() -> None:
    lines = version_lines()
    assert lines[0] == f"rsprof {__version__}"
    assert lines[1] == f"shim shared-memory layout {SHM_VERSION}"
    assert lines[2].startswith(f"python {platform.python_version()}")
    info = _build_info()
    expected = getattr(info, "CYTHON_VERSION", "unknown")
    assert lines[3] == f"cython {expected}"
    assert len(lines) == 4


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_flag_prints_them_and_exits_0(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([flag]) == 0
    assert capsys.readouterr().out.splitlines() == version_lines()


def test_flag_wins_over_a_missing_pid(capsys: pytest.CaptureFixture[str]) -> None:
    # Eager: no "give -p PID" error, no recording.
    assert main(["-q", "--version"]) == 0
    assert capsys.readouterr().out.startswith(f"rsprof {__version__}\n")


def test_without_build_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rsprof._build_info", None)  # import raises ImportError
    lines = version_lines()
    assert lines[0] == f"rsprof {__version__}"
    assert lines[3] == "cython unknown"
    assert lines[2] == f"python {platform.python_version()}"


def test_build_python_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("rsprof._build_info")
    fake.CYTHON_VERSION = "3.0.0"  # type: ignore[attr-defined]
    fake.PYTHON_VERSION = "3.11.0rc0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rsprof._build_info", fake)
    lines = version_lines()
    assert lines[2] == f"python {platform.python_version()} (extensions built with 3.11.0rc0)"
    assert lines[3] == "cython 3.0.0"


def test_help_lists_it() -> None:
    result = subprocess.run([sys.executable, "-m", "rsprof", "--help"], env=rsprof_env(),
                            capture_output=True, text=True, check=True)
    assert "-V, --version" in result.stdout
