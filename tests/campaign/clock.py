"""Injected clocks for the dialer: wall time the test controls."""

from __future__ import annotations

import asyncio
import contextlib
import time


class ManualClock:
    """Virtual time that moves only when the test advances it; sleepers wake as it passes."""

    def __init__(self, start: float) -> None:
        self.t = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        until = self.t + seconds
        while self.t < until:
            self._moved.clear()
            await self._moved.wait()

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move time on in ``step``s, letting the dialer (and its database thread) run between."""
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + step)
            self._moved.set()
            await asyncio.sleep(0.002)


class ShiftedClock:
    """Real time moved to a chosen wall-clock moment, with jumps forward (a test can stand at
    10:00 in one zone, then skip to the next morning); sleepers wake at a jump."""

    def __init__(self, at: float) -> None:
        self.offset = at - time.time()
        self._jumped = asyncio.Event()

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        self._jumped.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._jumped.wait(), seconds)

    def jump_to(self, at: float) -> None:
        self.offset = at - time.time()
        self._jumped.set()
