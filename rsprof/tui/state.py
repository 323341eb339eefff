"""The TUI's own state (which view, which row, chart window, filter) and the
actions keys perform on it. Plain data, no terminal: the headless tests drive
it through the real key bindings, and the renderer reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from rsprof.tui.snapshot import CpuRow, MemRow, Snapshot

CPU, MEM = "cpu", "mem"
TABLE, CHART = "table", "chart"
# Sortable columns per view (the first is the default), as the table shows them.
SORTS = {CPU: ("Total %", "Live %", "Function"),
         MEM: ("Live", "Total allocated", "Allocs", "Function")}
ZOOMS = (1, 2, 5, 10, 30, 60)  # intervals per chart dot column

Row = CpuRow | MemRow


def _sort_key(view: str, column: str):  # type: ignore[no-untyped-def]
    if column == "Function":
        return lambda r: (r.function, r.location)
    if view == CPU:
        if column == "Live %":
            return lambda r: (-r.live_pct, -r.cpu_ns, -r.samples, r.function)
        return lambda r: (-r.cpu_ns, -r.samples, r.function)
    if column == "Total allocated":
        return lambda r: (-r.alloc_bytes, r.function)
    if column == "Allocs":
        return lambda r: (-r.allocs, r.function)
    return lambda r: (-r.live_bytes, -r.alloc_bytes, r.function)


@dataclass
class ViewState:
    view: str = CPU
    sort: dict[str, int] = field(default_factory=lambda: {CPU: 0, MEM: 0})
    selected: dict[str, str | None] = field(default_factory=lambda: {CPU: None, MEM: None})
    index: dict[str, int] = field(default_factory=lambda: {CPU: 0, MEM: 0})
    top: dict[str, int] = field(default_factory=lambda: {CPU: 0, MEM: 0})
    chart_visible: bool = True
    focus: str = TABLE
    pan: int = 0          # chart: buckets back from the newest
    zoom: int = 0         # index into ZOOMS
    paused: bool = False
    filter_text: str = ""
    filtering: bool = False  # typing a filter after "/"
    show_help: bool = False
    page_rows: int = 10   # rows the table showed last (PgUp/PgDn step)
    _cache: dict[tuple[object, ...], tuple[Row, ...]] = field(default_factory=dict)

    # -- rows -----------------------------------------------------------------

    def rows(self, snap: Snapshot) -> tuple[Row, ...]:
        """The current view's rows: filtered, sorted (cached per snapshot)."""
        column = SORTS[self.view][self.sort[self.view]]
        key = (snap.version, id(snap), self.view, column, self.filter_text)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        rows: tuple[Row, ...] = snap.cpu_rows if self.view == CPU else snap.mem_rows
        needle = self.filter_text.lower()
        if needle:
            rows = tuple(r for r in rows
                         if needle in r.function.lower() or needle in r.location.lower())
        if column != SORTS[self.view][0]:  # snapshots come in the first column's order
            rows = tuple(sorted(rows, key=_sort_key(self.view, column)))
        self._cache.clear()
        self._cache[key] = rows
        return rows

    def current(self, snap: Snapshot) -> tuple[int, Row | None]:
        """(index, row) of the selection, kept on the same function when rows move."""
        rows = self.rows(snap)
        if not rows:
            self.index[self.view] = 0
            return 0, None
        wanted = self.selected[self.view]
        i = self.index[self.view]
        if wanted is not None and not (0 <= i < len(rows) and rows[i].key == wanted):
            for j, r in enumerate(rows):
                if r.key == wanted:
                    i = j
                    break
            else:
                i = min(i, len(rows) - 1)
        i = max(0, min(i, len(rows) - 1))
        self.index[self.view] = i
        self.selected[self.view] = rows[i].key
        return i, rows[i]

    # -- actions --------------------------------------------------------------

    def move(self, snap: Snapshot, delta: int) -> None:
        rows = self.rows(snap)
        if not rows:
            return
        i, _ = self.current(snap)
        i = max(0, min(len(rows) - 1, i + delta))
        self.index[self.view] = i
        self.selected[self.view] = rows[i].key

    def move_to(self, snap: Snapshot, last: bool) -> None:
        rows = self.rows(snap)
        if rows:
            self.move(snap, len(rows) if last else -len(rows))

    def switch(self, view: str) -> None:
        self.view = view

    def toggle_view(self) -> None:
        self.view = MEM if self.view == CPU else CPU

    def cycle_sort(self) -> None:
        self.sort[self.view] = (self.sort[self.view] + 1) % len(SORTS[self.view])

    def toggle_chart(self) -> None:
        self.chart_visible = not self.chart_visible
        if not self.chart_visible:
            self.focus = TABLE

    def toggle_focus(self) -> None:
        self.focus = CHART if self.focus == TABLE and self.chart_visible else TABLE

    def pan_by(self, buckets: int) -> None:
        """Positive: further into the past."""
        self.pan = max(0, self.pan + buckets)

    def zoom_by(self, step: int) -> None:
        """+1 zooms in (fewer intervals per column), -1 zooms out."""
        self.zoom = max(0, min(len(ZOOMS) - 1, self.zoom - step))

    @property
    def zoom_factor(self) -> int:
        return ZOOMS[self.zoom]

    def sort_column(self) -> str:
        return SORTS[self.view][self.sort[self.view]]
