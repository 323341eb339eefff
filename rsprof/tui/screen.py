"""Draws the whole TUI screen as styled lines: header, table, chart, footer.

Pure: (snapshot, state, width, height) -> lines of (style, text) fragments,
each line exactly `width` cells. The prompt_toolkit app shows them as they
are; the golden tests join their text.
"""

from __future__ import annotations

from rsprof.report.heap import human_bytes
from rsprof.tui.chart import render_chart, sparkline
from rsprof.tui.snapshot import CpuRow, MemRow, Snapshot, dense
from rsprof.tui.state import CHART, CPU, TABLE, ViewState

Fragment = tuple[str, str]
Line = list[Fragment]

TREND_W = 10
KEY_HINTS = ("q quit", "1/2 cpu/mem", "j/k move", "c chart", "h/l pan", "+/- zoom",
             "tab focus", "/ filter", "s sort", "p pause", "? help")
HELP = (
    ("q / Esc", "Quit (live: stop recording and save, like Ctrl-C)"),
    ("1 / 2", "Switch to CPU / Memory view"),
    ("m", "Toggle view mode (CPU <-> Memory)"),
    ("c / Enter", "Toggle chart visibility"),
    ("j / k, Down / Up", "Navigate table (down/up)"),
    ("PgDn / PgUp", "Page down / up"),
    ("g / G", "First / last row"),
    ("h / l, Left / Right", "Pan chart (left/right)"),
    ("+ / -", "Zoom chart (in/out)"),
    ("Tab", "Switch focus (table/chart)"),
    ("p", "Pause/resume the display (live mode; recording continues)"),
    ("/", "Filter rows by function or file (Enter keeps, Esc clears)"),
    ("s", "Cycle the sort column"),
    ("?", "This help (any key closes it)"),
)

def fit(text: str, width: int) -> str:
    """Exactly `width` cells: cut with an ellipsis, or padded."""
    if width <= 0:
        return ""
    if len(text) > width:
        return text[:width - 1] + "…" if width > 1 else text[:width]
    return text.ljust(width)

def fit_left(text: str, width: int) -> str:
    """Cut from the left (file paths: the end matters), or padded."""
    if width <= 0:
        return ""
    if len(text) > width:
        return "…" + text[len(text) - width + 1:] if width > 1 else text[-width:]
    return text.ljust(width)

def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60:02d}:{s % 60:02d}"

def percent(value: float) -> str:
    return f"{value:5.1f}%"

def _header(snap: Snapshot, state: ViewState, width: int) -> Line:
    badge = "PAUSED" if state.paused and snap.state != "VIEW" else snap.state
    parts: Line = [("class:title", "rsprof"), ("", " "),
                   (f"class:badge.{badge.lower()}", f" {badge} "), ("", " ")]
    facts = [clock(snap.elapsed_s), f"samples {snap.samples:,}"]
    if snap.heap_partial:  # first, so that a narrow screen still shows it
        since = snap.heap_partial_from_s
        facts.insert(1, "PARTIAL heap" + (f" from {clock(since)}" if since is not None else ""))
    if snap.cpu_ns:  # the CPU time they stand for; "~": from the rate (an older profile)
        facts.append(f"cpu {'~' if snap.cpu_estimated else ''}{snap.cpu_ns / 1e9:.1f}s")
    if snap.rsprof_pct > 0:  # rsprof's own time in the program: the [rsprof] row
        facts.append(f"rsprof overhead {snap.rsprof_pct:.1f}%")
    if snap.process_name or snap.pid:
        facts.append(f"{snap.process_name} (pid {snap.pid})")
    if snap.dropped:
        facts.append(f"dropped {snap.dropped:,}")
    if snap.lost:
        facts.append(f"lost {snap.lost:,}")
    tabs: Line = [("class:tab.active" if state.view == CPU else "class:tab", "[CPU]"),
                  ("", " "),
                  ("class:tab.active" if state.view != CPU else "class:tab", "[Memory]"),
                  ("", " ")]
    used = sum(len(t) for _, t in parts)
    tabs_w = sum(len(t) for _, t in tabs)
    room = width - used - tabs_w
    if room < 0:  # very narrow: badge and tabs only
        return _clip(parts + tabs, width)
    info = "  ".join(facts)
    if len(info) > room:
        info = " ".join(facts)
    parts.append(("class:info", fit(info, room)))
    return parts + tabs

def _clip(line: Line, width: int) -> Line:
    out: Line = []
    left = width
    for style, text in line:
        if left <= 0:
            break
        out.append((style, text[:left]))
        left -= len(text[:left])
    if left > 0:
        out.append(("", " " * left))
    return out

def _columns(view: str, width: int) -> list[tuple[str, int]]:
    """(title, width) of the table's columns; Function and Location share the rest."""
    if view == CPU:  # wide enough for the title with its sort mark
        fixed = [("Total %", 9), ("Live %", 8)]
    else:
        fixed = [("Live", 10), ("Total allocated", 17), ("Allocs", 9)]
    trend = ("Trend", TREND_W)
    spare = width - sum(w + 1 for _, w in fixed) - (TREND_W + 1)
    if spare >= 40:
        func_w = max(16, spare * 55 // 100)
        return [*fixed, ("Function", func_w), ("Location", spare - func_w - 1), trend]
    if spare >= 8:
        return [*fixed, ("Function", spare), trend]
    return [*fixed, ("Function", max(1, width - sum(w + 1 for _, w in fixed)))]

def _cells(row: CpuRow | MemRow, snap: Snapshot, columns: list[tuple[str, int]]) -> list[str]:
    out = []
    for title, w in columns:
        if title == "Total %":
            text = percent(row.total_pct).rjust(w) if isinstance(row, CpuRow) else ""
        elif title == "Live %":
            text = percent(row.live_pct).rjust(w) if isinstance(row, CpuRow) else ""
        elif title == "Live":
            text = human_bytes(row.live_bytes).rjust(w) if isinstance(row, MemRow) else ""
        elif title == "Total allocated":
            text = human_bytes(row.alloc_bytes).rjust(w) if isinstance(row, MemRow) else ""
        elif title == "Allocs":
            text = f"{row.allocs:,}".rjust(w) if isinstance(row, MemRow) else ""
        elif title == "Function":
            text = fit(row.function, w)
        elif title == "Location":
            text = fit_left(row.location, w)
        else:  # Trend
            start = max(0, snap.intervals - w)
            text = sparkline(dense(row.series, start, snap.intervals, isinstance(row, MemRow)),
                             w)
        out.append(fit(text, w))
    return out

def _table(snap: Snapshot, state: ViewState, width: int, height: int) -> list[Line]:
    columns = _columns(state.view, width)
    sort = state.sort_column()
    head = []
    for title, w in columns:
        label = title + (" ▼" if title == sort else "")
        head.append(label.rjust(w) if title not in ("Function", "Location", "Trend")
                    else fit(label, w))
    lines: list[Line] = [[("class:table.header", fit(" ".join(head), width))]]
    noted = state.view != CPU and bool(snap.heap_not_seen)
    if noted:  # above the rows: they are not the program's heap
        note = _wrap("heap not seen: " + snap.heap_not_seen, width, max(1, (height - 1) // 2))
        lines += [[("class:warning", text)] for text in note]
    if state.view != CPU and snap.heap_partial:  # above the rows: they are incomplete
        note = _wrap(snap.heap_partial, width, max(1, (height - len(lines)) // 2))
        lines += [[("class:warning", text)] for text in note]
    if snap.detail_note and height - len(lines) >= 3:  # the detail it lacks: one line
        lines.append([("class:warning", fit("  " + snap.detail_note, width))])
    rows = state.rows(snap)
    body_h = max(0, height - len(lines))
    state.page_rows = max(1, body_h)
    index, _ = state.current(snap)
    top = state.top[state.view]
    if index < top:
        top = index
    elif index >= top + body_h:
        top = index - body_h + 1
    top = max(0, min(top, max(0, len(rows) - body_h)))
    state.top[state.view] = top
    for i in range(top, min(len(rows), top + body_h)):
        text = fit(" ".join(_cells(rows[i], snap, columns)), width)
        style = "class:row"
        if i == index:
            style = "class:row.selected" + (".focused" if state.focus == TABLE else "")
        lines.append([(style, text)])
    if not rows and (state.filter_text or not noted):
        empty = "no rows match the filter" if state.filter_text else (
            "no samples yet" if state.view == CPU else
            "no heap data (start the program with `rsprof run` or the rsprof-trace crate)"
            if not snap.has_heap else "no allocations yet")
        lines.append([("class:dim", fit("  " + empty, width))])
    while len(lines) < height:
        lines.append([("", " " * width)])
    return lines[:height]

def _wrap(text: str, width: int, max_lines: int) -> list[str]:
    """`text` in lines of exactly `width` cells, broken at spaces; at most `max_lines`
    (the last one cut with an ellipsis)."""
    words = text.split()
    out: list[str] = []
    line = ""
    for i, word in enumerate(words):
        if line and len(line) + 1 + len(word) > width - 2:
            if len(out) == max_lines - 1:
                out.append(fit("  " + " ".join([line, *words[i:]]), width))
                return out
            out.append(fit("  " + line, width))
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(fit("  " + line, width))
    return out

def _bucketed(values: list[float], factor: int, hold: bool) -> list[float]:
    if factor <= 1:
        return values
    out = []
    for i in range(0, len(values), factor):
        chunk = values[i:i + factor]
        out.append(chunk[-1] if hold else sum(chunk) / len(chunk))
    return out

def _chart(snap: Snapshot, state: ViewState, width: int, height: int) -> list[Line]:
    _, row = state.current(snap)
    is_mem = state.view != CPU
    values: list[float] = []
    title = "CPU %" if not is_mem else "Live bytes"
    if row is not None:
        values = dense(row.series, 0, snap.intervals, hold=is_mem)
        title = f"{title}: {row.function}"
    factor = state.zoom_factor
    buckets = _bucketed(values, factor, is_mem)
    end = max(0, len(buckets) - 1 - state.pan)
    if buckets and state.pan > len(buckets) - 1:
        state.pan = len(buckets) - 1
        end = 0
    y_format = (lambda v: human_bytes(int(v))) if is_mem else (
        lambda v: f"{v:.0f}%" if v >= 10 or v == 0 else f"{v:.1f}%")
    text = render_chart(buckets, width - 1, height, interval_s=snap.interval_s * factor,
                        end_index=end, y_format=y_format, title=title)
    style = "class:chart" + (".focused" if state.focus == CHART else "")
    return [[("class:border", "│"), (style, line)] for line in text]

def _footer(state: ViewState, width: int) -> Line:
    if state.filtering:
        return [("class:filter", fit(f"/{state.filter_text}█  (Enter keep, Esc clear)", width))]
    hints = "  ".join(KEY_HINTS)
    extra = f"  filter: {state.filter_text}" if state.filter_text else ""
    return [("class:footer", fit(" " + hints + extra, width))]

def _help(width: int, height: int) -> list[Line]:
    lines: list[Line] = [[("class:table.header", fit(" Keys", width))]]
    for key, action in HELP:
        lines.append([("class:help.key", fit(f"  {key}", 24)), ("", fit(action, width - 24))])
    while len(lines) < height:
        lines.append([("", " " * width)])
    return [_clip(line, width) for line in lines[:height]]

def render(snap: Snapshot, state: ViewState, width: int, height: int) -> list[Line]:
    """The screen: `height` lines of exactly `width` cells."""
    width, height = max(1, width), max(1, height)
    lines: list[Line] = [_clip(_header(snap, state, width), width)]
    body_h = max(0, height - 2)
    if state.show_help:
        lines += _help(width, body_h)
    elif state.chart_visible and width >= 100 and body_h >= 5:  # chart right of the table
        chart_w = width * 2 // 5 if width >= 120 else 34
        table_w = width - chart_w
        table = _table(snap, state, table_w, body_h)
        chart = _chart(snap, state, chart_w, body_h)
        lines += [t + c for t, c in zip(table, chart, strict=True)]
    elif state.chart_visible and body_h >= 10:  # narrow (80x24): chart under the table
        chart_h = body_h // 2
        lines += _table(snap, state, width, body_h - chart_h)
        lines += [[*line[1:], ("", " ")] for line in _chart(snap, state, width, chart_h)]
    else:
        lines += _table(snap, state, width, body_h)
    if height >= 2:
        lines.append(_footer(state, width))
    return lines[:height]

def plain_text(lines: list[Line]) -> str:
    """The screen as text (golden tests, README)."""
    return "\n".join("".join(text for _, text in line).rstrip() for line in lines)
