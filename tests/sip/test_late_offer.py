"""Late offers with a real caller: sipp sends an INVITE without SDP, streams to the offer in our
200 and answers in the ACK. What crossed loopback is captured, so the test sees what the
caller was sent, not only what the bridge says it sent.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from bridge.media.g711 import PCMA
from tests.campaign.farend import tone
from tests.sip.calls import (
    caller_channel,
    g711_file,
    in_dialog,
    loudest_second,
    pause,
    reply,
    rtp_stream,
    summary,
    wait_for_records,
)
from tests.sip.capture import Datagram, LoopbackCapture
from tests.sip.conftest import SipBridge, StartBridge
from tests.sip.sipp import SCENARIOS, run_sipp

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(180)]

ANSWER = {
    "PCMA": """      m=audio [rtpstream_audio_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15""",
    "PCMU": """      m=audio [rtpstream_audio_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000""",
    "G722": """      m=audio [rtpstream_audio_port] RTP/AVP 9
      a=rtpmap:9 G722/8000""",  # nothing we offered: unusable
}
# Our offer, as sipp checks it in a 200: every configured codec, then telephone-event.
OFFER_CHECK = """
    <action>
      <ereg regexp="m=audio [0-9]+ RTP/AVP 0 8 101" search_in="body" check_it="true"
            assign_to="offer"/>
      <ereg regexp="a=rtpmap:101 telephone-event/8000" search_in="body" check_it="true"
            assign_to="events"/>
    </action>
  """
TONE_HZ = 440.0


def _scenario(path: Path, *steps: str, hangs_up: bool = True) -> Path:
    """The late-offer caller running ``steps`` after our 200, then a BYE unless ``hangs_up``
    is False."""
    template = (SCENARIOS / "late_offer.xml").read_text()
    if not hangs_up:
        template = template.rpartition("{steps}")[0] + "{steps}\n</scenario>\n"
    path.write_text(template.format(offer_check=OFFER_CHECK, steps="\n".join(steps)))
    return path


def _ack(cseq: int, answer: str) -> str:
    """A sipp step: the ACK of our 200 to INVITE ``cseq``, with ``ANSWER[answer]``."""
    return f"""  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 {cseq} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
{ANSWER[answer]}

    ]]>
  </send>"""


def _late_offer_reinvite(cseq: int, answer: str) -> list[str]:
    """sipp steps: a re-INVITE without SDP, our 200 checked for a full offer, the ACK's answer."""
    reinvite = in_dialog("INVITE", cseq).replace(
        '<recv response="200"/>',
        f'<recv response="100" optional="true"/>\n  <recv response="200">{OFFER_CHECK}</recv>',
    )
    return [reinvite, _ack(cseq, answer)]


def _media_sockets(running: SipBridge) -> tuple[tuple[str, int], tuple[str, int]]:
    """The RTP and RTCP addresses of the bridge's first call (the range's first even port)."""
    low, _ = running.bridge.config.sip.rtp_port_range
    port = low + low % 2
    return ("127.0.0.1", port), ("127.0.0.1", port + 1)


def _rtp(datagram: Datagram) -> tuple[int, bool, bytes] | None:
    """(payload type, marker, payload) of an RTP datagram without CSRCs or extensions."""
    data = datagram.payload
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    return data[1] & 0x7F, bool(data[1] & 0x80), data[12:]


async def test_late_offer_call_has_audio_both_ways(sip_bridge: StartBridge, tmp_path: Path) -> None:
    running = await sip_bridge()
    audio = g711_file(tmp_path / "tone.raw", tone(TONE_HZ, 2.0, -12), "PCMA")
    steps = [_ack(1, "PCMA"), rtp_stream(audio, 8), pause(4000)]
    steps += [*_late_offer_reinvite(2, "PCMU"), pause(1000)]  # a codec change, late offer too
    scenario = _scenario(tmp_path / "late.xml", *steps)
    ours, our_rtcp = _media_sockets(running)
    async with LoopbackCapture({ours[1], our_rtcp[1]}) as capture:
        result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output  # our 200 carried the full offer

    (folder,) = await wait_for_records(running.records)
    meta = summary(folder)
    rtp = meta["metrics"]["rtp"]  # type: ignore[index]
    assert meta["end_reason"] == "remote-hangup" and rtp["codec"] == "PCMU", meta
    # The bridge heard the caller: the tone it sent in the codec of its first answer (PCMA).
    caller, rate = caller_channel(folder)
    heard = loudest_second(caller, rate)
    peak_hz = np.argmax(np.abs(np.fft.rfft(heard))) * rate / heard.size
    assert np.sqrt(np.mean(heard**2)) > 2000 and abs(peak_hz - TONE_HZ) < 10, peak_hz

    # The caller was sent the bot's audio: from the port it streams to, back to where its RTP
    # comes from (symmetric), starting with a talk-spurt, in PCMA then (after the re-INVITE)
    # PCMU; nothing went anywhere else.
    theirs = next(d.source for d in capture.datagrams if d.destination == ours and _rtp(d))
    assert {d.destination for d in capture.datagrams if d.source == ours} == {theirs}
    rtcp = {d.destination for d in capture.datagrams if d.source == our_rtcp}
    assert rtcp <= {(theirs[0], theirs[1] + 1)}
    bot = [rtp for d in capture.datagrams if d.source == ours and (rtp := _rtp(d))]
    assert len(bot) > 100 and bot[0][1], "the first packet starts a talk-spurt (marker bit)"
    assert [pt for pt, _ in itertools.groupby(pt for pt, _, _ in bot)] == [8, 0]
    samples = PCMA.decode(b"".join(p for pt, _, p in bot if pt == 8)).astype(np.float64)
    assert np.sqrt(np.mean(loudest_second(samples, 8000) ** 2)) > 300  # the greeting


async def test_unusable_answer_in_the_ack_gets_a_bye(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge()
    steps = [_ack(1, "G722"), '  <recv request="BYE"/>', reply("200 OK")]
    scenario = _scenario(tmp_path / "g722.xml", *steps, hangs_up=False)
    ours, our_rtcp = _media_sockets(running)
    async with LoopbackCapture({ours[1], our_rtcp[1]}) as capture:
        result = await run_sipp("-sf", str(scenario), "-s", "bot", f"127.0.0.1:{running.port}")
    assert result.returncode == 0, result.output  # the BYE came

    (folder,) = await wait_for_records(running.records)
    assert summary(folder)["end_reason"] == "unusable-answer"
    # No RTP or RTCP (not even the RTCP BYE): the caller's media address was never known.
    assert [d for d in capture.datagrams if d.source in (ours, our_rtcp)] == []
    assert running.front.endpoint.agent.config.rtp_ports.in_use == 0
