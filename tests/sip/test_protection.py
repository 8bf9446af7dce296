"""Allow-list and per-source rate limiting."""

from __future__ import annotations

import pytest

from bridge.sip.protection import AllowList, DestinationPolicy, RateLimiter


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


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("sip:agent7@pbx.example", True),
        ("sip:AGENT7@PBX.example:5060", False),  # users are case-sensitive
        ("sip:agent7@pbx.example:5070", True),
        ("sips:agent7@pbx.example", False),
        ("sip:+4490000@pbx.example", False),
        ("sip:1234@carrier.example:5060", True),
        ("sip:1234@carrier.example:5080", False),
        ("sip:agent7@evil.example;x=@pbx.example", False),  # user part smuggling a host
        ("sip:agent7@pbx.example;maddr=evil.example", False),
        ("sip:agent7@pbx.example?Route=%3Csip:evil.example%3E", False),
        ("sip:agent7@pbx.example;transport=tcp", True),
        ("tel:+1555", False),
        ("not a uri", False),
    ],
)
def test_destination_policy(target: str, allowed: bool) -> None:
    policy = DestinationPolicy(["sip:agent*@pbx.example", "sip:1*@carrier.example:5060"])
    assert policy.allows(target) is allowed


def test_no_destination_patterns_allow_nothing() -> None:
    assert not DestinationPolicy().allows("sip:a@127.0.0.1")
