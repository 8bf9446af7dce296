"""A ~20-contact campaign through the SIP front door against sipp far ends on loopback: people
answering, answering machines with a beep, busy lines, phones nobody picks up, a do-not-call
number and a contact whose calling hours have not begun. Outcomes, retries and the rate and
concurrency limits are checked from the SIP traffic the far ends logged."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from bridge.campaign.dialer import SipPlacer
from bridge.campaign.service import CampaignService, ServiceSettings
from bridge.campaign.store import LocalLimits, SqliteStore
from bridge.sip.protection import DestinationPolicy
from bridge.speech.factory import SpeechEngines
from tests.campaign import farend
from tests.campaign.clock import ShiftedClock
from tests.campaign.uas import BUSY, HERE, RING, max_overlap, start_far_end, stop_far_ends
from tests.sip.calls import callee_scenario, rtp_stream, transcript
from tests.sip.conftest import StartBridge

MONDAY_10 = datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("UTC")).timestamp()
TOKYO_9 = datetime(2026, 3, 3, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
RULES = {
    "max_concurrent": 3,
    "calls_per_second": 4,
    "calling_hours": ["09:00-17:00"],
    "retry_delays_s": {"busy": 1, "no-answer": 1},
    "max_attempts": 2,
}


async def wait_for(service: CampaignService, cid: str, done, timeout: float) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        status = await service.status(cid)
        if done(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"campaign not there after {timeout} s: {status}")


@pytest.mark.peer
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_campaign_against_sipp_far_ends(
    sip_bridge: StartBridge, speech_engines: SpeechEngines, tmp_path: Path
) -> None:
    running = await sip_bridge(HERE / "dialplans", outbound_targets=["sip:*@127.0.0.1"])
    synth = farend.Synthesiser(speech_engines.tts._runtime.piper())  # type: ignore[attr-defined]
    rng = np.random.default_rng(6)
    person = farend.write(tmp_path / "person.raw", farend.human("Hello?", synth, rng))
    machine = farend.write(
        tmp_path / "machine.raw", farend.voicemail(farend.VOICEMAIL_GREETINGS[0], synth, rng)
    )
    far_ends = [
        await start_far_end(
            "person", callee_scenario(tmp_path / "person.xml", rtp_stream(person, 0)), tmp_path
        ),
        await start_far_end(
            "machine", callee_scenario(tmp_path / "machine.xml", rtp_stream(machine, 0)), tmp_path
        ),
        await start_far_end("busy", BUSY, tmp_path),
        await start_far_end("ring", RING, tmp_path),
    ]
    person_end, machine_end, busy_end, ring_end = far_ends
    clock = ShiftedClock(MONDAY_10)
    service = CampaignService(
        await SqliteStore.open(tmp_path / "campaigns"),
        LocalLimits(),
        SipPlacer(running.front, ring_timeout_s=2.0),
        dialplan_exists=lambda name: name in running.bridge.dialplans.names(),
        allows=DestinationPolicy(["sip:*@127.0.0.1"]).allows,
        settings=ServiceSettings(poll_s=0.5),
        clock=clock,
    )
    dialling = asyncio.create_task(service.run())
    try:
        await asyncio.sleep(0.5)  # let the far ends bind
        contacts = (
            [{"to": busy_end.uri(f"busy-{i}"), "name": "Bea"} for i in range(6)]
            + [{"to": ring_end.uri(f"ring-{i}"), "name": "Ray"} for i in range(3)]
            + [{"to": person_end.uri(f"person-{i}"), "name": "Pat"} for i in range(6)]
            + [{"to": machine_end.uri(f"machine-{i}"), "name": "Max"} for i in range(3)]
            + [{"to": person_end.uri("dnc-0"), "name": "Dee"}]
            + [{"to": person_end.uri("tokyo-0"), "name": "Taro", "timezone": "Asia/Tokyo"}]
        )
        await service.add_dnc(["dnc-0"])
        spec = {"name": "sipp", "dialplan": "campaign-test", "rules": RULES}
        campaign, report = await service.create(spec, contacts=contacts)
        assert report.accepted == 20
        await service.start(campaign.id)

        # Everyone but the Tokyo contact (19:00 there) is done; Tokyo waits for 09:00.
        status = await wait_for(
            service,
            campaign.id,
            lambda s: s["counts"]["pending"] == 1 and s["in_flight"] == 0 and s["done"] == 19,
            150,
        )
        rows = {_user(row["to"]): row for row in await service.contacts(campaign.id)}
        assert rows["tokyo-0"]["attempts"] == 0 and rows["tokyo-0"]["next_due"] == TOKYO_9
        assert status["state"] == "running"
        clock.jump_to(TOKYO_9)
        status = await wait_for(service, campaign.id, lambda s: s["state"] == "completed", 60)
    finally:
        dialling.cancel()
        await service.close()
        await stop_far_ends(far_ends)

    rows = {_user(row["to"]): row for row in await _contacts(tmp_path)}
    counts = status["counts"]
    assert (counts["answered"], counts["voicemail"], counts["busy"]) == (7, 3, 6), counts
    assert (counts["no-answer"], counts["dnc"], counts["failed"]) == (3, 1, 0), counts
    for user, row in rows.items():
        kind = user.split("-")[0]
        expected = {
            "busy": ("busy", 2, 486),
            "ring": ("no-answer", 2, 487),
            "person": ("answered", 1, 200),
            "tokyo": ("answered", 1, 200),
            "machine": ("voicemail", 1, 200),
            "dnc": ("dnc", 1, None),
        }[kind]
        assert (row["outcome"], row["attempts"], row["last_sip_status"]) == expected, row
        if kind in ("person", "tokyo", "machine"):
            reached = "machine" if kind == "machine" else "person"
            assert row["collected"]["reached"] == reached, row
            assert row["amd"] == ("machine" if kind == "machine" else "human"), row
            assert row["duration_s"] > 1 and len(row["record_ids"]) == 1
            (record,) = running.records.glob(f"*{row['record_ids'][0]}")
            said = " ".join(str(e.get("text")) for e in transcript(record) if e["who"] == "bot")
            assert row["variables"]["name"] in said, said  # the contact's columns reached it

    # The SIP traffic: each attempt was one INVITE, the DNC contact got none.
    invites = [m for far in far_ends for m in far.invites()]
    per_user: dict[str, int] = {}
    for message in invites:
        per_user[message.user] = per_user.get(message.user, 0) + 1
    assert per_user == {user: row["attempts"] for user, row in rows.items() if user != "dnc-0"}
    assert status["calls_started"] == len(invites) + 1
    # Rate: the six busy lines come first, back to back; starts 1/4 s apart (±10 %).
    starts = sorted(m.at for m in invites)
    first_busy = sorted(m.at for m in busy_end.invites())[:6]
    rate = 5 / (first_busy[-1] - first_busy[0])
    assert 4 * 0.9 <= rate <= 4 * 1.1, rate
    # and no stretch of the campaign went faster: any 9 starts in a row span 8 intervals
    # (-10 %; each INVITE leaves after its attempt is committed, so single gaps jitter)
    spans_of_9 = [b - a for a, b in zip(starts, starts[8:], strict=False)]
    assert min(spans_of_9) >= 8 / (4 * 1.1), spans_of_9
    # Concurrency: never more than 3 calls up at once at the far ends, and 3 reached.
    spans = [span for far in far_ends for span in far.call_spans()]
    assert max_overlap(spans) == 3


def _user(uri: str) -> str:
    return uri.split(":")[1].split("@")[0]


async def _contacts(tmp_path: Path) -> list[dict]:
    from bridge.campaign.service import contact_row

    store = await SqliteStore.open(tmp_path / "campaigns")
    try:
        campaign = (await store.list())[0]
        return [contact_row(*entry) for entry in await store.contacts(campaign.id)]
    finally:
        await store.close()
