"""`rsprof export` as json, csv and folded stacks, and the --since/--until/--thread
selection in every report, on real recordings: totals in the export equal totals
in the database."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.integration.helpers import one_line_error, query, top_cpu_json

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def profiles(targets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CPU profile (50/30/20 on two named threads, 4 s), a heap profile (an exact
    leak of 100 x 4096 bytes early, then 2 s of lingering) and a profile of two leaks
    at known times (0.3 s and 2.4 s, then an exit at 3.5 s)."""
    import sys

    from tests.conftest import rsprof_env
    tmp = tmp_path_factory.mktemp("export")
    out = {"cpu": tmp / "cpu.db", "heap": tmp / "heap.db", "timed": tmp / "timed.db"}
    commands = {
        "cpu": ["run", "-q", "--cpu-freq", "461", "-o", str(out["cpu"]), "--",
                str(targets / "cpu_split"), "--threads", "2", "--seconds", "4"],
        "heap": ["run", "-q", "-o", str(out["heap"]), "--", str(targets / "heap_exact"),
                 "--linger", "2"],
        "timed": ["run", "-q", "-o", str(out["timed"]), "--", str(targets / "timed_leaks")],
    }
    procs = [subprocess.Popen([sys.executable, "-m", "rsprof", *args], cwd=tmp,
                              env=rsprof_env(tmp / "cache"), stderr=subprocess.PIPE, text=True)
             for args in commands.values()]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    return out


def _db_samples(db: Path, where: str = "1") -> int:
    return int(query(db, f"SELECT COALESCE(SUM(samples), 0) FROM cpu_samples WHERE {where}")
               [0][0])


def _folded(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        assert stack and count.isdigit(), line
        assert all(stack.split(";")), line  # no empty frame
        out[stack] = out.get(stack, 0) + int(count)
    return out


def test_json_export_is_the_top_cpu_rows(profiles: dict[str, Path], run_rsprof: Run,
                                         tmp_path: Path) -> None:
    db = profiles["cpu"]
    out = tmp_path / "cpu.json"
    run_rsprof("export", str(db), "-o", str(out), check=True)
    doc = json.loads(out.read_text())
    top = top_cpu_json(run_rsprof, db)
    assert doc["total_samples"] == top["total_samples"] == _db_samples(db)
    assert doc["functions"][:len(top["functions"])] == top["functions"]
    assert sum(f["self_samples"] for f in doc["functions"]) == _db_samples(db)


def test_csv_export_round_trips_with_escaping(profiles: dict[str, Path], run_rsprof: Run,
                                              tmp_path: Path) -> None:
    db = profiles["cpu"]
    run_rsprof("export", str(db), "-o", str(tmp_path / "cpu.json"), "--include-internal",
               check=True)
    run_rsprof("export", str(db), "-o", str(tmp_path / "cpu.csv"), "--include-internal",
               check=True)
    doc = json.loads((tmp_path / "cpu.json").read_text())
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cpu.csv").read_text())))
    assert [r["function"] for r in rows] == [f["function"] for f in doc["functions"]]
    assert sum(int(r["self_samples"]) for r in rows) == _db_samples(db)
    # std's generic names carry commas, quotes or angle brackets: they survive the CSV.
    assert any("," in r["function"] or "<" in r["function"] for r in rows)
    heap = profiles["heap"]
    out = run_rsprof("export", str(heap), "--kind", "heap", "-o", "-", "-f", "csv", check=True)
    heap_rows = list(csv.DictReader(io.StringIO(out.stdout)))
    leak = [r for r in heap_rows if r["function"] == "heap_exact::leak_known"]
    assert [(int(r["live_bytes"]), int(r["allocs"])) for r in leak] == [(409600, 100)]
    assert sum(int(r["alloc_bytes"]) for r in heap_rows) == query(
        heap, "SELECT SUM(alloc_bytes) FROM heap_sites")[0][0]


def test_folded_cpu_totals_and_split(profiles: dict[str, Path], run_rsprof: Run,
                                     tmp_path: Path) -> None:
    db = profiles["cpu"]
    out = tmp_path / "cpu.folded"
    run_rsprof("export", str(db), "-o", str(out), check=True)
    stacks = _folded(out.read_text())
    total = sum(stacks.values())
    assert total == _db_samples(db)
    leaf = {}
    for stack, n in stacks.items():
        frames = stack.split(";")
        for name in ("work_fifty", "work_thirty", "work_twenty"):
            if f"cpu_split::{name}" in frames:
                leaf[name] = leaf.get(name, 0) + n
    assert abs(100 * leaf["work_fifty"] / total - 50) <= 3, leaf
    assert abs(100 * leaf["work_thirty"] / total - 30) <= 3, leaf
    assert abs(100 * leaf["work_twenty"] / total - 20) <= 3, leaf
    # Root first: the thread start comes before main's workers.
    some = next(s for s in stacks if "cpu_split::work_fifty" in s)
    assert some.split(";").index("cpu_split::work_fifty") > 0


def test_folded_heap_live_and_allocated(profiles: dict[str, Path], run_rsprof: Run,
                                        tmp_path: Path) -> None:
    db = profiles["heap"]
    live = _folded(run_rsprof("export", str(db), "--kind", "heap", "--live", "-o", "-",
                              "-f", "folded", check=True).stdout)
    allocated = _folded(run_rsprof("export", str(db), "--kind", "heap", "-o", "-", "-f",
                                   "folded", check=True).stdout)
    assert sum(live.values()) == query(db, "SELECT SUM(live_bytes) FROM heap_sites")[0][0]
    assert sum(allocated.values()) == query(db, "SELECT SUM(alloc_bytes) FROM heap_sites")[0][0]
    leak = sum(n for s, n in live.items() if "heap_exact::leak_known" in s.split(";"))
    assert leak == 409600


def test_selection_applies_to_top_and_every_table_format(profiles: dict[str, Path],
                                                         run_rsprof: Run,
                                                         tmp_path: Path) -> None:
    db = profiles["cpu"]
    window = "elapsed_s >= 1 AND elapsed_s < 3"
    expected = _db_samples(db, window)
    assert 0 < expected < _db_samples(db)
    top = top_cpu_json(run_rsprof, db, "--since", "1s", "--until", "3s")
    assert top["total_samples"] == expected
    assert top["selection"] == {"since_s": 1.0, "until_s": 3.0, "threads": []}
    folded = _folded(run_rsprof("export", str(db), "-o", "-", "-f", "folded", "--since", "1s",
                                "--until", "3s", check=True).stdout)
    assert sum(folded.values()) == expected
    # One thread, by name and by tid.
    name, tid = query(db, "SELECT name, tid FROM threads WHERE name = 'split-0'")[0]
    one = _db_samples(db, f"tid = {tid}")
    assert 0 < one < _db_samples(db)
    assert top_cpu_json(run_rsprof, db, "--thread", "split-0")["total_samples"] == one
    by_tid = _folded(run_rsprof("export", str(db), "-o", "-", "-f", "folded", "--thread",
                                str(tid), check=True).stdout)
    assert sum(by_tid.values()) == one
    both = top_cpu_json(run_rsprof, db, "--thread", name, "--since", "1s", "--until", "3s")
    assert both["total_samples"] == _db_samples(db, f"tid = {tid} AND {window}")
    text = run_rsprof("top", "cpu", str(db), "--since", "1s", check=True).stdout
    assert "selection: 1s..end" in text
    # The stack formats read through the same selection.
    window = ("--since", "1s", "--until", "3s")
    speedscope = json.loads(run_rsprof("export", str(db), "-o", "-", "-f", "speedscope",
                                       *window, check=True).stdout)
    # In the nanoseconds of CPU the samples stand for.
    assert {p["unit"] for p in speedscope["profiles"]} == {"nanoseconds"}
    elapsed = ("round(r.start_time + c.interval * r.interval_s"
               " - (SELECT min(start_time) FROM recordings), 3)")
    window_ns = query(db, "SELECT SUM(c.ns) FROM cpu_counts c JOIN recordings r"
                          f" ON r.id = c.recording_id WHERE {elapsed} >= 1 AND {elapsed} < 3")[0][0]
    assert sum(sum(p["weights"]) for p in speedscope["profiles"]) == window_ns
    svg = ElementTree.fromstring(run_rsprof("export", str(db), "-o", "-", "-f", "svg",
                                            *window, check=True).stdout)
    root_values = [int(g.get("data-v", "0")) for g in svg.iter("{http://www.w3.org/2000/svg}g")
                   if g.get("data-d") == "0"]
    assert root_values == [expected]
    pprof = tmp_path / "window.pb.gz"
    run_rsprof("export", str(db), "-o", str(pprof), *window, "--thread", "split-0", check=True)
    assert pprof.read_bytes()[:2] == b"\x1f\x8b"  # gzip; its sums: test_export_pprof.py


def test_heap_window(profiles: dict[str, Path], run_rsprof: Run) -> None:
    db = profiles["heap"]
    whole = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "100",
                                  check=True).stdout)
    everything = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "100",
                                       "--since", "0s", "--until", "1h", check=True).stdout)
    assert everything["sites"] == whole["sites"]
    # The work (0.3 s after start, well under 0.7 s long) is all in the first interval.
    first = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "100", "--until",
                                  "1s", check=True).stdout)
    leak = [s for s in first["sites"] if s["function"] == "heap_exact::leak_known"]
    assert leak and leak[0]["live_bytes"] == 409600 and leak[0]["allocs"] == 100

    def work(doc: dict[str, Any]) -> list[tuple[str, int, int]]:
        return sorted((s["function"], s["allocs"], s["alloc_bytes"]) for s in doc["sites"]
                      if s["function"].startswith("heap_exact::"))
    assert work(first) == work(whole) and len(work(whole)) >= 5
    # After the work, nothing is allocated any more, but the leak is still held.
    late = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "100", "--since",
                                 "1s", "--until", "2s", check=True).stdout)
    leak = [s for s in late["sites"] if s["function"] == "heap_exact::leak_known"]
    assert leak and leak[0]["live_bytes"] == 409600 and leak[0]["allocs"] == 0
    assert late["allocs"] == 0 and late["alloc_bytes"] == 0


def _heap_sites(run_rsprof: Run, db: Path, *window: str) -> tuple[dict[str, Any],
                                                                  dict[str, dict[str, Any]]]:
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "1000", *window,
                                check=True).stdout)
    sites: dict[str, dict[str, Any]] = {}
    for s in doc["sites"]:
        assert s["function"] not in sites or not s["function"].startswith("timed_leaks::")
        sites[s["function"]] = s
    return doc, sites


def test_heap_changes_are_filed_in_the_interval_they_happened(
        profiles: dict[str, Path], run_rsprof: Run) -> None:
    """timed_leaks: leak_early (24576 bytes) 0.3 s after start, leak_late (57344 bytes)
    2.4 s after start. Windows on interval boundaries, no slack: a change filed an
    interval late (by the time it was written, not when it happened) fails."""
    db = profiles["timed"]
    early, late = "timed_leaks::leak_early", "timed_leaks::leak_late"
    doc, sites = _heap_sites(run_rsprof, db, "--until", "1s")
    assert sites[early]["allocs"] == 1 and sites[early]["alloc_bytes"] == 24576
    assert sites[early]["live_bytes"] == 24576
    assert late not in sites
    # Nothing of ours happens in the second interval: the early leak is only held.
    doc, sites = _heap_sites(run_rsprof, db, "--since", "1s", "--until", "2s")
    assert late not in sites
    assert sites[early]["allocs"] == 0 and sites[early]["live_bytes"] == 24576
    assert doc["allocs"] == 0
    # The late leak alone is allocated in [2 s, 3 s).
    doc, sites = _heap_sites(run_rsprof, db, "--since", "2s", "--until", "3s")
    assert sites[late]["allocs"] == 1 and sites[late]["alloc_bytes"] == 57344
    assert sites[late]["live_bytes"] == 57344
    assert [f for f, s in sites.items() if s["allocs"]] == [late]
    assert doc["allocs"] == 1 and doc["alloc_bytes"] == 57344
    assert sites[early]["allocs"] == 0 and sites[early]["live_bytes"] == 24576
    doc, sites = _heap_sites(run_rsprof, db, "--since", "3s")
    assert doc["allocs"] == 0 and sites[late]["allocs"] == 0


def test_bad_export_requests_are_one_clear_line(profiles: dict[str, Path], run_rsprof: Run,
                                               tmp_path: Path) -> None:
    db = str(profiles["cpu"])
    cases = [
        (("export", db, "-o", str(tmp_path / "x.unknown")), 2, "cannot tell the format"),
        (("export", db, "-o", str(tmp_path / "x.svg"), "--live"), 2, "--live"),
        (("export", db, "-o", "-", "-f", "folded", "--thread", "nope"), 2, "--thread nope"),
        (("export", db, "-o", "-", "-f", "folded", "--since", "3s", "--until", "1s"), 2,
         "--until"),
        (("export", str(profiles["heap"]), "--kind", "heap", "-o", "-", "-f", "json",
          "--thread", "main"), 2, "heap records carry no thread"),
        (("export", db, "-o", str(tmp_path / "no-such-dir" / "x.json")), 1, "cannot write"),
        (("export", str(tmp_path / "missing.db"), "-o", str(tmp_path / "y.json")), 1,
         "missing.db"),
        (("top", "cpu", db, "--since", "soon"), 2, "--since"),
        # options a format would ignore are refused, not dropped silently
        (("export", str(profiles["heap"]), "--kind", "heap", "--live", "-o",
          str(tmp_path / "h.pb.gz")), 2, "--live goes with folded, svg or speedscope, not pprof"),
        (("export", str(profiles["heap"]), "--kind", "heap", "--live", "-o", "-", "-f",
          "json"), 2, "--live goes with folded, svg or speedscope, not json"),
        (("export", db, "-n", "5", "-o", str(tmp_path / "c.svg")), 2,
         "-n/--limit goes with json or csv, not svg"),
        (("export", db, "-n", "5", "-o", "-", "-f", "folded"), 2,
         "-n/--limit goes with json or csv, not folded"),
        (("export", db, "--include-internal", "-o", str(tmp_path / "c.speedscope.json")), 2,
         "--include-internal goes with json or csv, not speedscope"),
        (("export", db, "--include-internal", "-o", str(tmp_path / "c.pb.gz")), 2,
         "--include-internal goes with json or csv, not pprof"),
    ]
    for args, code, text in cases:
        result = run_rsprof(*args)
        assert result.returncode == code, (args, result.stderr)
        assert text in one_line_error(result), (args, result.stderr)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert not list(tmp_path.glob("c.*")) and not list(tmp_path.glob("h.*"))  # nothing written
    # and where they apply they are taken
    for args in (("--kind", "heap", "--live", "-f", "folded"), ("-n", "1", "-f", "csv"),
                 ("--include-internal", "-f", "json")):
        profile = str(profiles["heap"] if "heap" in args else profiles["cpu"])
        assert run_rsprof("export", profile, "-o", "-", *args).returncode == 0, args
