"""The SIP front door with real peers on loopback: whole calls through the bridge.

Assertions are on what each side understood: the caller's words in the call record, and
(with baresip) the bot's words in what the caller recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import numpy as np
import pytest

from bridge.config import SipAuthConfig
from bridge.media.g711 import ulaw_encode
from bridge.media.rtp import RtpPacketizer
from bridge.sip.agent import AgentConfig
from bridge.sip.endpoint import SipEndpoint
from bridge.sip.events import CallAnswered, CallFailed
from bridge.sip.ports import PortAllocator
from tests.peers.baresip import call_with_audio
from tests.sip.calls import (
    caller_scenario,
    caller_text,
    dtmf_pcap,
    expect_header,
    g711_file,
    in_dialog,
    pause,
    referenced,
    reply,
    rtp_stream,
    summary,
    transcript,
    wait_for_records,
)
from tests.sip.conftest import StartBridge
from tests.sip.sipp import SCENARIOS, finish, free_port, run_sipp, start_sipp

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(120)]

QUESTION = "What are your opening hours?"


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_sipp_caller_is_heard(
    sip_bridge: StartBridge, speak, tmp_path: Path, codec: str
) -> None:
    running = await sip_bridge()
    audio = g711_file(tmp_path / "question.raw", speak(QUESTION, 8000), codec)
    pt = 0 if codec == "PCMU" else 8
    scenario = caller_scenario(
        tmp_path / "caller.xml", rtp_stream(audio, pt), pause(7000), codec=codec
    )
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output

    (folder,) = await wait_for_records(running.records)
    heard = caller_text(folder).lower()
    assert "opening hours" in heard, heard
    meta = summary(folder)
    assert meta["channel"] == "sip" and meta["end_reason"] == "remote-hangup"
    rtp = meta["metrics"]["rtp"]  # type: ignore[index]
    assert rtp["codec"] == codec and rtp["received"] > 100 and rtp["sent"] > 100
    assert running.bridge.calls == {}


async def test_baresip_hears_greeting_and_answer(
    sip_bridge: StartBridge, speak, transcribe, tmp_path: Path
) -> None:
    running = await sip_bridge()
    # Silence through the greeting, the question, then time for the answer to play.
    speech = speak(QUESTION, 8000)
    audio = np.concatenate([np.zeros(8000 * 11, np.int16), speech, np.zeros(8000 * 7, np.int16)])
    samples, rate, output = await call_with_audio(
        tmp_path, f"sip:bot@127.0.0.1:{running.port}", audio
    )
    heard = transcribe(samples, rate).lower()
    assert "thank you for calling" in heard, (heard, output[-2000:])
    assert "monday to friday" in heard, heard
    (folder,) = await wait_for_records(running.records)
    assert "opening hours" in caller_text(folder).lower()
    # baresip sends RTCP: its reports on our stream echo our sender reports (RTT) and loss.
    rtcp = summary(folder)["metrics"]["rtp"]["rtcp"]  # type: ignore[index]
    assert rtcp["sent"] >= 4 and rtcp["received"] >= 2 and rtcp["ignored"] == 0, rtcp
    assert rtcp["rtt_ms"] is not None and 0 <= rtcp["rtt_ms"] < 100, rtcp
    assert rtcp["peer_cumulative_lost"] == 0, rtcp


INFO_DTMF = in_dialog(
    "INFO", 2, "Signal=5\n      Duration=160", "Content-Type: application/dtmf-relay"
)


async def test_dtmf_rfc4733_and_sip_info_reach_the_call(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    steps = [pause(1000)]
    for name in ("1", "2", "pound"):
        steps += [dtmf_pcap(name), pause(600)]
    steps += [INFO_DTMF, pause(500)]
    running = await sip_bridge()
    scenario = caller_scenario(tmp_path / "dtmf.xml", *steps)
    result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    digits = [str(x["dtmf"]) for x in transcript(folder) if "dtmf" in x]
    assert digits == ["1", "2", "#", "5"], digits
    assert summary(folder)["metrics"]["rtp"]["digits"] == 3  # type: ignore[index]


async def _send_impaired(
    samples: np.ndarray, local_port: int, remote: tuple[str, int], seed: int = 7
) -> tuple[int, int]:
    """Send PCMU of ``samples`` with 5% loss and 0-40 ms of random delay per packet (which
    reorders neighbours); returns (packets dropped, packets overtaken by a later one)."""
    rng = random.Random(seed)
    packetizer = RtpPacketizer(0)
    start = time.monotonic() + 0.1
    schedule: list[tuple[float, int, bytes]] = []
    dropped = 0
    for i in range(0, samples.size - 159, 160):
        packet = packetizer.packetize(ulaw_encode(samples[i : i + 160]), 160)
        if rng.random() < 0.05:
            dropped += 1
            continue
        due = start + i / 8000 + rng.uniform(0, 0.040)
        schedule.append((due, i, packet.serialize()))
    schedule.sort()
    order = [i for _, i, _ in schedule]
    overtaken = sum(1 for a, b in itertools.pairwise(order) if b < a)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", local_port)
    )
    try:
        for due, _, data in schedule:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            transport.sendto(data, remote)
    finally:
        transport.close()
    return dropped, overtaken


async def test_lossy_jittery_caller_is_understood(sip_bridge: StartBridge, speak) -> None:
    running = await sip_bridge()
    rtp = free_port() & ~1
    config = AgentConfig(PortAllocator(rtp, rtp + 4))
    async with SipEndpoint(config) as phone:
        phone.call(f"sip:bot@127.0.0.1:{running.port}")
        while not isinstance(event := await asyncio.wait_for(phone.next_event(), 10), CallAnswered):
            assert not isinstance(event, CallFailed), event
        audio = np.concatenate([np.zeros(4000, np.int16), speak(QUESTION, 8000)])
        remote = (event.media.remote_addr, event.media.remote_port)
        dropped, overtaken = await _send_impaired(audio, event.local_rtp_port, remote)
        assert dropped > 0 and overtaken > 0
        await asyncio.sleep(3)  # endpointing and decoding
        phone.hangup(event.call_id)
        await asyncio.sleep(0.3)
    (folder,) = await wait_for_records(running.records)
    assert "opening hours" in caller_text(folder).lower()
    jitter = summary(folder)["metrics"]["rtp"]["jitter"]  # type: ignore[index]
    assert jitter["lost"] > 0 and jitter["concealed_ms"] > 0, jitter


def _refused(tmp_path: Path, status: int, check: str = "") -> Path:
    template = (SCENARIOS / "refused.xml").read_text()
    path = tmp_path / f"refused_{status}.xml"
    text = template.format(status=status, check=check)
    if check:
        text = text.replace("</scenario>", referenced("checked") + "\n</scenario>")
    path.write_text(text)
    return path


async def test_source_outside_the_allow_list_gets_403(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(allow_list=["10.0.0.0/8"])
    result = await run_sipp("-sf", str(_refused(tmp_path, 403)), f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output
    assert running.bridge.calls == {} and not list(running.records.glob("*"))


async def test_at_capacity_gets_503_with_retry_after(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(retry_after_s=17)
    running.bridge.config.calls.max_concurrent = 0  # WebRTC calls fill the bridge, say
    check = expect_header("Retry-After", "^ *17$", "checked")
    result = await run_sipp("-sf", str(_refused(tmp_path, 503, check)), f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output


async def test_cancel_while_ringing_creates_no_call(sip_bridge: StartBridge) -> None:
    running = await sip_bridge(answer_delay_ms=500)
    target = f"127.0.0.1:{running.port}"
    result = await run_sipp("-sf", str(SCENARIOS / "cancel.xml"), "-s", "bot", target)
    assert result.returncode == 0, result.output  # 180, then 200 to the CANCEL and 487
    await asyncio.sleep(0.7)  # past the answer delay: nothing answers late
    assert running.bridge.calls == {} and not list(running.records.glob("*"))
    assert running.front.endpoint.agent.config.rtp_ports.in_use == 0


async def test_unknown_route_gets_404(sip_bridge: StartBridge, tmp_path: Path) -> None:
    running = await sip_bridge(routes={"sales": "no-such-plan"})
    scenario = _refused(tmp_path, 404)
    result = await run_sipp("-sf", str(scenario), "-s", "sales", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output


async def test_digest_auth_challenges_then_admits(
    sip_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SIP_PASSWORD", "s3cret-for-tests")
    running = await sip_bridge(
        auth=SipAuthConfig("bridge", {"alice": "TEST_SIP_PASSWORD"}, ["MD5"])
    )
    target = f"127.0.0.1:{running.port}"
    wrong = await run_sipp(
        "-sf", str(SCENARIOS / "auth.xml"), "-au", "alice", "-ap", "wrong", target
    )
    assert wrong.returncode != 0  # challenged again, never answered
    result = await run_sipp(
        "-sf", str(SCENARIOS / "auth.xml"), "-au", "alice", "-ap", "s3cret-for-tests", target
    )
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    assert summary(folder)["end_reason"] == "remote-hangup"


async def test_transfer_sends_refer_only_to_allowed_targets(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(transfer_targets=["sip:agent*@127.0.0.1"])
    sipfrag = "Content-Type: message/sipfrag;version=2.0"
    steps = [
        f'  <recv request="REFER">{expect_header("Refer-To", "sip:agent7@", "to")}</recv>',
        reply("202 Accepted"),
        in_dialog("NOTIFY", 2, "SIP/2.0 100 Trying", "Event: refer",
                  "Subscription-State: active;expires=60", sipfrag),
        in_dialog("NOTIFY", 3, "SIP/2.0 200 OK", "Event: refer",
                  "Subscription-State: terminated;reason=noresource", sipfrag),
        '  <recv request="BYE"/>',
        reply("200 OK"),
        referenced("to"),
    ]  # fmt: skip
    scenario = caller_scenario(tmp_path / "refer.xml", *steps, hangs_up=False)
    sipp = await start_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    for _ in range(100):
        if running.bridge.calls or sipp.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert running.bridge.calls, (await finish(sipp)).output
    (call,) = running.bridge.calls.values()
    await asyncio.sleep(1)
    call.notify({"type": "transfer", "target": "sip:+19005550100@127.0.0.1"})  # refused
    call.notify({"type": "transfer", "target": "sip:agent7@127.0.0.1"})
    result = await finish(sipp)
    assert result.returncode == 0, result.output
    (folder,) = await wait_for_records(running.records)
    lines = transcript(folder)
    assert [x["transfer_refused"] for x in lines if "transfer_refused" in x] == [
        "sip:+19005550100@127.0.0.1"
    ]
    assert [x["transfer_status"] for x in lines if "transfer_status" in x] == [202, 100, 200]
    assert summary(folder)["end_reason"] == "transferred"
