"""Defences against scanners and INVITE floods: a source allow-list and per-source rate limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class AllowList:
    """Sources allowed to talk to us; an empty list allows everyone."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self._networks)


class RateLimiter:
    """A token bucket per source: ``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: float, max_sources: int = 10000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, last update)

    def allow(self, source: str, now: float) -> bool:
        tokens, last = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            self._forget_full(now)
        return allowed

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: they behave like new ones anyway."""
        self._buckets = {
            source: (tokens, last)
            for source, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate < self.burst
        }
