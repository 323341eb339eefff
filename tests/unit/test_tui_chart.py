"""Text charts for the TUI (rsprof/tui/chart.py)."""

from __future__ import annotations

import pytest

from rsprof.tui.chart import format_clock, format_span, render_chart, sparkline

NAN = float("nan")
# Braille cells: left column full, right column full, single bottom-left dot, bottom two left.
LEFT_FULL = chr(0x2800 + 0x01 + 0x02 + 0x04 + 0x40)  # ⡇
RIGHT_FULL = chr(0x2800 + 0x08 + 0x10 + 0x20 + 0x80)  # ⢸
BOTH_FULL = chr(0x28FF)  # ⣿
BOTTOM_LEFT = chr(0x2800 + 0x40)  # ⡀
BOTTOM_TWO_LEFT = chr(0x2800 + 0x40 + 0x04)  # ⡄


def g(value: float) -> str:
    return f"{value:g}"


def plot_area(line: str) -> str:
    """What follows the y-axis separator of a plot row."""
    cut = min(i for i in (line.find("┤"), line.find("│")) if i >= 0)
    return line[cut + 1 :]


def chart(
    values: list[float],
    width: int,
    height: int,
    *,
    interval_s: float = 1.0,
    end_index: int | None = None,
    title: str = "",
) -> list[str]:
    """render_chart with y labels as %g, ending at the last interval unless told otherwise."""
    end = len(values) - 1 if end_index is None else end_index
    return render_chart(
        values, width, height, interval_s=interval_s, end_index=end, y_format=g, title=title
    )


# --- sparkline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "width", "expected"),
    [
        ([0, 1, 2, 4], 4, " ▂▄█"),
        ([1, 2, 3, 4, 5, 6, 7, 8], 8, "▁▂▃▄▅▆▇█"),
        ([0.1, 0.2, 0.3, 0.4], 4, "▂▄▆█"),  # float noise must not bump a level
        ([0.001, 100], 2, "▁█"),  # tiny but positive is still visible
        ([1, 2], 5, "   ▄█"),  # left-padded
        ([8, 0, 0, 1, 2], 2, "▄█"),  # only the last `width` values, scaled among themselves
        ([NAN, -1, 2], 3, "  █"),
        ([0, 0, 0], 3, "   "),
        ([], 3, "   "),
        ([5], 1, "█"),
    ],
)
def test_sparkline(values: list[float], width: int, expected: str) -> None:
    assert sparkline(values, width) == expected


@pytest.mark.parametrize("width", [0, -3])
def test_sparkline_no_width(width: int) -> None:
    assert sparkline([1, 2, 3], width) == ""


# --- format_span / format_clock ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.5, "500ms"),
        (0.001, "1ms"),
        (0.9999, "1s"),
        (1.5, "1.5s"),
        (30, "30s"),
        (30.0000001, "30s"),
        (59.9996, "1m"),
        (120, "2m"),
        (90, "1m30s"),
        (3600, "1h"),
        (3900, "1h5m"),
        (3930, "1h5m"),
        (0, "0s"),
        (-2, "0s"),
        (NAN, "0s"),
    ],
)
def test_format_span(seconds: float, expected: str) -> None:
    assert format_span(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0:00"), (5, "0:05"), (95, "1:35"), (4500, "75:00"), (0.1 * 30, "0:03"), (-1, "0:00")],
)
def test_format_clock(seconds: float, expected: str) -> None:
    assert format_clock(seconds) == expected


# --- render_chart: shape -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (80, 24),
        (120, 40),
        (81, 23),
        (20, 5),
        (10, 3),
        (6, 3),
        (5, 3),
        (3, 2),
        (1, 1),
        (0, 0),
        (30, 1),
        (-4, 3),
    ],
)
@pytest.mark.parametrize(
    "values",
    [[], [0.0] * 50, [float(i % 7) for i in range(500)], [NAN, -1.0, 3.0, float("inf")]],
)
def test_render_chart_shape(values: list[float], width: int, height: int) -> None:
    lines = chart(values, width, height, title="CPU usage over time")
    assert len(lines) == max(0, height)
    assert all(len(line) == max(0, width) for line in lines)


def test_render_chart_layout_and_labels() -> None:
    values = [0.0] * 10 + [5.0]
    lines = chart(values, 30, 7, title="CPU")  # 5 plot rows; labels "5", "2.5", "0" -> 3 wide
    assert lines[0].startswith("CPU ")
    assert lines[1].startswith("  5 ┤")
    assert lines[2].startswith("    │")
    assert lines[3].startswith("2.5 ┤")  # middle plot row
    assert lines[4].startswith("    │")
    assert lines[5].startswith("  0 ┤")  # last plot row
    assert lines[6].startswith("    └0:00")
    # 11 intervals fill 6 of the 25 plot columns: the end label follows the data (not
    # the plot's right edge), as close as both labels allow.
    assert lines[6].rstrip() == "    └0:00 0:11"
    wide = chart([1.0] * 60, 30, 7, title="CPU")  # more than fits: the window fills the plot
    assert wide[-1].endswith("1:00")


def test_render_chart_single_interval_lights_one_dot_column() -> None:
    # Width 20, labels "1"/"0.5"/"0" -> plot area starts at column 5 and is 15 cells wide.
    values = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    lines = chart(values, 20, 6)
    plot = [line[5:] for line in lines[1:-1]]
    # Interval 3 is the right dot column of cell 1, filled to the top (it is the max).
    for row in plot:
        assert row == " " + RIGHT_FULL + " " * 13


def test_render_chart_bar_heights() -> None:
    # 4 plot rows = 16 dots; 1/10 of the max is ceil(1.6) = 2 dots, 1/1000 still shows 1 dot.
    # Labels "10"/"5"/"0" -> plot area starts at column 4 and is 16 cells wide.
    values = [0.0, 0.0, 1.0, 0.0, 10.0, 0.0, 0.01]
    lines = chart(values, 20, 6, end_index=6)
    assert lines[1].startswith("10 ┤")
    plot = [plot_area(line) for line in lines[1:-1]]
    assert plot[3] == " " + BOTTOM_TWO_LEFT + LEFT_FULL + BOTTOM_LEFT + " " * 12
    for row in plot[:3]:
        assert row == "  " + LEFT_FULL + " " * 13


def test_render_chart_window_label_when_data_fits() -> None:
    lines = chart([1.0] * 30, 80, 10, title="heap")
    assert lines[0].startswith("heap")
    assert lines[0].endswith("[30s]")
    assert lines[-1].rstrip().endswith("0:30")
    assert "└0:00" in lines[-1]


def test_render_chart_window_and_time_axis() -> None:
    # Plot is 15 cells = 30 intervals; window ending at 34 is intervals 5..34 = 0:05 to 0:35.
    values = [0.0] * 100
    values[4] = 100.0  # just before the window
    values[35] = 100.0  # just after it
    for i in range(5, 35):
        values[i] = 1.0
    lines = chart(values, 20, 5, end_index=34)
    assert lines[0] == " " * 15 + "[30s]"
    assert lines[1] == "  1 ┤" + BOTH_FULL * 15  # y max from the window only, all bars full
    assert lines[-2] == "  0 ┤" + BOTH_FULL * 15
    assert lines[-1] == "    └0:05" + " " * 7 + "0:35"


def test_render_chart_sub_second_intervals() -> None:
    lines = chart([1.0] * 200, 20, 5, interval_s=0.1, end_index=99)
    assert lines[0].endswith("[3s]")
    assert lines[-1] == "    └0:07" + " " * 7 + "0:10"


def test_render_chart_end_index_beyond_data() -> None:
    values = [float(i) for i in range(10)]
    assert chart(values, 40, 8, end_index=1000) == chart(values, 40, 8, end_index=9)


def test_render_chart_empty_values() -> None:
    # Plot is 35 cells = 70 intervals of 0.5 s.
    lines = chart([], 40, 6, interval_s=0.5, end_index=0)
    assert lines[0].endswith("[35s]")
    assert lines[1].startswith("  1 ┤")
    assert lines[-2].startswith("  0 ┤")
    assert all(line[5:].strip() == "" for line in lines[1:-1])
    assert lines[-1].startswith("    └0:00")
    assert lines[-1].endswith("0:35")


def test_render_chart_all_zero_draws_axis_without_bars() -> None:
    lines = chart([0.0] * 20, 30, 6)
    assert lines[1].startswith("  1 ┤")
    assert all(line[5:].strip() == "" for line in lines[1:-1])


def test_render_chart_nan_and_negative_are_zero() -> None:
    lines = chart([NAN, -5.0, 2.0], 20, 6)  # labels "2"/"1"/"0": 17 plot cells
    assert lines[1].startswith("2 ┤")
    plot = [plot_area(line) for line in lines[1:-1]]
    assert plot[3] == " " + LEFT_FULL + " " * 15


@pytest.mark.parametrize(("width", "height"), [(20, 2), (20, 0), (3, 6), (0, 6)])
def test_render_chart_too_small_is_blank(width: int, height: int) -> None:
    # Labels "2"/"1"/"0" take 3 columns with the separator: width 3 leaves no plot cell.
    assert chart([1.0, 2.0], width, height) == [" " * width] * height


def test_render_chart_smallest_drawable() -> None:
    # Labels "2" and "0" only (one plot row: top label wins) -> "2 ┤" then one plot cell.
    lines = chart([1.0, 2.0], 4, 3)
    # Interval 0 (half the max) fills 2 of the 4 left dots, interval 1 the whole right column.
    # The time labels do not fit in one cell, so the axis row is left bare.
    assert lines == ["[2s]", "2 ┤" + chr(0x2800 + 0x40 + 0x04 + 0xB8), "  └ "]
