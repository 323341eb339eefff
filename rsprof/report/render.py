"""Render rows as an aligned text table, JSON or CSV: the formats every report shares."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import TextIO

Cell = str | int | float | None


def _text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Cell]],
                 right_align: Sequence[bool] | None = None, max_width: int = 80) -> None:
    """Aligned columns; cells longer than max_width are cut with an ellipsis."""
    texts = [[_text(c) for c in row] for row in rows]
    texts = [[t if len(t) <= max_width else t[: max_width - 1] + "…" for t in row]
             for row in texts]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, t in enumerate(row):
            widths[i] = max(widths[i], len(t))
    align = right_align or [False] * len(headers)

    def fmt(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, align,
                                                                      strict=True)]
        return "  ".join(parts).rstrip()

    out.write(fmt(list(headers)) + "\n")
    for row in texts:
        out.write(fmt(row) + "\n")


def render_json(out: TextIO, document: object) -> None:
    json.dump(document, out, indent=2)
    out.write("\n")


def render_csv(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
