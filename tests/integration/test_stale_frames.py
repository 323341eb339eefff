"""Stack recovery on a real program, beside `perf record -g` on the same run.

tests/targets/src/bin/stale_frames.rs leaves stale return addresses on its
stack: `plant` (and `unlink`) run before "ready" and never again, and the
binary-trees loop calls libc's malloc/free (no frame pointers, some of their
slots never written) from deep recursions. A decoder that takes such a word for
a caller charges time to functions that were not calling (docs/attribution.md,
"Frame-pointer stacks").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.helpers import query, self_percent_by_function, top_cpu_json

pytestmark = pytest.mark.integration

BIN = "stale_frames"


def perf_samples(data: Path) -> list[list[str]]:
    """Each perf sample's symbols, leaf first ("[unknown]" where perf had none)."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    samples: list[list[str]] = []
    for block in out.split("\n\n"):
        frames = []
        for line in block.splitlines():
            m = re.match(r"\s*[0-9a-f]+\s+(.*?)(\+0x[0-9a-f]+)?$", line)
            if m:
                frames.append(m.group(1))
        if frames:
            samples.append(frames)
    return samples


def rsprof_stacks(run_rsprof, db: Path, tmp_path: Path) -> Counter[tuple[str, ...]]:
    """rsprof's whole stacks (root first), with their samples, from the folded export."""
    folded = tmp_path / "stacks.folded"
    run_rsprof("export", str(db), "-o", str(folded), check=True)
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in folded.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        stacks[tuple(stack.split(";"))] += int(n)
    return stacks


def test_no_caller_is_invented_beside_perf(targets, start_target, run_rsprof,
                                           tmp_path: Path) -> None:
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed")
    target = start_target(targets / BIN, "--seconds", "60")
    perf_data = tmp_path / "perf.data"
    perf = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "999", "-p", str(target.pid),
                             "-o", str(perf_data), "--", "sleep", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "stale.db"
    result = run_rsprof("-p", str(target.pid), "-q", "-d", "5s", "--cpu-freq", "999",
                        "-o", str(db))
    _, perf_err = perf.communicate(timeout=60)
    assert result.returncode == 0, result.stderr
    if perf.returncode != 0 or not perf_data.exists():
        pytest.skip(f"perf record failed: {perf_err.strip()[-200:]}")
    perf_runs = perf_samples(perf_data)
    assert len(perf_runs) > 1000
    perf_leaf = Counter(s[0] for s in perf_runs)
    perf_seen = {f for s in perf_runs for f in s}

    doc = top_cpu_json(run_rsprof, db)
    shares = self_percent_by_function(doc)
    stacks = rsprof_stacks(run_rsprof, db, tmp_path)
    on_stacks = {f for stack in stacks for f in stack}

    # plant and unlink ran before the recording and never again: perf never saw
    # them running, and rsprof puts them on no stack, let alone charges them.
    for gone in (f"{BIN}::plant", f"{BIN}::unlink"):
        assert perf_leaf[gone] == 0
        assert gone not in on_stacks, [s for s in stacks if gone in s][:3]
    # Every function of the program rsprof charges time to is one perf saw running.
    # (Leaves in libc are the sampled IP itself; rsprof names inlined functions
    # there, such as free_perturb, that perf -g does not.)
    charged = {name for name, pct in shares.items() if pct > 0 and name.startswith(BIN)}
    assert charged and charged <= perf_seen, charged - perf_seen
    # create_left calls nothing but create: only its own code can be charged to it,
    # so its self time is what perf saw as its leaf (stale return addresses into
    # it, taken as the caller of malloc or free, once charged it 26 % instead of 3).
    perf_share = 100 * perf_leaf[f"{BIN}::create_left"] / len(perf_runs)
    assert abs(shares.get(f"{BIN}::create_left", 0.0) - perf_share) <= 3, (shares, perf_share)
    # free is reached only from drop: no stack has create/check calling it.
    for stack in stacks:
        if any(f in ("free", "__free", "cfree", "_int_free", "__GI___libc_free")
               for f in stack):
            assert not {f"{BIN}::create", f"{BIN}::create_left", f"{BIN}::check"} & set(stack)
    # Garbage words of broken chains are counted as broken stacks, not stored as
    # unresolvable addresses.
    summary = doc["summary"]
    assert summary["broken_stacks"] > 0 and summary["scanned_stacks"] > 0
    assert summary["unresolved_addresses"] == 0
    assert not query(db, "SELECT address FROM addresses a JOIN modules m ON m.id = a.module_id"
                         " WHERE m.path = '[unknown]'")
