"""Shared fixtures: the Rust test targets (built once) and running rsprof for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = ROOT / "tests" / "targets"
EXAMPLE_DIR = ROOT / "example"


def _cargo_build(crate: Path, variant: str | None = None,
                 env: dict[str, str] | None = None) -> Path:
    """`cargo build --release` of `crate`; a `variant` gets its own target directory
    (target/<variant>), built with `env` added to the environment."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed")
    cmd = ["cargo", "build", "--release", "--offline", "--quiet"]
    target_dir = crate / "target"
    if variant is not None:
        target_dir = target_dir / variant
        cmd += ["--target-dir", str(target_dir)]
    subprocess.run(cmd, cwd=crate, env={**os.environ, **(env or {})}, check=True)
    return target_dir / "release"


@pytest.fixture(scope="session")
def altstack_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/targets_c/altstack_probe.c built: a program that measures how much of a
    Rust-sized alternate signal stack the shim's SIGPROF handler uses."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    if os.uname().machine != "x86_64":
        pytest.skip("the probe sizes the stack with x86-64's SIGSTKSZ")
    out = tmp_path_factory.mktemp("probe") / "altstack_probe"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(out),
                    str(ROOT / "tests" / "targets_c" / "altstack_probe.c")], check=True)
    return out


@pytest.fixture(scope="session")
def targets() -> Path:
    """Directory holding the built test target binaries."""
    return _cargo_build(TARGETS_DIR)


# A default `cargo build --release` with `debug = "line-tables-only"`: no frame
# pointers (RUSTFLAGS replaces tests/targets/.cargo/config.toml's build.rustflags,
# which force them), file:line and inlined frames but no types. Same as the Makefile.
NOFP_BUILD_ENV = {"RUSTFLAGS": "-C force-frame-pointers=no",
                  "CARGO_PROFILE_RELEASE_DEBUG": "line-tables-only"}


@pytest.fixture(scope="session")
def targets_nofp() -> Path:
    """The test targets built WITHOUT frame pointers and with line tables only
    (tests/targets/target/nofp/release): CPU stacks need CFI unwinding there."""
    return _cargo_build(TARGETS_DIR, "nofp", NOFP_BUILD_ENV)


@pytest.fixture(scope="session")
def example_bin() -> Path:
    return _cargo_build(EXAMPLE_DIR) / "rsprof-example"


class Target:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def wait_line(self, expected: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert expected in line, f"target printed {line!r}, expected {expected!r}"
        return line


@pytest.fixture
def start_target() -> Iterator[Callable[..., Target]]:
    """Start a target binary, wait for its "ready" line; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(binary: Path | str, *args: str) -> Target:
        proc = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        target = Target(proc)
        target.wait_line("ready")
        return target

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def rsprof_env(cache_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if cache_dir is not None:
        env["XDG_CACHE_HOME"] = str(cache_dir)
    return env


@pytest.fixture
def run_rsprof(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m rsprof ARGS` for real; returns the completed process."""
    cache = tmp_path / "cache"

    def run(*args: str, cwd: Path | None = None, timeout: float = 120,
            check: bool = False, wrapper: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """`wrapper` prefixes the command (e.g. a program that drops privileges)."""
        result = subprocess.run([*wrapper, sys.executable, "-m", "rsprof", *args],
                                cwd=cwd or tmp_path,
                                env=rsprof_env(cache), capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"rsprof {args} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture
def spawn_rsprof(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `python -m rsprof ARGS` in the background (for signal tests)."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "rsprof", *args], cwd=cwd or tmp_path,
                                env=rsprof_env(tmp_path / "cache"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
