"""`rsprof run` and the program it launches: how it ended, and a program gone in
milliseconds still symbolized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.helpers import query

pytestmark = pytest.mark.integration


def test_short_lived_program_is_symbolized_every_time(targets: Path, run_rsprof,
                                                      tmp_path: Path) -> None:
    # short_lived exits within milliseconds; its memory map is read while the shim
    # holds it at the start gate, so the sites are named on every run, not only when
    # the recorder happened to look before the program was gone.
    for run in range(5):
        db = tmp_path / f"short-{run}.db"
        result = run_rsprof("run", "-q", "-o", str(db), "--",
                            str(targets / "short_lived"), timeout=60)
        assert result.returncode == 0, result.stderr
        doc = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "100",
                                    check=True).stdout)
        unknown = [s for s in doc["sites"] if s["function"].startswith("[unknown]")]
        assert unknown == [], (run, unknown)
        leak = [s for s in doc["sites"] if s["function"] == "short_lived::leak_and_leave"]
        assert len(leak) == 1, (run, doc["sites"])
        assert (leak[0]["live_bytes"], leak[0]["allocs"]) == (8 * 4096, 8), leak
        assert leak[0]["line"] == 9


@pytest.mark.parametrize(("script", "status", "said"), [
    ("exit 3", 3, "exited with code 3"),
    ("exit 0", 0, "exited with code 0"),
    ("kill -SEGV $$", 128 + 11, "was killed by SIGSEGV"),
    ("kill -TERM $$", 128 + 15, "was killed by SIGTERM"),
])
def test_run_exits_with_the_programs_status(run_rsprof, tmp_path: Path, script: str,
                                            status: int, said: str) -> None:
    db = tmp_path / "status.db"
    result = run_rsprof("run", "-q", "-o", str(db), "--", "sh", "-c", script, timeout=60)
    assert result.returncode == status, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    stored = query(db, "SELECT exit_code FROM recordings")[0][0]
    assert stored == (status if status < 128 else 128 - status)  # -N: killed by signal N


def test_runs_own_errors_keep_their_codes(run_rsprof, tmp_path: Path) -> None:
    missing = run_rsprof("run", "-q", "-o", str(tmp_path / "x.db"), "--", "no-such-program-x")
    assert missing.returncode == 2 and "no such program" in missing.stderr
