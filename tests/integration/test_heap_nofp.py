"""Heap stacks of a release build without frame pointers: leaks in std's paths.

A default `cargo build --release` has no frame pointers, and the blocks a Rust
program leaks are allocated deep inside std (`RawVec::grow_one` and
`finish_grow` for a growing Vec, `alloc::fmt::format_inner` for `format!`,
hashbrown's resize for a HashMap). Heap stacks walked by frame pointers stop
there, so `top heap` charged the leaks to `__rust_alloc`/`__rust_realloc`
(or `alloc`/`realloc` in alloc.rs) instead of the user's functions. With
`--unwind auto` (the default) the shim unwinds heap stacks with every module's
CFI rules, which rsprof publishes for it (`meta.heap_unwind` = `cfi`).

tests/targets/src/bin/leak_kinds.rs leaks through a Vec's growth (`grow_vec`),
`format!`ed Strings (`format_strings`) and HashMap inserts (`insert_map`), and
knows exactly what each of them leaves live: its #[global_allocator] counts
every allocation and free per running function and writes `leak <function>
<bytes> <blocks>` (see its doc comment for why that wrapper is never the
charged frame). Here that truth must be what `rsprof top heap --json` shows:

- the no-frame-pointer build (`targets_nofp`) under `rsprof run`, exactly;
- the same build with `--unwind fp`: not all three are found (the bug, which
  is why the CFI matters);
- the frame-pointer build (`targets`), exactly, with the same numbers;
- rsprof-trace: tests/trace_app built without frame pointers with
  `--features profiling`, run with `--leak-kinds` (it leaks the same three
  ways once `rsprof -p PID` records it, and prints its own count), exactly;
  and its frame-pointer build too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Target, rsprof_env
from tests.integration.helpers import RunRsprof, build_trace_app, query

pytestmark = pytest.mark.integration

FUNCTIONS = ("grow_vec", "format_strings", "insert_map")
# leak_kinds' defaults, spelled out so the expected block counts are visible here.
VEC_LEN, STRINGS, MAP_INSERTS = 100_000, 1000, 10_000
EXPECTED_BLOCKS = {"grow_vec": 1, "format_strings": STRINGS, "insert_map": 1}

Truth = dict[str, tuple[int, int]]  # function (bare name) -> (live bytes, live blocks)


def _parse_truth(lines: list[str]) -> Truth:
    truth: Truth = {}
    for line in lines:
        word, function, live_bytes, blocks = line.split()
        assert word == "leak", line
        truth[function] = (int(live_bytes), int(blocks))
    assert set(truth) == set(FUNCTIONS), lines
    for function in FUNCTIONS:
        assert truth[function][1] == EXPECTED_BLOCKS[function], truth
        assert truth[function][0] > 0, truth
    return truth


class Recorded:
    """One `rsprof run` of leak_kinds: its profile and the program's own count."""

    def __init__(self, db: Path, truth: Truth) -> None:
        self.db = db
        self.truth = truth


def _record(binary: Path, work: Path, name: str, *rsprof_args: str) -> Recorded:
    db = work / f"{name}.db"
    truth_file = work / f"{name}.truth"
    result = subprocess.run(
        [sys.executable, "-m", "rsprof", "run", "-q", *rsprof_args, "-o", str(db), "--",
         str(binary), "--vec", str(VEC_LEN), "--strings", str(STRINGS),
         "--map", str(MAP_INSERTS), "--truth", str(truth_file), "--linger", "0.2"],
        cwd=work, env=rsprof_env(work / "cache"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "exited with code 0" in result.stderr, result.stderr
    return Recorded(db, _parse_truth(truth_file.read_text().splitlines()))


def _charged(run_rsprof: RunRsprof, db: Path, crate: str) -> Truth:
    """`rsprof top heap --json`: (live bytes, live blocks) per charged function of
    `crate`, summed over its sites (lines), keyed by the bare name."""
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "100000",
                                check=True).stdout)
    charged: dict[str, list[int]] = {}
    for site in doc["sites"]:
        row = charged.setdefault(site["function"], [0, 0])
        row[0] += site["live_bytes"]
        row[1] += site["allocs"] - site["frees"]
    out: Truth = {}
    for function in FUNCTIONS:
        live_bytes, blocks = charged.get(f"{crate}::{function}", [0, 0])
        out[function] = (live_bytes, blocks)
    return out


def _top_sites(run_rsprof: RunRsprof, db: Path) -> str:
    """The biggest live sites, for failure messages: what got the charge instead."""
    doc = json.loads(run_rsprof("top", "heap", str(db), "--json", "-n", "6",
                                check=True).stdout)
    return "; ".join(f"{s['function']} {s['live_bytes']} B in {s['allocs'] - s['frees']}"
                     f" blocks" for s in doc["sites"])


def _meta(db: Path) -> dict[str, str]:
    return dict(query(db, "SELECT key, value FROM meta"))


def _complete(db: Path) -> None:
    meta = _meta(db)
    assert meta["heap_dropped"] == "0" and meta["heap_malformed"] == "0", meta
    # No stack of the wrapper that counts the truth may take the charge.
    assert query(db, "SELECT COUNT(*) FROM heap_samples WHERE function LIKE '%Counting%'"
                 ) == [(0,)]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heap_nofp")


@pytest.fixture(scope="module")
def nofp_auto(targets_nofp: Path, work: Path) -> Recorded:
    return _record(targets_nofp / "leak_kinds", work, "nofp-auto")


@pytest.fixture(scope="module")
def nofp_fp(targets_nofp: Path, work: Path) -> Recorded:
    return _record(targets_nofp / "leak_kinds", work, "nofp-fp", "--unwind", "fp")


@pytest.fixture(scope="module")
def fp_build(targets: Path, work: Path) -> Recorded:
    return _record(targets / "leak_kinds", work, "fp-auto")


def test_no_frame_pointer_build_is_exact(nofp_auto: Recorded, run_rsprof: RunRsprof) -> None:
    assert _meta(nofp_auto.db)["heap_unwind"] == "cfi"
    _complete(nofp_auto.db)
    charged = _charged(run_rsprof, nofp_auto.db, "leak_kinds")
    assert charged == nofp_auto.truth, (
        f"charged {charged}, truth {nofp_auto.truth}; biggest live sites: "
        f"{_top_sites(run_rsprof, nofp_auto.db)}")


def test_frame_pointers_alone_miss_them(nofp_fp: Recorded, run_rsprof: RunRsprof) -> None:
    # The bug itself: frame-pointer walks stop inside std's allocation paths.
    assert _meta(nofp_fp.db)["heap_unwind"] == "fp"
    assert _meta(nofp_fp.db)["heap_dropped"] == "0"
    charged = _charged(run_rsprof, nofp_fp.db, "leak_kinds")
    missed = [f for f in FUNCTIONS if charged[f] != nofp_fp.truth[f]]
    assert missed, (f"--unwind fp found every leak exactly ({charged}): the no-FP build"
                    " no longer shows why heap stacks need the CFI")


def test_frame_pointer_build_gives_the_same_numbers(
        fp_build: Recorded, nofp_auto: Recorded, run_rsprof: RunRsprof) -> None:
    _complete(fp_build.db)
    assert fp_build.truth == nofp_auto.truth  # the same program, built two ways
    charged = _charged(run_rsprof, fp_build.db, "leak_kinds")
    assert charged == fp_build.truth, (
        f"charged {charged}, truth {fp_build.truth}; biggest live sites: "
        f"{_top_sites(run_rsprof, fp_build.db)}")


# rsprof-trace: the recorder linked into the program, attached with `rsprof -p`.

@pytest.fixture(scope="module")
def trace_app_nofp() -> Path:
    return build_trace_app("profiling", "profiling", frame_pointers=False)


@pytest.fixture(scope="module")
def trace_app_fp() -> Path:
    return build_trace_app("profiling", "profiling")


def _attach_leak_kinds(app: Path, start_target: Callable[..., Target], run_rsprof: RunRsprof,
                       db: Path) -> Truth:
    """Start `app --leak-kinds` (it waits until a reader records it, then leaks and
    prints its count), record it for 2 s with `rsprof -p`, return its count."""
    target = start_target(app, "--leak-kinds")
    run_rsprof("-p", str(target.pid), "-q", "-d", "2s", "-o", str(db), check=True)
    lines = [target.wait_line("leak ").strip() for _ in FUNCTIONS]
    target.wait_line("done")
    meta = _meta(db)
    assert meta["heap_source"] == "shim" and meta["pid"] == str(target.pid)
    return _parse_truth(lines)


def test_trace_crate_no_frame_pointer_build_is_exact(
        trace_app_nofp: Path, start_target: Callable[..., Target], run_rsprof: RunRsprof,
        tmp_path: Path) -> None:
    db = tmp_path / "trace-nofp.db"
    truth = _attach_leak_kinds(trace_app_nofp, start_target, run_rsprof, db)
    assert _meta(db)["heap_unwind"] == "cfi"
    _complete(db)
    charged = _charged(run_rsprof, db, "trace_app")
    assert charged == truth, (f"charged {charged}, truth {truth}; biggest live sites: "
                              f"{_top_sites(run_rsprof, db)}")


def test_trace_crate_frame_pointer_build_is_exact(
        trace_app_fp: Path, start_target: Callable[..., Target], run_rsprof: RunRsprof,
        tmp_path: Path) -> None:
    db = tmp_path / "trace-fp.db"
    truth = _attach_leak_kinds(trace_app_fp, start_target, run_rsprof, db)
    _complete(db)
    charged = _charged(run_rsprof, db, "trace_app")
    assert charged == truth, (f"charged {charged}, truth {truth}; biggest live sites: "
                              f"{_top_sites(run_rsprof, db)}")
