"""Defences: a source allow-list and per-source rate limits against scanners and INVITE floods,
and a destination policy against toll fraud (the bridge only calls or transfers where allowed)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from fnmatch import fnmatchcase

from bridge.sip.uri import SipUri

_SAFE_PARAMS = {"transport", "user"}


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


class DestinationPolicy:
    """Where the bridge may place or transfer calls: ``sip:USER@HOST[:PORT]`` fnmatch patterns
    (``*`` and ``[...]``; ``?`` would start URI headers).

    Patterns are matched against the parsed URI part by part (user, host, port), so a crafted
    user part cannot smuggle in another host; an omitted port in a pattern allows any port.
    URIs with headers or routing parameters (``maddr``...) are refused, and so is everything
    when there are no patterns.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._patterns = [SipUri.parse(p) for p in patterns]

    def allows(self, target: str) -> bool:
        try:
            uri = SipUri.parse(target)
        except ValueError:
            return False
        if uri.headers or any(name.lower() not in _SAFE_PARAMS for name, _ in uri.params):
            return False
        if uri.user and any(c in uri.user for c in "@;?"):
            return False
        return any(self._matches(pattern, uri) for pattern in self._patterns)

    @staticmethod
    def _matches(pattern: SipUri, uri: SipUri) -> bool:
        port = "*" if pattern.port is None else str(pattern.port)
        return (
            pattern.scheme == uri.scheme
            and fnmatchcase(uri.user or "", pattern.user or "")
            and fnmatchcase(uri.host.lower(), pattern.host.lower())
            and fnmatchcase(str(uri.port or 5060), port)
        )
