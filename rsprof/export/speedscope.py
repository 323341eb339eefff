"""A `StackSet` in speedscope's file format (https://www.speedscope.app/file-format-schema.json).

Sampled profiles: every distinct stack once, root first, as indices into the
shared frame list, with its weight. CPU data gives one profile per thread
(the heaviest is shown first on load); heap data gives one profile. Frames
are the logical frames of the stacks (inlined functions expanded),
deduplicated by (function, file, line). Units: "nanoseconds" for CPU time,
"bytes" for heap bytes, "none" for counts (samples, objects).
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from rsprof import __version__
from rsprof.export.stacks import CPU, FrameInfo, StackSet

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
NO_STACK = "[no stack]"
UNITS = {"nanoseconds": "nanoseconds", "bytes": "bytes"}  # anything else: "none"


class _Frames:
    """The shared frame list, deduplicated by (function, file, line)."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str | None, int | None], int] = {}
        self.frames: list[dict[str, Any]] = []

    def add(self, function: str, file: str | None, line: int | None) -> int:
        key = (function, file, line)
        found = self.index.get(key)
        if found is not None:
            return found
        frame: dict[str, Any] = {"name": function}
        if file:
            frame["file"] = file
        if line is not None and line > 0:
            frame["line"] = line
        self.index[key] = len(self.frames)
        self.frames.append(frame)
        return self.index[key]

    def stack(self, frames: list[FrameInfo]) -> tuple[int, ...]:
        if not frames:
            return (self.add(NO_STACK, None, None),)
        return tuple(self.add(f.function, f.file, f.line) for f in frames)


def _profile(name: str, unit: str, weights: dict[tuple[int, ...], int]) -> dict[str, Any]:
    total = sum(weights.values())
    return {"type": "sampled", "name": name, "unit": unit, "startValue": 0,
            "endValue": total, "samples": [list(s) for s in weights],
            "weights": list(weights.values())}


def write_speedscope(sset: StackSet, out: TextIO, value_index: int, name: str) -> None:
    """Write `sset` weighed by `sset.value_types[value_index]` as speedscope JSON."""
    vtype, vunit = sset.value_types[value_index]
    unit = UNITS.get(vunit, "none")
    frames = _Frames()
    # profile name -> stack (frame indices, root first) -> weight; insertion order kept.
    groups: dict[str, dict[tuple[int, ...], int]] = {}
    for ws in sset.stacks:
        value = ws.values[value_index]
        if value <= 0:
            continue
        group = ws.thread if sset.kind == CPU else vtype
        stack = frames.stack(sset.frames_root_first(ws))
        weights = groups.setdefault(group or "(unnamed thread)", {})
        weights[stack] = weights.get(stack, 0) + value
    profiles = [_profile(group, unit, groups[group]) for group in sorted(groups)]
    if not profiles:
        profiles = [_profile(f"{vtype}: no samples", unit, {})]
    heaviest = max(range(len(profiles)), key=lambda i: (profiles[i]["endValue"], -i))
    doc = {
        "$schema": SCHEMA,
        "shared": {"frames": frames.frames},
        "profiles": profiles,
        "name": name,
        "activeProfileIndex": heaviest,
        "exporter": f"rsprof@{__version__}",
    }
    json.dump(doc, out, separators=(",", ":"), ensure_ascii=True)
    out.write("\n")
