"""The heap shim for real: C targets run with librsprof_shim.so preloaded and a
region made (and drained concurrently) by rsprof.shm_reference."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rsprof import shm_reference as ref

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
TARGETS = ROOT / "tests" / "targets_c"
GCC = shutil.which("gcc")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(GCC is None, reason="gcc is not installed"),
              pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 targets"),
              pytest.mark.skipif(not ref.SHM_DIR.is_dir(), reason="no /dev/shm")]

SHIM_FLAGS = ["-shared", "-fPIC", "-O2", "-g", "-fno-omit-frame-pointer",
              "-fno-optimize-sibling-calls", "-fvisibility=hidden", "-Wall", "-Wextra",
              "-Werror", "-pthread"]
TARGET_FLAGS = ["-O2", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls",
                "-fno-inline", "-no-pie", "-pthread", "-Wall", "-Werror"]


def _gcc(*args: str | Path) -> None:
    assert GCC is not None
    result = subprocess.run([GCC, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shim_build")


@pytest.fixture(scope="session")
def shim(build_dir: Path) -> Path:
    """A fresh build of the shim from csrc (the flags of setup.py)."""
    out = build_dir / "librsprof_shim.so"
    _gcc(*SHIM_FLAGS, "-I", CSRC, "-o", out, CSRC / "rsprof_shim.c", CSRC / "rsprof_sampler.c",
         CSRC / "rsprof_preload.c",
         "-ldl")
    return out


def build_target(build_dir: Path, source: str, *flags: str, out_name: str | None = None) -> Path:
    out = build_dir / (out_name or Path(source).stem)
    if not out.exists():
        _gcc(*(flags or TARGET_FLAGS), "-o", out, TARGETS / source)
    return out


def function_ranges(binary: Path) -> dict[str, tuple[int, int]]:
    """Function symbols of a non-PIE binary: name -> [start, end)."""
    from elftools.elf.elffile import ELFFile  # a dependency of rsprof

    out: dict[str, tuple[int, int]] = {}
    with open(binary, "rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        assert symtab is not None
        for sym in symtab.iter_symbols():  # type: ignore[attr-defined]
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"]:
                out[sym.name] = (sym["st_value"], sym["st_value"] + sym["st_size"])
    return out


class Drainer:
    """Drains a region in a background thread while the target runs."""

    def __init__(self, reader: ref.ShmReader) -> None:
        self.reader = reader
        self.records: list[ref.Record] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                got = self.reader.drain()
                self.records.extend(got)
            if not got:
                time.sleep(0.002)

    def start(self) -> Drainer:
        self._thread.start()
        return self

    def stop(self) -> list[ref.Record]:
        """Stop the thread, then drain what is left."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            while True:
                got = self.reader.drain()
                if not got:
                    break
                self.records.extend(got)
        return self.records


@pytest.fixture
def regions() -> Iterator[list[ref.ShmReader]]:
    made: list[ref.ShmReader] = []
    yield made
    for reader in made:
        reader.unlink()
        reader.close()


def preload_env(shim: Path, region: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ref.ENV)}
    env["LD_PRELOAD"] = str(shim)
    if region is not None:
        env[ref.ENV] = region
    env.update(extra)
    return env


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    records: list[ref.Record]
    reader: ref.ShmReader


def run_recorded(shim: Path, regions: list[ref.ShmReader], argv: Sequence[str | Path],
                 ring_size: int = 1 << 20, timeout: float = 120, **env: str) -> Run:
    reader = ref.ShmReader.create(pid=0, ring_size=ring_size)
    regions.append(reader)
    drainer = Drainer(reader).start()
    try:
        result = subprocess.run([str(a) for a in argv], env=preload_env(shim, reader.name, **env),
                                capture_output=True, text=True, timeout=timeout)
    finally:
        records = drainer.stop()
    return Run(result, records, reader)


@dataclass
class Replay:
    """Records replayed in ring order, with the protocol's invariants checked."""

    stacks: dict[int, tuple[int, ...]] = field(default_factory=dict)
    allocs: list[tuple[int, int, tuple[int, ...], int]] = field(default_factory=list)
    frees: list[int] = field(default_factory=list)
    live: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    freed: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # size, stack
    alloc_before_stack: int = 0
    alloc_of_live: int = 0
    unknown_frees: int = 0
    raw: int = 0
    threads: dict[int, str] = field(default_factory=dict)


def replay(records: list[ref.Record]) -> Replay:
    rp = Replay()
    for rec in records:
        if isinstance(rec, ref.StackRecord):
            if rec.stack_id in rp.stacks:
                assert rp.stacks[rec.stack_id] == rec.frames, "a stack id changed its frames"
            rp.stacks[rec.stack_id] = rec.frames
        elif isinstance(rec, ref.AllocRecord | ref.AllocRawRecord):
            if isinstance(rec, ref.AllocRecord):
                frames = rp.stacks.get(rec.stack_id)
                if frames is None:
                    rp.alloc_before_stack += 1
                    frames = ()
            else:
                frames = rec.frames
                rp.raw += 1
            if rec.ptr in rp.live:
                rp.alloc_of_live += 1
            rp.live[rec.ptr] = (rec.size, frames)
            rp.allocs.append((rec.ptr, rec.size, frames))
        elif isinstance(rec, ref.FreeRecord):
            rp.frees.append(rec.ptr)
            gone = rp.live.pop(rec.ptr, None)
            if gone is None:
                rp.unknown_frees += 1
            else:
                rp.freed.append(gone)
        elif isinstance(rec, ref.ThreadRecord):
            rp.threads[rec.tid] = rec.name
    return rp


def site_of(frames: tuple[int, ...], ranges: dict[str, tuple[int, int]],
            prefix: str = "site_") -> str | None:
    if not frames:
        return None
    for name, (lo, hi) in ranges.items():
        if name.startswith(prefix) and lo <= frames[0] < hi:
            return name
    return None


# -- (a) exactness ----------------------------------------------------------------------

NTHREADS = 8
ITERS = 100
LEAK_COUNT = 37
LEAK_SIZE = 1000
SITE_SIZES = {"site_malloc": 24, "site_calloc": 80, "site_realloc_null": 40,
              "site_realloc_base": 16, "site_realloc_grow": 4000, "site_reallocarray_base": 8,
              "site_reallocarray": 800, "site_posix_memalign": 200, "site_aligned_alloc": 256,
              "site_memalign": 300, "site_valloc": 500, "site_pvalloc": 600}


def test_exact_totals_every_function_many_threads(build_dir: Path, shim: Path,
                                                  regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "heap_exact.c")
    ranges = function_ranges(target)
    # A small ring: it wraps many times and writers wait for the Python reader.
    run = run_recorded(shim, regions, [target, str(ITERS)], ring_size=1 << 16)
    assert run.result.returncode == 0, run.result.stderr
    rp = replay(run.records)
    hdr = run.reader.header()
    assert hdr["dropped"] == 0 and hdr["raw_stacks"] == 0 and hdr["truncated"] == 0
    assert hdr["state"] == ref.STATE_RECORDING
    assert hdr["tail"] == hdr["reserve"]
    assert run.reader.counters.malformed == 0
    assert rp.alloc_before_stack == 0 and rp.alloc_of_live == 0 and rp.raw == 0

    allocs: Counter[str] = Counter()
    alloc_bytes: Counter[str] = Counter()
    for _ptr, size, frames in rp.allocs:
        site = site_of(frames, ranges)
        if site is not None:
            allocs[site] += 1
            alloc_bytes[site] += size
    frees: Counter[str] = Counter()
    for _size, frames in rp.freed:
        site = site_of(frames, ranges)
        if site is not None:
            frees[site] += 1
    live: Counter[str] = Counter()
    live_bytes: Counter[str] = Counter()
    for size, frames in rp.live.values():
        site = site_of(frames, ranges)
        if site is not None:
            live[site] += 1
            live_bytes[site] += size

    n = NTHREADS * ITERS
    expected = {site: n for site in SITE_SIZES}
    expected["site_leak"] = LEAK_COUNT
    assert dict(allocs) == expected
    assert dict(alloc_bytes) == {**{s: n * size for s, size in SITE_SIZES.items()},
                                 "site_leak": LEAK_COUNT * LEAK_SIZE}
    assert dict(frees) == {site: n for site in SITE_SIZES}
    assert dict(live) == {"site_leak": LEAK_COUNT}
    assert dict(live_bytes) == {"site_leak": LEAK_COUNT * LEAK_SIZE}
    assert len(set(rp.threads)) >= NTHREADS
    # A worker's stacks run through worker() up to the thread start routine.
    worker_lo, worker_hi = ranges["worker"]
    sample = next(f for _p, _s, f in rp.allocs if site_of(f, ranges) == "site_malloc")
    assert any(worker_lo <= a < worker_hi for a in sample[1:3])


# -- (b) glibc semantics --------------------------------------------------------------


def test_glibc_semantics_kept(build_dir: Path, shim: Path,
                              regions: list[ref.ShmReader]) -> None:
    # No builtins: the compiler must not reason about malloc; the test misuses it on purpose.
    target = build_target(build_dir, "glibc_semantics.c", *TARGET_FLAGS, "-fno-builtin",
                          "-Wno-use-after-free", "-Wno-alloc-size-larger-than")
    plain = subprocess.run([str(target)], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stdout
    run = run_recorded(shim, regions, [target])
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr

    def without_ptrs(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.startswith("ptr ")]

    assert without_ptrs(run.result.stdout) == without_ptrs(plain.stdout)
    ptrs = {ln.split()[1]: int(ln.split()[2], 16) for ln in run.result.stdout.splitlines()
            if ln.startswith("ptr ")}
    rp = replay(run.records)
    assert rp.alloc_before_stack == 0 and rp.alloc_of_live == 0
    # realloc(NULL, 50) was an ALLOC; realloc(p, 0) freed it: a FREE, no ALLOC of size 0.
    assert any(p == ptrs["realloc_null"] and s == 50 for p, s, _f in rp.allocs)
    assert ptrs["realloc_zero"] in rp.frees
    # The failed realloc/reallocarray left the block valid: PAD records, one FREE at the end.
    assert rp.frees.count(ptrs["realloc_fail"]) == 1
    assert run.reader.counters.pads >= 2
    assert run.reader.header()["dropped"] == 0


# -- (c), (d) stacks without or with broken frame pointers ------------------------------


def test_omitted_frame_pointers_give_short_stacks(build_dir: Path, shim: Path,
                                                  regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "frames_wild.c", "-O2", "-fomit-frame-pointer", "-pthread",
                          out_name="frames_omit")
    run = run_recorded(shim, regions, [target, "omit"])
    assert run.result.returncode == 0, run.result.stderr
    assert run.result.stdout.strip() == "done"
    rp = replay(run.records)
    assert rp.alloc_before_stack == 0
    assert len(rp.allocs) >= 5 * 200
    assert all(len(f) <= ref.MAX_FRAMES for f in rp.stacks.values())


def test_wild_frame_pointers_never_fault(build_dir: Path, shim: Path,
                                         regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "frames_wild.c")
    ranges = function_ranges(target)
    run = run_recorded(shim, regions, [target])
    assert run.result.returncode == 0, run.result.stderr
    rp = replay(run.records)
    lo, hi = ranges["wild_call"]
    wild = {size - 5000: f for _p, size, f in rp.allocs if 5000 <= size < 5015}
    assert sorted(wild) == list(range(15))
    # The first frame is always right (the hook's own frame record).
    assert all(f and lo <= f[0] < hi for f in wild.values())
    # A frame pointer outside the stack (null, tiny, kernel, non-canonical, heap:
    # values 0..7 of frames_wild.c) ends the walk at once. One pointing into the
    # stack (8..14) may read stale frame records there and even rejoin the real
    # chain: that is safe (only proven-readable stack pages are read), so only
    # "no fault" is asserted for them.
    assert all(len(wild[i]) <= 3 for i in range(8)), {i: len(wild[i]) for i in range(8)}


# -- (e) fork and exec ------------------------------------------------------------------


def test_fork_child_never_writes_and_exec_works(build_dir: Path, shim: Path,
                                                regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "fork_exec.c")
    run = run_recorded(shim, regions, [target])
    assert run.result.returncode == 0, run.result.stderr
    out = dict(ln.split(" ", 1) for ln in run.result.stdout.splitlines())
    assert out["env"] == "absent"  # RSPROF_SHM is stripped at init
    child_pid = int(out["child"].split()[0])
    exec_pid = int(out["exec"].split()[0])
    assert out["child"].split()[2] == "0"
    assert out["exec"].split()[2] == "0"
    assert out["system"] == "0"
    rp = replay(run.records)
    sizes = Counter(size for _p, size, _f in rp.allocs)
    assert sizes[55555] == 30
    assert sizes[77777] == 0
    assert child_pid not in rp.threads
    # The exec'd /bin/true made (and removed) a private region of its own.
    assert not ref.ShmReader.find(exec_pid)
    assert not ref.ShmReader.find(child_pid)


# -- (f) a reader that stops answering: waited for while it lives, not once it is gone ---


class Churn:
    """churn.c preloaded with the shim, driven line by line over stdin/stdout."""

    def __init__(self, target: Path, shim: Path, reader: ref.ShmReader) -> None:
        self.proc = subprocess.Popen([str(target)], env=preload_env(shim, reader.name),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.reply(30) == "ready"

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float) -> str | None:
        """The next line, or None if none comes within `timeout` seconds."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def cmd(self, line: str, timeout: float = 60) -> str | None:
        self.send(line)
        return self.reply(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_silent_living_reader_is_waited_for(build_dir: Path, shim: Path,
                                            regions: list[ref.ShmReader]) -> None:
    # The reader is this process, the target's parent (as `rsprof run` is): alive,
    # however long it does not drain, so the target waits and nothing is dropped.
    target = build_target(build_dir, "churn.c")
    reader = ref.ShmReader.create(pid=0, ring_size=1 << 16)
    regions.append(reader)
    churn = Churn(target, shim, reader)
    try:
        drainer = Drainer(reader).start()
        assert churn.cmd("a 1000 32") == "ok"
        records = drainer.stop()  # silent from here on: no drain, no heartbeat
        churn.send("a 200000 32")  # fills the ring and waits
        # Well past RSPROF_READER_TIMEOUT_NS: the shim asked and found us alive.
        assert churn.reply(ref.READER_TIMEOUT_NS / 1e9 + 1.5) is None
        hdr = reader.header()
        assert hdr["state"] == ref.STATE_RECORDING
        assert hdr["dropped"] == 0 and hdr["waits"] > 0
        drainer = Drainer(reader).start()  # the reader answers again: the target goes on
        assert churn.reply(60) == "ok"
        churn.send("q")
        assert churn.proc.wait(timeout=30) == 0
        records += drainer.stop()
    finally:
        churn.close()
    assert reader.header()["dropped"] == 0
    rp = replay(records)
    assert Counter(size for _p, size, _f in rp.allocs)[32] == 201_000  # every one of them
    assert len(rp.frees) >= 201_000


@pytest.mark.parametrize("reap", [False, True], ids=["zombie", "reaped"])
def test_dead_reader_releases_the_program(build_dir: Path, shim: Path,
                                          regions: list[ref.ShmReader], reap: bool) -> None:
    # The reader is another process, not the target's parent (as `rsprof -p` is): the
    # shim watches it through a pidfd opened while it was alive. A zombie reader is
    # gone too (kill(pid, 0) alone would still find it).
    target = build_target(build_dir, "churn.c")
    base = subprocess.run([str(target), "loop", "2000000"], capture_output=True, text=True,
                          timeout=60, env=preload_env(shim, None))
    base_ns = int(base.stdout)
    reader = ref.ShmReader.create(pid=0, ring_size=1 << 16)
    regions.append(reader)
    other = subprocess.Popen(["sleep", "120"])
    reader._i[ref._I["reader_pid"]] = other.pid  # the reader's pid, as attach() writes it
    churn = Churn(target, shim, reader)
    try:
        drainer = Drainer(reader).start()
        assert churn.cmd("a 1000 32") == "ok"
        drainer.stop()  # silent from here on
        churn.send("a 200000 32")  # fills the ring: waits while `other` lives
        assert churn.reply(ref.READER_TIMEOUT_NS / 1e9 + 1.0) is None
        assert reader.header()["state"] == ref.STATE_RECORDING
        t0 = time.monotonic()
        other.kill()
        if reap:
            other.wait()
        assert churn.reply(10) == "ok"  # released: the rest is dropped
        assert time.monotonic() - t0 < 1.0  # liveness is asked every 0.1 s
        hdr = reader.header()
        assert hdr["state"] == ref.STATE_STOPPED
        assert hdr["dropped"] > 0 and hdr["waits"] > 0
        timed = churn.cmd("t 2000000")
        assert timed is not None and timed.startswith("ns ")
        # Stopped: back to the cost of an idle hook (generous bound for noisy machines).
        assert int(timed.split()[1]) < 3 * base_ns + 50_000_000
        reserve = hdr["reserve"]
        assert churn.cmd("a 1000 32") == "ok"
        assert reader.header()["reserve"] == reserve  # nothing more is written
        churn.send("q")
        assert churn.proc.wait(timeout=30) == 0
    finally:
        churn.close()
        if other.poll() is None:
            other.kill()
        other.wait()


# -- (g) no reader: IDLE, then a reader attaching and re-attaching -------------------


def test_idle_region_then_attach_and_reattach(build_dir: Path, shim: Path) -> None:
    target = build_target(build_dir, "churn.c")
    ranges = function_ranges(target)
    proc = subprocess.Popen([str(target)], env=preload_env(shim, None), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def cmd(line: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert proc.stdout.readline().strip() == "ready"
        names = ref.ShmReader.find(proc.pid)
        assert len(names) == 1
        reader = ref.ShmReader.open(names[0], expected_pid=proc.pid)
        assert (ref.SHM_DIR / names[0]).stat().st_mode & 0o777 == 0o600
        hdr = reader.header()
        assert hdr["state"] == ref.STATE_IDLE and hdr["reserve"] == 0
        assert hdr["ring_size"] == ref.DEFAULT_RING and hdr["pid"] == proc.pid
        assert cmd("a 1000 32") == "ok"
        assert reader.header()["reserve"] == 0  # nothing written while IDLE

        site_a = ranges["site_a"]

        def site_a_records(records: list[ref.Record]) -> tuple[list[int], list[int]]:
            rp_stacks = [r.stack_id for r in records if isinstance(r, ref.StackRecord)
                         and r.frames and site_a[0] <= r.frames[0] < site_a[1]]
            allocs = [r.stack_id for r in records if isinstance(r, ref.AllocRecord)
                      and r.size == 33]
            return rp_stacks, allocs

        reader.start()  # session 1
        assert cmd("a 10 33") == "ok"
        first = reader.drain()
        stacks1, allocs1 = site_a_records(first)
        assert len(stacks1) == 1 and allocs1 == stacks1 * 10
        reader.detach()
        before = reader.header()["reserve"]
        assert cmd("a 10 33") == "ok"
        assert reader.header()["reserve"] == before
        reader.start()  # session 2: the stack is announced again, same id
        assert cmd("a 5 33") == "ok"
        stacks2, allocs2 = site_a_records(reader.drain())
        assert stacks2 == stacks1 and allocs2 == stacks1 * 5
        assert reader.counters.malformed == 0
        proc.stdin.write("q\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        reader.close()
        assert not ref.ShmReader.find(proc.pid)  # unlinked at exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_idle_state_from_rsprof_writes_nothing(build_dir: Path, shim: Path,
                                               regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "churn.c")
    reader = ref.ShmReader.create(pid=0, ring_size=1 << 16, state=ref.STATE_IDLE)
    regions.append(reader)
    result = subprocess.run([str(target), "loop", "100000"], env=preload_env(shim, reader.name),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    hdr = reader.header()
    assert hdr["reserve"] == 0 and hdr["dropped"] == 0 and hdr["interned"] == 0
    assert hdr["pid"] != 0  # the target claimed it


def test_region_of_another_pid_is_refused(build_dir: Path, shim: Path,
                                          regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "churn.c")
    reader = ref.ShmReader.create(pid=1, ring_size=1 << 16)
    regions.append(reader)
    result = subprocess.run([str(target), "loop", "1000"], env=preload_env(shim, reader.name),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert reader.header()["reserve"] == 0 and reader.pid == 1


# -- intern table full, deep stacks -----------------------------------------------------


def test_full_intern_table_writes_raw_stacks(build_dir: Path, shim: Path,
                                             regions: list[ref.ShmReader]) -> None:
    target = build_target(build_dir, "churn.c")
    reader = ref.ShmReader.create(pid=0, ring_size=1 << 20)
    regions.append(reader)
    proc = subprocess.Popen([str(target)], env=preload_env(shim, reader.name,
                                                           RSPROF_SHIM_MAX_STACKS="8"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate("d 40\nd 100\nq\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.split() == ["ready", "ok", "ok"]
    records = reader.drain()
    rp = replay(records)
    hdr = reader.header()
    assert hdr["interned"] <= 8
    assert hdr["raw_stacks"] == rp.raw > 0
    assert hdr["truncated"] > 0
    assert rp.alloc_before_stack == 0
    deep = [f for _p, size, f in rp.allocs if size == 48]
    assert len(deep) == 140
    # Never merged: the 40 first stacks (depth 1..40 of deep()) are all different.
    assert len(set(deep[:40])) == 40
    assert max(len(f) for f in deep) == ref.MAX_FRAMES


# -- sanitizers ---------------------------------------------------------------------------


def test_shim_linked_directly_under_asan_ubsan(build_dir: Path,
                                               regions: list[ref.ShmReader]) -> None:
    out = build_dir / "asan_direct"
    try:
        _gcc("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-O1", "-g",
             "-fno-omit-frame-pointer", "-pthread", "-Wall", "-Wextra", "-Werror", "-I", CSRC,
             "-o", out, TARGETS / "asan_direct.c", CSRC / "rsprof_shim.c")
    except AssertionError as exc:
        if "asan" in str(exc).lower() or "ubsan" in str(exc).lower():
            pytest.skip(f"no sanitizer runtime: {exc}")
        raise
    reader = ref.ShmReader.create(pid=0, ring_size=1 << 18)
    regions.append(reader)
    drainer = Drainer(reader).start()
    assert reader.name is not None
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update({ref.ENV: reader.name, "ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1",
                "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"})
    try:
        result = subprocess.run([str(out)], env=env, capture_output=True, text=True, timeout=300)
    finally:
        records = drainer.stop()
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, \
        result.stderr[-4000:]
    assert result.returncode == 0 and result.stdout.strip() == "done 1"
    rp = replay(records)
    assert rp.alloc_before_stack == 0 and rp.alloc_of_live == 0
    assert len(rp.allocs) == 6 * 3000 * 2
    assert len(rp.frees) == 6 * 3000 * 2
    assert not rp.live


def test_exec_without_exit_leaves_one_region_per_pid(build_dir: Path, shim: Path) -> None:
    """`sh -c 'exec prog'`: the shell's region (its destructor never ran) is removed
    by prog's shim, so the pid has exactly one region, prog's."""
    target = build_target(build_dir, "churn.c")
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec {target}"], env=preload_env(shim, None),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        names = ref.ShmReader.find(proc.pid)
        assert len(names) == 1
        with ref.ShmReader.open(names[0], expected_pid=proc.pid) as reader:
            assert reader.state == ref.STATE_IDLE
        proc.stdin.write("q\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        assert not ref.ShmReader.find(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
