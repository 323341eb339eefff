"""The TUI without a terminal: the real key bindings driven through a pipe input
(prompt_toolkit's create_pipe_input + DummyOutput), and golden plain-text
renders of both views at 80x24 and 160x48.

Golden files live in tests/golden/; RSPROF_UPDATE_GOLDEN=1 rewrites them.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from rsprof.tui.app import TuiApp
from rsprof.tui.screen import plain_text, render
from rsprof.tui.snapshot import RECORDING, VIEW, CpuRow, MemRow, Snapshot
from rsprof.tui.state import CHART, CPU, MEM, TABLE, ViewState

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _cpu(i: int, function: str, pct: float, live: float, location: str) -> CpuRow:
    series = {k: pct + (k % 5) - 2 for k in range(40)}
    return CpuRow(key=f"{function}\0m", function=function, location=location,
                  samples=int(pct * 100), total_pct=pct, live_pct=live, series=series)


def _mem(function: str, live: int, total: int, allocs: int, location: str) -> MemRow:
    series = {k: float(live * (k + 1) // 40) for k in range(0, 40, 3)}
    return MemRow(key=f"{function}\0{location}", function=function, location=location,
                  live_bytes=live, alloc_bytes=total, allocs=allocs, series=series)


def make_snapshot(state: str = RECORDING, n_extra: int = 0) -> Snapshot:
    cpu = [
        _cpu(0, "rsprof_example::hot_loop", 50.2, 48.0, "src/main.rs:42"),
        _cpu(1, "rsprof_example::parse_request", 30.1, 49.0, "src/parse.rs:17"),
        _cpu(2, "rsprof_example::checksum", 19.7, 20.5,
             "/home/dev/projects/rsprof-example/src/deeply/nested/checksum.rs:108"),
    ]
    cpu += [_cpu(3 + i, f"filler::function_{i:05d}", 0.001 * (n_extra - i), 0.0, f"f.rs:{i}")
            for i in range(n_extra)]
    mem = [
        _mem("rsprof_example::cache_insert", 12_582_912, 50_331_648, 1200, "src/cache.rs:88"),
        _mem("rsprof_example::leak_known", 409_600, 409_600, 100, "src/leak.rs:12"),
        _mem("rsprof_example::buffers", 2048, 734_003_200, 700_000, "src/io.rs:5"),
    ]
    cpu.sort(key=lambda r: -r.samples)
    return Snapshot(state=state, process_name="rsprof-example", pid=4242, elapsed_s=40.0,
                    samples=12_345, interval_s=1.0, intervals=40, dropped=0, lost=3,
                    cpu_rows=tuple(cpu), mem_rows=tuple(mem), has_heap=True, version=1)


def drive(keys: str, snap: Snapshot | None = None, live: bool = True,
          timeout: float = 10.0) -> TuiApp:
    """Run the real Application on a pipe: type `keys`, then the app must have quit
    (the sequences end with q/Esc/Ctrl-C) within `timeout`."""
    quits: list[bool] = []
    with create_pipe_input() as pipe:
        tui = TuiApp(snap or make_snapshot(), live=live, input=pipe, output=DummyOutput(),
                     on_quit=lambda: quits.append(True))
        pipe.send_text(keys)
        started = time.monotonic()
        tui.run()
        assert time.monotonic() - started < timeout
    assert quits == [True]
    return tui


def test_q_quits_and_calls_on_quit() -> None:
    drive("q")


def test_escape_and_ctrl_c_quit() -> None:
    drive("\x1b")
    drive("\x03")


def test_view_switching_keys() -> None:
    assert drive("2q").state.view == MEM
    assert drive("21q").state.view == CPU
    assert drive("mq").state.view == MEM
    assert drive("mmq").state.view == CPU


def test_chart_toggle_keys() -> None:
    assert drive("cq").state.chart_visible is False
    assert drive("ccq").state.chart_visible is True
    assert drive("\rq").state.chart_visible is False


def test_navigation_keys() -> None:
    snap = make_snapshot(n_extra=50)
    tui = drive("jjjkq", snap)
    assert tui.state.index[CPU] == 2
    assert tui.state.selected[CPU] == snap.cpu_rows[2].key
    tui = drive("\x1b[B\x1b[B\x1b[Aq", snap)  # Down Down Up
    assert tui.state.index[CPU] == 1
    tui = drive("Gq", snap)
    assert tui.state.index[CPU] == len(snap.cpu_rows) - 1
    tui = drive("Ggq", snap)
    assert tui.state.index[CPU] == 0
    tui = drive("\x1b[6~q", snap)  # PgDn: one table page
    assert tui.state.index[CPU] == tui.state.page_rows > 1
    tui = drive("\x1b[6~\x1b[5~q", snap)  # PgDn PgUp
    assert tui.state.index[CPU] == 0


def test_pan_and_zoom_keys() -> None:
    tui = drive("hhq")
    assert tui.state.pan > 0
    panned = tui.state.pan
    assert drive("hhlq").state.pan < panned
    assert drive("\x1b[D\x1b[Dq").state.pan == panned  # Left Left
    assert drive("lq").state.pan == 0  # never into the future
    assert drive("-q").state.zoom_factor > 1
    assert drive("--+q").state.zoom_factor == drive("-q").state.zoom_factor
    assert drive("+q").state.zoom_factor == 1  # already fully in


def test_focus_key() -> None:
    assert drive("\tq").state.focus == CHART
    assert drive("\t\tq").state.focus == TABLE
    assert drive("c\tq").state.focus == TABLE  # no chart to focus


def test_pause_key_freezes_the_display_and_catches_up() -> None:
    first = make_snapshot()
    newer = make_snapshot()
    with create_pipe_input() as pipe:
        tui = TuiApp(first, live=True, input=pipe, output=DummyOutput())
        tui.set_paused(True)
        tui.publish(newer)
        assert tui.shown is first and tui.latest is newer
        pipe.send_text("pq")  # p resumes
        tui.run()
    assert tui.state.paused is False
    assert tui.shown is newer
    assert drive("pq").state.paused is True
    assert drive("ppq").state.paused is False
    assert drive("pq", make_snapshot(VIEW), live=False).state.paused is False  # view: no-op


def test_sort_key_cycles_and_selection_follows_the_function() -> None:
    snap = make_snapshot()
    tui = drive("jsq", snap)  # select parse_request (2nd by total), then sort by Live %
    assert tui.state.sort_column() == "Live %"
    rows = tui.state.rows(snap)
    assert [r.function for r in rows][:3] == ["rsprof_example::parse_request",
                                              "rsprof_example::hot_loop",
                                              "rsprof_example::checksum"]
    index, row = tui.state.current(snap)
    assert row is not None and row.function == "rsprof_example::parse_request"
    assert index == 0  # the selection moved with its row
    tui = drive("ssq", snap)  # by function name
    assert tui.state.sort_column() == "Function"
    assert tui.state.rows(snap)[0].function == "rsprof_example::checksum"
    assert drive("sssq").state.sort_column() == "Total %"
    mem = drive("2sq", snap)
    assert mem.state.sort_column() == "Total allocated"
    assert mem.state.rows(snap)[0].function == "rsprof_example::buffers"


def test_filter_keys() -> None:
    snap = make_snapshot(n_extra=20)
    tui = drive("/parse\rq", snap)
    assert tui.state.filter_text == "parse"
    assert [r.function for r in tui.state.rows(snap)] == ["rsprof_example::parse_request"]
    tui = drive("/checksum.rs\rq", snap)  # matches the file too
    assert [r.function for r in tui.state.rows(snap)] == ["rsprof_example::checksum"]
    tui = drive("/parsx\x7f\x7fse\rq", snap)  # backspace
    assert tui.state.filter_text == "parse"
    tui = drive("/parse\x1b" + "q", snap)  # Esc clears
    assert tui.state.filter_text == "" and not tui.state.filtering
    # While typing, q is text, not quit.
    tui = drive("/q\rq", snap)
    assert tui.state.filter_text == "q"


def test_help_key() -> None:
    assert drive("?\x03").state.show_help is True  # Ctrl-C quits even from the help
    # Any key closes the help (q too, without quitting): x closes, q quits.
    assert drive("?xq").state.show_help is False
    assert drive("?qq").state.show_help is False
    text = plain_text(render(make_snapshot(), ViewState(show_help=True), 80, 24))
    for key in ("q / Esc", "1 / 2", "c / Enter", "j / k", "h / l", "+ / -", "Tab", "p"):
        assert key in text


def test_keys_with_10000_rows() -> None:
    # The speed goal (a key answers within 100 ms) is measured by bench/tui_keys.py.
    snap = make_snapshot(n_extra=10_000)
    state = ViewState()
    state.move(snap, 5000)
    index, row = state.current(snap)
    assert index == 5000 and row is not None
    state.cycle_sort()  # Live %: the filler rows (live 0) sort after the three
    assert state.current(snap)[1] == row
    lines = render(snap, state, 160, 48)
    assert row.function in plain_text(lines)  # the selection is scrolled into view


def test_every_line_fits_the_terminal() -> None:
    for width, height in ((80, 24), (160, 48), (40, 10), (200, 60), (20, 5), (1, 1)):
        for view in (CPU, MEM):
            for chart in (True, False):
                state = ViewState(view=view, chart_visible=chart)
                lines = render(make_snapshot(), state, width, height)
                assert len(lines) == height
                for line in lines:
                    assert sum(len(text) for _, text in line) == width, (width, height, line)


def test_no_color_renders_monochrome(monkeypatch: pytest.MonkeyPatch) -> None:
    from prompt_toolkit.output import ColorDepth
    monkeypatch.setenv("NO_COLOR", "1")
    with create_pipe_input() as pipe:
        tui = TuiApp(make_snapshot(), live=False, input=pipe, output=DummyOutput())
    assert tui.app.color_depth == ColorDepth.MONOCHROME


@pytest.mark.parametrize("view", [CPU, MEM])
@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_golden_render(view: str, size: tuple[int, int]) -> None:
    width, height = size
    state = ViewState(view=view)
    text = plain_text(render(make_snapshot(), state, width, height)) + "\n"
    path = GOLDEN / f"tui_{view}_{width}x{height}.txt"
    if os.environ.get("RSPROF_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


OWN_ALLOCATOR = ("own_alloc uses its own allocator: its #[global_allocator] does not call "
                 "malloc, and 0 allocations from its own code reached malloc in 1.4s of CPU "
                 "(the 7 recorded came from libraries it calls). To record its heap, wrap its "
                 "allocator with the rsprof-trace crate (Rust programs; see the README).")


def own_allocator_snapshot(rows: int = 2) -> Snapshot:
    """A profile of a program whose own allocator hid its heap: a few libc blocks."""
    mem = [_mem("__fopen_internal", 0, 472, 1, "libio/iofopen.c:65"),
           _mem("__pthread_getattr_np", 0, 32, 1, "nptl/pthread_getattr_np.c:180")][:rows]
    return Snapshot(state=VIEW, process_name="own_alloc", pid=77, elapsed_s=1.5,
                    samples=140, interval_s=1.0, intervals=2, dropped=0, lost=0,
                    mem_rows=tuple(mem), has_heap=True, heap_not_seen=OWN_ALLOCATOR, version=1)


def test_memory_view_says_the_heap_was_not_seen() -> None:
    for rows in (2, 0):
        snap = own_allocator_snapshot(rows)
        for width, height in ((80, 24), (160, 48), (40, 10), (20, 5), (1, 1)):
            for chart in (True, False):
                lines = render(snap, ViewState(view=MEM, chart_visible=chart), width, height)
                assert len(lines) == height
                for line in lines:
                    assert sum(len(text) for _, text in line) == width, (width, height, line)
        for chart in (True, False):
            text = plain_text(render(snap, ViewState(view=MEM, chart_visible=chart), 80, 24))
            flat = " ".join(text.split())
            assert "heap not seen: own_alloc uses its own allocator" in flat
            assert "rsprof-trace crate" in flat  # the whole message fits at 80x24
            assert "no allocations yet" not in text  # the note says why, not this
            if rows:
                assert "__fopen_internal" in text  # the rows still show, under the note
        cpu = plain_text(render(snap, ViewState(view=CPU), 80, 24))
        assert "heap not seen" not in cpu
    # A normal profile has no note (the golden files hold that too).
    assert "heap not seen" not in plain_text(render(make_snapshot(), ViewState(view=MEM), 80, 24))
    # Filtered to nothing: the note stays, and says the filter matched nothing.
    state = ViewState(view=MEM)
    state.filter_text = "zzz"
    text = plain_text(render(own_allocator_snapshot(), state, 80, 24))
    assert "heap not seen" in text and "no rows match the filter" in text


def test_golden_render_own_allocator() -> None:
    text = plain_text(render(own_allocator_snapshot(), ViewState(view=MEM), 80, 24)) + "\n"
    path = GOLDEN / "tui_mem_own_allocator_80x24.txt"
    if os.environ.get("RSPROF_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_rsprof_own_time_in_the_header_and_as_a_row() -> None:
    # rsprof's own time (docs/attribution.md): the [rsprof] row, its share in the header.
    base = make_snapshot()
    shim = "/root/.cache/rsprof/shim/0123/librsprof_shim.so"
    own = CpuRow(key=f"[rsprof]\0{shim}", function="[rsprof]", location=shim, samples=3000,
                 total_pct=31.4, live_pct=30.0, series={39: 30.0})
    snap = replace(base, cpu_rows=(own, *base.cpu_rows), rsprof_pct=31.4)
    for width, height in ((80, 24), (160, 48)):
        lines = plain_text(render(snap, ViewState(), width, height)).splitlines()
        assert "rsprof overhead 31.4%" in lines[0]
        assert any(line.split()[:2] == ["31.4%", "30.0%"] and "[rsprof]" in line
                   for line in lines[2:])
    # Without any, nothing is said (the golden renders are unchanged).
    assert "overhead" not in plain_text(render(base, ViewState(), 160, 48))


def test_header_shows_the_cpu_time_and_whether_it_is_an_estimate() -> None:
    snap = replace(make_snapshot(), cpu_ns=5_020_000_000)
    assert "cpu 5.0s" in plain_text(render(snap, ViewState(), 160, 48)).splitlines()[0]
    old = replace(snap, cpu_estimated=True)  # a profile recorded without sample periods
    assert "cpu ~5.0s" in plain_text(render(old, ViewState(), 160, 48)).splitlines()[0]
    assert " cpu " not in plain_text(render(make_snapshot(), ViewState(), 160, 48))


def test_loader_shares_are_cpu_time_not_sample_counts(tmp_path: Path) -> None:
    """Samples of different periods (a self-sampler signal at the kernel tick stands
    for several timer intervals; --append recordings at other rates): the rows' shares
    and the CPU time are by the nanoseconds they stand for."""
    from rsprof.storage.profile_file import open_readonly
    from rsprof.storage.writer import ProfileWriter, RecordingInfo
    from rsprof.symbols.model import Frame, ResolvedAddress
    from rsprof.tui.loader import ProfileLoader

    path = tmp_path / "ns.db"
    writer = ProfileWriter(path)
    writer.begin_recording(RecordingInfo(
        pid=1, process_name="app", cmdline="app", executable="/app", build_id=None,
        cpu_source="self", cpu_freq=999, interval_s=1.0, start_time=1_700_000_000.0))
    writer.add_addresses({a: ResolvedAddress(a, "/app", None, a, (Frame(f, "m.rs", 1, "/app",
                                                                        False),))
                          for a, f in ((0x1000, "app::fast"), (0x2000, "app::slow"))})
    writer.add_stacks([(0, [0x1000]), (1, [0x2000])])
    writer.add_cpu_counts([(0, 7, 0, 3, 3_000_000), (0, 7, 1, 1, 12_000_000)])
    writer.finalize(1_700_000_001.0, "exited")
    conn = open_readonly(path)
    try:
        snap = ProfileLoader(conn, live=False).load()
    finally:
        conn.close()
    rows = {r.function: r for r in snap.cpu_rows}
    assert (rows["app::slow"].samples, rows["app::slow"].cpu_ns) == (1, 12_000_000)
    assert rows["app::slow"].total_pct == 80.0 and rows["app::fast"].total_pct == 20.0
    assert [r.function for r in snap.cpu_rows] == ["app::slow", "app::fast"]
    assert rows["app::slow"].series == {0: 80.0}
    assert (snap.cpu_ns, snap.cpu_estimated) == (15_000_000, False)
