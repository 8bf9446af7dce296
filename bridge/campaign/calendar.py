"""Calling hours: windows like ``"09:00-18:00"`` or ``"mon-fri 09:00-18:00"`` (days: mon..sun,
comma-separated days or ranges), evaluated in the contact's own time zone.

Pure functions of an explicit ``now`` (Unix seconds), so the dialer's clock can be injected and
tests can stand at any date. A contact outside its hours is deferred to the next window start,
never failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)$")


@dataclass(frozen=True)
class Window:
    start: time
    end: time | None  # None: midnight at the end of the day ("24:00")
    weekdays: frozenset[int]  # datetime.weekday() values

    def bounds(self, day: datetime) -> tuple[datetime, datetime]:
        """Start and end of this window on the local date of ``day`` (tz-aware)."""
        start = datetime.combine(day.date(), self.start, day.tzinfo)
        if self.end is None:
            end = datetime.combine(day.date() + timedelta(days=1), time(0), day.tzinfo)
        else:
            end = datetime.combine(day.date(), self.end, day.tzinfo)
        return start, end


def _clock(text: str, *, end: bool) -> time | None:
    hours, minutes = int(text[:2]), int(text[3:])
    if end and (hours, minutes) == (24, 0):
        return None
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day (HH:MM)")
    return time(hours, minutes)


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{part!r} is not a day or range of days ({', '.join(DAYS)})")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def parse_window(text: str) -> Window:
    """``"[days ]HH:MM-HH:MM"``; raises ValueError naming what is wrong."""
    match = _WINDOW.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a window like '09:00-18:00' or 'mon-fri 09:00-18:00'")
    start = _clock(match["start"], end=False)
    end = _clock(match["end"], end=True)
    assert start is not None
    if end is not None and end <= start:
        raise ValueError(f"{text!r}: the window must end after it starts (same day)")
    days = _days(match["days"]) if match["days"] else frozenset(range(7))
    return Window(start, end, days)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raises ValueError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def next_open(windows: list[Window], timezone: str, now: float) -> float:
    """``now`` if it falls in a window in ``timezone``, else the next window start."""
    if not windows:
        return now
    local = datetime.fromtimestamp(now, zone(timezone))
    best: float | None = None
    for offset in range(8):
        day = local + timedelta(days=offset)
        for window in windows:
            if day.weekday() not in window.weekdays:
                continue
            start, end = window.bounds(day)
            if start.timestamp() <= now < end.timestamp():
                return now
            if start.timestamp() > now and (best is None or start.timestamp() < best):
                best = start.timestamp()
        if best is not None:
            return best
    raise AssertionError("a window on some weekday always opens within a week")
