"""The prompt_toolkit full-screen application: one control that draws
`rsprof.tui.screen.render` at the terminal's size, and the key bindings.

Snapshots arrive from another thread through `TuiApp.publish` (thread-safe);
the UI renders the one it holds and never waits for data.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from prompt_toolkit.application import Application
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import UIContent, UIControl
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.styles import Style

from rsprof.tui.screen import render
from rsprof.tui.snapshot import VIEW, Snapshot
from rsprof.tui.state import CPU, MEM, ViewState

STYLE = Style.from_dict({
    "title": "bold reverse",
    "badge.recording": "bold fg:ansiwhite bg:ansired",
    "badge.paused": "bold fg:ansiblack bg:ansiyellow",
    "badge.view": "bold fg:ansiwhite bg:ansiblue",
    "badge.ended": "bold fg:ansiblack bg:ansigray",
    "tab.active": "bold reverse",
    "tab": "",
    "table.header": "bold underline",
    "row.selected": "reverse",
    "row.selected.focused": "bold reverse",
    "chart.focused": "bold",
    "border": "fg:ansigray",
    "footer": "reverse",
    "filter": "bold",
    "help.key": "bold",
    "dim": "fg:ansigray",
    "warning": "bold fg:ansiyellow",
})


class ScreenControl(UIControl):
    """Draws the whole screen at the size prompt_toolkit gives it."""

    def __init__(self, tui: TuiApp) -> None:
        self.tui = tui

    def create_content(self, width: int, height: int) -> UIContent:
        lines: list[StyleAndTextTuples] = [
            list(line) for line in render(self.tui.shown, self.tui.state, width, height)]

        def get_line(i: int) -> StyleAndTextTuples:
            return lines[i] if i < len(lines) else []

        return UIContent(get_line=get_line, line_count=len(lines), show_cursor=False)

    def is_focusable(self) -> bool:
        return True


class TuiApp:
    """State, the snapshot shown, and the Application that draws them.

    `on_quit` runs (on the UI thread) when the user quits; live mode uses it to
    stop the recording. `live` enables `p`."""

    def __init__(self, first: Snapshot, *, live: bool, input: Input | None = None,
                 output: Output | None = None, on_quit: Callable[[], None] | None = None,
                 refresh_s: float = 0.5) -> None:
        self.state = ViewState()
        self.live = live
        self.shown = first       # what is drawn
        self.latest = first      # the newest snapshot (differs while paused)
        self._lock = threading.Lock()
        self.on_quit = on_quit
        no_color = bool(os.environ.get("NO_COLOR"))
        self.app: Application[None] = Application(
            layout=Layout(Window(ScreenControl(self))),
            key_bindings=self._bindings(),
            style=STYLE,
            full_screen=True,
            color_depth=ColorDepth.MONOCHROME if no_color else None,
            refresh_interval=refresh_s,
            input=input,
            output=output,
            mouse_support=False,
        )
        self.app.ttimeoutlen = 0.05  # a lone Esc quits at once, not after half a second
        self.app.timeoutlen = 0.05

    # -- data -----------------------------------------------------------------

    def publish(self, snap: Snapshot) -> None:
        """A new snapshot (any thread): shown now, or on resume when paused."""
        with self._lock:
            self.latest = snap
            if not self.state.paused:
                self.shown = snap
        self.app.invalidate()

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self.state.paused = paused
            if not paused:
                self.shown = self.latest

    # -- keys -----------------------------------------------------------------

    def quit(self) -> None:
        if self.on_quit is not None:
            self.on_quit()
        if self.app.is_running:
            self.app.exit()

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()
        filtering = Condition(lambda: self.state.filtering)
        helping = Condition(lambda: self.state.show_help)
        normal = ~filtering & ~helping
        st = self.state

        def snap() -> Snapshot:
            return self.shown

        @kb.add("c-c")
        def _interrupt(event: KeyPressEvent) -> None:
            self.quit()

        @kb.add("q", filter=normal)
        @kb.add("escape", filter=normal)
        def _quit(event: KeyPressEvent) -> None:
            self.quit()

        @kb.add("<any>", filter=helping)
        def _close_help(event: KeyPressEvent) -> None:
            st.show_help = False

        @kb.add("?", filter=normal)
        def _help(event: KeyPressEvent) -> None:
            st.show_help = True

        @kb.add("1", filter=normal)
        def _cpu(event: KeyPressEvent) -> None:
            st.switch(CPU)

        @kb.add("2", filter=normal)
        def _mem(event: KeyPressEvent) -> None:
            st.switch(MEM)

        @kb.add("m", filter=normal)
        def _mode(event: KeyPressEvent) -> None:
            st.toggle_view()

        @kb.add("c", filter=normal)
        @kb.add("enter", filter=normal)
        def _chart(event: KeyPressEvent) -> None:
            st.toggle_chart()

        @kb.add("j", filter=normal)
        @kb.add("down", filter=normal)
        def _down(event: KeyPressEvent) -> None:
            st.move(snap(), 1)

        @kb.add("k", filter=normal)
        @kb.add("up", filter=normal)
        def _up(event: KeyPressEvent) -> None:
            st.move(snap(), -1)

        @kb.add("pagedown", filter=normal)
        @kb.add("c-f", filter=normal)
        def _page_down(event: KeyPressEvent) -> None:
            st.move(snap(), st.page_rows)

        @kb.add("pageup", filter=normal)
        @kb.add("c-b", filter=normal)
        def _page_up(event: KeyPressEvent) -> None:
            st.move(snap(), -st.page_rows)

        @kb.add("g", filter=normal)
        @kb.add("home", filter=normal)
        def _first(event: KeyPressEvent) -> None:
            st.move_to(snap(), last=False)

        @kb.add("G", filter=normal)
        @kb.add("end", filter=normal)
        def _last(event: KeyPressEvent) -> None:
            st.move_to(snap(), last=True)

        @kb.add("h", filter=normal)
        @kb.add("left", filter=normal)
        def _pan_left(event: KeyPressEvent) -> None:
            st.pan_by(8)

        @kb.add("l", filter=normal)
        @kb.add("right", filter=normal)
        def _pan_right(event: KeyPressEvent) -> None:
            st.pan_by(-8)

        @kb.add("+", filter=normal)
        @kb.add("=", filter=normal)
        def _zoom_in(event: KeyPressEvent) -> None:
            st.zoom_by(1)

        @kb.add("-", filter=normal)
        def _zoom_out(event: KeyPressEvent) -> None:
            st.zoom_by(-1)

        @kb.add("tab", filter=normal)
        def _focus(event: KeyPressEvent) -> None:
            st.toggle_focus()

        @kb.add("p", filter=normal)
        def _pause(event: KeyPressEvent) -> None:
            if self.live and self.shown.state != VIEW:
                self.set_paused(not st.paused)

        @kb.add("s", filter=normal)
        def _sort(event: KeyPressEvent) -> None:
            st.cycle_sort()

        @kb.add("/", filter=normal)
        def _filter(event: KeyPressEvent) -> None:
            st.filtering = True

        @kb.add("enter", filter=filtering)
        def _filter_keep(event: KeyPressEvent) -> None:
            st.filtering = False

        @kb.add("escape", filter=filtering)
        def _filter_clear(event: KeyPressEvent) -> None:
            st.filtering = False
            st.filter_text = ""

        @kb.add("backspace", filter=filtering)
        def _filter_back(event: KeyPressEvent) -> None:
            st.filter_text = st.filter_text[:-1]

        @kb.add("<any>", filter=filtering)
        def _filter_char(event: KeyPressEvent) -> None:
            text = event.data
            if text.isprintable():
                st.filter_text += text

        return kb

    def run(self) -> None:
        self.app.run()
