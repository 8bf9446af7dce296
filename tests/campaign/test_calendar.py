"""Calling-hours windows in the contact's own time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.campaign.calendar import next_open, parse_window


def at(text: str, tz: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("windows", "tz", "now", "opens"),
    [
        ([], "UTC", "2026-03-02 03:00", "2026-03-02 03:00"),  # no windows: any time
        (["09:00-18:00"], "UTC", "2026-03-02 10:00", "2026-03-02 10:00"),
        (["09:00-18:00"], "UTC", "2026-03-02 08:59", "2026-03-02 09:00"),
        (["09:00-18:00"], "UTC", "2026-03-02 18:00", "2026-03-03 09:00"),  # end is exclusive
        # Monday 2 March 2026; Friday evening waits for Monday
        (["mon-fri 09:00-18:00"], "UTC", "2026-03-06 19:00", "2026-03-09 09:00"),
        (["sat,sun 10:00-12:00", "mon 14:00-15:00"], "UTC", "2026-03-02 12:00", "2026-03-02 14:00"),
        (["fri-mon 10:00-11:00"], "UTC", "2026-03-03 10:30", "2026-03-06 10:00"),  # wraps
        (["09:00-12:00", "13:00-17:00"], "UTC", "2026-03-02 12:30", "2026-03-02 13:00"),
        (["20:00-24:00"], "UTC", "2026-03-02 23:59", "2026-03-02 23:59"),
        # the contact's zone decides: 10:00 UTC is 19:00 in Tokyo, so Tokyo's 09:00 next day
        (["09:00-18:00"], "Asia/Tokyo", "2026-03-02 19:00", "2026-03-03 09:00"),
        # New York springs forward on 8 March 2026: 09:00 local is 13:00 UTC, not 14:00
        (["09:00-18:00"], "America/New_York", "2026-03-07 20:00", "2026-03-08 09:00"),
    ],
)
def test_next_open(windows: list[str], tz: str, now: str, opens: str) -> None:
    parsed = [parse_window(w) for w in windows]
    assert next_open(parsed, tz, at(now, tz)) == at(opens, tz)


def test_zone_matters_for_the_same_instant() -> None:
    windows = [parse_window("09:00-18:00")]
    instant = at("2026-03-02 10:00", "UTC")
    assert next_open(windows, "UTC", instant) == instant
    assert next_open(windows, "Asia/Tokyo", instant) == at("2026-03-03 09:00", "Asia/Tokyo")
    assert next_open(windows, "America/Los_Angeles", instant) == at(
        "2026-03-02 09:00", "America/Los_Angeles"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("9-18", "is not a window"),
        ("09:00-25:00", "not a time of day"),
        ("18:00-09:00", "must end after it starts"),
        ("09:00-09:00", "must end after it starts"),
        ("mon-fry 09:00-18:00", "'mon-fry' is not a day"),
        ("weekdays 09:00-18:00", "not a day"),
    ],
)
def test_bad_windows_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_window(text)


def test_unknown_zone_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        next_open([parse_window("09:00-18:00")], "Mars/Olympus", 0.0)
