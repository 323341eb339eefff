"""The SIGPROF self-sampler never runs off the program's alternate signal stack.

Rust's std gives every thread an alternate signal stack of
max(SIGSTKSZ, AT_MINSIGSTKSZ) bytes, and the shim's handler runs on it. A
lazily bound PLT call inside the handler ran the dynamic linker's resolver
there, which saves the whole XSAVE state (several KiB with AVX-512) and killed
programs with SIGSEGV. Two static checks fail on any x86-64 machine if that
comes back (the shim is linked BIND_NOW; nothing the handler can reach calls
through the PLT), and a measurement bounds what the handler uses on a painted
stack of Rust's size.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from rsprof.shim import shim_path
from tests.integration.helpers import query

pytestmark = pytest.mark.integration

HANDLER = "on_sigprof"
# Rust's SIGSTKSZ on x86-64 (its alternate stack when AT_MINSIGSTKSZ is smaller), less
# the kernel's signal frame of the largest x86-64 state short of AMX (AVX-512: about
# 3.4 KiB here, measured as the probe's baseline), leaves about 4.7 KiB; the handler
# gets at most 2 KiB of it (it uses about 1.5 KiB: one 64-frame sample record and the
# arming path's 512-byte directory buffer).
RUST_SIGSTKSZ = 8192
HANDLER_BUDGET = 2048


def _calls_by_function(binary: Path) -> dict[str, list[str]]:
    """Each function of `binary` and the symbols it calls or jumps to (objdump)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)],
                         capture_output=True, text=True, check=True).stdout
    calls: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if head:
            current = head.group(1)
            calls[current] = []
            continue
        if current is None:
            continue
        target = re.search(r"\s(?:call|jmp)q?\s+[0-9a-f]+ <([^>+]+)(?:\+0x[0-9a-f]+)?>", line)
        if target and target.group(1) != current:
            calls[current].append(target.group(1))
        elif re.search(r"\scallq?\s+\*", line):
            calls[current].append("<indirect call>")
    return calls


def reachable_from(binary: Path, root: str) -> set[str]:
    calls = _calls_by_function(binary)
    assert root in calls, f"{root} not found in {binary}"
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls.get(name, []))
    return seen


def _needs_objdump() -> None:
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    if os.uname().machine != "x86_64":
        pytest.skip("the disassembly patterns are x86-64's")


def test_shim_is_linked_bind_now() -> None:
    with open(shim_path(), "rb") as fh:
        dynamic = next(s for s in ELFFile(fh).iter_sections() if isinstance(s, DynamicSection))
        tags = {t.entry.d_tag: t.entry.d_val for t in dynamic.iter_tags()}
    df_bind_now, df_1_now = 0x8, 0x1
    assert (tags.get("DT_FLAGS", 0) & df_bind_now) or (tags.get("DT_FLAGS_1", 0) & df_1_now), \
        "librsprof_shim.so is lazily bound: link it with -z now (csrc/rsprof_sys.h)"


def test_nothing_the_handler_reaches_calls_through_the_plt() -> None:
    _needs_objdump()
    reached = reachable_from(shim_path(), HANDLER)
    # The ring write is part of the path: the walk really followed the calls.
    assert "rsprof__write_record_nowait" in reached, sorted(reached)
    libc = sorted(name for name in reached if "@plt" in name or name == "<indirect call>")
    assert libc == [], f"the SIGPROF handler can reach libc through the PLT: {libc}"


def test_reachability_check_sees_a_plt_call(tmp_path: Path) -> None:
    """The check above can fail: a handler that calls clock_gettime() is caught."""
    _needs_objdump()
    src = tmp_path / "h.c"
    src.write_text("#include <time.h>\n"
                   "static void on_sigprof(int s) { struct timespec t;"
                   " clock_gettime(CLOCK_MONOTONIC, &t); (void)s; }\n"
                   "void (*keep)(int) = on_sigprof;\n")
    lib = tmp_path / "h.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    assert any("@plt" in name for name in reachable_from(lib, HANDLER))


def test_handler_stack_use_is_bounded(altstack_probe: Path, run_rsprof, tmp_path: Path) -> None:
    db = tmp_path / "probe.db"
    result = run_rsprof("run", "-q", "--cpu-source", "self", "--cpu-freq", "999", "-o", str(db),
                        "--", str(altstack_probe), "--seconds", "3", "--threads", "1",
                        timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [dict(kv.split("=") for kv in line.split())
            for line in result.stdout.splitlines() if line.startswith("thread=")]
    assert len(rows) == 2, result.stdout
    samples = query(db, "SELECT COUNT(*), SUM(samples) FROM cpu_samples")[0]
    assert samples[1] and samples[1] >= 200, samples  # both threads, ~3 s at the tick rate
    for row in rows:
        size, minsig = int(row["size"]), int(row["minsigstksz"])
        baseline, deepest = int(row["baseline"]), int(row["deepest"])
        assert size == max(RUST_SIGSTKSZ, minsig)
        handler = deepest - baseline
        assert handler > 0, row  # the sampler's handler ran on this stack
        assert handler <= HANDLER_BUDGET, (
            f"the SIGPROF handler used {handler} bytes of the alternate stack beyond the "
            f"kernel's frame ({baseline} bytes here); budget {HANDLER_BUDGET}: {row}")
        # And the whole of it (this machine's kernel frame included) fits the stack
        # with room for one more frame of AT_MINSIGSTKSZ's worst case short of AMX.
        assert deepest + min(minsig, RUST_SIGSTKSZ - HANDLER_BUDGET) <= size + baseline, row
