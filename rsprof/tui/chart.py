"""Text charts for the TUI: a block sparkline and a braille area chart over time.

Pure functions returning plain strings, so they can be tested as golden text and drawn by any
front end. Non-finite and negative values are treated as 0 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
BRAILLE_BASE = 0x2800
# Dot bits of a braille cell, top row first: (left column, right column).
BRAILLE_ROWS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
DOTS_PER_CELL_Y = len(BRAILLE_ROWS)
INTERVALS_PER_COLUMN = 2

# Keeps e.g. 0.1 / 0.4 * 8 (== 2.0000000000000004) from rounding up a level.
_EPSILON = 1e-9


def _clean(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def _level(value: float, top: float, levels: int) -> int:
    """How many of `levels` steps `value` fills when `top` fills them all; >= 1 if value > 0."""
    if value <= 0 or top <= 0:
        return 0
    return max(1, min(levels, math.ceil(value / top * levels - _EPSILON)))


def sparkline(values: Sequence[float], width: int) -> str:
    """The last `width` values as block characters, the largest shown as a full block.

    Zero (or negative, or NaN) is a space; any positive value is at least the lowest block.
    Always exactly `width` characters, left-padded with spaces when there are fewer values.
    """
    if width <= 0:
        return ""
    shown = [_clean(v) for v in values[-width:]]
    top = max(shown, default=0.0)
    chars = [BLOCKS[level - 1] if (level := _level(v, top, len(BLOCKS))) else " " for v in shown]
    return "".join(chars).rjust(width)


def format_span(seconds: float) -> str:
    """A window length: 500ms, 1.5s, 30s, 2m, 1m30s, 1h5m (hours drop the seconds)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    millis = int(seconds * 1000 + 0.5)
    if millis < 1000:
        return f"{millis}ms"
    if millis < 60_000:
        if millis % 1000 == 0:
            return f"{millis // 1000}s"
        return f"{millis / 1000:.1f}".rstrip("0").rstrip(".") + "s"
    total = (millis + 500) // 1000
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = total // 3600, total % 3600 // 60
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"


def format_clock(seconds: float) -> str:
    """Elapsed time as m:ss (minutes are not wrapped into hours): 0:05, 1:30, 75:00."""
    whole = int(seconds + _EPSILON) if math.isfinite(seconds) and seconds > 0 else 0
    return f"{whole // 60}:{whole % 60:02d}"


def _fit(text: str, width: int) -> str:
    return text[:width].ljust(width)


def _window(count: int, end_index: int, capacity: int) -> tuple[int, int]:
    """First index and number of intervals shown: up to `capacity` ending at `end_index`."""
    if count == 0:
        return 0, 0
    end = max(0, min(end_index, count - 1))
    start = max(0, end - capacity + 1)
    return start, end - start + 1


def _title_row(title: str, window_label: str, width: int) -> str:
    room = width - len(window_label)
    if room < 0:
        return _fit(window_label, width)
    shown_title = title[: max(0, room - 1)]
    return shown_title.ljust(room) + window_label


def _axis_row(left: str, right: str, plot_w: int) -> str:
    if len(left) + 1 + len(right) <= plot_w:
        return left + right.rjust(plot_w - len(left))
    return right.rjust(plot_w) if len(right) <= plot_w else " " * plot_w


def _braille_rows(bars: Sequence[int], plot_w: int, plot_h: int) -> list[str]:
    """Rows (top first) of `plot_w` cells; bars[j] is the height in dots of interval j."""
    cells = [[0] * plot_w for _ in range(plot_h)]
    bottom_up = BRAILLE_ROWS[::-1]
    for j, dots in enumerate(bars):
        column, side = divmod(j, INTERVALS_PER_COLUMN)
        for k in range(dots):  # k counts dots from the bottom
            cell_row, dot_row = divmod(k, DOTS_PER_CELL_Y)
            cells[plot_h - 1 - cell_row][column] |= bottom_up[dot_row][side]
    return ["".join(chr(BRAILLE_BASE + bits) if bits else " " for bits in row) for row in cells]


def render_chart(
    values: Sequence[float],
    width: int,
    height: int,
    *,
    interval_s: float,
    end_index: int,
    y_format: Callable[[float], str],
    title: str = "",
) -> list[str]:
    """An area chart of per-interval `values` as exactly `height` lines of `width` characters.

    Line 0 is `title` with the window length at the right (e.g. "[30s]"); then height-2 plot
    rows with y labels (max at the top, max/2 in the middle, 0 at the bottom); then a time axis
    with the elapsed m:ss at the window's left and right edges. The window ends at interval
    `end_index` and holds up to 2 intervals per plot column (one per braille dot column).
    Too small to draw (height < 3, or no room for one plot column): blank lines.
    """
    blank = [" " * max(0, width)] * max(0, height)
    if height < 3:
        return blank
    plot_h = height - 2
    cleaned = [_clean(v) for v in values]
    mid_row = plot_h // 2 if plot_h >= 3 else None

    # The label column's width depends on the y max, which depends on the window, which depends
    # on the plot width left over by the labels: widen the guess until the labels fit it.
    label_w = 0
    while True:
        plot_w = width - label_w - 2  # label column is label_w + 1 wide, then the separator
        if plot_w < 1:
            return blank
        start, shown = _window(len(cleaned), end_index, plot_w * INTERVALS_PER_COLUMN)
        y_max = max(cleaned[start : start + shown], default=0.0) or 1.0
        labels = {plot_h - 1: y_format(0.0)}
        if mid_row is not None:
            labels[mid_row] = y_format(y_max / 2)
        labels[0] = y_format(y_max)  # the top label wins when there is a single plot row
        needed = max(len(label) for label in labels.values())
        if needed <= label_w:
            break
        label_w = needed

    span = shown if shown else plot_w * INTERVALS_PER_COLUMN
    bars = [_level(v, y_max, plot_h * DOTS_PER_CELL_Y) for v in cleaned[start : start + shown]]
    plot = _braille_rows(bars, plot_w, plot_h)

    lines = [_title_row(title, f"[{format_span(span * interval_s)}]", width)]
    for row, cells in enumerate(plot):
        label = labels.get(row)
        separator = "┤" if label is not None else "│"
        lines.append(f"{(label or '').rjust(label_w)} {separator}{cells}")
    left = format_clock(start * interval_s)
    right = format_clock((start + span) * interval_s)
    # The right label sits where the data ends when it does not fill the plot.
    data_w = -(-span // INTERVALS_PER_COLUMN)
    axis_w = min(plot_w, max(len(left) + 1 + len(right), data_w))
    lines.append(" " * (label_w + 1) + "└" + _axis_row(left, right, axis_w).ljust(plot_w))
    return [_fit(line, width) for line in lines]
