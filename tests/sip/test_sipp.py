"""Interop with a real SIP stack: sipp on loopback, signalling only (no RTP yet)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from bridge.sip.agent import AgentConfig
from bridge.sip.endpoint import SipEndpoint
from bridge.sip.events import CallAnswered, CallEnded, CallFailed, Event, IncomingCall
from bridge.sip.ports import PortAllocator
from bridge.sip.transaction import TimerConfig
from tests.sip.sipp import SCENARIOS, finish, free_port, run_sipp, start_sipp

pytestmark = [pytest.mark.peer, pytest.mark.timeout(90)]


@pytest.fixture
async def endpoint() -> AsyncIterator[SipEndpoint]:
    rtp = free_port() & ~1
    config = AgentConfig(PortAllocator(rtp, rtp + 10), timers=TimerConfig(t1=0.25))
    async with SipEndpoint(config) as running:
        yield running


async def _answer_calls(endpoint: SipEndpoint, seen: list[Event]) -> None:
    while True:
        event = await endpoint.next_event()
        seen.append(event)
        if isinstance(event, IncomingCall):
            event.answer()


async def _run_uas_test(endpoint: SipEndpoint, *args: str) -> tuple[int, str, list[Event]]:
    seen: list[Event] = []
    task = asyncio.create_task(_answer_calls(endpoint, seen))
    try:
        result = await run_sipp(*args, f"127.0.0.1:{endpoint.port}")
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
    return result.returncode, result.output, seen


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_uac_calls_our_uas(endpoint: SipEndpoint, transport: str) -> None:
    code, output, seen = await _run_uas_test(
        endpoint, "-sn", "uac", "-t", transport, "-s", "bot", "-d", "300"
    )
    assert code == 0, output
    incoming = next(e for e in seen if isinstance(e, IncomingCall))
    assert incoming.request_uri_user == "bot" and incoming.media.codec == "PCMU"
    assert any(isinstance(e, CallEnded) and e.reason == "remote hangup" for e in seen)
    assert endpoint.agent.config.rtp_ports.in_use == 0


async def test_sipp_cancel_gets_487(endpoint: SipEndpoint) -> None:
    seen: list[Event] = []

    async def ring_forever() -> None:
        while True:
            seen.append(await endpoint.next_event())

    task = asyncio.create_task(ring_forever())
    try:
        result = await run_sipp(
            "-sf", str(SCENARIOS / "cancel.xml"), "-s", "bot", f"127.0.0.1:{endpoint.port}"
        )
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
    assert result.returncode == 0, result.output
    assert any(isinstance(e, CallEnded) and e.reason == "cancelled" for e in seen)


async def test_sipp_options_ping(endpoint: SipEndpoint) -> None:
    code, output, _ = await _run_uas_test(
        endpoint, "-sf", str(SCENARIOS / "options.xml"), "-s", "bot"
    )
    assert code == 0, output


async def test_sipp_slow_ack_sees_200_retransmitted(endpoint: SipEndpoint) -> None:
    code, output, seen = await _run_uas_test(
        endpoint, "-sf", str(SCENARIOS / "slow_ack.xml"), "-s", "bot"
    )
    assert code == 0, output
    # sipp's statistics row for the 200: messages received, then retransmissions absorbed.
    retransmissions = re.search(r"200 <-+\s+1\s+(\d+)", output)
    assert retransmissions and int(retransmissions[1]) >= 2, output
    assert any(isinstance(e, CallEnded) and e.reason == "remote hangup" for e in seen)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_our_uac_calls_sipp_uas(endpoint: SipEndpoint, transport: str) -> None:
    port = free_port()
    sipp = await start_sipp(
        "-sn", "uas", "-t", "u1" if transport == "udp" else "t1", "-p", str(port)
    )
    await asyncio.sleep(0.5)  # let sipp bind
    suffix = ";transport=tcp" if transport == "tcp" else ""
    call_id = endpoint.call(f"sip:sipp@127.0.0.1:{port}{suffix}")
    events: list[Event] = []
    while not isinstance(event := await asyncio.wait_for(endpoint.next_event(), 10), CallAnswered):
        events.append(event)
        assert not isinstance(event, CallFailed), event
    assert event.call_id == call_id and event.media.remote_port > 0
    endpoint.hangup(call_id)
    result = await finish(sipp)
    assert result.returncode == 0, result.output
