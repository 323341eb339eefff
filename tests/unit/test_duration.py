"""Human durations (rsprof/duration.py)."""

from __future__ import annotations

import pytest

from rsprof.duration import format_duration, parse_duration
from rsprof.errors import RsprofError, UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1.5m", 90.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("3", 3.0),
        ("0.25", 0.25),
        (" 10 s ", 10.0),
        ("1ms", 0.001),
        ("2.5h", 9000.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["ten", "", "   ", "0s", "0", "0.0ms", "-1", "-5s", "5x",
                                  "5 sec", "1e3", "s", "1.s", ".5s", "10s5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert info.value.exit_code == 2
    assert isinstance(info.value, RsprofError)
    assert repr(text) in str(info.value)


def test_parse_duration_error_names_what() -> None:
    with pytest.raises(UsageError, match=r"^bad interval 'ten'"):
        parse_duration("ten", what="interval")
    with pytest.raises(UsageError, match="greater than zero"):
        parse_duration("0s", what="interval")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.95, "950ms"),
        (0.001, "1ms"),
        (0.0, "0ms"),
        (1.0, "1.0s"),
        (12.34, "12.3s"),
        (59.94, "59.9s"),
        (60.0, "1m00s"),
        (245.0, "4m05s"),
        (3599.0, "59m59s"),
        (3600.0, "1h00m"),
        (3720.0, "1h02m"),
        (90061.0, "25h01m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.9996, "1.0s"), (59.96, "1m00s")])
def test_format_duration_boundary_rounding(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
