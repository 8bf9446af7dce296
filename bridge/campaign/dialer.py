"""The dialer: takes a running campaign's due attempts and places them, within its rules.

One :class:`Dialer` per running campaign per process. Each turn it takes a concurrency slot and
a start token from :class:`Limits`, claims one due contact (the store commits the attempt before
the INVITE goes out and defers contacts outside their calling hours), checks the do-not-call list
and the destination policy, and places the call through a :class:`Placer`; the attempt's outcome
goes back to the store, whose retry policy schedules the next one. The clock is injected so tests
can stand at any date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.campaign.model import Attempt, Campaign, Contact, Outcome
from bridge.campaign.store import CampaignStore, Limits
from bridge.sip.front import DialRefused, OutboundCall, SipFront

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds (calling hours and due times are judged against it)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class CallResult:
    """How a placed call ended, as the attempt records it."""

    outcome: Outcome
    sip_status: int | None = None
    duration_s: float | None = None
    record_id: str | None = None
    collected: dict[str, Any] = field(default_factory=dict)
    amd: str | None = None


class Placer(Protocol):
    async def place(self, campaign: Campaign, contact: Contact) -> CallResult:
        """Call ``contact`` running ``campaign``'s dialplan; returns once the call has ended."""


class SipPlacer:
    """Places campaign calls through the SIP front door (which applies sip.outbound_targets
    again) and waits for their final report, not polling it."""

    def __init__(self, front: SipFront, ring_timeout_s: float) -> None:
        self.front = front
        self.ring_timeout_s = ring_timeout_s

    async def place(self, campaign: Campaign, contact: Contact) -> CallResult:
        try:
            out = self.front.dial(
                contact.to,
                from_user=campaign.caller_id,
                dialplan=campaign.dialplan,
                variables={**contact.variables, "campaign": campaign.id},
                ring_timeout_s=self.ring_timeout_s,
            )
        except DialRefused as exc:
            log.warning("campaign %s: %s not dialled: %s", campaign.id, contact.to, exc)
            return CallResult("failed", exc.status)
        return result_of(await out.finished())


def result_of(out: OutboundCall) -> CallResult:
    """The attempt outcome of an ended outbound call: an answered call whose answering-machine
    detection said "machine" is voicemail."""
    outcome: Outcome
    if out.status == "completed":
        outcome = "voicemail" if out.amd == "machine" else "answered"
    elif out.status in ("busy", "no-answer"):
        outcome = "busy" if out.status == "busy" else "no-answer"
    else:
        outcome = "failed"
    return CallResult(
        outcome, out.sip_status, out.duration_s, out.record_id, dict(out.collected), out.amd
    )


class Dialer:
    """Dials one campaign from this process until it is no longer running (then in-flight
    calls finish on their own); marks it completed when no contact is left to call."""

    def __init__(
        self,
        campaign_id: str,
        store: CampaignStore,
        limits: Limits,
        placer: Placer,
        *,
        clock: Clock,
        instance: str,
        allows: Callable[[str], bool],
        calls: set[asyncio.Task[None]],
        poll_s: float = 1.0,
    ) -> None:
        self.campaign_id = campaign_id
        self.store = store
        self.limits = limits
        self.placer = placer
        self.clock = clock
        self.instance = instance
        self.allows = allows
        self.calls = calls  # the owner's set of attempt tasks (they outlive a paused dialer)
        self.poll_s = poll_s  # longest sleep: other instances' changes are seen this late
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look again now (a slot freed, the campaign's state changed)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            campaign = await self.store.get(self.campaign_id)
            if campaign is None or campaign.state != "running":
                return
            now = self.clock.now()
            wait = await self.limits.acquire(campaign.id, campaign.rules, now)
            if wait > 0:
                await self._idle(wait)
                continue
            claimed = await self.store.claim_due(campaign.id, now, 1, self.instance)
            if not claimed:
                await self.limits.release(campaign.id)
                counts = await self.store.counts(campaign.id)
                if counts["pending"] == 0 and counts["in-progress"] == 0:
                    await self.store.set_state(campaign.id, "completed", now)
                    log.info("campaign %s completed", campaign.id)
                    return
                due = await self.store.next_due(campaign.id)
                await self._idle(self.poll_s if due is None else due - now)
                continue
            contact, number = claimed[0]
            task = asyncio.create_task(self._attempt(campaign, contact, number, now))
            self.calls.add(task)
            task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self.calls.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # its attempt stays in flight: the next start recovers it as interrupted
            log.error(
                "campaign %s: cannot record an attempt", self.campaign_id, exc_info=task.exception()
            )

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep(min(max(seconds, 0.001), self.poll_s)))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _attempt(
        self, campaign: Campaign, contact: Contact, number: int, started: float
    ) -> None:
        try:
            if await self.store.is_dnc(contact.to):
                result = CallResult("dnc")
            elif not self.allows(contact.to):  # the allow-list changed since the import
                log.warning("campaign %s: %s is not allowed", campaign.id, contact.to)
                result = CallResult("failed")
            else:
                result = await self.placer.place(campaign, contact)
        except Exception:
            log.exception("campaign %s: attempt %d of %s failed", campaign.id, number, contact.to)
            result = CallResult("failed")
        finally:
            with contextlib.suppress(Exception):
                await self.limits.release(campaign.id)
            self._slot_freed()
        await self.store.finish_attempt(
            Attempt(
                contact.id,
                number,
                started,
                self.clock.now(),
                result.outcome,
                result.sip_status,
                result.duration_s,
                result.record_id,
                result.collected,
                result.amd,
                self.instance,
            )
        )
        self._slot_freed()

    def _slot_freed(self) -> None:
        """Take the freed slot at once, unless other instances share the limits: then the
        first dialer to poll gets it, so one instance cannot keep every slot to itself."""
        if not self.limits.shared:
            self.wake()
