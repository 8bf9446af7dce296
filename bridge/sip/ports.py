"""RTP port allocation: even ports from a configured range (RTCP takes the odd one above)."""

from __future__ import annotations


class PortsExhausted(RuntimeError):
    """Every port of the range is in use."""


class PortAllocator:
    def __init__(self, start: int, end: int) -> None:
        """Use the even ports of ``[start, end)``, each with ``port + 1`` left for RTCP."""
        first = start + start % 2
        self._free = list(range(first, end - 1, 2))
        self._free.reverse()  # pop() hands out the lowest port first
        self._used: set[int] = set()

    def allocate(self) -> int:
        if not self._free:
            raise PortsExhausted("no free RTP port")
        port = self._free.pop()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Return a port; releasing one that is not in use does nothing."""
        if port in self._used:
            self._used.remove(port)
            self._free.insert(0, port)  # reuse last, so late packets of the old call miss it

    @property
    def in_use(self) -> int:
        return len(self._used)
