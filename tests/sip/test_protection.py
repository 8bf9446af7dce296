"""Allow-list and per-source rate limiting."""

from __future__ import annotations

import pytest

from bridge.sip.protection import AllowList, RateLimiter


@pytest.mark.parametrize(
    ("cidrs", "host", "allowed"),
    [
        ((), "203.0.113.9", True),
        (("127.0.0.0/8",), "127.0.0.1", True),
        (("127.0.0.0/8",), "10.0.0.1", False),
        (("10.1.0.0/16", "::1/128"), "[::1]", True),
        (("10.1.0.0/16",), "not-an-ip", False),
    ],
)
def test_allow_list(cidrs: tuple[str, ...], host: str, allowed: bool) -> None:
    assert AllowList(cidrs).allows(host) is allowed


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0, 0.0, 0.0, 0.0], [True, True, True, False]),  # burst of 3
        ([0.0, 0.0, 0.0, 0.0, 1.0], [True, True, True, False, True]),  # 1 token/s refill
        ([0.0, 0.1, 0.2, 0.3, 0.4], [True, True, True, False, False]),
    ],
)
def test_token_bucket(times: list[float], expected: list[bool]) -> None:
    limiter = RateLimiter(rate=1.0, burst=3.0)
    assert [limiter.allow("10.0.0.1", t) for t in times] == expected
    assert limiter.allow("10.0.0.2", times[-1])  # sources are independent


def test_idle_sources_are_forgotten() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0, max_sources=2)
    for i in range(3):
        limiter.allow(f"10.0.0.{i}", 0.0)
    limiter.allow("10.0.0.9", 100.0)
    assert len(limiter._buckets) <= 2
