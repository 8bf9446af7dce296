"""Which local addresses aiortc gathers ICE host candidates on.

aioice gathers on every interface except 127.0.0.1, which leaves a loopback-only host (tests,
a bridge behind a reverse proxy on the same machine) with no candidates at all. Operators can
pin the addresses instead; aioice has no option for it, so its lookup function is replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aioice.ice

_default_lookup: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def use_ice_host_addresses(addresses: Sequence[str]) -> None:
    """Gather on exactly ``addresses`` from now on (process-wide); empty restores the default."""
    if not addresses:
        aioice.ice.get_host_addresses = _default_lookup
        return
    pinned = list(addresses)

    def pinned_lookup(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = pinned_lookup
