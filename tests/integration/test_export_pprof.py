"""pprof export of real recordings, decoded with the protobuf package.

The exporter has its own wire encoder; these tests decode its output with
Google's protobuf runtime against pprof's published schema (our copy in
tests/data/profile.proto, compiled at test time with grpc_tools.protoc), and
check it against the database it came from.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rsprof.export.pprof import write_pprof
from rsprof.export.stacks import StackSet, load_cpu_stacks, load_heap_stacks
from rsprof.report.selection import Selection
from rsprof.storage.writer import decompress_ids
from rsprof.symbols.elf import read_elf_identity
from tests.conftest import ROOT, rsprof_env
from tests.integration.helpers import query, self_percent_by_function, top_cpu_json

pytestmark = pytest.mark.integration

PROTO = ROOT / "tests" / "data" / "profile.proto"
LEAK_COUNT, LEAK_SIZE = 100, 4096
SPLIT = {"work_fifty": 50, "work_thirty": 30, "work_twenty": 20}
_compiled: dict[str, ModuleType] = {}


def compile_profile_proto(out_dir: Path) -> ModuleType:
    """tests/data/profile.proto compiled with grpc_tools.protoc and imported
    (once per session: the protobuf runtime registers the schema globally)."""
    if "pb2" in _compiled:
        return _compiled["pb2"]
    try:
        import google.protobuf  # noqa: F401
        from grpc_tools import protoc
    except ImportError as e:
        pytest.skip(f"needs the protobuf and grpcio-tools packages ({e})")
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out_dir}", str(PROTO)])
    assert rc == 0, "protoc failed on tests/data/profile.proto"
    spec = importlib.util.spec_from_file_location("rsprof_test_profile_pb2",
                                                  out_dir / "profile_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _compiled["pb2"] = module
    return module


def decode(pb2: ModuleType, gz: bytes) -> Any:
    profile = pb2.Profile()
    profile.ParseFromString(gzip.decompress(gz))
    return profile


def export(sset: StackSet) -> bytes:
    buf = io.BytesIO()
    write_pprof(sset, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_profile_proto(tmp_path_factory.mktemp("pb2"))


def _rsprof(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m rsprof ARGS`, as the run_rsprof fixture runs it (module scope here)."""
    result = subprocess.run([sys.executable, "-m", "rsprof", *args], cwd=work,
                            env=rsprof_env(work / "cache"), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def _split(work: Path, db: Path) -> dict[str, float]:
    """rsprof's own self shares of the three work functions (`top cpu --json`)."""
    shares = self_percent_by_function(top_cpu_json(
        lambda *args, check=False: _rsprof(work, *args), db))
    return {f: shares.get(f"cpu_split::{f}", 0.0) for f in SPLIT}


@pytest.fixture(scope="module")
def cpu_db(targets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s recording of cpu_split with 2 threads, at 461 Hz (cpu_split's cycles
    have random lengths, so no sampling rate stays in step with them)."""
    work = tmp_path_factory.mktemp("pprof_cpu")
    db = work / "cpu.db"
    _rsprof(work, "run", "-q", "--cpu-freq", "461", "-o", str(db), "--",
            str(targets / "cpu_split"), "--threads", "2", "--seconds", "3")
    return db


@pytest.fixture(scope="module")
def heap_db(targets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pprof_heap")
    db = work / "heap.db"
    _rsprof(work, "run", "-q", "-o", str(db), "--", str(targets / "heap_exact"), "--linger",
            "0.3")
    return db


def _load(db: Path, kind: str) -> StackSet:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        loader = load_cpu_stacks if kind == "cpu" else load_heap_stacks
        return loader(conn, Selection())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cpu_pprof(cpu_db: Path) -> bytes:
    return export(_load(cpu_db, "cpu"))


@pytest.fixture(scope="module")
def heap_pprof(heap_db: Path) -> bytes:
    return export(_load(heap_db, "heap"))


class Decoded:
    """A decoded profile with its references resolved (and checked)."""

    def __init__(self, profile: Any) -> None:
        self.p = profile
        self.s: list[str] = list(profile.string_table)
        assert self.s[0] == ""
        self.types = [(self.s[v.type], self.s[v.unit]) for v in profile.sample_type]
        self.functions = {f.id: f for f in profile.function}
        self.locations = {loc.id: loc for loc in profile.location}
        self.mappings = {m.id: m for m in profile.mapping}
        # Ids are nonzero and unique, and every reference resolves.
        for table, items in ((self.functions, profile.function),
                             (self.locations, profile.location),
                             (self.mappings, profile.mapping)):
            assert 0 not in table and len(table) == len(items)
        for f in profile.function:
            for index in (f.name, f.system_name, f.filename):
                assert 0 <= index < len(self.s)
        for m in profile.mapping:
            assert 0 <= m.filename < len(self.s) and 0 <= m.build_id < len(self.s)
        for loc in profile.location:
            assert loc.line, f"location {loc.id} has no line"
            for line in loc.line:
                assert line.function_id in self.functions
            if loc.mapping_id:
                m = self.mappings[loc.mapping_id]
                assert m.memory_start <= loc.address < m.memory_limit
        for sample in profile.sample:
            assert len(sample.value) == len(self.types)
            assert sample.location_id
            for lid in sample.location_id:
                assert lid in self.locations
            for label in sample.label:
                assert 0 < label.key < len(self.s) and 0 <= label.str < len(self.s)

    def totals(self) -> dict[str, int]:
        sums = [0] * len(self.types)
        for sample in self.p.sample:
            for i, v in enumerate(sample.value):
                sums[i] += v
        return {t: v for (t, _), v in zip(self.types, sums, strict=True)}

    def function_name(self, line: Any) -> str:
        return self.s[self.functions[line.function_id].name]

    def names(self, location_id: int) -> list[str]:
        """A location's functions, innermost (inlined) first."""
        return [self.function_name(line) for line in self.locations[location_id].line]

    def by_real_leaf(self, value_type: str) -> dict[str, int]:
        """Sample values by the real function of the leaf location (its last Line):
        self time, with inlined callees charged to the function they were
        inlined into."""
        i = [t for t, _ in self.types].index(value_type)
        out: dict[str, int] = defaultdict(int)
        for sample in self.p.sample:
            out[self.names(sample.location_id[0])[-1]] += sample.value[i]
        return out

    def containing(self, function: str, value_type: str) -> int:
        """The sum of `value_type` over samples with `function` anywhere in the stack."""
        i = [t for t, _ in self.types].index(value_type)
        return sum(sample.value[i] for sample in self.p.sample
                   if any(function in self.names(lid) for lid in sample.location_id))

    def multi_line_locations(self) -> list[list[str]]:
        return [self.names(loc.id) for loc in self.p.location if len(loc.line) > 1]


def _leaf_functions_in_db(db: Path) -> dict[str, int]:
    """Samples by the real function (deepest frame) of each stack's first address,
    straight from the tables."""
    real: dict[int, tuple[int, str]] = {}
    for address_id, depth, function in query(
            db, "SELECT af.address_id, af.depth, f.function FROM address_frames af"
                " JOIN frames f ON f.id = af.frame_id"):
        if depth >= real.get(address_id, (-1, ""))[0]:
            real[address_id] = (depth, function)
    first = {sid: decompress_ids(blob)[0]
             for sid, blob in query(db, "SELECT id, address_ids FROM stacks")}
    out: dict[str, int] = defaultdict(int)
    for sid, n in query(db, "SELECT stack_id, SUM(samples) FROM cpu_counts GROUP BY 1"):
        out[real[first[sid]][1]] += n
    return dict(out)


def test_cpu_profile_matches_the_database(pb2: ModuleType, cpu_db: Path,
                                          cpu_pprof: bytes) -> None:
    d = Decoded(decode(pb2, cpu_pprof))
    assert d.types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert d.s[d.p.default_sample_type] == "cpu"
    assert (d.s[d.p.period_type.type], d.s[d.p.period_type.unit]) == ("cpu", "nanoseconds")
    assert d.p.period == round(1e9 / 461)
    meta = dict(query(cpu_db, "SELECT key, value FROM meta"))
    assert abs(d.p.time_nanos - float(meta["start_time"]) * 1e9) < 1e3
    assert 1.5e9 < d.p.duration_nanos < 10e9

    # Every sample is there: counts and the nanoseconds they stand for (each its
    # period: a cpu-clock sample's is 1e9 / Hz, as the kernel rounds it).
    samples, ns = query(cpu_db, "SELECT SUM(samples), SUM(ns) FROM cpu_counts")[0]
    assert samples > 500
    assert ns == samples * (1_000_000_000 // 461)
    assert d.totals() == {"samples": samples, "cpu": ns}
    assert not any("estimated" in d.s[c] for c in d.p.comment)

    # Per thread (the "thread" label).
    by_thread: dict[str, int] = defaultdict(int)
    for sample in d.p.sample:
        labels = {d.s[lb.key]: d.s[lb.str] for lb in sample.label}
        by_thread[labels["thread"]] += sample.value[0]
    db_threads = dict(query(cpu_db, "SELECT COALESCE(t.name, CAST(c.tid AS TEXT)), SUM(c.samples)"
                                    " FROM cpu_counts c LEFT JOIN threads t ON t.tid = c.tid"
                                    " AND t.recording_id = c.recording_id GROUP BY 1"))
    assert dict(by_thread) == db_threads
    assert by_thread["split-0"] > 200 and by_thread["split-1"] > 200

    # Self shares: the real function of the leaf location (its LAST line: the
    # first is the most deeply inlined function, e.g. <u64 as PartialOrd>::lt).
    leaf = d.by_real_leaf("samples")
    assert dict(leaf) == _leaf_functions_in_db(cpu_db)
    split = _split(cpu_db.parent, cpu_db)
    for function, share in SPLIT.items():
        got = 100 * leaf[f"cpu_split::{function}"] / samples
        assert abs(got - share) <= 3, (function, got, dict(leaf))
        # rsprof's own report also charges vdso clock_gettime to its caller.
        assert abs(got - split[function]) <= 1, (function, got, split)
    cpu_leaf = d.by_real_leaf("cpu")
    assert abs(100 * cpu_leaf["cpu_split::work_fifty"] / ns - 50) <= 3

    # Mappings: the executable first, with its build id; addresses as stored.
    modules = dict(query(cpu_db, "SELECT path, build_id FROM modules"))
    first = d.p.mapping[0]
    assert d.s[first.filename].endswith("/cpu_split")
    assert d.s[first.build_id] == modules[d.s[first.filename]] == meta["build_id"]
    assert first.has_functions and first.has_filenames and first.has_line_numbers
    assert {d.s[m.filename] for m in d.p.mapping} <= set(modules)
    stored = {a & 0xFFFF_FFFF_FFFF_FFFF for (a,) in query(cpu_db, "SELECT address FROM addresses")}
    assert {loc.address for loc in d.p.location} <= stored
    # Real mappings, as recorded: address - memory_start + file_offset is the address's
    # offset in the file, which the file's program headers turn into the ELF address
    # rsprof symbolized.
    recorded = {(s, e, o) for s, e, o in query(
        cpu_db, "SELECT start_address, end_address, file_offset FROM mappings")}
    assert {(m.memory_start, m.memory_limit, m.file_offset) for m in d.p.mapping} <= recorded
    rel = {a & 0xFFFF_FFFF_FFFF_FFFF: r
           for a, r in query(cpu_db, "SELECT address, rel_address FROM addresses")}
    elf = {d.s[m.filename]: read_elf_identity(d.s[m.filename]) for m in d.p.mapping
           if d.s[m.filename].startswith("/")}
    checked = 0
    for loc in d.p.location:
        m = d.mappings[loc.mapping_id]
        if d.s[m.filename] in elf:
            offset = loc.address - m.memory_start + m.file_offset
            assert elf[d.s[m.filename]].vaddr_of_offset(offset) == rel[loc.address]
            checked += 1
    assert checked > 10


def test_cpu_work_functions_have_source_lines(pb2: ModuleType, cpu_pprof: bytes) -> None:
    d = Decoded(decode(pb2, cpu_pprof))
    work = [f for f in d.p.function if d.s[f.name] == "cpu_split::work_fifty"]
    assert len(work) == 1
    assert d.s[work[0].filename].endswith("src/bin/cpu_split.rs")
    # No system_name: rsprof keeps no mangled names, and pprof takes a system_name
    # equal to the name for one it failed to demangle (and shortens it).
    assert all(f.system_name == 0 for f in d.p.function)
    lines = [line.line for loc in d.p.location for line in loc.line
             if line.function_id == work[0].id]
    # DWARF line 0 (code of no particular line) is real and written as 0.
    assert lines and sum(n > 0 for n in lines) > len(lines) / 2, lines


def test_heap_profile_matches_the_database(pb2: ModuleType, heap_db: Path,
                                           heap_pprof: bytes) -> None:
    d = Decoded(decode(pb2, heap_pprof))
    assert d.types == [("alloc_objects", "count"), ("alloc_space", "bytes"),
                       ("inuse_objects", "count"), ("inuse_space", "bytes")]
    assert d.s[d.p.default_sample_type] == "inuse_space"
    assert all(not sample.label for sample in d.p.sample)
    allocs, alloc_bytes, inuse, live = query(
        heap_db, "SELECT SUM(allocs), SUM(alloc_bytes), SUM(MAX(0, allocs - frees)),"
                 " SUM(live_bytes) FROM heap_sites")[0]
    assert d.totals() == {"alloc_objects": allocs, "alloc_space": alloc_bytes,
                          "inuse_objects": inuse, "inuse_space": live}
    assert len(d.p.sample) == query(heap_db, "SELECT COUNT(*) FROM heap_sites")[0][0]

    # The known leak, exactly.
    leak = "heap_exact::leak_known"
    assert d.containing(leak, "inuse_space") == LEAK_COUNT * LEAK_SIZE
    assert d.containing(leak, "inuse_objects") == LEAK_COUNT
    assert d.containing(leak, "alloc_space") == LEAK_COUNT * LEAK_SIZE
    assert d.containing(leak, "alloc_objects") == LEAK_COUNT
    assert d.s[d.p.mapping[0].filename].endswith("/heap_exact")


def test_inlined_frames_are_lines_of_one_location(pb2: ModuleType, cpu_pprof: bytes,
                                                  heap_pprof: bytes) -> None:
    chains = (Decoded(decode(pb2, cpu_pprof)).multi_line_locations()
              + Decoded(decode(pb2, heap_pprof)).multi_line_locations())
    assert chains, "no inlined frames in either profile (see the unit test for the encoding)"
    # The work loops inline Range::next into work_*: the real function is the LAST line.
    work = [c for c in chains if c[-1].startswith("cpu_split::work_")]
    assert work, chains
    assert all(not name.startswith("cpu_split::work_") for c in work for name in c[:-1])


def test_export_is_deterministic(cpu_db: Path, cpu_pprof: bytes) -> None:
    again = export(_load(cpu_db, "cpu"))
    assert again == cpu_pprof
    assert cpu_pprof[4:8] == b"\0\0\0\0"  # gzip mtime


def _go() -> str:
    """The go command: on PATH, or where Go's own installers put it."""
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("go is not installed, so `go tool pprof` cannot read the exports "
                "(Debian/Ubuntu: apt-get install golang-go; `make tools` does it as root)")


def go_pprof(tmp_path: Path, *args: str) -> str:
    """`go tool pprof ARGS`'s output (binaries looked up nowhere but at their paths)."""
    env = dict(rsprof_env(), HOME=str(tmp_path), PPROF_TMPDIR=str(tmp_path),
               PPROF_BINARY_PATH=str(tmp_path / "no-binaries"))
    result = subprocess.run([_go(), "tool", "pprof", *args], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("kind", ["cpu", "heap"])
def test_go_tool_pprof_reads_it(kind: str, cpu_pprof: bytes, heap_pprof: bytes,
                                tmp_path: Path) -> None:
    _go()
    path = tmp_path / f"{kind}.pb.gz"
    path.write_bytes(cpu_pprof if kind == "cpu" else heap_pprof)
    args = ["-top", "-cum", "-nodecount=200"]
    if kind == "heap":
        args.append("-sample_index=inuse_space")
    out = go_pprof(tmp_path, *args, str(path))
    if kind == "cpu":
        assert "Type: cpu" in out and "File: cpu_split" in out, out
        assert "cpu_split::work_fifty" in out and "cpu_split::work_twenty" in out, out
    else:
        assert "Type: inuse_space" in out and "File: heap_exact" in out, out
        assert "heap_exact::leak_known" in out, out


# --- go tool pprof against `rsprof top cpu` and the program's own CPU time ---------------

CELSIUS = "<display_pair::Celsius as core::fmt::Display>::fmt"
KELVIN = "<display_pair::Kelvin as core::fmt::Display>::fmt"
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "mins": 60.0, "hrs": 3600.0}


def _seconds(text: str) -> float:
    """A time as pprof prints it (3.55s, 56.06ms, 0) in seconds."""
    m = re.fullmatch(r"([0-9.]+)([a-zµ]*)", text)
    assert m is not None, text
    return float(m[1]) * _UNIT_S[m[2] or "s"]


def _go_top(tmp_path: Path, path: Path, *args: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """`go tool pprof -top` of every node: total seconds, and name -> (flat, cum) seconds."""
    out = go_pprof(tmp_path, "-top", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0",
                   *args, str(path))
    total = re.search(r"Total samples = (\S+)", out)
    assert total is not None, out
    rows: dict[str, tuple[float, float]] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+\S+%\s+\S+%\s+(\S+)\s+\S+%\s+(.+)$", line)
        if m and m[1] != "flat":
            name = m[3].removesuffix(" (inline)")
            assert name not in rows, f"pprof shows {name!r} twice: {out}"
            rows[name] = (_seconds(m[1]), _seconds(m[2]))
    return _seconds(total[1]), rows


@pytest.fixture(scope="module", params=["self", "perf"])
def display(request: pytest.FixtureRequest, targets: Path,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """display_pair (two hot Display impls) recorded at 999 Hz, by the self-sampler
    (whose CPU-time timers fire at most at the kernel tick, here 250 Hz: each
    signal stands for about 4 ms) or by perf; and the CPU time the program says
    it used."""
    work = tmp_path_factory.mktemp(f"pprof_display_{request.param}")
    db = work / "display.db"
    result = _rsprof(work, "run", "-q", "--cpu-source", request.param, "--cpu-freq", "999",
                     "-o", str(db), "--", str(targets / "display_pair"), "--threads", "2",
                     "--cpu", "2")
    cpu = re.search(r"^cpu_s ([0-9.]+)$", result.stdout, re.MULTILINE)
    assert cpu is not None, result.stdout
    return db, float(cpu[1])


def test_go_pprof_names_and_totals_match_rsprof_and_the_real_cpu_time(
        display: tuple[Path, float], tmp_path: Path) -> None:
    db, real_cpu_s = display
    work = db.parent
    pb = tmp_path / "display.pb.gz"
    _rsprof(work, "export", str(db), "-o", str(pb))
    total_s, go = _go_top(tmp_path, pb)

    # Totals: what go shows is what rsprof's report says.
    top = top_cpu_json(lambda *args, check=False: _rsprof(work, *args), db, "-n", "1000")
    assert top["cpu_s_estimated"] is False
    assert abs(total_s - top["total_cpu_s"]) <= 0.01 * top["total_cpu_s"] + 0.01, (total_s, top)
    if db.parent.name.startswith("pprof_display_self"):
        # And what the program used: at --cpu-freq 999 the self-sampler's samples each
        # stand for about 4 ms (its CPU-time timers fire at the kernel tick; the
        # overruns say how many intervals each signal stands for), and a profile
        # counting 1/999 s per sample showed a quarter of it. (perf's cpu-clock
        # drops the periods its timer misses under load, see docs/architecture.md.)
        assert abs(top["total_cpu_s"] - real_cpu_s) <= 0.05 * real_cpu_s, (top, real_cpu_s)
        assert abs(total_s - real_cpu_s) <= 0.05 * real_cpu_s, (total_s, real_cpu_s)

    # The two fmt functions stay two, each with its own share (pprof shortened
    # every `<T as Display>::fmt` to `::fmt` when system_name repeated the name).
    assert "::fmt" not in go and "fmt" not in go, sorted(go)
    shares = {f["function"]: f for f in top["functions"]}
    for name, share in ((CELSIUS, 60), (KELVIN, 40)):
        cum_s = go[name][1]
        assert abs(100 * cum_s / total_s - share) <= 3, (name, go[name], total_s)
        assert abs(cum_s - shares[name]["self_cpu_s"]) <= 0.02 * total_s, (name, shares[name])

    # Flat per function: pprof charges the innermost (inlined) function of the
    # sampled address, as `rsprof top cpu --include-internal` does. Same names,
    # same seconds.
    leaf = top_cpu_json(lambda *args, check=False: _rsprof(work, *args), db, "-n", "1000",
                        "--include-internal")
    rsprof_flat = {f["function"]: f["self_cpu_s"] for f in leaf["functions"]}
    go_flat = {name: flat for name, (flat, _cum) in go.items() if flat > 0}
    big = {name for name, s in rsprof_flat.items() if s >= 0.01 * total_s}
    assert big and big == {name for name, s in go_flat.items() if s >= 0.01 * total_s}, (
        rsprof_flat, go_flat)
    for name in big:
        assert abs(go_flat[name] - rsprof_flat[name]) <= 0.01 * total_s, (name, go_flat,
                                                                           rsprof_flat)
    # (rsprof's own code in the program is one [rsprof] frame in the export.)
    others = sum(s for name, s in go_flat.items() if name not in rsprof_flat)
    assert others <= 0.01 * total_s, (go_flat, rsprof_flat)


def _raw_locations(out: str) -> dict[str, list[str]]:
    """Address -> function names of its lines (innermost first), from `-raw` output,
    where each line is `NAME FILE:LINE s=START[(SYSTEM_NAME)]` (names have spaces)."""
    section = out.split("\nLocations\n", 1)[1].split("\nMappings\n", 1)[0]
    locations: dict[str, list[str]] = {}
    names: list[str] = []
    for line in section.splitlines():
        m = re.match(r"\s*\d+: (0x[0-9a-f]+) M=\d+ (.*)$", line)
        if m:
            names = locations[m[1]] = []
            text = m[2]
        else:
            text = line.strip()
        text = re.sub(r" s=-?\d+(\(.*\))?$", "", text)
        if text and text != "??":
            names.append(text.rsplit(" ", 1)[0] if " " in text else "")
    return locations


def _short(function: str) -> str:
    """A function's own name, as DWARF has it: `<a::B as c::D>::fmt` -> fmt,
    `a::b::<impl X>::f::<T>` -> f."""
    while function.endswith(">"):
        depth, i = 0, len(function) - 1
        for i in range(len(function) - 1, -1, -1):
            depth += {">": 1, "<": -1}.get(function[i], 0)
            if depth == 0:
                break
        function = function[:i].removesuffix("::")
    return function.rsplit("::", 1)[-1]


def test_go_pprof_resymbolizes_the_same_functions_from_the_mappings(
        display: tuple[Path, float], tmp_path: Path) -> None:
    """-symbolize=local:force makes pprof look the addresses up again in the files,
    through the mappings: with real mappings it finds the functions rsprof found."""
    db, _ = display
    pb = tmp_path / "display.pb.gz"
    _rsprof(db.parent, "export", str(db), "-o", str(pb))
    ours = _raw_locations(go_pprof(tmp_path, "-raw", "-symbolize=none", str(pb)))
    again = _raw_locations(go_pprof(tmp_path, "-raw", "-symbolize=local:force", str(pb)))
    exe = [a for a, names in ours.items()
           if names and any(n.startswith("display_pair::") or "display_pair::" in n
                            for n in names)]
    assert len(exe) > 10, ours
    same = [a for a in exe if again[a] and again[a][-1] == _short(ours[a][-1])]
    assert len(same) >= 0.9 * len(exe), [(ours[a], again[a]) for a in exe if a not in same]
    # Both hot fmt functions are found where rsprof found them.
    for name in (CELSIUS, KELVIN):
        hits = [a for a in exe if ours[a][-1] == name]
        assert hits and all(again[a][-1] == "fmt" for a in hits), [again[a] for a in hits]
