"""The dialer under an injected clock: rate, concurrency, retries, calling hours, do-not-call.

The far ends here are scripted (each contact's answers in turn, each call lasting a set time on
the injected clock), standing in for the SIP network so hours of campaign time run in a second;
test_campaign_sipp.py runs the same rules against real SIP far ends.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.campaign.dialer import CallResult
from bridge.campaign.model import Campaign, CampaignRules, Contact, Outcome
from bridge.campaign.service import CampaignService
from bridge.campaign.store import CATCH_UP_GAP, LocalLimits, SqliteStore
from tests.campaign.clock import ManualClock

MONDAY_10 = datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("UTC")).timestamp()


@dataclass
class ScriptedFarEnds:
    """Answers by contact user: outcomes in turn (the last repeats), each taking ``hold_s``."""

    clock: ManualClock
    script: dict[str, list[Outcome]]
    hold_s: float = 1.0
    calls: list[tuple[str, float, float]] = field(default_factory=list)  # user, start, end
    active: int = 0
    most_active: int = 0

    async def place(self, campaign: Campaign, contact: Contact) -> CallResult:
        user = contact.to.split(":")[1].split("@")[0]
        outcomes = self.script.get(user, ["answered"])
        turn = sum(1 for u, _, _ in self.calls if u == user)
        outcome = outcomes[min(turn, len(outcomes) - 1)]
        start = self.clock.now()
        self.calls.append((user, start, -1.0))
        index = len(self.calls) - 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.clock.sleep(self.hold_s if outcome == "answered" else 0.05)
        finally:
            self.active -= 1
        self.calls[index] = (user, start, self.clock.now())
        return CallResult(outcome, 200 if outcome == "answered" else 486, record_id=f"r{index}")

    def starts(self, user: str | None = None) -> list[float]:
        return [s for u, s, _ in self.calls if user in (None, u)]


@dataclass
class Rig:
    service: CampaignService
    clock: ManualClock
    far: ScriptedFarEnds

    async def campaign(self, users: list[str], **rules: object) -> str:
        rows = [{"to": f"sip:{u}@127.0.0.1", "name": u} for u in users]
        spec = {"name": "t", "dialplan": "reminder", "rules": rules}
        campaign, _ = await self.service.create(spec, contacts=rows)
        await self.service.start(campaign.id)
        return campaign.id

    async def until_state(
        self, cid: str, state: str, limit_s: float = 600, step: float = 0.01
    ) -> dict:
        end = self.clock.now() + limit_s
        while self.clock.now() < end:
            status = await self.service.status(cid)
            if status["state"] == state:
                return status
            await self.clock.advance(max(step, 0.05), step)
        raise AssertionError(f"not {state} after {limit_s} s: {status}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = ManualClock(MONDAY_10)
    far = ScriptedFarEnds(clock, {})
    store = await SqliteStore.open(tmp_path)
    service = CampaignService(
        store,
        LocalLimits(),
        far,
        dialplan_exists=lambda name: name == "reminder",
        allows=lambda uri: "@127.0.0.1" in uri,
        clock=clock,
    )
    runner = asyncio.create_task(service.run())
    yield Rig(service, clock, far)
    runner.cancel()
    await service.close()


async def test_starts_are_spaced_by_the_rate(rig: Rig) -> None:
    cid = await rig.campaign([f"u{i}" for i in range(20)], calls_per_second=4, max_concurrent=20)
    await rig.until_state(cid, "completed")
    starts = rig.far.starts()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 20
    assert min(gaps) >= 0.25 * CATCH_UP_GAP - 0.011  # the clock moves in 10 ms steps
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    assert 4 * 0.9 <= rate <= 4 * 1.1, rate


async def test_concurrency_is_capped(rig: Rig) -> None:
    rig.far.hold_s = 2.0
    cid = await rig.campaign([f"u{i}" for i in range(9)], calls_per_second=50, max_concurrent=3)
    status = await rig.until_state(cid, "completed")
    assert rig.far.most_active == 3
    assert status["counts"]["answered"] == 9 and status["calls_started"] == 9


async def test_retries_wait_their_delay_and_stop_at_max_attempts(rig: Rig) -> None:
    rig.far.script = {"busy1": ["busy", "answered"], "never": ["no-answer"]}
    cid = await rig.campaign(
        ["busy1", "never"],
        retry_delays_s={"busy": 30, "no-answer": 60},
        max_attempts=3,
        calls_per_second=10,
        max_concurrent=2,
    )
    status = await rig.until_state(cid, "completed", step=0.5)
    busy = rig.far.starts("busy1")
    never = rig.far.starts("never")
    assert len(busy) == 2 and busy[1] - busy[0] >= 30
    assert len(never) == 3 and all(b - a >= 60 for a, b in itertools.pairwise(never))
    assert status["counts"] == {**status["counts"], "answered": 1, "no-answer": 1}
    rows = {row["to"]: row for row in await rig.service.contacts(cid)}
    assert rows["sip:busy1@127.0.0.1"]["attempts"] == 2
    assert rows["sip:never@127.0.0.1"]["attempts"] == 3
    assert rows["sip:never@127.0.0.1"]["outcome"] == "no-answer"


async def test_calls_outside_hours_wait_for_the_next_window(rig: Rig) -> None:
    rig.clock.t = MONDAY_10 + 8 * 3600 - 60  # 17:59
    rig.far.hold_s = 40
    cid = await rig.campaign(
        ["a", "b", "c"], calling_hours=["mon-fri 09:00-18:00"], max_concurrent=1
    )
    await rig.clock.advance(130, step=0.5)
    first, second = rig.far.starts()  # the dialer runs between the clock's 0.5 s steps
    six_pm = MONDAY_10 + 8 * 3600
    assert first == pytest.approx(six_pm - 60, abs=1.01)
    assert first + 40 <= second < six_pm  # and the third call would start after 18:00
    status = await rig.service.status(cid)
    assert status["state"] == "running" and status["counts"]["pending"] == 1
    (row,) = [r for r in await rig.service.contacts(cid) if r["status"] == "pending"]
    tuesday_9 = MONDAY_10 + 23 * 3600
    assert row["to"] == "sip:c@127.0.0.1" and row["next_due"] == tuesday_9 and row["attempts"] == 0
    rig.clock.t = tuesday_9 - 1
    await rig.until_state(cid, "completed", step=0.25)
    assert rig.far.starts("c") == [pytest.approx(tuesday_9, abs=0.3)]


async def test_do_not_call_is_checked_at_dial_time(rig: Rig) -> None:
    rig.far.hold_s = 5
    cid = await rig.campaign(["a", "b", "c"], max_concurrent=1, calls_per_second=1)
    await rig.service.add_dnc(["c"])  # after creation, before it is dialled
    status = await rig.until_state(cid, "completed")
    assert [u for u, _, _ in rig.far.calls] == ["a", "b"]
    assert status["counts"]["dnc"] == 1 and status["counts"]["answered"] == 2


async def test_pause_holds_new_calls_and_resume_continues(rig: Rig) -> None:
    cid = await rig.campaign([f"u{i}" for i in range(6)], max_concurrent=1, calls_per_second=1)
    await rig.clock.advance(2.5)
    await rig.service.pause(cid)
    placed = len(rig.far.calls)
    await rig.clock.advance(10)
    assert len(rig.far.calls) == placed and (await rig.service.status(cid))["state"] == "paused"
    await rig.service.resume(cid)
    status = await rig.until_state(cid, "completed")
    assert status["counts"]["answered"] == 6 and len(rig.far.calls) == 6


async def test_a_destination_no_longer_allowed_is_never_dialled(rig: Rig) -> None:
    rows = [{"to": "sip:ok@127.0.0.1"}, {"to": "sip:gone@127.0.0.1"}]
    spec = {"name": "t", "dialplan": "reminder", "rules": {"max_attempts": 1}}
    campaign, _ = await rig.service.create(spec, contacts=rows)
    rig.service.allows = lambda uri: "gone" not in uri  # the operator narrowed the allow-list
    await rig.service.start(campaign.id)
    status = await rig.until_state(campaign.id, "completed")
    assert [u for u, _, _ in rig.far.calls] == ["ok"]
    assert status["counts"]["failed"] == 1 and status["counts"]["answered"] == 1


async def test_late_wake_ups_catch_up_on_the_schedule_without_bursts() -> None:
    limits, rules = LocalLimits(), CampaignRules(max_concurrent=100, calls_per_second=10)
    now, starts = 0.0, []
    for lateness in [0.0, 0.08, 0.0, 0.0, 0.03, 0.0, 0.0, 0.0, 0.0, 0.0]:  # a busy event loop
        while (wait := await limits.acquire("c", rules, now)) > 0:
            now += wait + lateness
        starts.append(now)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 * CATCH_UP_GAP  # never a burst
    assert starts[-1] == pytest.approx(0.9 + 0.03)  # back on the 10/s schedule after lateness
