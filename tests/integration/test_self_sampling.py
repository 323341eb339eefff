"""CPU through the shim's SIGPROF self-sampler (--cpu-source self)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rsprof.shim import shim_path
from tests.conftest import ROOT
from tests.integration.helpers import one_line_error, query, top_cpu_json, total_percent_by_function

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def no_perf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/targets_c/no_perf.c: runs a command with perf_event_open denied
    (EACCES) by a seccomp filter, as a container's seccomp profile does."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter checks the x86-64 system call number")
    out = tmp_path_factory.mktemp("no_perf") / "no_perf"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(ROOT / "tests" / "targets_c" / "no_perf.c")], check=True)
    os.chmod(out.parent, 0o755)
    return out


def _check_split(run_rsprof, db: Path) -> None:
    doc = top_cpu_json(run_rsprof, db)
    # Inclusive: each work function also reads its thread's CPU clock
    # (`thread_cpu_ns`, a system call), and with CFI stacks those samples are
    # that helper's own (a frame-pointer walk skipped its frame).
    shares = total_percent_by_function(doc)
    assert abs(shares.get("cpu_split::work_fifty", 0) - 50) <= 3, shares
    assert abs(shares.get("cpu_split::work_thirty", 0) - 30) <= 3, shares
    assert abs(shares.get("cpu_split::work_twenty", 0) - 20) <= 3, shares
    meta = dict(query(db, "SELECT key, value FROM meta"))
    assert meta["cpu_source"] == "self"
    # Both worker threads were started by the program after the shim was loaded.
    threads = {t for (t,) in query(db, "SELECT DISTINCT thread FROM cpu_samples")}
    assert {"split-0", "split-1"} <= threads
    # CPU-time timers: about one sample per 1/rate of CPU (the kernel tick caps the
    # rate per thread; here 250 Hz), never more than asked.
    assert 400 <= doc["total_samples"] <= 2 * 5 * 499


def _split_run(db: Path, *options: str) -> list[str]:
    """`rsprof run` of the 50/30/20 target (2 threads, 5 s) at 499 Hz."""
    return ["run", "-q", "--cpu-freq", "499", *options, "-o", str(db), "--",
            str(ROOT / "tests" / "targets" / "target" / "release" / "cpu_split"),
            "--threads", "2", "--seconds", "5"]


def test_known_split_through_self_sampling(targets: Path, run_rsprof, tmp_path: Path) -> None:
    db = tmp_path / "self.db"
    result = run_rsprof(*_split_run(db, "--cpu-source", "self"), timeout=60)
    assert result.returncode == 0, result.stderr
    _check_split(run_rsprof, db)


def test_auto_falls_back_to_self_sampling_when_perf_is_denied(
        targets: Path, run_rsprof, no_perf: Path, tmp_path: Path) -> None:
    db = tmp_path / "fallback.db"
    result = run_rsprof(*_split_run(db), wrapper=[str(no_perf)], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sampling CPU with the shim's self-sampler instead" in result.stderr
    assert "perf_event_open returned EACCES" in result.stderr
    assert "Traceback" not in result.stderr
    _check_split(run_rsprof, db)


def test_forced_perf_when_denied_is_one_clear_error(targets: Path, run_rsprof, no_perf: Path,
                                                   tmp_path: Path) -> None:
    db = tmp_path / "forced.db"
    result = run_rsprof(*_split_run(db, "--cpu-source", "perf"), wrapper=[str(no_perf)],
                        timeout=60)
    assert result.returncode == 1
    line = one_line_error(result)
    # The filter, not kernel.perf_event_paranoid (2 here: it allows this), said no.
    assert "perf_event_open returned EACCES" in line, line
    assert "seccomp" in line and "paranoid=3" not in line, line


def _as_nobody() -> list[str]:
    """setpriv to uid/gid 65534 with no capability but reading files (the test's
    Python lives under root's home): no CAP_PERFMON, CAP_SYS_ADMIN or CAP_SYS_PTRACE."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search"]


def test_unprivileged_user_end_to_end(targets: Path, run_rsprof, no_perf: Path,
                                      tmp_path: Path) -> None:
    # perf_event_paranoid 2 lets a user profile the user space of their own
    # processes: rsprof uses perf. With perf denied (a value above 2 only denies
    # it on kernels with the Debian/Android patch; upstream kernels like this
    # one treat it as 2, so seccomp denies it here), rsprof falls back to the
    # self-sampler, still as that user.
    out = tmp_path / "nobody"
    out.mkdir()
    os.chmod(out, 0o777)
    os.chmod(tmp_path, 0o755)
    wrapper = _as_nobody()
    env_home = ["env", f"HOME={out}", f"XDG_CACHE_HOME={out / 'cache'}"]
    perf_db = out / "perf.db"
    result = run_rsprof(*_split_run(perf_db), wrapper=[*wrapper, *env_home], cwd=out,
                        timeout=60)
    assert result.returncode == 0, result.stderr
    assert dict(query(perf_db, "SELECT key, value FROM meta"))["cpu_source"] == "perf"
    assert os.stat(perf_db).st_uid == 65534
    self_db = out / "self.db"
    result = run_rsprof(*_split_run(self_db), wrapper=[*wrapper, *env_home, str(no_perf)],
                        cwd=out, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "self-sampler instead" in result.stderr
    _check_split(run_rsprof, self_db)


def test_thread_started_after_attach_is_self_sampled(targets: Path, run_rsprof,
                                                     tmp_path: Path) -> None:
    env = dict(os.environ, LD_PRELOAD=str(shim_path()))
    target = subprocess.Popen([str(targets / "late_thread"), "--delay", "1.5", "--seconds", "30"],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        target.stdout.readline()  # ready
        db = tmp_path / "late-self.db"
        result = run_rsprof("-p", str(target.pid), "-q", "--cpu-source", "self", "-d", "4s",
                            "-o", str(db))
        assert result.returncode == 0, result.stderr
        rows = query(db, "SELECT thread, function, SUM(samples) FROM cpu_samples"
                         " GROUP BY thread, function ORDER BY 3 DESC")
        assert rows, "no samples"
        assert rows[0][0] == "late-worker"
        assert rows[0][1] == "late_thread::late_thread_work"
        assert rows[0][2] >= 99  # busy for about 2.5 of the 4 seconds at 99 Hz
        assert dict(query(db, "SELECT key, value FROM meta"))["cpu_source"] == "self"
        assert target.poll() is None  # the target runs on after the recording
    finally:
        target.kill()
        target.wait()


def test_self_sampling_needs_the_shim(targets: Path, start_target, run_rsprof) -> None:
    target = start_target(targets / "idle", "--seconds", "30")
    result = run_rsprof("-p", str(target.pid), "-q", "--cpu-source", "self", "-d", "1s")
    assert result.returncode == 2
    assert "needs rsprof's shim" in result.stderr
