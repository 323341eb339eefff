"""Symbolization of a real Rust binary (built with cargo), checked against addr2line."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rsprof.symbols.model import Frame
from rsprof.symbols.objfile import ObjectSymbols
from rsprof.symbols.resolver import Symbolizer, resolve_file_addresses

pytestmark = pytest.mark.skipif(
    shutil.which("cargo") is None or not sys.platform.startswith("linux"),
    reason="needs cargo on Linux",
)

CARGO_TOML = """\
[package]
name = "symtarget"
version = "0.1.0"
edition = "2021"

[profile.release]
debug = 2
"""

MAIN_RS = """\
use std::io::Write;

#[inline(always)]
fn inner_mix(x: u64) -> u64 {
    let mut v = x.wrapping_mul(0x9E3779B97F4A7C15);
    v ^= v >> 29;
    v
}

#[inline(never)]
fn outer_work(n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(inner_mix(i ^ acc));
    }
    acc
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    println!("{:p} {}", outer_work as fn(u64) -> u64, outer_work(n));
    std::io::stdout().flush().unwrap();
    if std::env::args().nth(2).as_deref() == Some("sleep") {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
"""


@dataclass(frozen=True)
class Target:
    binary: Path
    symbols: dict[str, tuple[int, int]]  # demangled name -> (vaddr, size)


def _nm(binary: Path) -> dict[str, tuple[int, int]]:
    out = subprocess.run(
        ["nm", "-S", "-C", "--defined-only", str(binary)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    syms: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2] in "tTwW":
            name = re.sub(r"\[[0-9a-f]+\]", "", parts[3])
            syms.setdefault(name, (int(parts[0], 16), int(parts[1], 16)))
    return syms


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    root = tmp_path_factory.mktemp("symtarget")
    (root / "src").mkdir()
    (root / "Cargo.toml").write_text(CARGO_TOML)
    (root / "src" / "main.rs").write_text(MAIN_RS)
    env = dict(os.environ, RUSTFLAGS="-C force-frame-pointers=yes")
    env["CARGO_TARGET_DIR"] = str(root / "target")
    subprocess.run(
        ["cargo", "build", "--release", "--offline", "--quiet"],
        cwd=root,
        env=env,
        check=True,
    )
    binary = root / "target" / "release" / "symtarget"
    return Target(binary, _nm(binary))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _addr2line(binary: Path, addresses: list[int]) -> dict[int, list[tuple[str, str]]]:
    out = subprocess.run(
        ["addr2line", "-a", "-f", "-i", "-C", "-e", str(binary), *map(hex, addresses)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    blocks: dict[int, list[tuple[str, str]]] = {}
    cur = -1
    i = 0
    while i < len(out):
        if out[i].startswith("0x"):
            cur = int(out[i], 16)
            blocks[cur] = []
            i += 1
        else:
            blocks[cur].append((re.sub(r"\[[0-9a-f]+\]", "", out[i]), out[i + 1]))
            i += 2
    return blocks


def _loc(frame: Frame) -> str:
    return f"{frame.file or '??'}:{frame.line or '?'}"


def _norm_loc(loc: str) -> str:
    path, _, line = loc.rpartition(":")
    return f"{os.path.normpath(path) if path != '??' else path}:{line}"


def _inlined_address(target: Target, cache: Path) -> int:
    start, size = target.symbols["symtarget::outer_work"]
    res = resolve_file_addresses(str(target.binary), range(start, start + size), cache)
    for addr in range(start, start + size):
        frames = res[addr]
        if len(frames) >= 2 and frames[0].function == "symtarget::inner_mix":
            return addr
    raise AssertionError("no address with inner_mix inlined into outer_work")


@pytest.mark.skipif(shutil.which("addr2line") is None, reason="needs addr2line")
def test_matches_addr2line(target: Target, cache: Path) -> None:
    picks = [_inlined_address(target, cache)]
    for name in ("symtarget::outer_work", "symtarget::main"):
        start, size = target.symbols[name]
        picks += [start, start + size // 2, start + size - 1]
    ours = resolve_file_addresses(str(target.binary), picks, cache)
    theirs = _addr2line(target.binary, picks)
    for addr in picks:
        expected = [(fn, _norm_loc(loc)) for fn, loc in theirs[addr]]
        got = [(f.function, _norm_loc(_loc(f))) for f in ours[addr]]
        assert got == expected, hex(addr)
        assert [f.inlined for f in ours[addr]] == [True] * (len(got) - 1) + [False]


def test_inlined_chain(target: Target, cache: Path) -> None:
    addr = _inlined_address(target, cache)
    frames = resolve_file_addresses(str(target.binary), [addr], cache)[addr]
    inner, outer = frames[0], frames[-1]
    assert inner.function == "symtarget::inner_mix" and inner.inlined
    assert outer.function == "symtarget::outer_work" and not outer.inlined
    assert inner.file is not None and inner.file.endswith("src/main.rs")
    assert inner.line in (5, 6, 7)
    assert outer.line == 14  # the call site of inner_mix
    assert all(f.module == str(target.binary) and f.resolved for f in frames)


def test_symbol_size_is_respected(target: Target, tmp_path: Path) -> None:
    # Without DWARF only the symbol table answers: find padding after a function.
    nodebug = tmp_path / "symtarget-nodebug"
    subprocess.run(["strip", "--strip-debug", "-o", str(nodebug), str(target.binary)], check=True)
    ranges = sorted(target.symbols.values())
    gap = next(
        start + size
        for (start, size), (nxt, _) in itertools.pairwise(ranges)
        if size and start + size < nxt
    )
    res = resolve_file_addresses(str(nodebug), [gap - 1, gap], tmp_path / "c")
    assert res[gap - 1][0].resolved
    assert res[gap] == (
        Frame(f"symtarget-nodebug+0x{gap:x}", None, None, str(nodebug), False, False),
    )
    # Same answer with DWARF present: symbolic's own symbol fallback is not trusted.
    full = resolve_file_addresses(str(target.binary), [gap], tmp_path / "c2")[gap]
    assert not full[0].resolved and full[0].function == f"symtarget+0x{gap:x}"


def test_symtab_only_names(target: Target, tmp_path: Path) -> None:
    nodebug = tmp_path / "symtarget-nodebug"
    subprocess.run(["strip", "--strip-debug", "-o", str(nodebug), str(target.binary)], check=True)
    start, size = target.symbols["symtarget::outer_work"]
    (frame,) = resolve_file_addresses(str(nodebug), [start + size // 2])[start + size // 2]
    assert frame == Frame("symtarget::outer_work", None, None, str(nodebug), False, True)


def test_disk_cache_reused_and_corruption_rebuilt(target: Target, cache: Path) -> None:
    addr = _inlined_address(target, cache)
    first = resolve_file_addresses(str(target.binary), [addr], cache)[addr]
    files = sorted(p.name for p in cache.iterdir())
    assert any(f.endswith(".symcache") for f in files)
    assert any(f.endswith(".symtab") for f in files)
    assert not any(f.endswith(".tmp") for f in files)
    t = time.perf_counter()
    again = ObjectSymbols(str(target.binary), str(target.binary), cache)
    assert time.perf_counter() - t < 0.5
    assert again.frames(addr) == first
    for path in cache.iterdir():  # truncate / flip bytes: must rebuild, not crash
        data = path.read_bytes()
        if path.suffix == ".symcache":
            path.write_bytes(data[:-5000] + bytes(5000))
        else:
            path.write_bytes(data[: len(data) // 2])
    assert resolve_file_addresses(str(target.binary), [addr], cache)[addr] == first
    assert resolve_file_addresses(str(target.binary), [addr], cache)[addr] == first
    for path in cache.iterdir():
        path.write_bytes(b"garbage")
    assert resolve_file_addresses(str(target.binary), [addr], cache)[addr] == first


class _Running:
    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "10", "sleep"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.func_addr = int(line.split()[0], 16)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def run_binary() -> Iterator[type[_Running]]:
    started: list[_Running] = []

    class Tracked(_Running):
        def __init__(self, binary: Path) -> None:
            super().__init__(binary)
            started.append(self)

    yield Tracked
    for r in started:
        r.stop()


def test_deleted_binary_resolves_via_map_files(
    target: Target, tmp_path: Path, cache: Path, run_binary: type[_Running]
) -> None:
    copy = tmp_path / "victim"
    shutil.copy2(target.binary, copy)
    running = run_binary(copy)
    copy.unlink()
    with Symbolizer(running.proc.pid, cache) as sym:
        mappings = [m for m in sym.mappings if m.path == str(copy)]
        assert mappings and all(m.deleted for m in mappings)
        res = sym.resolve([running.func_addr])[running.func_addr]
        assert res.module == str(copy)
        assert res.build_id is not None
        assert res.rel_address == target.symbols["symtarget::outer_work"][0]
        assert res.frames[-1].function == "symtarget::outer_work"
        assert res.frames[-1].file is not None and res.frames[-1].file.endswith("main.rs")
        # after the process is gone, earlier mappings still resolve (fds are held)
        running.stop()
        sym.refresh_maps()
        later = sym.resolve([running.func_addr + 1])[running.func_addr + 1]
        assert later.frames[-1].function == "symtarget::outer_work"
        assert sym.warnings == []
        assert sym.unresolved_addresses == 0


def test_stripped_binary_warns_once(
    target: Target, tmp_path: Path, cache: Path, run_binary: type[_Running]
) -> None:
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-o", str(stripped), str(target.binary)], check=True)
    running = run_binary(stripped)
    start = target.symbols["symtarget::outer_work"][0]
    with Symbolizer(running.proc.pid, cache, preload=True) as sym:
        addrs = [running.func_addr + i for i in (0, 4, 8)]
        res = sym.resolve(addrs)
        for i, a in zip((0, 4, 8), addrs, strict=True):
            (frame,) = res[a].frames
            assert frame == Frame(
                f"stripped+0x{start + i:x}", None, None, str(stripped), False, False
            )
        sym.resolve([a + 100 for a in addrs])
        assert sym.warnings == [
            f"{stripped}: stripped: addresses only, no symbols at all (rebuild without strip, "
            "or install its debug symbols: a -dbgsym package or /usr/lib/debug/.build-id)"]
        assert sym.unresolved_addresses == 6
        unknown = sym.resolve([8])[8]
        assert unknown.module == "[unknown]"
        assert unknown.frames == (Frame("[unknown]+0x8", None, None, "[unknown]", False, False),)
        assert sym.unresolved_addresses == 7
