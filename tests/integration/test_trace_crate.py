"""rsprof-trace, the opt-in Rust crate: tests/trace_app built with and without it.

Without the feature the crate leaves no trace in the binary; with it, the
statically linked recorder publishes an IDLE region that `rsprof -p PID`
attaches to, and the heap view charges exactly what `leaky_site` leaked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Target, rsprof_env
from tests.integration.helpers import TRACE_APP_DIR, build_trace_app, query

pytestmark = pytest.mark.integration

TRACE_DIR = ROOT / "rsprof-trace"
LEAK_BLOCK = 1000


@pytest.fixture(scope="module")
def app_plain() -> Path:
    return build_trace_app("plain")


@pytest.fixture(scope="module")
def app_no_macro() -> Path:
    return build_trace_app("nomacro", "no_macro")


@pytest.fixture(scope="module")
def app_profiling() -> Path:
    return build_trace_app("profiling", "profiling")


@pytest.fixture(scope="module")
def app_cpu_only() -> Path:
    return build_trace_app("cpuonly", "cpu_only")


def _nm(*args: str) -> str:
    return subprocess.run(["nm", *args], check=True, capture_output=True, text=True).stdout


def _regions_of(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"rsprof-{pid}-")]


def test_without_feature_nothing_is_linked(app_plain: Path, app_no_macro: Path,
                                           start_target: Callable[..., Target]) -> None:
    symbols = _nm(str(app_plain))
    assert "rsprof" not in symbols.lower()
    assert b"rsprof-" not in app_plain.read_bytes()
    # Same imports (malloc, free, ...) as a build without the macro line at all.
    assert _nm("-D", "--undefined-only", str(app_plain)) == \
        _nm("-D", "--undefined-only", str(app_no_macro))
    target = start_target(app_plain, "30")
    assert _regions_of(target.pid) == []


def test_with_feature_linked_and_idle(app_profiling: Path,
                                      start_target: Callable[..., Target]) -> None:
    symbols = _nm(str(app_profiling))
    assert "rsprof_shim_record_alloc" in symbols
    assert "Traced" in symbols
    assert "RSPROF_TRACE_CPU_HZ" in symbols
    # The self-sampler is linked in, not left a weak undefined reference.
    assert any(line.split()[-1] == "rsprof__sampler_enter" and line.split()[1] in "Tt"
               for line in symbols.splitlines() if len(line.split()) == 3), \
        [line for line in symbols.splitlines() if "sampler" in line]
    # No LD_PRELOAD interposer inside: malloc and free stay libc's.
    defined = {line.split()[-1] for line in symbols.splitlines() if len(line.split()) == 3
               and line.split()[1] in "TtWw"}
    assert not {"malloc", "free", "calloc", "realloc"} & defined
    target = start_target(app_profiling, "30")
    (name,) = _regions_of(target.pid)
    st = os.stat(f"/dev/shm/{name}")
    assert st.st_mode & 0o777 == 0o600
    assert st.st_uid == os.getuid()


def _leaky(db: Path) -> tuple[int, int, int, int]:
    rows = query(db, "SELECT SUM(total_allocs), SUM(total_frees), SUM(total_alloc_bytes),"
                     " SUM(total_free_bytes) FROM heap_samples"
                     " WHERE function = 'trace_app::leaky_site'")
    assert rows and rows[0][0] is not None, query(db, "SELECT function FROM heap_samples")
    allocs, frees, alloc_bytes, free_bytes = rows[0]
    return int(allocs), int(frees), int(alloc_bytes), int(free_bytes)


def _check_profile(db: Path, pid: int) -> int:
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["heap_source"] == "shim"
    assert meta["pid"] == str(pid)
    assert meta["heap_dropped"] == "0" and meta["heap_malformed"] == "0"
    allocs, frees, alloc_bytes, free_bytes = _leaky(db)
    # One block every ~10 ms for 2 s: every one made after attach, none freed.
    assert allocs >= 50, allocs
    assert frees == 0 and free_bytes == 0
    assert alloc_bytes == LEAK_BLOCK * allocs
    live = query(db, "SELECT SUM(live_bytes) FROM heap_samples"
                     " WHERE function = 'trace_app::leaky_site'")[0][0]
    assert live == LEAK_BLOCK * allocs
    # The churn site frees what it allocates (one block may be live at the end).
    churn = query(db, "SELECT SUM(total_allocs), SUM(total_frees) FROM heap_samples"
                      " WHERE function = 'trace_app::churn'")[0]
    assert churn[0] >= 50 and churn[0] - churn[1] <= 1
    tids = {int(r[0]) for r in query(db, "SELECT tid FROM threads")}
    assert tids == {pid}
    return allocs


def test_attach_charges_leaky_site(app_profiling: Path, start_target: Callable[..., Target],
                                   run_rsprof: Callable[..., subprocess.CompletedProcess[str]],
                                   tmp_path: Path) -> None:
    target = start_target(app_profiling, "60")
    db = tmp_path / "trace.db"
    run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db), check=True)
    _check_profile(db, target.pid)
    # A #[global_allocator] (the crate's wrapper) that records: no "own allocator" doubt.
    assert dict(query(db, "SELECT key, value FROM meta"))["heap_not_seen"] == ""
    # Detached: the region is IDLE again and still there for the next reader.
    assert len(_regions_of(target.pid)) == 1


def test_self_sampling_arms_a_compute_thread_started_after_attach(
        app_profiling: Path, start_target: Callable[..., Target],
        run_rsprof: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    # Statically linked: no pthread_create wrapper. "late-spin" starts 1.5 s after
    # the program (after rsprof attached) and never allocates, so only the scout
    # timer can arm it.
    target = start_target(app_profiling, "60", "1500")
    db = tmp_path / "late.db"
    run_rsprof("-p", str(target.pid), "-q", "--cpu-source", "self", "-d", "4s", "-o",
               str(db), check=True)
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["cpu_source"] == "self"
    rows = dict(query(db, "SELECT function, SUM(samples) FROM cpu_samples"
                          " WHERE thread = 'late-spin' GROUP BY function"))
    # Busy for about 2.5 of the 4 seconds at 99 Hz (~250 samples), all in spin
    # (late_spin's call to it is a tail call).
    assert set(rows) == {"trace_app::spin"}, rows
    assert rows["trace_app::spin"] >= 150, rows
    assert target.proc.poll() is None


def test_cpu_feature_alone_is_woken_by_the_reader(
        app_cpu_only: Path, start_target: Callable[..., Target],
        run_rsprof: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    # `cpu` without `heap`: no allocator wrapper, so no hook ever arms a timer;
    # rsprof's wake-up signal must.
    assert "Traced" not in _nm(str(app_cpu_only))  # the wrapper's methods are absent
    target = start_target(app_cpu_only, "60", "500")
    db = tmp_path / "cpu-only.db"
    run_rsprof("-p", str(target.pid), "-q", "--cpu-source", "self", "-d", "3s", "-o",
               str(db), check=True)
    rows = dict(query(db, "SELECT thread, SUM(samples) FROM cpu_samples GROUP BY thread"))
    assert rows.get("late-spin", 0) >= 150, rows  # ~2.5 s busy at 99 Hz
    assert rows.get("trace_app", 0) >= 20, rows  # main: 2 ms of every 10 ms
    assert query(db, "SELECT COUNT(*) FROM heap_sites")[0][0] == 0
    # No heap hooks, std's allocator: no claim that it has one of its own.
    assert dict(query(db, "SELECT key, value FROM meta"))["heap_not_seen"] == ""
    assert target.proc.poll() is None


def test_two_processes_read_independently(
        app_profiling: Path, start_target: Callable[..., Target], tmp_path: Path) -> None:
    first = start_target(app_profiling, "60")
    second = start_target(app_profiling, "60")
    dbs = {first.pid: tmp_path / "first.db", second.pid: tmp_path / "second.db"}
    procs = [subprocess.Popen([sys.executable, "-m", "rsprof", "-p", str(pid), "-q", "-d", "2s",
                               "-o", str(db)], cwd=tmp_path, env=rsprof_env(tmp_path / "c"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid, db in dbs.items()]
    for proc in procs:
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    for pid, db in dbs.items():
        _check_profile(db, pid)


@pytest.fixture(scope="module")
def sampler_stress(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/trace_app/sampler_stress.c linked with the shim and the sampler."""
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    out = tmp_path_factory.mktemp("sampler") / "sampler_stress"
    csrc = ROOT / "csrc"
    subprocess.run([cc, "-O2", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls",
                    "-pthread", "-Wall", "-Wextra", "-Werror", f"-I{csrc}", "-rdynamic",
                    "-o", str(out), str(TRACE_APP_DIR / "sampler_stress.c"),
                    str(csrc / "rsprof_shim.c"), str(csrc / "rsprof_sampler.c"), "-ldl"],
                   check=True)
    return out


def _stress(binary: Path, *args: str) -> dict[str, int]:
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    words = result.stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def test_sampler_interrupts_hooks_without_deadlock(sampler_stress: Path) -> None:
    # 4 threads in allocation hooks, SIGPROF at up to 5000 Hz, the ring left
    # full for 200 ms out of every 500 ms (hooks wait): no deadlock (the
    # program's alarm(60) would kill it), and every record decodes.
    counts = _stress(sampler_stress, "3")
    assert counts["malformed"] == 0
    assert counts["waits"] > 0  # hooks did wait for ring space
    assert counts["allocs"] == counts["frees"] > 10_000
    assert counts["samples"] > 50
    assert counts["worker_samples"] > 0  # walked from the interrupted frame into worker()


def test_sampler_leaves_a_foreign_handler_alone(sampler_stress: Path) -> None:
    counts = _stress(sampler_stress, "1", "foreign")
    assert counts["foreign_kept"] == 1
    assert counts["samples"] == 0
    assert counts["allocs"] == counts["frees"] > 1000
