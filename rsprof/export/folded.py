"""Folded stacks: one `frame;frame;...;frame count` line per distinct stack, root
first, as flamegraph.pl, inferno and speedscope read them."""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from rsprof.export.stacks import StackSet


def frame_label(function: str) -> str:
    """A frame's text in a folded line: `;` separates frames, so one inside a name
    (Rust array types: `<[u8; 4] as T>::f`) becomes `,`."""
    return function.replace(";", ",")


def folded_lines(sset: StackSet, value_index: int) -> list[tuple[str, int]]:
    """(stack, value) per distinct root-first chain of function names, largest first."""
    merged: Counter[str] = Counter()
    for ws in sset.stacks:
        value = ws.values[value_index]
        if value <= 0:
            continue
        names = [frame_label(f.function) for f in sset.frames_root_first(ws)]
        merged[";".join(names) if names else "[no stack]"] += value
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))


def write_folded(sset: StackSet, out: TextIO, value_index: int) -> None:
    for stack, value in folded_lines(sset, value_index):
        out.write(f"{stack} {value}\n")
